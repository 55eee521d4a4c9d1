"""What a request costs before its acknowledgement (issue 15): reservations made together in
one transaction and never over a cap, no reads on the event loop for an admission whose view
is current (and a change by another process still seen), acknowledgements before the work of
the requests acknowledged, and bolt answering when the listener returns. On SQLite and on
PostgreSQL where the store is involved (``store_target``). Timings are in bench/ack_bench.py."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest
import slack_bolt.listener.asyncio_runner as bolt_runner

from core.commands import parse
from core.config import Settings
from core.governance import Refused
from core.governance.scope import Caller, Periods
from core.services import Services, build_services
from core.threads import FrontDoor, Requests
from tests.test_governance import ADMIN, WS, admin, llm, svc  # noqa: F401  (fixtures)
from tests.test_slack import Rig, rig  # noqa: F401 - the Slack rig fixture

ASK = "provider:alpha max_tokens:64 Hi"


def person(i: int) -> Caller:
    return Caller(WS, f"U{i:03d}", f"C{i:03d}", private=True, front_end="slack")


def reserved_usd(svc: Services) -> float:  # noqa: F811
    return svc.governance.db.totals(WS, "workspace", "", Periods.at())["daily"]


# --- reservations ------------------------------------------------------------------------------
async def test_a_burst_of_reservations_shares_transactions_and_never_goes_over_a_cap(svc: Services) -> None:  # noqa: F811
    probe = await svc.governance.admit(parse("ask", ASK), ADMIN)
    probe.release()
    one = probe.estimate.usd
    await admin(svc, f"budget set scope:workspace daily:{one * 7.5:.10f}")
    (await svc.governance.admit(parse("ask", ASK), ADMIN)).release()  # the view after the change
    await svc.store.settled()
    writer = svc.store.writer
    transactions = 0
    acall = writer.acall

    async def counted(fn: Any, *, urgent: bool = False) -> Any:
        nonlocal transactions
        transactions += 1
        return await acall(fn, urgent=urgent)

    writer.acall = counted  # type: ignore[method-assign]

    async def attempt(i: int) -> bool:
        try:
            await svc.governance.admit(parse("ask", ASK), person(i))
        except Refused:
            return False
        return True

    try:
        got = await asyncio.gather(*(attempt(i) for i in range(40)))
    finally:
        writer.acall = acall  # type: ignore[method-assign]
    assert sum(got) == 7  # each checked against the totals the ones before it left, in one transaction
    assert transactions <= 3  # not one write transaction per request
    rows = svc.store.db.execute("select count(*), sum(estimate_usd) from spend where status = 'reserved'").fetchone()
    assert rows[0] == 7 and reserved_usd(svc) == pytest.approx(rows[1])


async def test_a_request_cancelled_while_its_reservation_waits_gives_it_back(svc: Services) -> None:  # noqa: F811
    await admin(svc, "budget set scope:workspace daily:100")
    (await svc.governance.admit(parse("ask", ASK), ADMIN)).release()
    await svc.store.settled()
    busy, release = threading.Event(), threading.Event()

    def hold(db: Any) -> None:  # another write (another process's lock) keeps the writer busy
        busy.set()
        release.wait(10)

    svc.store.writer.submit(hold)
    await asyncio.to_thread(busy.wait, 10)
    waiting = [asyncio.ensure_future(svc.governance.admit(parse("ask", ASK), person(i))) for i in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)  # each is queued behind the busy writer
    waiting[1].cancel()
    release.set()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    kept = [g for g in done if not isinstance(g, BaseException)]
    assert len(kept) == 2
    await svc.store.settled()
    rows = svc.store.db.execute("select status, count(*) from spend where user != 'UADMIN' group by status").fetchall()
    statuses = {r[0]: r[1] for r in rows}
    assert statuses.get("reserved") == 2 and statuses.get("settled", 0) <= 1  # the cancelled one given back
    assert reserved_usd(svc) == pytest.approx(sum(g.estimate.usd for g in kept))
    for g in kept:
        g.release()


# --- no reads on the loop, and other processes' changes still count ----------------------------
async def test_an_admission_reads_nothing_on_the_loop_yet_sees_another_process_change(svc: Services) -> None:  # noqa: F811
    (await svc.governance.admit(parse("ask", ASK), ADMIN)).release()  # the view is cached
    reads = 0
    peek = svc.store.peek

    def counted(sql: str, args: Any = ()) -> Any:
        nonlocal reads
        reads += 1
        return peek(sql, args)

    svc.governance.db.peek = counted  # type: ignore[method-assign]
    grant = await svc.governance.admit(parse("ask", ASK), person(1))
    grant.release()
    assert reads == 0  # policy, caps and keys from the cached view; the version is checked in the transaction

    other = build_services(Settings())  # a second process on the same database
    try:
        await admin(other, "policy deny providers:alpha")
        with pytest.raises(Refused) as refused:
            await svc.governance.admit(parse("ask", ASK), person(2))  # this process's view predates the rule
        assert "alpha" in refused.value.message
        [rule] = other.governance.view(WS).rules.rules
        await admin(other, f"policy remove {rule.id}")
        grant = await svc.governance.admit(parse("ask", ASK), person(3))  # refused by its view, allowed now
        grant.release()
        mine = "sk-person-four-own-key-abcdefghijkl-4444"
        await admin(other, f"keys set provider:alpha {mine}", person(4))
        grant = await svc.governance.admit(parse("ask", ASK), person(4))  # a key stored elsewhere is used
        assert grant.keys["alpha"].get_secret_value() == mine
        grant.release()
    finally:
        await other.aclose()


# --- acknowledgements first ---------------------------------------------------------------------
async def test_work_after_an_ack_waits_for_the_requests_still_inside() -> None:
    requests = Requests()
    started: list[int] = []

    async def work(i: int) -> None:
        started.append(i)

    with requests.door.inside():
        requests.spawn(work(1))
        with requests.door.inside():
            requests.spawn(work(2))
            for _ in range(10):
                await asyncio.sleep(0)
            assert started == []  # two requests still wait for their ack
        for _ in range(10):
            await asyncio.sleep(0)
        assert started == []
        early = requests.spawn(work(3), behind_acks=False)  # work that acknowledges itself goes now
        await early
        assert started == [3]
    await requests.idle(3, within=5)
    assert sorted(started) == [1, 2, 3]


async def test_waiting_work_starts_one_at_a_time_and_a_new_request_goes_first() -> None:
    requests = Requests()
    started: list[int] = []

    async def work(i: int) -> None:
        started.append(i)

    with requests.door.inside():
        for i in range(5):
            requests.spawn(work(i))
        await asyncio.sleep(0)
    for _ in range(50):
        if started:
            break
        await asyncio.sleep(0)
    assert started == [0]  # the first has started, the others wait their turn
    with requests.door.inside():  # a request arrives
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(started) <= 2  # at most the one already let go; the rest wait for its ack
    await requests.idle(5, within=5)
    assert started == [0, 1, 2, 3, 4]


async def test_work_after_an_ack_is_not_starved_by_a_request_that_stays_inside() -> None:
    requests = Requests()
    requests.door = FrontDoor(most=0.01)
    done = asyncio.Event()

    async def work() -> None:
        done.set()

    with requests.door.inside():
        requests.spawn(work())
        await asyncio.wait_for(done.wait(), 5)


async def test_work_cancelled_at_the_door_never_starts() -> None:
    requests = Requests()
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with requests.door.inside():
        task = requests.spawn(work())
        await asyncio.sleep(0)
        await requests.shutdown(within=1)
    assert task.cancelled() and not ran


async def test_a_slash_command_is_inside_the_door_until_answered_and_bolt_does_not_poll(
    rig: Rig, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    seen: list[int] = []
    admit = rig.front.services.governance.admit

    async def watched(*a: Any, **kw: Any) -> Any:
        seen.append(rig.front.door.count)
        return await admit(*a, **kw)

    monkeypatch.setattr(rig.front.services.governance, "admit", watched)
    slept: list[float] = []

    class Spy:
        """bolt's runner module's asyncio, recording its sleeps (its poll for an ack)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def sleep(delay: float, *a: Any) -> Any:
            slept.append(delay)
            return await asyncio.sleep(delay, *a)

    monkeypatch.setattr(bolt_runner, "asyncio", Spy())
    before = rig.front.spawned
    status, body = await rig.slash("/ask", "providers:one Where?")
    assert status == 200 and body == ""
    assert seen == [1]  # admitted while inside the door
    assert slept == []  # answered when the listener returned, not found by a 10 ms poll
    assert rig.front.door.count == 0
    await rig.front.idle(before + 1)


async def test_start_up_is_frozen_out_of_full_collections_until_shutdown(rig: Rig) -> None:  # noqa: F811
    assert gc.get_freeze_count() > 0  # SlackFront.start froze what start-up made
    await rig.front.shutdown()
    assert gc.get_freeze_count() == 0

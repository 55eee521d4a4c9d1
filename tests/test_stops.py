"""/stop: a running discussion stops wherever it runs, keeping what its answers showed.

Through the real Slack front-end (bolt, against the fake Web API), then across replicas: a
second process on the same database hears the request through Redis at once, and without
Redis finds it at its next check.
"""

from __future__ import annotations

import asyncio

import pytest

from core import info
from core.commands import parse
from core.config import Settings
from core.coord import RedisCoordinator
from core.governance.scope import Caller
from core.services import Services, build_services
from tests.fakes.llm_server import Scenario
from tests.fakes.slack_api import Message
from tests.test_slack import Rig, rig  # noqa: F401  (the fixture)

LONG = Scenario(text=" ".join(f"w{i}" for i in range(400)), chunk_chars=6, chunk_delay=0.03)  # ~6 s


async def started(rig: Rig, channel: str = "C1", user: str = "U1") -> None:  # noqa: F811
    rig.llm.scenarios["one-m"] = LONG
    rig.llm.scenarios["two-m"] = LONG
    status, body = await rig.slash("/compare", "providers:one,two A long one?", channel=channel, user=user)
    assert status == 200 and body == ""
    await rig.slack.wait_for(lambda: rig.slack.parents(channel) and sum(
        "w12" in m.text for m in thread(rig, channel)) == 2, within=10)


def thread(rig: Rig, channel: str) -> list[Message]:  # noqa: F811
    parents = rig.slack.parents(channel)
    return rig.slack.thread(channel, parents[-1].ts) if parents else []


def answers(rig: Rig, channel: str = "C1") -> list[Message]:  # noqa: F811
    return [m for m in thread(rig, channel) if "`one/one-m`" in m.text or "`two/two-m`" in m.text]


def no_checks(services: Services) -> None:
    """Stop the periodic takeover check (which also looks for unheard stop requests)."""
    for task in services.background:
        task.cancel()


def status_of(services: Services) -> str:
    [row] = services.store.peek("select status from discussions where mode = 'parallel'")
    return str(row["status"])


async def test_stop_ends_the_askers_discussion_and_each_answer_keeps_what_it_showed(rig: Rig) -> None:  # noqa: F811
    await started(rig)
    spawned = rig.front.spawned
    status, _ = await rig.slash("/stop", "", user="U2")  # not theirs
    assert status == 200
    await rig.slack.wait_for(lambda: rig.slack.responses)
    assert rig.slack.responses[-1]["text"] == "Nothing of yours is running here."
    assert status_of(rig.services) == "running"

    status, _ = await rig.slash("/stop", "", user="U1")
    assert status == 200
    await rig.front.idle(spawned + 2, within=40)
    assert "Stopping 1 discussion(s) of yours" in rig.slack.responses[-1]["text"]
    texts = [m.text for m in answers(rig)]
    assert len(texts) == 2
    assert all("Stopped: someone asked to stop this discussion" in t for t in texts)
    assert all("w12" in t and "w399" not in t for t in texts)  # what was shown stays; the rest never came
    await rig.services.store.settled()
    assert status_of(rig.services) == "interrupted"
    assert rig.services.store.open_posts("slack") == []  # the thread too: no restart note later
    assert not any("restarted" in m.text for m in thread(rig, "C1"))
    assert rig.services.stops.running() == set()


async def test_an_admin_may_stop_anyones_discussion_in_the_channel(rig: Rig) -> None:  # noqa: F811
    await started(rig)
    rig.slack.admins.add("U9")
    spawned = rig.front.spawned
    await rig.slash("/stop", "", user="U9")
    await rig.front.idle(spawned + 1, within=40)  # the stop, and the discussion it ended
    assert "Stopping 1 discussion(s) running here" in rig.slack.responses[-1]["text"]
    assert all("Stopped:" in m.text for m in answers(rig))


async def test_a_stop_that_reaches_another_replica_stops_the_run_at_once_through_redis(
    rig: Rig, redis_url: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    rig.services.coord = RedisCoordinator(redis_url)  # this replica runs the discussion
    no_checks(rig.services)  # so only the message can stop it
    monkeypatch.setenv("PARLEY_REDIS_URL", redis_url)
    other = build_services(Settings())  # another replica on the same database and Redis
    try:
        await started(rig)
        await asyncio.sleep(0.2)  # the owner's subscription is up (it starts with its first run)
        n = (await info.answer(other, parse("stop", ""), caller=Caller("slack:T0TEST", "U1", "C1", front_end="slack")))
        assert n.rows == [{"stopped": 1}]
        await rig.slack.wait_for(lambda: all("Stopped:" in m.text for m in answers(rig)), within=3)
    finally:
        await other.aclose()


async def test_without_redis_the_owner_finds_the_stop_at_its_next_check(rig: Rig) -> None:  # noqa: F811
    other = build_services(Settings())  # no Redis: the message only reaches its own process
    no_checks(rig.services)  # the check is run by hand below
    try:
        await started(rig)
        stopped = await other.stops.request(Caller("slack:T0TEST", "U1", "C1", front_end="slack"))
        assert stopped == 1
        await asyncio.sleep(0.5)
        assert not any("Stopped:" in m.text for m in answers(rig))  # not heard...
        await rig.services.stops.poll()  # ...until the owner's check
        await rig.slack.wait_for(lambda: all("Stopped:" in m.text for m in answers(rig)), within=10)
    finally:
        await other.aclose()

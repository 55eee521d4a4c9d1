"""The store's behaviour on both dialects: SQLite (a file) and PostgreSQL (a real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.events import TurnInfo, TurnUsage
from core.sql import translate
from core.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("pg_url"))


def test_translation_keeps_literals_and_quotes_the_reserved_user_column() -> None:
    sql = translate("select user, 'a?b%' from t where [user] = ? and action like 'x%'")
    assert sql == "select \"user\", 'a?b%%' from t where \"user\" = %s and action like 'x%%'"
    assert translate("insert or ignore into a (k) values (?)") == "insert into a (k) values (%s) on conflict do nothing"


def test_a_discussion_with_turns_round_trips(target: str) -> None:
    store = Store(target, lease=5)
    try:
        did = store.start_discussion(mode="single", command="ask", prompt="hi", options={"a": 1},
                                     conversation="c1", front_end="console", where=("w", "c", "u"))
        turn = TurnInfo(turn_id="t1", provider="prov", provider_label="Prov", model="m", persona_id="p")
        store.start_turn(did, 0, turn, "hi")
        store.finish_turn("t1", status="finished", text="hello", usage=TurnUsage(3, 5, 0, 0.25, False),
                          ttft_ms=10.0, latency_ms=20.0, finish_reason="stop")
        store.finish_discussion(did, "finished", 0.25)
        assert store.discussion(did)["status"] == "finished"
        assert store.discussion(did)["user"] == "u"
        [t] = store.turns(did)
        assert (t["text"], t["output_tokens"], t["finish_reason"]) == ("hello", 5, "stop")
        [row] = store.usage_summary()
        assert (row["turns"], row["failed"], row["output_tokens"], row["cost_usd"]) == (1, 0, 5, 0.25)
        [past] = store.history("c1")
        assert past.turns[0].text == "hello"
        assert store.has_conversation("c1") and not store.has_conversation("c2")
        store.set_meta("k", "v1")
        store.set_meta("k", "v2")
        assert store.get_meta("k") == "v2"
    finally:
        store.close()


def test_a_second_process_sees_the_first_ones_live_runs_and_leaves_them_alone(target: str) -> None:
    a = Store(target, lease=30)
    b = Store(target, lease=30)  # migrations already applied: a no-op
    try:
        did = a.start_discussion(mode="single", command="ask", prompt="x", options={}, conversation=None,
                                 front_end="slack")
        a.flush()
        assert a.instance_id in b.live_owners()
        assert b.mark_interrupted(["slack"]) == []  # owned by a live process
        assert b.discussion(did)["status"] == "running"
    finally:
        b.close()
        a.close()
    c = Store(target, lease=30)
    try:
        assert c.mark_interrupted(["slack"]) == [did]  # its owner left
        assert c.discussion(did)["status"] == "interrupted"
    finally:
        c.close()


async def test_a_budget_reservation_adds_to_the_running_totals(target: str) -> None:
    from core.governance.scope import Periods
    from core.governance.storage import GovernanceStore

    store = Store(target, lease=5)
    try:
        gov = GovernanceStore(store)
        periods = Periods.at()
        for _ in range(2):
            sid, over, _alerts = await gov.reserve(workspace="w", channel="c", user="u", caps=[], estimate=0.5,
                                                   free=[], periods=periods)
            assert sid and not over
        totals = store.peek("select usd from spend_totals where workspace = 'w' and scope = 'workspace'")
        assert sorted(r["usd"] for r in totals) == [1.0, 1.0]  # daily and monthly, both reservations
    finally:
        store.close()

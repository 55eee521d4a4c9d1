# ruff: noqa: F811  (the fixtures imported from test_governance are redefined as arguments)
"""Actions under answers and summaries (core.actions), against the fake LLM server, on a real
SQLite file and a real PostgreSQL database (``svc`` takes ``store_target``): what each does,
that state lives in the store, claims, and the leaderboard."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from core.actions import Action, Actions, Polls, under_answer, under_summary, wilson
from core.commands import parse
from core.config import Settings
from core.errors import ParleyError, UsageError
from core.events import DiscussionFinished, TurnFailed, TurnFinished
from core.governance import Refused
from core.governance.scope import Caller
from core.services import Services, build_services
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.test_governance import ADMIN, ALICE, WS, admin, llm, run, svc  # noqa: F401  (fixtures)

BOB = Caller(WS, "UBOB", "C1", private=True, front_end="slack")


async def discuss(svc: Services, line: str, caller: Caller = ALICE, conversation: str | None = None) -> list:
    name, _, rest = line.partition(" ")
    grant = await svc.governance.admit(parse(name, rest), caller, conversation=conversation)
    events = [ev async for ev in svc.engine.run(grant.request, grant=grant, front_end="slack",
                                                conversation=conversation)]
    svc.store.flush()
    return events


def test_action_ids_round_trip_and_fit_discords_limit() -> None:
    a = Action("again", "0123456789ab", "persona:riley-engstrom")
    assert Action.decode(a.encode()) == a and len(a.encode()) <= 100
    assert Action.decode("parley:vote:d1:t1") == Action("vote", "d1", "t1")
    assert Action.decode("other:vote:x") is None and Action.decode("parley:nuke:x") is None


async def test_what_goes_under_answers_and_summaries(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="A long answer", finish_reason="length")
    llm.scenarios["beta-1"] = Scenario(text="Short.")
    events = await discuss(svc, "compare providers:alpha,beta Price?")
    done = {e.turn.provider: e for e in events if isinstance(e, (TurnFinished, TurnFailed))}
    assert [a.kind for a in under_answer(done["alpha"], "parallel")] == ["up", "down", "again", "continue"]
    assert [a.kind for a in under_answer(done["beta"], "parallel")] == ["up", "down", "again"]
    summary = events[-1]
    assert isinstance(summary, DiscussionFinished) and summary.mode == "parallel"
    kinds = [a.kind for a in under_summary(summary)]
    assert kinds == ["vote", "vote", "consensus", "compare"]


async def test_feedback_and_votes_are_one_per_person_and_changeable(svc: Services, llm: FakeLLMServer) -> None:
    events = await discuss(svc, "compare providers:alpha,beta Price?")
    did = events[0].discussion_id
    a, b = (e.turn.turn_id for e in events if isinstance(e, TurnFinished))
    acts = Actions(svc)
    await acts.feedback(ALICE, a, +1)
    await acts.feedback(ALICE, a, -1)  # changed
    await acts.vote(ALICE, did, a)
    await acts.vote(ALICE, did, b)  # changed
    await acts.vote(BOB, did, b)
    db = svc.store.db
    assert db.execute("select value from feedback").fetchall() == [(-1,)]
    assert acts.tally(did) == [{"turn_id": b, "votes": 2}]
    with pytest.raises(UsageError):
        await acts.vote(ALICE, did, "not-a-turn")
    with pytest.raises(Refused):  # a button of another workspace's discussion
        await acts.vote(Caller("slack:T2", "UALICE", "C1"), did, a)
    await admin(svc, "policy deny commands:compare users:UBOB")
    with pytest.raises(Refused, match="compare"):  # who may not /compare here may not vote on one
        await acts.vote(BOB, did, a)
    assert acts.tally(did) == [{"turn_id": b, "votes": 2}]


async def test_a_click_is_claimed_once_across_replicas(svc: Services) -> None:
    action = Action("up", "t1")
    acts = Actions(svc)
    assert await acts.claim(action, ALICE)
    assert not await acts.claim(action, ALICE)  # a double click
    assert await acts.claim(action, BOB)  # someone else's click
    other = build_services(Settings())  # another replica on the same database
    try:
        assert not await Actions(other).claim(action, ALICE)
        assert await Actions(other).claim(Action("down", "t1"), ALICE)
    finally:
        await other.aclose()


async def test_ask_again_offers_only_what_policy_allows_and_runs_fresh(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="Alpha says Tuesday.")
    events = await discuss(svc, "ask provider:alpha When?", conversation="slack:T1:C1:1.0")
    tid = next(e for e in events if isinstance(e, TurnFinished)).turn.turn_id
    await admin(svc, "policy deny providers:gamma")
    acts = Actions(svc)
    choices = dict(acts.choices(ALICE, Action("again", tid)))
    assert "provider:beta" in choices and "provider:gamma" not in choices and "provider:alpha" not in choices
    assert any(c.startswith("persona:") for c in choices)
    req, conversation = acts.request(ALICE, Action("again", tid, "provider:beta"))
    assert conversation == "slack:T1:C1:1.0" and req.providers == ["beta"] and req.prompt == "When?"
    llm.scenarios["beta-1"] = Scenario(text="Beta says Thursday.")
    llm.requests.clear()
    grant = await svc.governance.admit(req, ALICE, conversation=conversation)
    [ev async for ev in svc.engine.run(grant.request, grant=grant, conversation=conversation)]
    sent = llm.requests[-1].body["messages"]
    assert "Alpha says Tuesday." not in str(sent)  # a second opinion, not shown the first
    with pytest.raises(Refused):  # a choice policy denies (a stale menu, a forged click) is refused at admission
        req, _ = acts.request(ALICE, Action("again", tid, "provider:gamma"))
        await svc.governance.admit(req, ALICE)


async def test_continue_goes_on_from_the_kept_text(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="The plan has three parts: first", finish_reason="length")
    events = await discuss(svc, "ask provider:alpha max_tokens:8 Plan?", conversation="c1")
    turn = next(e for e in events if isinstance(e, TurnFinished))
    assert turn.cut and svc.store.turn(turn.turn.turn_id)["finish_reason"] == "length"
    acts = Actions(svc)
    req, conversation = acts.request(ALICE, Action("continue", turn.turn.turn_id))
    llm.scenarios["alpha-1"] = Scenario(text=", second, third.")
    llm.requests.clear()
    grant = await svc.governance.admit(req, ALICE, conversation=conversation)
    [ev async for ev in svc.engine.run(grant.request, grant=grant, conversation=conversation)]
    messages = llm.requests[-1].body["messages"]
    kept = [m for m in messages if m["role"] == "assistant" and m["content"] == "The plan has three parts: first"]
    assert kept and messages[-1]["role"] == "user" and "Continue" in messages[-1]["content"]
    assert grant.request.max_tokens == 8  # the same settings as the answer it continues


async def test_consensus_on_these_and_compare_with(svc: Services, llm: FakeLLMServer) -> None:
    events = await discuss(svc, "compare providers:alpha,beta Price?")
    did = events[0].discussion_id
    acts = Actions(svc)
    req, _ = acts.request(ALICE, Action("consensus", did))
    assert req.command == "consensus" and req.providers == ["alpha", "beta"] and req.prompt == "Price?"
    assert "provider:gamma" in dict(acts.choices(ALICE, Action("compare", did)))
    req, _ = acts.request(ALICE, Action("compare", did, "provider:gamma"))
    assert req.command == "compare" and req.providers == ["alpha", "beta", "gamma"]


async def test_actions_say_why_they_cannot_run(svc: Services, llm: FakeLLMServer) -> None:
    events = await discuss(svc, "compare providers:alpha,beta Price?")
    did = events[0].discussion_id
    acts = Actions(svc)
    svc.store.set_health("alpha", "auth_failed", "Alpha rejected the key (401).", 4e9,
                         svc.registry.fingerprint(svc.registry.endpoint(svc.registry.get("alpha"))))
    svc.registry._marks = (0.0, {})
    with pytest.raises(ParleyError, match="401"):  # paused: said now, not in the thread
        acts.request(ALICE, Action("consensus", did))
    svc.store.clear_health("alpha")
    svc.registry._marks = (0.0, {})
    await admin(svc, "budget set scope:workspace daily:0.0000001")
    req, _ = acts.request(ALICE, Action("consensus", did))
    with pytest.raises(Refused, match="Over budget"):
        await svc.governance.admit(req, ALICE)
    await admin(svc, "policy retention days:1")
    svc.store.writer.call(lambda db: db.execute("update discussions set created_at = '2020-01-01T00:00:00+00:00'"))
    await svc.governance.sweep()
    with pytest.raises(UsageError, match="erased"):
        acts.request(ALICE, Action("consensus", did))


async def test_buttons_keep_working_after_a_restart(svc: Services, llm: FakeLLMServer, tmp_path: Path) -> None:
    events = await discuss(svc, "compare providers:alpha,beta Price?")
    did = events[0].discussion_id
    a = next(e for e in events if isinstance(e, TurnFinished)).turn.turn_id
    await svc.aclose()
    restarted = build_services(Settings())
    try:
        acts = Actions(restarted)
        await acts.vote(ALICE, did, a)
        req, _ = acts.request(ALICE, Action("consensus", did))
        assert req.providers == ["alpha", "beta"]
    finally:
        await restarted.aclose()


async def test_the_leaderboard_from_scripted_votes(svc: Services, llm: FakeLLMServer) -> None:
    """Three compares of alpha and beta; alpha wins two votes, beta one (two voters on the
    last); 👍 twice for alpha, 👎 once. Checked by hand below."""
    llm.default = Scenario(text="x", usage="top", prompt_tokens=1000, completion_tokens=0)  # $0.001 a turn
    acts = Actions(svc)
    votes = [("UALICE", "alpha"), ("UALICE", "alpha"), ("UALICE", "beta"), ("UBOB", "beta")]
    discussions = []
    for _ in range(3):
        events = await discuss(svc, "compare providers:alpha,beta Q?")
        turns = {e.turn.provider: e.turn.turn_id for e in events if isinstance(e, TurnFinished)}
        discussions.append((events[0].discussion_id, turns))
    for (who, provider), (did, turns) in zip(votes, [*discussions, discussions[2]], strict=True):
        await acts.vote(Caller(WS, who, "C1"), did, turns[provider])
    await acts.feedback(ALICE, discussions[0][1]["alpha"], +1)
    await acts.feedback(BOB, discussions[0][1]["alpha"], +1)
    await acts.feedback(ALICE, discussions[1][1]["alpha"], -1)
    rows = {r["provider"]: r for r in acts.leaderboard(WS)}
    # alpha: votes in d1 (win), d2 (win), d3 twice (2 losses) -> 2 wins, 2 losses
    assert (rows["alpha"]["wins"], rows["alpha"]["losses"], rows["alpha"]["votes"]) == (2, 2, 2)
    # beta: d1 loss, d2 loss, d3 two wins -> 2 wins, 2 losses
    assert (rows["beta"]["wins"], rows["beta"]["losses"]) == (2, 2)
    assert rows["alpha"]["win_rate"] == 0.5
    # Wilson 95% for 2/4: (0.5 + 0.9604/1... ) computed by hand: centre 0.5, half-width 0.4112 / 1.9604
    z = 1.96
    lo = (0.5 + z * z / 8 - z * math.sqrt(0.25 / 4 + z * z / 64)) / (1 + z * z / 4)
    assert rows["alpha"]["wilson_low"] == pytest.approx(round(lo, 4)) == pytest.approx(0.15, abs=0.01)
    assert rows["alpha"]["thumbs_up_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows["beta"]["thumbs_up_share"] is None
    # cost per win: alpha's three answers cost $0.001 each over 2 wins
    assert rows["alpha"]["cost_per_win_usd"] == pytest.approx(0.0015)
    assert wilson(0, 0) == (0.0, 1.0)
    doc = (await admin(svc, "leaderboard", ALICE)).doc
    assert "50% wins" in str(doc)


async def test_poll_votes_map_to_turns(svc: Services, llm: FakeLLMServer) -> None:
    events = await discuss(svc, "compare providers:alpha,beta Price?")
    did = events[0].discussion_id
    a, b = (e.turn.turn_id for e in events if isinstance(e, TurnFinished))
    polls = Polls(Actions(svc))
    polls.record("m1", did, {1: a, 2: b})
    await polls.vote(ALICE, "m1", 2, added=True)
    assert Actions(svc).tally(did) == [{"turn_id": b, "votes": 1}]
    await polls.vote(ALICE, "m1", 2, added=False)
    assert Actions(svc).tally(did) == []
    assert await polls.vote(ALICE, "not-ours", 1, added=True) is None


async def test_a_released_claim_can_be_taken_again(svc: Services) -> None:
    action = Action("vote", "d1", "t1")
    acts = Actions(svc)
    assert await acts.claim(action, ALICE)
    await acts.release(action, ALICE)  # the vote was then refused
    assert await acts.claim(action, ALICE)
    assert not svc.store.has_conversation("nowhere")


async def test_changing_a_vote_or_a_thumb_back_is_a_change_not_a_double_click(svc: Services) -> None:
    acts = Actions(svc)
    assert await acts.claim(Action("up", "t1"), ALICE)
    assert await acts.claim(Action("down", "t1"), ALICE)  # changed her mind
    assert await acts.claim(Action("up", "t1"), ALICE)  # and back
    assert not await acts.claim(Action("up", "t1"), ALICE)  # the same again at once: a double click
    assert await acts.claim(Action("vote", "d1", "a"), ALICE)
    assert await acts.claim(Action("vote", "d1", "b"), ALICE)
    assert await acts.claim(Action("vote", "d1", "a"), ALICE)
    assert not await acts.claim(Action("vote", "d1", "a"), ALICE)

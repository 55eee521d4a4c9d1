"""Consensus ballots with any model: loose formats, JSON, a reminder then an abstention,
the moderator's fallback, and the depth and method options."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import ballot
from core.commands import parse
from core.config import Settings
from core.consensus import Ballot, borda
from core.events import DiscussionFinished, Event, StageStarted, TurnFailed, TurnFinished, TurnStarted
from core.present import plain, summary_doc
from core.services import Services, build_services
from tests.fakes import vendor_errors
from tests.fakes.llm_server import FakeLLMServer, Scenario

AB = ["A", "B"]
ABC = ["A", "B", "C"]


# --- reading ballots -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "letters", "order"),
    [
        ("critique...\nRANKING: B > A\nREVISED ANSWER: x", AB, ["B", "A"]),
        ("Ranking: B, A", AB, ["B", "A"]),
        ("**Ranking:** **C** > A > B", ABC, ["C", "A", "B"]),
        ("## Ranking\n1. Answer C\n2. Answer A\n3. Answer B\n\nRevised answer: y", ABC, ["C", "A", "B"]),
        ("Final ranking (best first):\n1) B\n2) C\n3) A", ABC, ["B", "C", "A"]),
        ("RANKING: A > B > C\nthen later\nRANKING: C > B > A", ABC, ["C", "B", "A"]),  # the last one
        ("I think C > A > B\n", ABC, ["C", "A", "B"]),
        ('{"critique": "ok", "ranking": ["B", "A"], "revised_answer": "z"}', AB, ["B", "A"]),
        ('```json\n{"ranking": "B > A", "revised_answer": "z"}\n```', AB, ["B", "A"]),
        ("RANKING: B > B > Z", AB, ["B", "A"]),  # repeat and unknown dropped; the one missing goes last
        ("RANKING: C > Q", ABC, ["C"]),  # two missing: only what was ranked
        ("RANKING: X > Y", AB, []),
        ("no ranking here at all", AB, []),
    ],
)
def test_read_ballot_formats(text: str, letters: list[str], order: list[str]) -> None:
    assert ballot.read(text, letters).order == order


def test_read_revision_variants() -> None:
    assert ballot.read("RANKING: A > B\nREVISED ANSWER: ship it", AB).revision == "ship it"
    assert ballot.read("**Revised answer**\nship later", AB).revision == "ship later"
    assert ballot.read('{"ranking": ["A","B"], "revised_answer": "json one"}', AB).revision == "json one"
    assert ballot.read("nothing", AB).revision is None


def test_partial_ballot_scores_only_what_it_ranks() -> None:
    labels = {"a": "A", "b": "B", "c": "C"}
    st_ = borda([Ballot("x", ["c"], 3), Ballot("y", ["a", "b", "c"], 3)], labels)
    scores = {s.key: s.score for s in st_}
    assert scores == {"a": 3, "b": 2, "c": 4}


@given(st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_json_prose_streams_the_same_text_for_any_split(cuts: list[int]) -> None:
    obj = {"critique": 'A is "good"\nB \\ is weak é 😀', "ranking": ["B", "A"], "revised_answer": "Ship\tit."}
    raw = json.dumps(obj, ensure_ascii=True)
    view, out, i = ballot.JsonProse(), [], 0
    for n in cuts * 50:
        if i >= len(raw):
            break
        out.append(view.feed(raw[i:i + n]))
        i += n
    out.append(view.feed(raw[i:]))
    shown = "".join(out)
    assert shown == ('**Critique**\nA is "good"\nB \\ is weak é 😀\n\n**Ranking:** B > A\n\n'
                     "**Revised answer**\nShip\tit.")
    assert view.text() == raw and ballot.read(view.text(), AB).order == ["B", "A"]


def test_json_prose_passes_free_text_through() -> None:
    view = ballot.JsonProse()
    assert view.feed("  ") == "" and view.feed("RANKING: A") == "  RANKING: A" and view.mode == "text"


# --- through the fake server -----------------------------------------------------------------
PROVIDERS = {"alpha": "alpha-1", "beta": "beta-1", "gamma": "gamma-1", "omega": "omega-1"}


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def svc(llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    rows = []
    for pid, model in PROVIDERS.items():
        quirks = 'quirks = "openai_chat"\n' if pid == "omega" else ""  # json_schema structured output
        rows.append(
            f'[providers.{pid}]\nlabel = "{pid.title()} AI"\nwire = "openai_chat"\nbase_url = "{llm.base_url}"\n'
            f'key_env = "{pid.upper()}_API_KEY"\ndefault_model = "{model}"\n{quirks}'
            f'[providers.{pid}.models."{model}"]\ninput = 1.0\noutput = 2.0\ncontext = 8000\n'
            + (f'[providers.{pid}.models."{pid}-2"]\ninput = 1.0\noutput = 2.0\n' if pid == "alpha" else "")
        )
        monkeypatch.setenv(f"{pid.upper()}_API_KEY", f"test-key-{pid}-0123456789")
    cfg = tmp_path / "parley.toml"
    cfg.write_text("\n".join(rows))
    monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
    services = build_services(Settings())
    try:
        yield services
    finally:
        await services.aclose()


async def consensus(svc: Services, text: str) -> list[Event]:
    return [ev async for ev in svc.engine.run(parse("consensus", text))]


def user(r: object) -> str:
    return str(r.body["messages"][-1]["content"])  # type: ignore[attr-defined]


def reviews(llm: FakeLLMServer, model: str) -> list[object]:
    return [r for r in llm.requests_for(model) if "anonymised as" in user(r)]


async def test_loose_formats_and_json_all_vote(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="Alpha thinks so.\nRanking: B, A\nRevised answer: alpha revised")
    llm.scenarios["beta-1"] = Scenario(text="## Ranking\n1. Answer A\n2. Answer B\n\n**Revised answer**\nbeta revised")
    llm.scenarios["omega-1"] = Scenario(
        text=json.dumps({"critique": "fine", "ranking": ["A", "B"], "revised_answer": "omega revised"}))
    events = await consensus(svc, "providers:alpha,beta,omega Ship on Friday?")
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.status == "finished"
    assert (fin.reviewers, fin.votes) == (3, 3)
    assert fin.ranking and sum(r.votes for r in fin.ranking) == 6
    # The structured reviewer was asked for the ballot schema; the others were not.
    body = reviews(llm, "omega-1")[0].body  # type: ignore[attr-defined]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["ranking"]["items"]["enum"] == AB
    assert "JSON object" in user(reviews(llm, "omega-1")[0])
    assert "response_format" not in reviews(llm, "alpha-1")[0].body  # type: ignore[attr-defined]
    # The JSON review is shown as prose; its revision reached the moderator.
    omega_review = [e for e in events if isinstance(e, TurnFinished) and e.turn.stage == "review"
                    and e.turn.provider == "omega"][0]
    assert omega_review.text.startswith("**Critique**\nfine") and "**Ranking:** A > B" in omega_review.text
    moderator = user(llm.requests[-1])
    assert "omega revised" in moderator and "alpha revised" in moderator and "beta revised" in moderator
    assert "3 of 3 reviewers voted" in plain(summary_doc(fin))


async def test_reviewer_that_never_complies_gets_one_reminder_then_abstains(
    svc: Services, llm: FakeLLMServer
) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="I like both answers. RANKING: B > A")
    llm.scenarios["beta-1"] = Scenario(text="Both are fine, really.")
    llm.scenarios["gamma-1"] = Scenario(text="RANKING: A > B")
    events = await consensus(svc, "providers:alpha,beta,gamma Q?")
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished)
    assert (fin.reviewers, fin.votes) == (3, 2)
    beta_reviews = [r for r in llm.requests_for("beta-1") if "anonymised as" in user(r)
                    or "usable ranking" in user(r)]
    assert len(beta_reviews) == 2 and "RANKING: A > B" in user(beta_reviews[1])
    assert beta_reviews[1].body["messages"][-2]["content"] == "Both are fine, really."  # type: ignore[attr-defined]
    notes = [e.note for e in events if isinstance(e, TurnStarted) and e.note]
    assert any("asked once more" in n for n in notes)
    assert sum(r.votes for r in fin.ranking or []) == 4
    assert "2 of 3 reviewers voted" in plain(summary_doc(fin))


async def test_nobody_votes_no_ranking_shown(svc: Services, llm: FakeLLMServer) -> None:
    for model in ("alpha-1", "beta-1"):
        llm.scenarios[model] = Scenario(text="An opinion without any order.")
    events = await consensus(svc, "providers:alpha,beta Q?")
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished)
    assert fin.ranking is None and (fin.reviewers, fin.votes) == (2, 0)
    text = plain(summary_doc(fin))
    assert "Peer ranking" not in text and "0 of 2 voted" in text
    assert "no reviewer gave a usable ranking" in user(llm.requests[-1])
    assert [e for e in events if isinstance(e, TurnFinished) and e.turn.stage == "synthesis"]


async def test_moderator_failure_falls_back_once_to_the_best_ranked_other_provider(
    svc: Services, llm: FakeLLMServer
) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="RANKING: A > B")
    llm.scenarios["beta-1"] = Scenario(text="RANKING: A > B")
    llm.scenarios["gamma-1"] = Scenario(text="RANKING: A > B")
    status, body, headers = vendor_errors.openai_insufficient_quota()
    llm.scenarios["omega-1"] = Scenario(http_error=(status, body, headers))
    events = await consensus(svc, "providers:alpha,beta,gamma moderator:omega Q?")
    synth = [e for e in events if isinstance(e, (TurnFinished, TurnFailed)) and e.turn.stage == "synthesis"]
    assert [type(e).__name__ for e in synth] == ["TurnFailed", "TurnFinished"]
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.ranking
    assert synth[1].turn.provider == fin.ranking[0].panelist.split("@")[1].split("/")[0]
    notes = [e.note for e in events if isinstance(e, TurnStarted) and e.note and "retried once" in e.note]
    assert len(notes) == 1 and "Omega AI" in notes[0]
    answers = [e for e in events if isinstance(e, TurnFinished) and e.turn.stage == "answer"]
    assert len(answers) == 3  # the partial results stand


async def test_moderator_failure_without_another_provider_keeps_the_panel(
    svc: Services, llm: FakeLLMServer
) -> None:
    status, body, headers = vendor_errors.openai_insufficient_quota()
    llm.scenarios["alpha-1"] = Scenario(text="An answer. RANKING: A")
    llm.scenarios["alpha-2"] = Scenario(http_error=(status, body, headers))
    events = await consensus(svc, "personas:riley,morgan providers:alpha moderator:alpha/alpha-2 Q?")
    synth = [e for e in events if isinstance(e, (TurnFinished, TurnFailed)) and e.turn.stage == "synthesis"]
    assert [type(e).__name__ for e in synth] == ["TurnFailed"]  # no other provider to retry on
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.status == "partial"
    assert fin.message and "moderator failed" in fin.message and "ranking is shown" in fin.message
    assert fin.ranking and (fin.reviewers, fin.votes) == (2, 2)
    assert len([e for e in events if isinstance(e, TurnFinished) and e.turn.stage in ("answer", "review")]) == 4


@pytest.mark.parametrize(("depth", "stages"), [
    ("answers", ["answer"]),
    ("ranked", ["answer", "review"]),
    ("full", ["answer", "review", "synthesis"]),
])
async def test_depth(svc: Services, llm: FakeLLMServer, depth: str, stages: list[str]) -> None:
    for model in ("alpha-1", "beta-1"):
        llm.scenarios[model] = Scenario(text="RANKING: A")
    events = await consensus(svc, f"providers:alpha,beta depth:{depth} Q?")
    assert [e.stage for e in events if isinstance(e, StageStarted)] == stages
    ran = {e.turn.stage for e in events if isinstance(e, TurnFinished)}
    assert ran == set(stages)
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.status == "finished"
    assert bool(fin.ranking) == (depth != "answers")
    assert len(events[0].stages) == len(stages)  # type: ignore[union-attr]


async def test_debate_devils_advocate_before_synthesis(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="Alpha answer. RANKING: A > B\nREVISED ANSWER: alpha final")
    llm.scenarios["beta-1"] = Scenario(text="Beta answer. RANKING: A > B\nREVISED ANSWER: beta final")
    llm.scenarios["gamma-1"] = Scenario(text="Gamma answer. RANKING: A > B\nREVISED ANSWER: gamma final")
    events = await consensus(svc, "providers:alpha,beta,gamma method:debate Q?")
    assert [e.stage for e in events if isinstance(e, StageStarted)] == ["answer", "review", "debate", "synthesis"]
    debate = [e for e in events if isinstance(e, TurnFinished) and e.turn.stage == "debate"]
    assert len(debate) == 1
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.ranking
    leader = fin.ranking[0].panelist
    assert not leader.endswith(f"@{debate[0].turn.provider}/{debate[0].turn.provider}-1")  # not the leader itself
    devil_prompt = [r for r in llm.requests if "Act as the devil's advocate" in user(r)]
    assert len(devil_prompt) == 1
    moderator = user(llm.requests[-1])
    assert "devil's advocate argued" in moderator and debate[0].text.strip()[:20] in moderator


async def test_a_panelist_that_stalls_is_cut_after_the_others_and_left_out(
    llm: FakeLLMServer, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc.settings.straggler_timeout = 0.5
    llm.scenarios["alpha-1"] = Scenario(text="Alpha. RANKING: A")
    llm.scenarios["beta-1"] = Scenario(text="Beta. RANKING: A")
    llm.scenarios["gamma-1"] = Scenario(text="Gamma starts and then", stall_after_chunks=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    events = await consensus(svc, "providers:alpha,beta,gamma Q?")
    took = loop.time() - t0
    assert took < svc.settings.idle_timeout  # not the turn's own idle deadline (60 s)
    cut = [e for e in events if isinstance(e, TurnFailed) and e.turn.provider == "gamma"]
    assert len(cut) == 1 and cut[0].error.kind == "timeout" and cut[0].text == "Gamma starts and then"[:8]
    assert "PARLEY_STRAGGLER_TIMEOUT" in cut[0].error.message and "left out" in cut[0].error.message
    assert not reviews(llm, "gamma-1")  # left out of the reviews
    for model in ("alpha-1", "beta-1"):
        assert "Gamma starts" not in user(reviews(llm, model)[0])
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.status == "partial" and (fin.reviewers, fin.votes) == (2, 2)


async def test_a_stage_cap_ends_a_stage_nobody_finishes(llm: FakeLLMServer, svc: Services) -> None:
    svc.settings.stage_timeout = 0.5
    llm.scenarios["alpha-1"] = Scenario(text="Alpha. RANKING: A")
    llm.scenarios["beta-1"] = Scenario(keepalive_forever=True)
    events = await consensus(svc, "providers:alpha,beta Q?")
    cut = [e for e in events if isinstance(e, TurnFailed)]
    assert len(cut) == 1 and "PARLEY_STAGE_TIMEOUT" in cut[0].error.message
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.status == "failed" and "at least two answers" in (fin.message or "")


async def test_a_structured_review_cut_before_its_ranking_is_reminded_in_json(
    svc: Services, llm: FakeLLMServer
) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="RANKING: A")
    llm.scenarios["omega-1"] = Scenario(text='{"critique": "A long critique that the output limit cut')
    events = await consensus(svc, "providers:alpha,omega Q?")
    omega = [r for r in llm.requests_for("omega-1") if "usable ranking" in user(r)]
    assert len(omega) == 1
    fmt = omega[0].body["response_format"]  # type: ignore[attr-defined]
    assert fmt["type"] == "json_schema" and list(fmt["json_schema"]["schema"]["properties"]) == ["ranking"]
    assert '{"ranking": ["A"]}' in user(omega[0])
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and (fin.reviewers, fin.votes) == (2, 1)

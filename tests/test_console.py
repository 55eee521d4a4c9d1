"""The console front-end over the real engine and renderer, against the fake LLM server."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from bots.console.app import ConsoleApp, repl
from core.config import Settings
from core.events import DiscussionFinished
from core.services import Services, build_services
from tests.fakes import vendor_errors as ve
from tests.fakes.llm_server import FakeLLMServer, Scenario


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Services, FakeLLMServer]]:
    async with FakeLLMServer() as llm:
        cfg = tmp_path / "p.toml"
        cfg.write_text(
            "".join(
                f'[providers.{p}]\nlabel = "{p}"\nbase_url = "{llm.base_url}"\nkey_env = "K_{p.upper()}"\n'
                f'default_model = "{p}-m"\n[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 1.0\n'
                for p in ("one", "two", "three")
            )
        )
        monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
        for p in ("one", "two", "three"):
            monkeypatch.setenv(f"K_{p.upper()}", "k-0123456789")
        s = build_services(Settings())
        try:
            yield s, llm
        finally:
            await s.aclose()


def console() -> Console:
    return Console(file=io.StringIO(), width=150, height=40, force_terminal=False, record=True)


async def test_compare_side_by_side_and_summary(setup) -> None:
    services, llm = setup
    llm.scenarios["one-m"] = Scenario(text="First provider says launch Tuesday.")
    llm.scenarios["two-m"] = Scenario(text="Second provider says launch Thursday.")
    llm.scenarios["three-m"] = Scenario(http_error=ve.openai_insufficient_quota())
    c = console()
    app = ConsoleApp(services, c)
    result = await app.handle("/compare providers:one,two,three personas:riley When to launch?")
    out = c.export_text()
    assert isinstance(result, DiscussionFinished) and result.status == "partial"
    assert "launch Tuesday" in out and "launch Thursday" in out
    assert "Riley Engstrom" in out and "quota" in out.lower()
    # side by side: both answers on the same terminal line range
    line = next(ln for ln in out.splitlines() if "First provider" in ln)
    assert "Second provider" in line
    assert "Total" in out


async def test_follow_up_keeps_context_and_new_resets(setup) -> None:
    services, llm = setup
    llm.scenarios["one-m"] = Scenario(echo=True)
    app = ConsoleApp(services, console())
    await app.handle("provider:one What is our launch date?")
    await app.handle("provider:one And who owns it?")
    msgs = llm.requests_for("one-m")[-1].body["messages"]
    assert any(m["content"] == "What is our launch date?" for m in msgs)
    await app.handle("/new")
    await app.handle("provider:one Fresh start")
    assert len(llm.requests_for("one-m")[-1].body["messages"]) == 2


async def test_consensus_shows_stages(setup) -> None:
    services, llm = setup
    llm.default = Scenario(echo=True)  # each turn echoes its prompt: its text says which stage it answered
    c = console()
    result = await ConsoleApp(services, c).handle("/consensus providers:one,two,three Should we?")
    out = c.export_text()
    assert isinstance(result, DiscussionFinished) and result.status == "finished"
    titles = ["Stage 1 · Independent answers", "Stage 2 · Anonymous review, round 1",
              "Stage 3 · Moderator synthesis", "─ summary ─"]
    at = [out.find(t) for t in titles]
    assert -1 not in at and at == sorted(at), at
    answers, reviews, synthesis = (out[a:b] for a, b in zip(at[:-1], at[1:], strict=True))
    summary = out[at[-1]:]
    # each stage's turns are shown under that stage's title, one panel per panelist
    for stage in (answers, reviews):
        assert all(f"╭─ {p}/{p}-m ─" in stage for p in ("one", "two", "three"))
    assert answers.count("ECHO: Should we?") == 3 and "anonymised as" not in answers
    assert reviews.count("ECHO: The panel was asked") == 3 and reviews.count("anonymised as A, B") == 3
    assert "Final positions" not in reviews
    assert "╭─ ⚖️ Moderator · one/one-m ─" in synthesis
    assert synthesis.count("ECHO: The panel was asked") == 1 and "Final positions" in synthesis
    assert "7 turns (0 failed)" in summary and "Peer ranking" in summary
    for p in ("one", "two", "three"):
        assert f"✅ {p}/{p}-m:" in summary and f"✅ {p}/{p}-m · review 1:" in summary
    assert "✅ ⚖️ Moderator · one/one-m · synthesis:" in summary


async def test_bad_input_and_info_commands(setup) -> None:
    services, _ = setup
    c = console()
    await repl(services, c, ["/compair hi", "provider:nope hi", "/providers", "/personas", "/usage", "/help"])
    out = c.export_text()
    assert "Did you mean" in out
    assert "Unknown provider 'nope'" in out
    assert "Providers" in out and "Morgan Castellano" in out and "Usage" in out
    assert "/new" in out
    lines = out.splitlines()  # one persona per line, not a reflowed paragraph
    for name in ("Riley Engstrom", "Morgan Castellano", "Alex Vexler"):
        line = next(ln for ln in lines if name in ln)
        assert line.lstrip().startswith("•") and "*" not in line

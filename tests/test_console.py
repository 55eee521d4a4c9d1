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
    llm.default = Scenario(text="Answer. RANKING: A > B\nREVISED ANSWER: revised view")
    c = console()
    result = await ConsoleApp(services, c).handle("/consensus providers:one,two,three Should we?")
    out = c.export_text()
    assert isinstance(result, DiscussionFinished) and result.status == "finished"
    for title in ("Stage 1", "Stage 2", "Stage 3"):
        assert title in out
    assert "Peer ranking" in out


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

"""The console front-end over the real engine and renderer, against the fake LLM server."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bots.console.app import ConsoleApp, repl
from bots.console.view import ConsoleSink, ConsoleView
from core.config import Settings
from core.events import DiscussionFinished, TurnInfo
from core.services import Services, build_services
from core.sink import Frame
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


# --- the live view fits the terminal -------------------------------------------------------------

STORY = "\n\n".join(
    " ".join(f"paragraph {p} sentence {s} has several words that wrap inside a narrow column." for s in range(6))
    for p in range(4)
) + " THE END."


def _consensus_view(latest: str) -> ConsoleView:
    """A consensus mid-way through stage 3: long finished answers and reviews, a long synthesis streaming."""
    view = ConsoleView(header="consensus: one, two, three")
    view.stages = [("answer", 0, "Stage 1 · Independent answers"), ("review", 1, "Stage 2 · Anonymous review, round 1"),
                   ("synthesis", 0, "Stage 3 · Moderator synthesis")]
    ref = 0
    for stage, rnd in (("answer", 0), ("review", 1)):
        for p in ("one", "two", "three"):
            turn = TurnInfo(f"{stage}-{p}", p, p, f"{p}-m", stage=stage, round=rnd)
            view.frames[ref] = Frame(turn, STORY, STORY, 1, "done")
            ref += 1
    failed = TurnInfo("review-four", "four", "four", "four-m", stage="review", round=1)
    view.frames[ref] = Frame(failed, STORY, STORY, 1, "failed", "four ran out of quota. Top up.")
    mod = TurnInfo("synth", "one", "one", "one-m", persona_name="Moderator", stage="synthesis")
    text = STORY + "\n\n" + latest
    view.frames[ref + 1] = Frame(mod, text, text, 1, "streaming")
    return view


def _lines(c: Console, renderable: object) -> list[str]:
    return ["".join(seg.text for seg in line) for line in c.render_lines(renderable, c.options)]


@pytest.mark.parametrize("size", [(150, 40), (80, 24), (80, 14), (60, 8)])
def test_live_view_fits_the_terminal_and_shows_the_streaming_stage(size: tuple[int, int]) -> None:
    width, height = size
    c = Console(file=io.StringIO(), width=width, height=height, force_terminal=True)
    lines = _lines(c, _consensus_view("the newest words").render())
    shown = "\n".join(lines)
    assert len(lines) <= height, shown
    assert "Moderator" in shown and "the newest words" in shown, shown
    assert "Stage 3 · Moderator synthesis" in shown
    if height >= 14:  # earlier stages keep their titles (folded to one line when short of room)
        assert "Stage 1 · Independent answers" in shown and "Stage 2 · Anonymous review" in shown
    if height >= 40:  # room for a few rows of every panel
        assert shown.count("THE END.") >= 7, shown  # each panel shows its last rows
        assert "ran out of quota" in shown  # a failure stays visible while its text is trimmed


def test_live_view_shows_everything_when_it_fits() -> None:
    c = Console(file=io.StringIO(), width=150, height=60, force_terminal=True)
    view = ConsoleView(header="parallel: one, two")
    for i, p in enumerate(("one", "two")):
        view.frames[i] = Frame(TurnInfo(p, p, p, f"{p}-m"), f"line 1 of {p}\nline 2 of {p}\nline 3 of {p}",
                               "", 1, "streaming")
    shown = "\n".join(_lines(c, view.render()))
    assert all(f"line {n} of {p}" in shown for n in (1, 2, 3) for p in ("one", "two"))


async def test_failure_is_printed_once(setup) -> None:
    services, llm = setup
    llm.scenarios["one-m"] = Scenario(http_error=ve.openai_insufficient_quota())
    llm.scenarios["two-m"] = Scenario(text="Fine here.")
    c = console()
    await repl(services, c, ["provider:one hi", "/compare providers:one,two hi"])
    out = c.export_text()
    assert out.count("exceeded your current quota") == 2, out  # once per discussion
    assert out.count("quota_exhausted") == 2  # the summary still says which turn failed


# --- the interactive prompt: exit words, Ctrl-C ------------------------------------------------------


class Keyboard:
    """sys.stdin as a pipe the test types into."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def __call__(self, text: str) -> None:
        os.write(self.w, text.encode())

    def close(self) -> None:  # Ctrl-D on an empty line: end of input
        if self.w >= 0:
            os.close(self.w)
            self.w = -1


@pytest.fixture
def stdin_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Keyboard]:
    """Typed input on sys.stdin; a SIGINT outside the REPL's own handler is harmless."""
    keys = Keyboard()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(keys.r, "rb", buffering=0)))
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield keys
    finally:
        keys.close()
        signal.signal(signal.SIGINT, previous)


async def _until(check: Callable[[], object], within: float = 10.0) -> None:
    """Poll ``check`` (rich's recorded output has nothing to wait on) for about ``within`` seconds."""
    for _ in range(int(within / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"still not true after {within}s")


def _prompts(c: Console) -> int:
    return c.export_text(clear=False).count("parley>")


async def test_ctrl_c_at_the_idle_prompt_exits_at_once(setup, stdin_pipe) -> None:
    services, _ = setup
    c = console()
    threads = threading.active_count()
    task = asyncio.create_task(repl(services, c))
    try:
        await _until(lambda: _prompts(c) == 1)
        signal.raise_signal(signal.SIGINT)  # nothing typed: no line will ever come
        async with asyncio.timeout(5):
            assert await task == 0
    finally:
        task.cancel()
    assert threading.active_count() == threads  # no reader thread left blocked on stdin


async def test_exit_words_and_help(setup, stdin_pipe) -> None:
    services, _ = setup
    for word in ("exit", "quit", "/exit", "/quit"):
        c = console()
        stdin_pipe(f"/help\n{word}\n")
        async with asyncio.timeout(10):
            assert await repl(services, c) == 0
        out = c.export_text()
        assert "/exit" in out and "Ctrl-C" in out


async def test_end_of_input_exits(setup, stdin_pipe) -> None:
    services, _ = setup
    c = console()
    stdin_pipe("/new\n")
    stdin_pipe.close()
    async with asyncio.timeout(10):
        assert await repl(services, c) == 0
    assert "New conversation" in c.export_text()


async def test_ctrl_c_during_an_answer_stops_it_and_returns_to_the_prompt(
    setup, stdin_pipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    services, llm = setup
    llm.scenarios["one-m"] = Scenario(text="Once upon a time there was a very long story.", stall_after_chunks=3)
    shown = asyncio.Event()
    edit = ConsoleSink.edit

    async def spy(self: ConsoleSink, ref: int, frame: Frame) -> None:
        await edit(self, ref, frame)
        if frame.text:
            shown.set()

    monkeypatch.setattr(ConsoleSink, "edit", spy)
    c = console()
    task = asyncio.create_task(repl(services, c))
    try:
        stdin_pipe("provider:one Tell me a story\n")
        async with asyncio.timeout(10):
            await shown.wait()
        signal.raise_signal(signal.SIGINT)
        await _until(lambda: _prompts(c) == 2)  # back at the prompt, the answer abandoned
        stdin_pipe("exit\n")
        async with asyncio.timeout(5):
            assert await task == 0
    finally:
        task.cancel()
    out = c.export_text()
    assert "Once upon a " in out and "interrupted" in out.lower()
    rows = list(services.store.db.query("select id, status from discussions"))
    assert [r["status"] for r in rows] == ["interrupted"]
    turns = services.store.turns(rows[0]["id"])
    assert [t["text"] for t in turns] == ["Once upon a "] and turns[0]["status"] == "failed"

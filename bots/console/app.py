"""``parley console``: the terminal front-end over the same core.

Type the same slash commands as in Slack or Discord (``/ask``, ``/compare``,
``/consensus``, ``/personas``, ``/providers``, ``/usage``, ``/help``); a line
without a command is an ``/ask``. Every line continues the same conversation,
so a follow-up has the earlier answers as context; ``/new`` starts afresh.

Turns stream live through the shared :class:`core.render.Renderer` into a
rich ``Live`` view (:mod:`bots.console.view`). Ctrl-C while an answer is being
written stops that discussion (what was written stays on screen and in the store,
the discussion is marked interrupted) and returns to the prompt; Ctrl-C at the
prompt, Ctrl-D, ``exit`` or ``quit`` leave (:mod:`bots.console.prompt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Sequence

from rich.console import Console
from rich.live import Live

from bots.console.prompt import LineReader, on_ctrl_c
from bots.console.view import ConsoleSink, ConsoleView, doc_to_rich
from core import info
from core.commands import parse_line
from core.errors import ParleyError
from core.events import DiscussionFinished, Event
from core.governance.scope import local_caller
from core.render import Renderer
from core.services import Services

CONTROL = {
    "/new": "start a new conversation",
    "/exit": "leave (or exit, quit, /quit, Ctrl-D; Ctrl-C at the prompt)",
    "Ctrl-C": "stop the answer being written and return to the prompt",
}
EXIT_WORDS = frozenset({"/exit", "/quit", "exit", "quit"})
PROMPT = "[bold green]parley>[/bold green] "


class ConsoleApp:
    def __init__(self, services: Services, console: Console) -> None:
        self.services = services
        self.console = console
        self.conversation = f"console:{uuid.uuid4().hex[:8]}"
        self.caller = local_caller("console")
        self._running: asyncio.Task[DiscussionFinished | None] | None = None

    def banner(self) -> None:
        reg = self.services.registry
        default = reg.default_provider()
        spec = reg.get(default)
        self.console.print(
            f"[bold]Parley[/bold] console — default provider [cyan]{default}[/cyan] "
            f"({spec.label}, {spec.default_model}). Type a question, or /help."
        )
        if spec.offline_default:
            self.console.print(
                "[dim]No provider keys are configured, so answers come from the small local model. "
                "Add keys to .env (see .env.example) for the real panel.[/dim]"
            )

    async def handle(self, line: str) -> DiscussionFinished | None:
        """Run one line; returns the discussion result (None for info/control lines)."""
        line = line.strip()
        if not line:
            return None
        if line == "/new":
            self.conversation = f"console:{uuid.uuid4().hex[:8]}"
            self.console.print("[dim]New conversation.[/dim]")
            return None
        try:
            req = parse_line(line, max_prompt_chars=self.services.settings.max_prompt_chars,
                             max_turns=self.services.settings.max_turns)
            if req.mode is None:
                self.console.print(doc_to_rich((await info.answer(self.services, req, caller=self.caller)).doc))
                if req.command == "help":
                    for k, v in CONTROL.items():
                        self.console.print(f"  {k} — {v}")
                return None
            grant = await self.services.governance.admit(req, self.caller, conversation=self.conversation)
            for alert in grant.alerts:
                self.console.print(f"[yellow]{alert}[/yellow]")
            events = self.services.engine.run(
                grant.request, conversation=self.conversation, front_end="console", grant=grant
            )
            return await self.render(events)
        except ParleyError as e:  # UsageError included
            self.console.print(f"[red]{e.message}[/red]")
        return None

    async def run(self, line: str) -> DiscussionFinished | None:
        """:meth:`handle` as a task that :meth:`interrupt` (Ctrl-C) can stop."""
        task = asyncio.ensure_future(self.handle(line))
        self._running = task
        try:
            await asyncio.wait([task])
        finally:
            self._running = None
            task.cancel()  # (only if this REPL itself is being cancelled)
        return None if task.cancelled() else task.result()

    def interrupt(self) -> bool:
        """Ctrl-C: stop the line being run; False when nothing is running."""
        if self._running is None or self._running.done():
            return False
        self._running.cancel()
        return True

    async def render(self, events: AsyncIterator[Event]) -> DiscussionFinished | None:
        view = ConsoleView()
        renderer = Renderer(ConsoleSink(view))
        try:
            with Live(
                console=self.console,
                get_renderable=view.render,  # fitted to the terminal's size at each refresh
                refresh_per_second=12,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
                vertical_overflow="crop",
            ):
                result = await renderer.consume(events)
        except asyncio.CancelledError:
            self.console.print(view.render(full=True))
            self.console.print(
                "[yellow]Stopped. What was written is kept; the discussion is marked interrupted.[/yellow]"
            )
            raise
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:  # the engine records the discussion as stopped
                with contextlib.suppress(Exception):
                    await aclose()
        self.console.print(view.render(full=True))
        return result


async def repl(services: Services, console: Console, lines: Sequence[str] | None = None) -> int:
    app = ConsoleApp(services, console)
    interrupted = services.store.mark_interrupted(["console", "cli"])
    if interrupted:
        console.print(f"[dim]{len(interrupted)} earlier discussion(s) were interrupted by a restart.[/dim]")
    app.banner()
    if lines is not None:
        for line in lines:
            if line.strip().lower() in EXIT_WORDS:
                break
            await app.handle(line)
        return 0
    reader = LineReader(sys.stdin.fileno())

    def ctrl_c() -> None:
        if not app.interrupt():  # nothing running: leave
            reader.interrupt()

    with on_ctrl_c(ctrl_c):
        while True:
            console.print(PROMPT, end="")
            try:
                line = await reader.readline()
            except (EOFError, KeyboardInterrupt):
                console.print()
                return 0
            if line.strip().lower() in EXIT_WORDS:
                return 0
            await app.run(line)

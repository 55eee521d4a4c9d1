"""``parley console``: the terminal front-end over the same core.

Type the same slash commands as in Slack or Discord (``/ask``, ``/compare``,
``/consensus``, ``/personas``, ``/providers``, ``/usage``, ``/help``); a line
without a command is an ``/ask``. Every line continues the same conversation,
so a follow-up has the earlier answers as context; ``/new`` starts afresh.

Turns stream live through the shared :class:`core.render.Renderer` into a
rich ``Live`` view (:mod:`bots.console.view`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

from rich.console import Console
from rich.live import Live

from bots.console.view import ConsoleSink, ConsoleView, doc_to_rich
from core import info
from core.commands import parse_line
from core.errors import ParleyError, UsageError
from core.events import DiscussionFinished, Event
from core.render import Renderer
from core.services import Services

CONTROL = {"/new": "start a new conversation", "/quit": "leave (or Ctrl-D)"}


class ConsoleApp:
    def __init__(self, services: Services, console: Console) -> None:
        self.services = services
        self.console = console
        self.conversation = f"console:{uuid.uuid4().hex[:8]}"

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
            req = parse_line(line, max_prompt_chars=self.services.settings.max_prompt_chars)
            if req.mode is None:
                self.console.print(doc_to_rich((await info.answer(self.services, req.command)).doc))
                if req.command == "help":
                    for k, v in CONTROL.items():
                        self.console.print(f"  {k} — {v}")
                return None
            events = self.services.engine.run(req, conversation=self.conversation, front_end="console")
            return await self.render(events)
        except UsageError as e:
            self.console.print(f"[red]{e.message}[/red]")
        except ParleyError as e:
            self.console.print(f"[red]{e.message}[/red]")
        return None

    async def render(self, events: AsyncIterator[Event]) -> DiscussionFinished | None:
        view = ConsoleView()
        renderer = Renderer(ConsoleSink(view))
        height = self.console.size.height
        with Live(
            console=self.console,
            get_renderable=lambda: view.render(height=height),
            refresh_per_second=12,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ):
            result = await renderer.consume(events)
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
            await app.handle(line)
        return 0
    while True:
        try:
            line = await asyncio.to_thread(console.input, "[bold green]parley>[/bold green] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        await app.handle(line)

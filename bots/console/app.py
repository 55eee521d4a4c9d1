"""``parley console``: the terminal front-end over the same core.

Type the same slash commands as in Slack or Discord (``/ask``, ``/compare``,
``/consensus``, ``/personas``, ``/providers``, ``/usage``, ``/help``); a line
without a command is an ``/ask``. Every line continues the same conversation,
so a follow-up has the earlier answers as context; ``/new`` starts afresh.

Turns stream live through the shared :class:`core.render.Renderer` into a
rich ``Live`` view: parallel turns side by side, consensus stages in order.
When a discussion ends the live view is replaced by the full answers rendered
as Markdown, and the summary.
"""

from __future__ import annotations

import asyncio
import math
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from core.commands import parse_line
from core.errors import ParleyError, UsageError
from core.events import DiscussionFinished, DiscussionStarted, Event, StageStarted
from core.render import Frame, Renderer, TokenBucket, summary_markdown
from core.services import Services

COLUMNS = 3
CONTROL = {"/new": "start a new conversation", "/quit": "leave (or Ctrl-D)"}


@dataclass
class ConsoleView:
    """What the live view shows: stage titles and one panel per message."""

    stages: list[tuple[str, int, str]] = field(default_factory=list)
    frames: dict[int, Frame] = field(default_factory=dict)
    summary: str | None = None
    header: str = ""

    def _panel(self, frame: Frame, *, full: bool, tail: int) -> Panel:
        t = frame.turn
        title = t.label + (f" (part {frame.part})" if frame.part > 1 else "")
        style = t.color or ("red" if frame.state == "failed" else "cyan")
        body: RenderableType
        if full:
            body = Markdown(frame.text or "…")
        else:
            lines = (frame.text or "…").splitlines() or ["…"]
            body = Text("\n".join(lines[-tail:]))
        if frame.state == "failed":
            body = Group(body, Text(f"\n⚠ {frame.notice}", style="bold red"))
        sub = {"streaming": "streaming…", "done": "done", "failed": "failed", "continued": "continues"}[frame.state]
        return Panel(body, title=title, subtitle=sub, border_style=style, title_align="left")

    def render(self, *, full: bool = False, height: int = 40) -> RenderableType:
        parts: list[RenderableType] = []
        if self.header:
            parts.append(Text(self.header, style="dim"))
        groups: dict[tuple[str, int], list[Frame]] = {}
        for _, f in sorted(self.frames.items()):
            groups.setdefault((f.turn.stage, f.turn.round), []).append(f)
        titles = {(s, r): title for s, r, title in self.stages}
        rows = sum(math.ceil(len(g) / COLUMNS) for g in groups.values()) or 1
        tail = max(3, (height - 4 * rows - 2 * len(groups)) // rows)
        for key, frames in groups.items():
            if key in titles:
                parts.append(Rule(titles[key]))
            grid = Table.grid(expand=True, padding=(0, 1))
            n = min(COLUMNS, len(frames))
            for _ in range(n):
                grid.add_column(ratio=1)
            for i in range(0, len(frames), n):
                row = [self._panel(f, full=full, tail=tail) for f in frames[i : i + n]]
                grid.add_row(*row, *([""] * (n - len(row))))
            parts.append(grid)
        if self.summary and full:
            parts.append(Panel(Text(self.summary), title="summary", border_style="dim"))
        return Group(*parts)


class ConsoleSink:
    """A Sink for the terminal: no size limit worth rolling over, no rate limit."""

    limit = 1_000_000
    min_interval = 1 / 15

    def __init__(self, view: ConsoleView) -> None:
        self.view = view
        self.post_budget = TokenBucket(math.inf, 1)
        self.edit_budget = self.post_budget
        self._next = 0

    async def post(self, frame: Frame) -> int:
        ref = self._next
        self._next += 1
        self.view.frames[ref] = frame
        return ref

    async def edit(self, ref: int, frame: Frame) -> None:
        self.view.frames[ref] = frame

    async def notice(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.view.stages.append((event.stage, event.round, event.title))
        elif isinstance(event, DiscussionStarted):
            self.view.header = f"{event.mode}: {', '.join(event.panel)}"
        elif isinstance(event, DiscussionFinished):
            self.view.summary = summary_markdown(event)


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
                from core.info import info_text

                self.console.print(_styled(await info_text(self.services, req.command)))
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

    async def render(self, events) -> DiscussionFinished | None:  # type: ignore[no-untyped-def]
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


def _styled(text: str) -> str:
    """Chat-style ``*bold*`` and ```code``` as rich markup, line breaks kept."""
    import re

    from rich.markup import escape

    text = escape(text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"[bold]\1[/bold]", text)
    return re.sub(r"`([^`\n]+)`", r"[cyan]\1[/cyan]", text)


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


def main(argv: Sequence[str] | None = None) -> int:
    from core.config import Settings
    from core.services import build_services

    console = Console()

    async def go() -> int:
        async with build_services(Settings()) as services:
            if not sys.stdin.isatty():
                # Piped input: each line is a command, then exit.
                return await repl(services, console, [line for line in sys.stdin.read().splitlines()])
            return await repl(services, console)

    try:
        return asyncio.run(go())
    except UsageError as e:
        console.print(f"[red]parley: {e.message}[/red]")
        return 2

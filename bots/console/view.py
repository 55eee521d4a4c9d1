"""The console's live view: one rich panel per message, stages in order, and its Sink.

Parallel turns sit side by side; when a discussion ends the live view is
replaced by the full answers rendered as Markdown, and the summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from core.budget import TokenBucket
from core.events import DiscussionFinished, DiscussionStarted, StageStarted
from core.present import Doc, render, summary_doc
from core.sink import Frame, Notice, Sink

COLUMNS = 3


def doc_to_rich(doc: Doc) -> str:
    """Core's structured text as rich console markup."""
    return render(doc, styles={"strong": lambda s: f"[bold]{s}[/bold]", "code": lambda s: f"[cyan]{s}[/cyan]"},
                  escape=escape)


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
            parts.append(Panel(Text.from_markup(self.summary), title="summary", border_style="dim"))
        return Group(*parts)


class ConsoleSink(Sink):
    """A Sink for the terminal: no size limit worth rolling over, no rate limit, nothing
    to recover after a restart (the console's discussions are marked interrupted)."""

    limit = 1_000_000
    min_interval = 1 / 15
    front_end = "console"

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

    async def notice(self, event: Notice) -> None:
        if isinstance(event, StageStarted):
            self.view.stages.append((event.stage, event.round, event.title))
        elif isinstance(event, DiscussionStarted):
            self.view.header = f"{event.mode}: {', '.join(event.panel)}"
        elif isinstance(event, DiscussionFinished):
            self.view.summary = doc_to_rich(summary_doc(event))

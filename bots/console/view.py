"""The console's live view: one rich panel per message, stages in order, and its Sink.

Parallel turns sit side by side; when a discussion ends the live view is
replaced by the full answers rendered as Markdown, and the summary.

The live view always fits the terminal (rich's ``Live`` cannot redraw what has
scrolled off the top, so anything taller leaves stale copies in the scrollback and
hides the bottom, where the newest text is). Each render measures the rows the
panels really take at the terminal's width and height at that moment, then keeps
the *last* rows of each panel's text: the latest stage first, the earlier ones
with a few rows each, folded to one line each when even that does not fit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.rule import Rule
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from core.budget import TokenBucket
from core.events import DiscussionFinished, DiscussionStarted, StageStarted
from core.present import Doc, render, summary_doc
from core.sink import Frame, Notice, Sink

COLUMNS = 3
#: Rows of text each panel of an earlier stage keeps while a later stage streams in a short terminal.
EARLIER_ROWS = 4
#: The fewest rows the latest stage's panels get before earlier stages fold to one line each.
MIN_ROWS = 3

#: One stage of the view: its title (None outside a consensus) and its messages (ref, frame).
StageGroup = tuple[str | None, list[tuple[int, Frame]]]


def doc_to_rich(doc: Doc) -> str:
    """Core's structured text as rich console markup."""
    return render(doc, styles={"strong": lambda s: f"[bold]{s}[/bold]", "code": lambda s: f"[cyan]{s}[/cyan]"},
                  escape=escape)


def _notice(frame: Frame) -> Text | None:
    return Text(f"\n⚠ {frame.notice}", style="bold red") if frame.state == "failed" else None


class _Tail:
    """A panel's live text, wrapped at the width the panel gives it: the last ``rows`` rows
    of it (all when None; a failure notice is always shown whole), or with ``measure`` set,
    one row while it records how many rows the text and the notice take at that width."""

    def __init__(self, frame: Frame, height: int) -> None:
        self.frame = frame
        self.height = height  # the terminal's: more rows than this are never shown
        self.rows: int | None = None
        self.measure = True
        self.text_rows = 1
        self.notice_rows = 0
        self._wrapped: tuple[int, list[Text]] | None = None

    def _lines(self, console: Console, width: int) -> list[Text]:
        if self._wrapped is None or self._wrapped[0] != width:
            text = self.frame.text or "…"
            # Only the end can be shown: wrap from the paragraph starting before the last
            # `height` rows' worth of characters (each row holds at most `width`).
            keep = self.height * width
            if len(text) > keep:
                cut = text.rfind("\n", 0, len(text) - keep)
                text = text[cut + 1 :] if cut >= 0 else text
            self._wrapped = (width, list(Text(text).wrap(console, width)) or [Text("…")])
        return self._wrapped[1]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = self._lines(console, options.max_width)
        notice = _notice(self.frame)
        wrapped = list(notice.wrap(console, options.max_width)) if notice is not None else []
        if self.measure:
            self.text_rows, self.notice_rows = len(lines), len(wrapped)
            yield Segment.line()
            return
        newline = Segment.line()
        for line in [*(lines if self.rows is None else lines[-self.rows :]), *wrapped]:
            yield from line.render(console, end="")  # already wrapped: as segments, not re-wrapped
            yield newline

    def shown(self, rows: int | None) -> int:
        """Rows this body takes when its text is cut to ``rows``."""
        return (self.text_rows if rows is None else min(rows, self.text_rows)) + self.notice_rows


@dataclass
class ConsoleView:
    """What the live view shows: stage titles and one panel per message."""

    stages: list[tuple[str, int, str]] = field(default_factory=list)
    frames: dict[int, Frame] = field(default_factory=dict)
    summary: str | None = None
    header: str = ""

    def render(self, *, full: bool = False) -> RenderableType:
        """The live view, fitted to the terminal it is rendered on; ``full``: every answer
        whole, as Markdown, and the summary (printed once the discussion is over)."""
        if not full:
            return _Fitted(self)
        parts: list[RenderableType] = [self.layout(self.groups(), self._full_body)]
        if self.summary:
            parts.append(Panel(Text.from_markup(self.summary), title="summary", border_style="dim"))
        return Group(*parts)

    @staticmethod
    def _full_body(ref: int, frame: Frame) -> RenderableType:
        body = Markdown(frame.text or "…")
        notice = _notice(frame)
        return body if notice is None else Group(body, notice)

    def groups(self) -> list[StageGroup]:
        by_key: dict[tuple[str, int], list[tuple[int, Frame]]] = {}
        for ref, f in sorted(self.frames.items()):
            by_key.setdefault((f.turn.stage, f.turn.round), []).append((ref, f))
        titles = {(s, r): title for s, r, title in self.stages}
        return [(titles.get(key), frames) for key, frames in by_key.items()]

    def layout(
        self, groups: list[StageGroup], body: Callable[[int, Frame], RenderableType], folded: int = 0
    ) -> Group:
        """Header, then each stage: its title and its panels in rows of up to COLUMNS
        (the first ``folded`` stages as one line each)."""
        parts: list[RenderableType] = []
        if self.header:
            parts.append(Text(self.header, style="dim"))
        for i, (title, frames) in enumerate(groups):
            if title is not None:
                parts.append(Rule(title))
            if i < folded:
                failed = sum(1 for _, f in frames if f.state == "failed")  # one line: see _plan
                parts.append(Text(f"{len(frames)} turns, {failed} failed — shown in full when the discussion ends",
                                  style="dim", no_wrap=True, overflow="ellipsis"))
                continue
            parts.append(_grid([_panel(f, body(ref, f)) for ref, f in frames], min(COLUMNS, len(frames))))
        return Group(*parts)


def _panel(frame: Frame, body: RenderableType) -> Panel:
    t = frame.turn
    title = t.label + (f" (part {frame.part})" if frame.part > 1 else "")
    style = t.color or ("red" if frame.state == "failed" else "cyan")
    sub = {"streaming": "streaming…", "done": "done", "failed": "failed", "continued": "continues"}[frame.state]
    return Panel(body, title=title, subtitle=sub, border_style=style, title_align="left")


def _grid(cells: list[Panel], n: int) -> Table:
    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in range(n):
        grid.add_column(ratio=1)
    for i in range(0, len(cells), n):
        row = cells[i : i + n]
        grid.add_row(*row, *([""] * (n - len(row))))
    return grid


class _Fitted:
    """The live view cut to the terminal's rows at each refresh (see the module docstring).

    One cheap pass renders every panel one row high, which tells each panel's width and
    so how many rows its text takes; the rest is arithmetic (a row of panels is as high as
    its tallest body, plus two borders), then one pass renders what fits."""

    def __init__(self, view: ConsoleView) -> None:
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = max(1, options.height or options.size.height)
        natural = options.update(height=None)
        groups = self.view.groups()
        tails = {ref: _Tail(f, height) for _, frames in groups for ref, f in frames}

        def render(folded: int) -> list[list[Segment]]:
            return console.render_lines(self.view.layout(groups, lambda ref, f: tails[ref], folded), natural)

        rows = [_rows([tails[ref] for ref, _ in frames]) for _, frames in groups]
        plan = _plan(rows, len(render(0)), height)
        for tail in tails.values():
            tail.measure = False
        for g, group_rows in enumerate(rows):
            for row in group_rows:
                for tail in row:
                    tail.rows = plan.latest if g == len(rows) - 1 else plan.earlier
        out = render(plan.folded)[-height:]  # the crop is a last resort in a tiny terminal
        newline = Segment.line()
        for line in out:
            yield from line
            yield newline


def _rows(bodies: list[_Tail]) -> list[list[_Tail]]:
    """Panels as the grid lays them out: rows of up to COLUMNS."""
    n = min(COLUMNS, len(bodies)) or 1
    return [bodies[i : i + n] for i in range(0, len(bodies), n)]


@dataclass(frozen=True, slots=True)
class _Plan:
    folded: int = 0  # the first stages, shown as one line each
    earlier: int | None = None  # rows of text per panel of the other earlier stages (None: all)
    latest: int | None = None  # rows of text per panel of the latest stage


def _plan(rows: list[list[list[_Tail]]], measured: int, height: int) -> _Plan:
    """How to fit ``height`` lines, given the view's height ``measured`` with every body one
    row high: everything if it fits; else the latest stage gets the most rows and the earlier
    ones EARLIER_ROWS each (more if the latest needs less), and when the latest would get
    fewer than MIN_ROWS, earlier stages fold to one line each, the oldest first."""

    def total(p: _Plan) -> int:
        lines = measured
        for g, group_rows in enumerate(rows):
            if g < p.folded:  # each row of panels (a one-row body and two borders) becomes one line
                lines += 1 - 3 * len(group_rows)
                continue
            cap = p.latest if g == len(rows) - 1 else p.earlier
            lines += sum(max(b.shown(cap) for b in row) - 1 for row in group_rows)
        return lines

    if total(_Plan()) <= height:
        return _Plan()
    for folded in range(len(rows)):
        earlier = folded < len(rows) - 1  # any earlier stage still open
        first = EARLIER_ROWS if earlier else None
        best = next((r for r in range(height, 0, -1) if total(_Plan(folded, first, r)) <= height), None)
        if best is None or (earlier and best < MIN_ROWS):
            continue
        need = max(b.text_rows for row in rows[-1] for b in row)
        if earlier and best >= need:  # the latest stage is whole: the earlier ones get the rest
            first = next(r for r in range(height, EARLIER_ROWS - 1, -1) if total(_Plan(folded, r, need)) <= height)
        return _Plan(folded, first, best)
    return _Plan(len(rows) - 1, 1, 1)


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
            self.view.summary = doc_to_rich(summary_doc(_errors_shown_above(event)))


def _errors_shown_above(event: DiscussionFinished) -> DiscussionFinished:
    """The summary printed under the panels: each failed panel already ends with its
    error, so the summary names the kind and does not repeat the sentence."""
    turns = [
        dataclasses.replace(t, error=dataclasses.replace(t.error, message="shown above")) if t.error else t
        for t in event.turns
    ]
    return dataclasses.replace(event, turns=turns)

"""What Parley says besides the answers, as structure: no platform markup here.

Core builds a :data:`Doc` (lines of spans styled ``plain``, ``strong`` or
``code``, optionally bulleted or indented) for a discussion's summary, the
informational commands and help. Each front-end renders a Doc in its own
markup by giving :func:`render` its styles (Slack mrkdwn, Discord markdown,
rich markup in the terminal); :func:`plain` is the CLI's and JSON's form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from core.commands import COMMANDS, OPTIONS
from core.events import DiscussionFinished, TurnSummary

Style = Literal["plain", "strong", "code"]


@dataclass(frozen=True, slots=True)
class Span:
    text: str
    style: Style = "plain"


@dataclass(frozen=True, slots=True)
class Line:
    spans: tuple[Span, ...] = ()
    bullet: bool = False
    indent: int = 0

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.spans)


Doc = list[Line]


@dataclass(slots=True)
class Answer:
    """What a command that is not a discussion answers: rows (``--json``) and a Doc."""

    command: str
    rows: list[dict[str, Any]]
    doc: Doc


def strong(text: str) -> Span:
    return Span(text, "strong")


def code(text: str) -> Span:
    return Span(text, "code")


def line(*parts: str | Span, bullet: bool = False, indent: int = 0) -> Line:
    return Line(tuple(Span(p) if isinstance(p, str) else p for p in parts if p != ""), bullet, indent)


def render(
    doc: Iterable[Line],
    *,
    styles: dict[Style, Callable[[str], str]],
    escape: Callable[[str], str] = lambda s: s,
    escape_code: Callable[[str], str] | None = None,
    bullet: str = "• ",
    indent: str = "    ",
) -> str:
    """A Doc as text: each span escaped, then styled by the front-end's ``styles``.
    ``escape_code`` (default: ``escape``) is for code spans, where a markup's own
    escapes would show literally."""
    code_escape = escape if escape_code is None else escape_code
    out = []
    for ln in doc:
        text = "".join(
            styles.get(s.style, _same)(code_escape(s.text) if s.style == "code" else escape(s.text))
            for s in ln.spans
        )
        out.append(indent * ln.indent + (bullet if ln.bullet else "") + text)
    return "\n".join(out)


def _same(s: str) -> str:
    return s


def plain(doc: Iterable[Line]) -> str:
    """A Doc as plain text (the CLI, JSON values, logs)."""
    return render(doc, styles={})


# --- the summary of a discussion ------------------------------------------------------------


def _turn_line(t: TurnSummary) -> Line:
    stage = f" · {t.stage}" + (f" {t.round}" if t.round else "") if t.stage != "answer" else ""
    if t.status == "finished":
        ttft = f"{t.ttft_ms / 1000:.1f}s to first token, " if t.ttft_ms is not None else ""
        est = " (est.)" if t.estimated else ""
        return line(
            f"✅ {t.label}{stage}: {ttft}{(t.latency_ms or 0) / 1000:.1f}s, "
            f"{t.input_tokens:,}+{t.output_tokens:,} tokens{est}, ${t.cost_usd:.4f}"
        )
    kind, message = (t.error.kind, t.error.message) if t.error else ("failed", "")
    return line(f"⚠️ {t.label}{stage}: {kind} — {message}")


def summary_doc(ev: DiscussionFinished) -> Doc:
    """The closing message of a discussion: time, tokens and cost per turn, and the total."""
    doc = [_turn_line(t) for t in ev.turns]
    tot = ev.total
    doc.append(
        line(
            strong("Total"),
            f": {tot.turns} turns ({tot.failed} failed), {tot.input_tokens:,}+{tot.output_tokens:,} tokens, "
            f"${tot.cost_usd:.4f}, {(tot.wall_ms or 0) / 1000:.1f}s",
        )
    )
    if ev.ranking and ev.votes:
        ranked = ", ".join(f"{i + 1}. {r.label} ({r.score})" for i, r in enumerate(ev.ranking))
        voted = f"{ev.votes} of {ev.reviewers} reviewers voted"
        doc.append(line(strong("Peer ranking"), f" (Borda, {voted}): {ranked}"))
    if ev.message:
        doc.append(line(ev.message))
    return doc


# --- informational commands ------------------------------------------------------------------


def _price(x: float | None) -> str:
    return "—" if x is None else f"${x:g}"


def providers_doc(rows: list[dict[str, Any]], checked: str) -> Doc:
    doc = [line(strong("Providers"), f" (prices USD per 1M tokens in/cached/out, as of {checked})")]
    for r in rows:
        star = " ★ default" if r["default"] else ""
        price = f"{_price(r['price_input'])}/{_price(r['price_cached_input'])}/{_price(r['price_output'])}"
        doc.append(
            line(code(r["id"]), f" {r['label']} — ", strong(r["status"]), f"{star} · {r['default_model']} · {price}",
                 bullet=True)
        )
        if r["status"] == "not_configured" and r["key_env"]:
            doc.append(line(f"set {r['key_env']} to enable", indent=1))
        elif r["status"] not in ("ok", "not_configured") and r["message"]:
            doc.append(line(r["message"], indent=1))
    return doc


def personas_doc(rows: list[dict[str, Any]]) -> Doc:
    doc = [line(strong("Personas"), " — use persona:ID (or personas:a,b,c)")]
    for r in rows:
        exp = f" — {', '.join(r['expertise'])}" if r["expertise"] else ""
        doc.append(line(f"{r['emoji'] or '•'} ", code(r["id"]), " ", strong(r["name"]), f", {r['role']}{exp}",
                        bullet=True))
    return doc


def usage_doc(rows: list[dict[str, Any]]) -> Doc:
    if not rows:
        return [line(strong("Usage"), ": nothing recorded yet.")]
    doc = [line(strong("Usage"), " by provider and model")]
    for r in rows:
        est = f" ({r['estimated_turns']} estimated)" if r["estimated_turns"] else ""
        doc.append(
            line(
                code(f"{r['provider']}/{r['model']}"),
                f" — {r['turns']} turns ({r['failed']} failed), {r['input_tokens']:,} in / "
                f"{r['output_tokens']:,} out tokens{est}, ${r['cost_usd']:.4f}",
                bullet=True,
            )
        )
    doc.append(line(f"Total: ${sum(r['cost_usd'] for r in rows):.4f}"))
    return doc


def help_rows() -> list[dict[str, Any]]:
    return [
        {"command": c.name, "usage": c.usage, "summary": c.summary, "options": list(c.options)}
        for c in COMMANDS.values()
    ]


def help_doc() -> Doc:
    doc = [line(strong("Parley"), ": a panel of AI experts in your chat."), line()]
    doc += [line(code(c.usage), f" — {c.summary}", bullet=True) for c in COMMANDS.values()]
    doc += [line(), line("Options:")]
    for o in OPTIONS.values():
        alias = f" (or {', '.join(a + ':' for a in o.aliases)})" if o.aliases else ""
        doc.append(line(code(f"{o.name}:"), f"{alias} {o.help}", bullet=True))
    doc += [line(), line("Example: " + COMMANDS["compare"].example)]
    return doc

"""What Parley's Discord messages look like: the label line, a turn's content, Discord markdown.

Each turn is its own plain-text message (content, not an embed; see
docs/discord.md for why), headed by the persona and provider/model. Core's
structured text (:mod:`core.present`) becomes Discord markdown here.
"""

from __future__ import annotations

from collections.abc import Iterable

import discord

from core import present
from core.events import TurnInfo
from core.sink import Frame

#: Discord's hard limit for message content.
CONTENT_LIMIT = 2000
#: Characters of answer per message: the rest of the 2,000 is kept for the label line,
#: the "writing" mark and a failure notice.
MESSAGE_LIMIT = 1800
HEADER_LIMIT = 150
THREAD_NAME_LIMIT = 100
STREAMING_MARK = " …"
#: Bot messages never ping anyone, even if a model writes ``@everyone``.
NO_MENTIONS = discord.AllowedMentions.none()


def doc_to_markdown(doc: Iterable[present.Line]) -> str:
    """Core's structured text in Discord markdown: ``**bold**`` and backtick code."""
    return present.render(
        doc,
        styles={"strong": lambda s: f"**{s}**", "code": lambda s: f"`{s}`"},
        # Text Parley did not write (a provider's error, a model id with underscores)
        # must not turn into markup; inside code, only a backtick could end the span.
        escape=discord.utils.escape_markdown,
        escape_code=lambda s: s.replace("`", "ˋ"),
    )


def header(turn: TurnInfo, part: int = 1) -> str:
    who = f"{turn.emoji + ' ' if turn.emoji else ''}{turn.persona_name}" if turn.persona_name else ""
    where = f"{turn.provider}/{turn.model}"[:80]
    stage = ""
    if turn.stage != "answer":
        stage = f" · {turn.stage}" + (f" {turn.round}" if turn.round else "")
    cont = f" (part {part})" if part > 1 else ""
    line = f"**{who[:60]}** · `{where}`{stage}{cont}" if who else f"`{where}`{stage}{cont}"
    return line[:HEADER_LIMIT]


def message_content(frame: Frame) -> str:
    """What one turn message shows: the label line, the text, and the state."""
    body = frame.text
    if frame.state == "streaming":
        body = (body + STREAMING_MARK) if body else "…"
    text = header(frame.turn, frame.part) + "\n" + body
    if frame.state == "failed":
        notice = f"\n\n⚠️ {frame.notice or 'failed'}"
        room = CONTENT_LIMIT - len(text)
        if len(notice) > room:  # only in extreme cases; the summary repeats the reason
            notice = notice[: max(0, room - 1)] + "…" if room > 8 else ""
        text += notice
    return text[:CONTENT_LIMIT]


def chunks(text: str, limit: int = CONTENT_LIMIT) -> list[str]:
    """Split a long informational text at line ends into messages of at most ``limit``."""
    out: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            out.append(current)
            current = ""
        current += line
    if current.strip():
        out.append(current)
    return [c.rstrip("\n") for c in out] or [""]


def thread_name(prompt: str) -> str:
    name = " ".join(prompt.split()) or "Parley"
    return name if len(name) <= THREAD_NAME_LIMIT else name[: THREAD_NAME_LIMIT - 1].rstrip() + "…"

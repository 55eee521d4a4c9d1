"""Model markdown -> what Slack renders.

Models write CommonMark; ``chat.postMessage``/``chat.update`` ``text`` is Slack's
*mrkdwn* (https://api.slack.com/reference/surfaces/formatting): ``*bold*``,
``_italic_``, ``~strike~``, ``<url|label>``, no headings, and ``&``, ``<``, ``>``
must be escaped. Native streams (``chat.startStream``/``appendStream``) take
``markdown_text`` and render CommonMark themselves, so they skip this.

What Parley itself says (summaries, stage titles, informational commands, reply
headers) comes from core as a :data:`core.present.Doc` and becomes Slack text in
:func:`doc_to_mrkdwn` (or :func:`doc_to_markdown` for a stream's header).

Every piece of text Parley did not write itself (model answers, provider errors,
quoted prompts, Slack's own error codes, persona names) goes through ONE function,
:func:`escape`, whatever method writes it, so that it can never ping anyone:

- mrkdwn (``text``): ``&``, ``<``, ``>`` become entities, which Slack documents as
  shown literally, so ``<!channel>``, ``<@U…>``, ``<#C…>``, ``<!subteam^…>`` are text;
- CommonMark (``markdown_text``): Slack does not document whether it resolves
  ``<!channel>`` there (mentions do resolve in streamed text) or whether it decodes
  ``&lt;`` first, so both readings are made safe: an invisible word joiner goes
  between ``<`` (or ``&lt;``, ``&#60;``, ``&#x3c;``) and a following ``!``, ``@``,
  ``#`` or labelled link ``scheme:…|``. No mention (or disguised link) can form,
  entities and other ``<`` are left alone (code such as ``List<String>`` shows and
  copies as written), and the joiner is inserted only after the ``<``, so escaping a
  longer text extends the escaped shorter one (stream appends stay appends);
- both: bare ``@channel``, ``@here``, ``@everyone`` get the joiner after the ``@``.

(A bare broadcast word or a labelled link cut in two by a stream update is the one
case where the longer text is not an extension: the sink then replaces the stream
with a posted message, :meth:`bots.slack.sink.SlackSink.edit`.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core import present
from core.events import TurnInfo
from core.present import Line

_FENCE = re.compile(r"^(\s*)```[^\n`]*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=\S)\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?=\S)")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")

_BOLD_MARK = "\x00B\x00"  # placeholder so italics do not re-read converted bold


#: Invisible, and breaks Slack's mention syntax wherever it stands.
JOINER = "\u2060"
#: Where Slack markup would start: a mention, a broadcast, a channel, or a labelled link
#: ``<url|label>`` (whose label could hide where it goes).
_MARKUP_OPEN = re.compile(
    r"(<|&lt;|&#0*60;|&#x0*3c;)(?=[!@#]|[a-z][a-z0-9+.\-]*:[^\s<>|]*\|)", re.IGNORECASE
)
_BROADCAST = re.compile(r"(?<![\w@])@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)


def escape(text: str, *, markdown: bool = False) -> str:
    """THE escaping of text Parley did not write, for mrkdwn ``text`` or (``markdown``)
    for a stream's CommonMark ``markdown_text``: it shows as written and never pings."""
    text = _BROADCAST.sub("@" + JOINER, text)
    if markdown:
        return _MARKUP_OPEN.sub(lambda m: m.group(1) + JOINER, text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_markdown(text: str) -> str:
    return escape(text, markdown=True)


def _inline(line: str) -> str:
    # Keep inline code verbatim; convert the prose around it.
    out, pos = [], 0
    for m in _INLINE_CODE.finditer(line):
        out.append(_prose(line[pos : m.start()]))
        out.append("`" + m.group(2) + "`")
        pos = m.end()
    out.append(_prose(line[pos:]))
    return "".join(out)


def _prose(s: str) -> str:
    s = _LINK.sub(lambda m: f"<{m.group(2)}|{m.group(1)}>", s)
    s = _BOLD.sub(lambda m: _BOLD_MARK + m.group(2) + _BOLD_MARK, s)
    s = _ITALIC.sub(lambda m: "_" + m.group(1) + "_", s)
    s = _STRIKE.sub(lambda m: "~" + m.group(1) + "~", s)
    return s.replace(_BOLD_MARK, "*")


def to_mrkdwn(markdown: str) -> str:
    """Convert CommonMark (as models write it) to Slack mrkdwn, leaving code untouched."""
    lines = escape(markdown).split("\n")
    out: list[str] = []
    in_code = False
    for line in lines:
        m = _FENCE.match(line)
        if m:
            # Slack ignores the info string and would show it as code text.
            out.append(m.group(1) + "```")
            in_code = not in_code
            continue
        if in_code:
            out.append(line)
            continue
        if _RULE.match(line):
            out.append("───")
            continue
        h = _HEADING.match(line)
        if h:
            title = _inline(h.group(1)).strip("*")
            out.append(f"*{title}*")
            continue
        b = _BULLET.match(line)
        if b:
            line = f"{b.group(1)}• " + line[b.end() :]
        out.append(_inline(line))
    return "\n".join(out)


def doc_to_mrkdwn(doc: Iterable[Line]) -> str:
    """Core's structured text as Slack mrkdwn (``chat.postMessage``/``chat.update``)."""
    return present.render(
        doc, styles={"strong": lambda s: f"*{s}*", "code": lambda s: f"`{s}`"}, escape=escape
    )


def doc_to_markdown(doc: Iterable[Line]) -> str:
    """Core's structured text as the CommonMark a native stream's ``markdown_text`` takes."""
    return present.render(
        doc, styles={"strong": lambda s: f"**{s}**", "code": lambda s: f"`{s}`"}, escape=_escape_markdown
    )


def header(turn: TurnInfo, part: int, *, markdown: bool) -> str:
    """A reply's first line: who answers, with which model, and which part of the answer."""
    who = f"{turn.emoji + ' ' if turn.emoji else ''}{turn.persona_name}" if turn.persona_name else ""
    head = present.line(
        *((present.strong(who), " · ") if who else ()),
        present.code(f"{turn.provider}/{turn.model}"),
        f" (part {part})" if part > 1 else "",
    )
    return doc_to_markdown([head]) if markdown else doc_to_mrkdwn([head])

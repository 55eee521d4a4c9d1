"""A reviewer's ballot: asked as JSON where the wire can constrain output, read tolerantly
everywhere.

:func:`schema` is the JSON Schema a reviewer fills (critique, ranking, revised answer).
:class:`JsonProse` turns that JSON, as it streams, into the text people read, so a
structured review still streams into the thread as prose. :func:`read` takes whatever a
reviewer wrote (the JSON, or free text in any of the loose formats models drift into:
``RANKING: B > A``, ``Ranking: B, A``, a numbered list under a heading, markdown emphasis)
and returns the ranking, repaired (unknown letters and repeats dropped, a single missing
letter put last), and the revised answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.providers.base import Structured

#: Fields of a ballot in the order a reviewer writes them, with the title people see.
FIELDS = {"critique": "Critique", "ranking": "Ranking", "revised_answer": "Revised answer"}


def schema(letters: Sequence[str]) -> Structured:
    n = len(letters)
    return Structured(
        name="ballot",
        description="A review of the other panelists' anonymous answers: critique, ranking, revised answer.",
        schema={
            "type": "object",
            "properties": {
                "critique": {"type": "string", "description": "Each answer's strongest point and main flaw."},
                "ranking": {
                    "type": "array",
                    "items": {"type": "string", "enum": list(letters)},
                    "minItems": n,
                    "maxItems": n,
                    "description": "Every letter once, best first.",
                },
                "revised_answer": {"type": "string", "description": "Your own improved answer."},
            },
            "required": list(FIELDS),
            "additionalProperties": False,
        },
    )


@dataclass(slots=True)
class Read:
    order: list[str]  # letters, best first; empty: no usable ballot
    revision: str | None


# --- streaming JSON → prose ------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", "r": "", "b": "", "f": "", '"': '"', "\\": "\\", "/": "/"}


class JsonProse:
    """Feed the JSON text of a ballot as it streams; get back the prose to show.

    Only the top-level string fields and string arrays are shown (each under its title);
    anything that is not a JSON object from its first character passes through unchanged.
    """

    def __init__(self) -> None:
        self.raw: list[str] = []
        self.mode: str | None = None  # None: undecided, "json", "text"
        self.state = "key_wait"
        self.key: list[str] = []
        self.esc: str | None = None  # None, "\\" or the \\u digits so far
        self.items = 0
        self.fields = 0
        self.high: int | None = None

    def feed(self, chunk: str) -> str:
        self.raw.append(chunk)
        if self.mode is None:
            head = "".join(self.raw).lstrip()
            if not head:
                return ""
            self.mode = "json" if head.startswith("{") else "text"
            chunk = "".join(self.raw)
            if self.mode == "json":
                chunk = chunk.lstrip()[1:]
        if self.mode == "text":
            return chunk
        out: list[str] = []
        for ch in chunk:
            self._step(ch, out)
        return "".join(out)

    def text(self) -> str:
        return "".join(self.raw)

    def _heading(self, out: list[str]) -> None:
        key = "".join(self.key)
        title = FIELDS.get(key, key.replace("_", " ").capitalize())
        sep = "\n\n" if self.fields else ""
        self.fields += 1
        out.append(f"{sep}**{title}:** " if key == "ranking" else f"{sep}**{title}**\n")

    def _char(self, ch: str, out: list[str]) -> bool:
        """One character inside a string; False when the string ends."""
        if self.esc is not None:
            if self.esc == "\\":
                if ch == "u":
                    self.esc = "u"
                    return True
                self.esc = None
                out.append(_ESCAPES.get(ch, ch))
                return True
            self.esc += ch
            if len(self.esc) == 5:
                try:
                    code = int(self.esc[1:], 16)
                except ValueError:
                    code = 0xFFFD
                self.esc = None
                if 0xD800 <= code < 0xDC00:
                    self.high = code
                elif 0xDC00 <= code < 0xE000 and self.high is not None:
                    out.append(chr(0x10000 + ((self.high - 0xD800) << 10) + (code - 0xDC00)))
                    self.high = None
                else:
                    out.append(chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd")
            return True
        if ch == "\\":
            self.esc = "\\"
            return True
        if ch == '"':
            return False
        out.append(ch)
        return True

    def _step(self, ch: str, out: list[str]) -> None:
        s = self.state
        if s == "key_wait":
            if ch == '"':
                self.key = []
                self.state = "key"
        elif s == "key":
            if ch == '"' and self.esc is None:
                self.state = "colon"
            else:
                sink: list[str] = []
                self._char(ch, sink)
                self.key += sink
        elif s == "colon":
            if ch == ":":
                self.state = "value_wait"
        elif s == "value_wait":
            if ch == '"':
                self._heading(out)
                self.state = "string"
            elif ch == "[":
                self._heading(out)
                self.items = 0
                self.state = "array"
            elif not ch.isspace():
                self.state = "other"
        elif s == "string":
            if not self._char(ch, out):
                self.state = "key_wait"
        elif s == "array":
            if ch == '"':
                if self.items:
                    out.append(" > ")
                self.items += 1
                self.state = "item"
            elif ch == "]":
                self.state = "key_wait"
        elif s == "item":
            if not self._char(ch, out):
                self.state = "array"
        elif s == "other" and ch in ",}":
            self.state = "key_wait"


# --- reading a ballot from any text ----------------------------------------------------------

_EMPHASIS = re.compile(r"[*_`~]+")
#: ``Ranking: …`` anywhere in a line, or a line that is only a ranking heading (a list follows).
_LABEL = re.compile(r"(?im)\brank(?:ing|ings)\b[^:\n]{0,40}:[ \t]*(.*)$"
                    r"|^[#>\s\d.)-]*(?:final\s+|my\s+)?rank(?:ing|ings)\b[^:\n]{0,40}$()")
_ITEM = re.compile(r"(?i)^\s*(?:#\s*)?\d+\s*[.):-]\s*(?:answer|response|option|panelist)?\s*\(?([A-Z])\b")
_CHAIN = re.compile(r"\b[A-Z]\s*(?:>|≻|»)\s*[A-Z](?:\s*(?:>|≻|»)\s*[A-Z])*\b")
_NAMED = re.compile(r"(?:\b(?:answer|response|option|panelist)\s+)?\b([A-Z])\b")
_REVISED = re.compile(
    r"(?im)^[#>*_\s\d.)-]*(?:my\s+)?(?:revised|updated|improved|final)\s+(?:answer|position|response)\b[^\n:]{0,20}:?[ \t]*"
    r"|^[#>*_\s\d.)-]*revision\b[*_]*:?[*_]*[ \t]*"
)


def _letters(text: str, allowed: Sequence[str]) -> list[str]:
    return [m for m in _NAMED.findall(text) if m in allowed]


def repair(order: Sequence[Any], letters: Sequence[str]) -> list[str]:
    """Known letters, each once, best first; one missing letter is put last (it can only be last)."""
    seen: list[str] = []
    for tok in order:
        t = str(tok).strip().strip("*_`'\"()[].").upper()
        t = re.sub(r"^(?:ANSWER|RESPONSE|OPTION|PANELIST)\s+", "", t)
        if t in letters and t not in seen:
            seen.append(t)
    missing = [x for x in letters if x not in seen]
    if seen and len(missing) == 1:
        seen.append(missing[0])
    return seen


def _from_json(text: str, letters: Sequence[str]) -> Read | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    ranking = obj.get("ranking")
    if isinstance(ranking, str):
        ranking = _letters(_EMPHASIS.sub("", ranking), letters)
    order = repair(ranking, letters) if isinstance(ranking, list) else []
    revision = obj.get("revised_answer") or obj.get("revision") or obj.get("revised")
    return Read(order, revision.strip() if isinstance(revision, str) and revision.strip() else None)


def _ranking(text: str, letters: Sequence[str]) -> list[str]:
    plain = _EMPHASIS.sub("", text)
    found: list[str] = []
    # The last labelled ranking wins: models echo the format before they fill it in.
    for m in _LABEL.finditer(plain):
        rest = m.group(1) or ""
        order = _letters(rest, letters)
        if not order:  # a heading: the ranking is the numbered list under it
            after = plain[m.end():].lstrip("\n").splitlines()
            for ln in after:
                if not ln.strip():
                    if order:
                        break
                    continue
                item = _ITEM.match(ln)
                if not item:
                    break
                order.append(item.group(1))
        order = repair(order, letters)
        if order:
            found = order
    if found:
        return found
    chains = _CHAIN.findall(plain)
    if chains:
        return repair(re.findall(r"[A-Z]", chains[-1]), letters)
    return []


def read(text: str, letters: Sequence[str]) -> Read:
    """The ballot in a review, whatever its format; ``order`` is empty when it has none."""
    got = _from_json(text, letters) if text.lstrip().startswith(("{", "```")) else None
    if got is not None and got.order:
        return got
    order = _ranking(text, letters)
    revision = got.revision if got is not None else None
    if revision is None:
        matches = list(_REVISED.finditer(text))
        if matches:
            rest = text[matches[-1].end():].strip()
            revision = rest or None
    return Read(order, revision)


def ranking_schema(letters: Sequence[str]) -> Structured:
    """The reminder's ballot: the ranking alone (short, so an output limit cannot cut it)."""
    full = schema(letters).schema
    return Structured(
        name="ranking",
        description="Every letter once, best first.",
        schema={"type": "object", "properties": {"ranking": full["properties"]["ranking"]},
                "required": ["ranking"], "additionalProperties": False},
    )


def reminder(letters: Sequence[str], *, as_json: bool = False) -> str:
    """The one follow-up a reviewer gets when its review held no usable ranking."""
    chain = " > ".join(letters)
    if as_json:
        listed = ", ".join(f'"{x}"' for x in letters)
        return ("Your review did not include a usable ranking. Reply with only the JSON object "
                f'{{"ranking": [{listed}]}}, every letter once, best first.')
    return (
        "Your review did not include a usable ranking. Reply with exactly one line and nothing else, "
        f"ranking every letter once, best first, for example:\nRANKING: {chain}"
    )

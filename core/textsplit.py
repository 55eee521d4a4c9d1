"""Where a long answer may be cut into several platform messages.

Never inside a word; never inside a code block unless the block alone is too
long, in which case the renderer closes the fence at the cut and reopens it
(with its info string) at the top of the next message.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*```(.*)$", re.M)


def open_fence_at(text: str, pos: int) -> str | None:
    """The info string of the code fence open at ``pos``, or None outside code."""
    lang: str | None = None
    for m in _FENCE.finditer(text, 0, pos):
        lang = None if lang is not None else m.group(1).strip()
    return lang


def split_point(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``) so the head is ≤ limit and cut safely."""
    window = text[: limit + 1]
    floor = limit // 3  # never cut so early that messages become tiny
    for pattern in ("\n\n", "\n", ". ", "! ", "? ", " "):
        idx = window.rfind(pattern, floor, limit)
        while idx > 0:
            cut = idx + len(pattern)
            if cut <= limit and (open_fence_at(text, cut) is None or pattern == " "):
                return cut
            idx = window.rfind(pattern, floor, idx)
    # Inside a long code block: cut at a line end and let the fences be re-balanced.
    idx = window.rfind("\n", floor, limit)
    if idx > 0:
        return idx + 1
    idx = window.rfind(" ", floor, limit)
    return idx + 1 if idx > 0 else limit

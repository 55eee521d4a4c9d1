"""Printing event streams for the one-shot CLI (``parley ask|compare|consensus``).

``--json``: one JSON object per event, flushed as it happens. Plain: a single
answer streams straight to stdout; parallel and consensus turns print as
blocks when each finishes (use ``parley console`` for the live side-by-side
view). Labels, notes and the summary go to stderr so stdout stays the answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import TextIO

from core.events import (
    DiscussionFinished,
    DiscussionStarted,
    Event,
    StageStarted,
    TextDelta,
    TurnFailed,
    TurnFinished,
    TurnStarted,
    to_dict,
)
from core.present import plain, summary_doc


async def print_json_events(events: AsyncIterator[Event], out: TextIO = sys.stdout) -> int:
    status = "failed"
    async for ev in events:
        out.write(json.dumps(to_dict(ev), ensure_ascii=False) + "\n")
        out.flush()
        if isinstance(ev, DiscussionFinished):
            status = ev.status
    return 0 if status == "finished" else 1


async def print_plain(
    events: AsyncIterator[Event],
    *,
    stream_single: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    status = "failed"
    labels: dict[str, str] = {}
    async for ev in events:
        if isinstance(ev, DiscussionStarted):
            if not stream_single:
                err.write(f"{ev.mode}: {', '.join(ev.panel)}\n")
        elif isinstance(ev, StageStarted):
            out.write(f"\n=== {ev.title} ===\n")
        elif isinstance(ev, TurnStarted):
            labels[ev.turn.turn_id] = ev.turn.label
            if stream_single:
                err.write(f"— {ev.turn.label} —\n")
            if ev.note:
                err.write(f"note: {ev.note}\n")
        elif isinstance(ev, TextDelta):
            if stream_single:
                out.write(ev.text)
                out.flush()
        elif isinstance(ev, TurnFinished):
            if stream_single:
                out.write("\n")
            else:
                out.write(f"\n--- {ev.turn.label} ---\n{ev.text}\n")
            out.flush()
        elif isinstance(ev, TurnFailed):
            if not stream_single and ev.text:
                out.write(f"\n--- {ev.turn.label} (incomplete) ---\n{ev.text}\n")
            elif stream_single and ev.text:
                out.write("\n")
            out.flush()
            err.write(f"✗ {ev.turn.label}: {ev.error.message}\n")
        elif isinstance(ev, DiscussionFinished):
            status = ev.status
            err.write(plain(summary_doc(ev)) + "\n")
    return 0 if status == "finished" else 1

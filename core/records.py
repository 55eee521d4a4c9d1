"""Plain records the store hands out, and the id and time formats it writes.

Kept apart from :mod:`core.store` so that planning and history can use them
without reaching for the storage door itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class HealthMark:
    status: str
    message: str
    until: float
    fingerprint: str | None = None  # the configuration paused (core.providers.registry)


@dataclass(slots=True)
class PastTurn:
    persona: str | None
    provider: str
    model: str
    stage: str
    text: str


@dataclass(slots=True)
class PastDiscussion:
    id: str
    mode: str
    prompt: str
    turns: list[PastTurn]

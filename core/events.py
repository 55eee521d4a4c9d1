"""The events the engine yields to every front-end.

One stream of these describes a whole discussion. ``to_dict()`` is the
newline-delimited JSON form printed by ``parley ... --json``; its ``type``
values are part of the public contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class TurnInfo:
    """Who is speaking in a turn; enough for any front-end to label it."""

    turn_id: str
    provider: str
    provider_label: str
    model: str
    persona_id: str | None = None
    persona_name: str | None = None
    persona_role: str | None = None
    emoji: str | None = None
    color: str | None = None
    stage: str = "answer"
    round: int = 0

    @property
    def label(self) -> str:
        who = f"{self.emoji + ' ' if self.emoji else ''}{self.persona_name}" if self.persona_name else ""
        where = f"{self.provider}/{self.model}"
        return f"{who} · {where}" if who else where


@dataclass(slots=True)
class TurnUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False


@dataclass(slots=True)
class ErrorInfo:
    """Why a turn failed: a stable ``kind`` (see :class:`core.errors.ErrorKind`) and a
    sentence that says how to fix it."""

    kind: str
    message: str
    provider: str | None = None


@dataclass(slots=True)
class TurnSummary:
    """One turn's line in a discussion's closing summary."""

    turn_id: str
    label: str
    stage: str
    round: int
    provider: str
    model: str
    persona: str | None
    status: str  # finished | failed
    error: ErrorInfo | None
    ttft_ms: float | None
    latency_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    estimated: bool


@dataclass(slots=True)
class Totals:
    turns: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    wall_ms: float | None


@dataclass(slots=True)
class RankEntry:
    """A panelist's place in the consensus peer ranking (Borda count)."""

    panelist: str
    label: str
    score: int
    votes: int
    mean_position: float | None


@dataclass(slots=True)
class DiscussionStarted:
    discussion_id: str
    mode: str
    prompt: str
    panel: list[str]
    #: The stages it will go through, in order (one for single and parallel; a consensus's
    #: answers, each review round and the synthesis), for a progress list.
    stages: list[str] = field(default_factory=list)
    type: str = "discussion_started"


@dataclass(slots=True)
class StageStarted:
    stage: str
    round: int
    title: str
    type: str = "stage_started"


@dataclass(slots=True)
class TurnStarted:
    turn: TurnInfo
    note: str | None = None
    type: str = "turn_started"


@dataclass(slots=True)
class TextDelta:
    turn_id: str
    text: str
    type: str = "text"


@dataclass(slots=True)
class TurnFinished:
    turn: TurnInfo
    text: str
    usage: TurnUsage
    ttft_ms: float | None
    latency_ms: float
    reasoning_chars: int = 0
    #: The provider's finish reason ("stop", "length": cut by max_tokens, …) when it gave one.
    finish: str | None = None
    #: The JSON the model wrote when ``text`` was rendered from a structured answer (a ballot).
    structured: str | None = None
    type: str = "turn_finished"

    @property
    def cut(self) -> bool:
        """Stopped by the output limit: "Continue" can pick it up."""
        return self.finish in ("length", "max_tokens")


@dataclass(slots=True)
class TurnFailed:
    turn: TurnInfo
    error: ErrorInfo
    text: str = ""
    usage: TurnUsage = field(default_factory=TurnUsage)
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    type: str = "turn_failed"


@dataclass(slots=True)
class DiscussionFinished:
    discussion_id: str
    status: str  # finished | failed | partial
    turns: list[TurnSummary]
    total: Totals
    message: str | None = None
    ranking: list[RankEntry] | None = None
    mode: str = ""
    #: A consensus's last review round: reviewers asked, and how many of them cast a usable ballot.
    reviewers: int = 0
    votes: int = 0
    type: str = "discussion_finished"


Event = (
    DiscussionStarted
    | StageStarted
    | TurnStarted
    | TextDelta
    | TurnFinished
    | TurnFailed
    | DiscussionFinished
)


def to_dict(event: Event) -> dict[str, Any]:
    """JSON form of an event; ``turn`` objects flatten to ``turn_id`` + fields."""
    if isinstance(event, TextDelta):  # the hot path: avoid asdict()
        return {"type": "text", "turn_id": event.turn_id, "text": event.text}
    d = asdict(event)
    turn = d.pop("turn", None)
    if turn is not None:
        d = {"type": d.pop("type"), **turn, **d}
    else:
        d = {"type": d.pop("type"), **d}
    return d

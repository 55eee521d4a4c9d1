"""Slack's rate limits as budgets shared by every reply in a workspace.

Limits are per method per workspace (https://api.slack.com/apis/rate-limits),
except ``chat.postMessage``: about one per second per channel.

Budgets are kept per workspace and per channel only while they matter
(:class:`IdleMap`): a process that served thousands of channels holds the
buckets of the ones written to recently, not of every channel it ever saw.

Replicas serving the same workspace (several processes behind one Request URL,
or Socket Mode connections) share its limits through the coordinator
(:meth:`WorkspaceBudgets.share`, Redis): each method's budget and each channel's
chat.postMessage budget is one key per workspace (team id), so together they stay
within what Slack allows the app there, and a 429 seen by one pauses all.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from core.budget import TokenBucket, WindowBudget
from core.coord import Coordinator

#: Calls per minute per workspace, from Slack's published tiers.
TIER_LIMITS: dict[str, int] = {
    "chat.update": 50,  # Tier 3
    "chat.startStream": 20,  # Tier 2
    "chat.appendStream": 100,  # Tier 4
    "chat.stopStream": 20,  # Tier 2
    # "Special rate limits apply" (https://docs.slack.dev/reference/methods/assistant.threads.setStatus):
    # Parley keeps to a Tier 3 pace, two calls per discussion and one per consensus stage.
    "assistant.threads.setStatus": 50,
}
#: chat.postMessage: about one per second per channel, short bursts allowed.
POST_PER_CHANNEL_PER_SECOND = 1.0

K = TypeVar("K")
V = TypeVar("V")


class IdleMap(Generic[K, V]):
    """Per-key state, created on first use and dropped once idle.

    A value stays while anyone still holds it (looked up weakly, so two holders
    never get two values for one key) and, beyond that, while ``idle(value)`` is
    false: a bucket that granted a call a moment ago, or is paused after a 429,
    still has state a fresh one would not. Idle values are swept whenever the
    map doubles past ``keep``, so its size stays within about twice the busy
    keys (or ``keep``), whatever number of keys it has seen.
    """

    def __init__(self, make: Callable[[K], V], idle: Callable[[V], bool], *, keep: int = 32) -> None:
        self.make = make
        self.idle = idle
        self.keep = keep
        self._held: weakref.WeakValueDictionary[K, V] = weakref.WeakValueDictionary()
        self._warm: dict[K, V] = {}
        self._sweep_at = keep

    def get(self, key: K) -> V:
        value = self._held.get(key)
        if value is None:
            value = self._held[key] = self.make(key)
        self._warm[key] = value
        if len(self._warm) >= self._sweep_at:
            self.sweep()
        return value

    def sweep(self) -> None:
        for key in [k for k, v in self._warm.items() if self.idle(v)]:
            del self._warm[key]
        self._sweep_at = max(self.keep, 2 * len(self._warm))

    def quiet(self) -> bool:
        """Every value is idle (those nobody holds any more included)."""
        return all(self.idle(v) for v in list(self._held.values()))

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._held.keys()))


def tier_bucket(
    per_minute: int, name: str, window: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> WindowBudget:
    """Slack's "N per minute" as a sliding window, kept one call below the limit so
    that network jitter between our clock and Slack's cannot push a burst over it."""
    # Stream starts and stops are not progress updates: they may use the whole burst.
    paced = name in ("chat.update", "chat.appendStream")
    return WindowBudget(per_minute - 1, window, paced=paced, name=name, clock=clock)


@dataclass
class WorkspaceBudgets:
    """Every reply in a workspace draws from these, whatever discussion it belongs to."""

    limits: dict[str, int] = field(default_factory=lambda: dict(TIER_LIMITS))
    window: float = 60.0  # seconds the per-minute limits are counted over (benchmarks compress time)
    post_rate: float = POST_PER_CHANNEL_PER_SECOND
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, WindowBudget] = field(default_factory=dict)
    #: chat.postMessage buckets of the channels written to recently (or still being written to).
    channels: IdleMap[str, TokenBucket] = field(init=False)
    #: Native streams started and not yet stopped (each will need a chat.stopStream).
    live_streams: int = 0
    streams_enabled: bool = True
    #: The coordinator these limits are shared through, and the workspace's key there (:meth:`share`).
    coord: Coordinator | None = None
    workspace: str = ""

    def __post_init__(self) -> None:
        for method, n in self.limits.items():
            self.buckets[method] = tier_bucket(n, method, self.window, self.clock)
        self.channels = IdleMap(self._post_bucket, TokenBucket.idle)
        if self.coord is not None:
            self.share(self.coord, self.workspace)

    def _post_bucket(self, channel: str) -> TokenBucket:
        bucket = TokenBucket(self.post_rate * 0.95, 1, name=f"post:{channel}", clock=self.clock)
        if self.coord is not None and self.coord.shared:
            bucket.share(self.coord, f"slack:{self.workspace}:post:{channel}")
        return bucket

    def share(self, coord: Coordinator | None, workspace: str) -> WorkspaceBudgets:
        """Share these limits with every replica serving ``workspace`` (its team id) through
        ``coord``; a coordinator of this process only (no Redis) changes nothing. Returns self."""
        self.coord, self.workspace = coord, workspace
        if coord is None or not coord.shared:
            return self
        for method, bucket in self.buckets.items():
            bucket.share(coord, f"slack:{workspace}:{method}")
        for channel in self.channels:
            self.channels.get(channel).share(coord, f"slack:{workspace}:post:{channel}")
        return self

    def __getitem__(self, method: str) -> WindowBudget:
        return self.buckets[method]

    def post(self, channel: str) -> TokenBucket:
        return self.channels.get(channel)

    def can_stream(self) -> bool:
        """A new reply may stream natively: a start token is free now and the stops keep up."""
        return (
            self.streams_enabled
            and self.buckets["chat.startStream"].available()
            and self.live_streams < self.limits["chat.stopStream"]
        )

    def idle(self) -> bool:
        """Nothing this workspace's budgets hold would differ from new ones."""
        return (
            self.live_streams == 0
            and self.streams_enabled
            and all(b.idle() for b in self.buckets.values())
            and self.channels.quiet()
        )

"""Slack's rate limits as budgets shared by every reply in a workspace.

Limits are per method per workspace (https://api.slack.com/apis/rate-limits),
except ``chat.postMessage``: about one per second per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.budget import TokenBucket, WindowBudget

#: Calls per minute per workspace, from Slack's published tiers.
TIER_LIMITS: dict[str, int] = {
    "chat.update": 50,  # Tier 3
    "chat.startStream": 20,  # Tier 2
    "chat.appendStream": 100,  # Tier 4
    "chat.stopStream": 20,  # Tier 2
}
#: chat.postMessage: about one per second per channel, short bursts allowed.
POST_PER_CHANNEL_PER_SECOND = 1.0


def tier_bucket(per_minute: int, name: str, window: float = 60.0) -> WindowBudget:
    """Slack's "N per minute" as a sliding window, kept one call below the limit so
    that network jitter between our clock and Slack's cannot push a burst over it."""
    # Stream starts and stops are not progress updates: they may use the whole burst.
    paced = name in ("chat.update", "chat.appendStream")
    return WindowBudget(per_minute - 1, window, paced=paced, name=name)


@dataclass
class WorkspaceBudgets:
    """Every reply in a workspace draws from these, whatever discussion it belongs to."""

    limits: dict[str, int] = field(default_factory=lambda: dict(TIER_LIMITS))
    window: float = 60.0  # seconds the per-minute limits are counted over (benchmarks compress time)
    post_rate: float = POST_PER_CHANNEL_PER_SECOND
    buckets: dict[str, WindowBudget] = field(default_factory=dict)
    channels: dict[str, TokenBucket] = field(default_factory=dict)
    #: Native streams started and not yet stopped (each will need a chat.stopStream).
    live_streams: int = 0
    streams_enabled: bool = True

    def __post_init__(self) -> None:
        for method, n in self.limits.items():
            self.buckets[method] = tier_bucket(n, method, self.window)

    def __getitem__(self, method: str) -> WindowBudget:
        return self.buckets[method]

    def post(self, channel: str) -> TokenBucket:
        bucket = self.channels.get(channel)
        if bucket is None:
            bucket = self.channels[channel] = TokenBucket(self.post_rate * 0.95, 1, name=f"post:{channel}")
        return bucket

    def can_stream(self) -> bool:
        """A new reply may stream natively: a start token is free now and the stops keep up."""
        return (
            self.streams_enabled
            and self.buckets["chat.startStream"].available()
            and self.live_streams < self.limits["chat.stopStream"]
        )

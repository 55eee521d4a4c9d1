"""Who is asking, and where: the scope every policy, budget, key and panel attaches to.

A *workspace* is a Slack team (``slack:T…``), a Discord server (``discord:…``; a
person's DMs with the bot are ``discord:dm:…``) or ``terminal`` (the CLI and the
console, whose operator is its admin). It has channels and users; the most
specific scope wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

LOCAL_WORKSPACE = "terminal"  # the CLI and console, one machine
LOCAL_USER = "operator"


@dataclass(frozen=True, slots=True)
class Caller:
    """The person behind a request, as the front-end knows them."""

    workspace: str
    user: str
    #: The channel the request was made in (a thread's parent channel: threads inherit it).
    channel: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)
    #: The platform says so (Slack admin or owner, Discord Manage Server, the local operator).
    admin: bool = False
    #: Only this person sees what they typed and what Parley answers (a DM, an ephemeral
    #: command, a modal): a key may be given here.
    private: bool = False
    front_end: str = "cli"


def local_caller(front_end: str = "cli") -> Caller:
    return Caller(LOCAL_WORKSPACE, LOCAL_USER, "", admin=True, private=True, front_end=front_end)


_MENTION = re.compile(r"<@!?([A-Za-z0-9]+)(?:\|[^>]*)?>")


def person_id(text: str) -> str:
    """``<@U123|bob>``, ``<@!123>`` or ``U123`` → the id."""
    m = _MENTION.fullmatch(text.strip())
    return m.group(1) if m else text.strip().lstrip("@")


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a spend belongs to, and when each resets."""

    day: str
    month: str
    day_resets: datetime
    month_resets: datetime

    @classmethod
    def at(cls, now: datetime | None = None) -> Periods:
        if now is None:  # every admission asks: the same day's periods are made once
            now = datetime.now(UTC)
            today = _TODAY[0]
            if today is not None and today.day_resets - _DAY <= now < today.day_resets:
                return today
            _TODAY[0] = today = cls.at(now)
            return today
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month_start = start.replace(day=1)
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        return cls(now.strftime("%Y-%m-%d"), now.strftime("%Y-%m"), start + timedelta(days=1), next_month)

    def resets(self, period: str) -> datetime:
        return self.day_resets if period == "daily" else self.month_resets

    def key(self, period: str) -> str:
        return self.day if period == "daily" else self.month


_DAY = timedelta(days=1)
#: The periods of the current UTC day (:meth:`Periods.at`).
_TODAY: list[Periods | None] = [None]


def until(when: datetime, now: datetime | None = None) -> str:
    """``00:00 UTC on 2026-12-03, in 5 h 12 min``."""
    now = now or datetime.now(UTC)
    left = max(0, int((when - now).total_seconds()))
    d, rest = divmod(left, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    span = f"{d} d {h} h" if d else f"{h} h {m} min" if h else f"{m} min"
    return f"00:00 UTC on {when:%Y-%m-%d}, in {span}"

"""The one contract between the renderer and a platform: :class:`Sink`.

A sink is one destination (a Slack thread, a Discord thread or channel, the
terminal). The renderer decides *what* each message shows and *when* it is
written; the sink only knows *how* to post and edit on its platform, and
reports what the platform said with the exceptions below, the same for every
front-end:

- :class:`RateLimited` (a 429): the renderer pauses the budget and re-sends;
- :class:`MessageClosed` (a stream expired, a message deleted): the message
  keeps what it showed and the rest continues in a new one;
- :class:`Undeliverable` (channel archived, bot removed, permission missing):
  the renderer stops writing that turn; what was shown stays.

Anything else is a transient platform error the renderer retries. Which
messages are open, what they show and their budget claims are kept by
:class:`core.ledger.Ledger`, driven by the renderer: a sink never writes to
the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core.budget import TokenBucket
from core.events import DiscussionFinished, DiscussionStarted, StageStarted, TurnInfo

State = Literal["streaming", "continued", "done", "failed"]
#: The events a sink may show besides turns.
Notice = DiscussionStarted | StageStarted | DiscussionFinished


if TYPE_CHECKING:
    from core.actions import Action


@dataclass(slots=True)
class Frame:
    """What one platform message should show now."""

    turn: TurnInfo
    text: str  # display text (fences closed/reopened across a rollover)
    raw: str  # the exact slice of the streamed answer this message carries
    part: int  # 1 for the first message of a turn, 2… for continuations
    state: State
    #: The error, when state == "failed": plain text that may quote a provider, so a sink
    #: escapes it for its platform like any other text it did not write itself.
    notice: str | None = None
    #: What the person can do under the answer (core.actions), on its last message once it is final.
    actions: tuple[Action, ...] = ()


class RateLimited(Exception):
    """The platform answered 429; the operation is retried after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.2f}s")
        self.retry_after = retry_after


class MessageClosed(Exception):
    """The message can no longer be edited (a Slack stream that expired, a message a
    moderator deleted). The renderer ends it at what it last showed and carries the
    rest of the text into a new message."""


class Undeliverable(Exception):
    """The platform will never accept this operation (the channel was archived or
    deleted, the bot was removed, a permission is missing). ``message`` says why, in
    a sentence a person can act on. The renderer stops writing that turn."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Sink(ABC):
    """One destination on one platform.

    Subclasses set the four attributes and implement :meth:`post` and
    :meth:`edit`; everything else has a default that suits a sink with one
    way to write a message.
    """

    #: Max characters of ``Frame.text`` per message (net of the sink's own decoration).
    limit: int
    #: Seconds between two edits of the same message (freshness vs. cost).
    min_interval: float
    post_budget: TokenBucket
    edit_budget: TokenBucket
    #: Recorded with each open message, so that this front-end's restart recovery finds it.
    front_end: str = ""
    #: Where the messages go, as recovery reads it back (a channel, ``channel:thread``).
    destination: str = ""

    @abstractmethod
    async def post(self, frame: Frame) -> Any:
        """Create a message; return a reference for later edits."""

    @abstractmethod
    async def edit(self, ref: Any, frame: Frame) -> None:
        """Replace (or extend) a message's content."""

    async def notice(self, event: Notice) -> None:  # noqa: B027  (optional: most sinks show some)
        """Show a non-turn event (discussion start, stage, summary); the budget is already spent."""

    def shows(self, event: Notice) -> bool:
        """Whether :meth:`notice` writes anything for ``event`` (if not, no budget is spent on it)."""
        return type(self).notice is not Sink.notice

    def budget(self, ref: Any, frame: Frame) -> TokenBucket:
        """The bucket the next operation on a message draws from. A platform with several
        ways to write a message (Slack: post and update, or a native stream) chooses per
        operation; the choice may depend on ``frame.state``."""
        return self.post_budget if ref is None else self.edit_budget

    @property
    def chooses_budget(self) -> bool:
        return type(self).budget is not Sink.budget

    def final_budget(self, ref: Any) -> TokenBucket:
        """The bucket the final operation on this open message will draw from; the ledger
        holds a claim there so that progress updates leave room for it."""
        return self.edit_budget

    def record(self, ref: Any) -> dict[str, Any] | None:
        """How restart recovery finds this message again (JSON); None: nothing to recover."""
        return None

    def shown(self, ref: Any) -> str:
        """What the message shows now, in the platform's markup (for the restart note)."""
        return ""

    def abandon(self, ref: Any) -> None:  # noqa: B027
        """The renderer gave up on this message: release what the sink holds for it."""

    async def aclose(self) -> None:  # noqa: B027
        """Finish work the sink does in the background (e.g. stopping Slack streams)."""


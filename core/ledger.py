"""The post ledger: which platform messages of a discussion are still open.

Driven by the renderer, for every sink alike. For each open message it keeps

- the row in the store's ``posts`` table (what the message shows, how to find
  it), so that a restart can edit it to say it was interrupted instead of
  leaving it hanging (:func:`recover`);
- its budget claim: a message still streaming will need a final operation, so
  a slot is reserved for it in the bucket that will pay for that
  (:meth:`core.sink.Sink.final_budget`), and released when the final is sent
  or the message is closed.

Bookkeeping never causes a platform write: every store call here is guarded,
so a failed write is logged and the message stays posted exactly once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.budget import TokenBucket
from core.errors import redact

if TYPE_CHECKING:
    from core.sink import Frame, Sink
    from core.store import Store

log = logging.getLogger("parley.ledger")


@dataclass(slots=True)
class Entry:
    """One open platform message."""

    post_id: int | None = None
    claim: TokenBucket | None = None
    open: bool = True
    record: str | None = None  # how recovery finds the message, as last stored
    saved_at: float = 0.0  # when what it shows was last stored
    timer: asyncio.TimerHandle | None = None  # a pending save of what it shows


class Ledger:
    """The open messages of one discussion on one sink.

    What a streaming message shows is stored at most every ``save_every`` seconds
    (and once more when it stops changing), not at every edit.
    """

    def __init__(
        self, store: Store | None, discussion_id: str | None, sink: Sink, *, save_every: float = 2.0
    ) -> None:
        self.save_every = save_every
        self.store = store if discussion_id is not None else None
        self.discussion_id = discussion_id or ""
        self.sink = sink
        self.failures = 0

    # --- store writes, never raising --------------------------------------------------------
    def _guard(self, what: str, fn: Callable[[Store], Any]) -> Any:
        if self.store is None:
            return None
        try:
            return fn(self.store)
        except Exception as e:
            self.failures += 1
            log.warning("could not record %s (the message itself is fine): %s", what, redact(repr(e)))
            return None

    def thread(self, destination: str, ref: dict[str, Any]) -> Entry:
        """The thread a discussion lives in: a restart leaves a note there."""
        post_id = self._guard(
            "the thread",
            lambda store: store.record_post(
                self.discussion_id, None, self.sink.front_end, destination, json.dumps({**ref, "kind": "thread"})
            ),
        )
        return Entry(post_id)

    # --- driven by the renderer ---------------------------------------------------------------
    def opened(self, turn_id: str, ref: Any, frame: Frame) -> Entry:
        """A message was posted showing ``frame``."""
        entry = Entry()
        record = self.sink.record(ref)
        if record is not None:
            entry.record = json.dumps(record)
            entry.post_id = self._guard(
                "a new message",
                lambda store: store.record_post(
                    self.discussion_id, turn_id, self.sink.front_end, self.sink.destination, entry.record or ""
                ),
            )
        self.wrote(entry, ref, frame)
        return entry

    def settling(self, entry: Entry | None) -> None:
        """The final operation on a message was granted its budget: its claim is spent."""
        if entry is not None:
            self._release(entry)

    def wrote(self, entry: Entry, ref: Any, frame: Frame) -> None:
        """An operation showing ``frame`` succeeded."""
        if frame.state != "streaming":
            self.close(entry)
            return
        want = self.sink.final_budget(ref)
        if entry.claim is not want:  # a Slack stream that became a posted message moves its claim
            self._release(entry)
            entry.claim = want
            want.claim(1)
        if entry.post_id is not None:
            post_id = entry.post_id
            record = json.dumps(self.sink.record(ref))
            if record != entry.record:  # e.g. a Slack stream that became a posted message
                entry.record = record
                self._guard("how to find a message", lambda store: store.update_post_ref(post_id, record))
            self._save_later(entry, ref)

    def _save_later(self, entry: Entry, ref: Any) -> None:
        if entry.timer is not None:
            return  # a save is due; it will store the latest text
        wait = entry.saved_at + self.save_every - time.monotonic()
        if wait <= 0:
            self._save(entry, ref)
        else:
            entry.timer = asyncio.get_running_loop().call_later(wait, self._save, entry, ref)

    def _save(self, entry: Entry, ref: Any) -> None:
        entry.timer = None
        if not entry.open or entry.post_id is None:
            return
        entry.saved_at = time.monotonic()
        post_id, shown = entry.post_id, self.sink.shown(ref)
        self._guard("what a message shows", lambda store: store.update_post_text(post_id, shown))

    def close(self, entry: Entry | None) -> None:
        """The message is finished, or can no longer be written: nothing to recover."""
        if entry is None or not entry.open:
            return
        entry.open = False
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self._release(entry)
        if entry.post_id is not None:
            post_id = entry.post_id
            self._guard("a finished message", lambda store: store.close_posts([post_id]))

    @staticmethod
    def _release(entry: Entry) -> None:
        if entry.claim is not None:
            entry.claim.claim(-1)
            entry.claim = None


async def recover(
    store: Store, front_end: str, mark: Callable[[dict[str, Any], str], Awaitable[None]]
) -> int:
    """Edit every message that dead processes of ``front_end`` left open to say it was
    interrupted (``mark(ref, shown_text)``), and close it. Returns how many were marked.

    Run at start-up (a previous process of this one) and every :attr:`Store.check_every`
    by :func:`watch` (a replica that died): :meth:`Store.take_over` claims each run and
    message for one survivor only."""
    n = 0
    for post in await store.take_over(front_end):
        if post.pop("discussion_status", None) not in ("running", "interrupted", None):
            # The discussion ended; only closing its bookkeeping was cut short.
            store.close_posts([post["id"]])
            continue
        try:
            await mark(json.loads(post["ref"]), post.get("text") or "")
            n += 1
        except Exception as e:  # keep going: one deleted message must not block the rest
            log.warning("could not mark post %s interrupted: %s", post["id"], redact(str(e)))
        store.close_posts([post["id"]])
    if n:
        log.info("took over %d open message(s) that a stopped process left", n)
    return n


async def watch(
    store: Store,
    front_end: str,
    mark: Callable[[dict[str, Any], str], Awaitable[None]],
    *,
    also: Callable[[], Any] | None = None,
) -> None:
    """Until cancelled: every :attr:`Store.check_every` (a sixth of the lease, jittered so that
    replicas do not all look at once), :func:`recover` what dead replicas of ``front_end`` left,
    then ``also()`` (plain or async: the budget reservations they held, the stop requests
    this process has not heard). Errors are logged, never raised: a store
    that is down for a while only delays the takeover."""
    while True:
        await asyncio.sleep(store.check_every * random.uniform(0.75, 1.0))
        try:
            await recover(store, front_end, mark)
            if also is not None and inspect.isawaitable(done := also()):
                await done
        except Exception as e:
            log.warning("could not take over a stopped process's runs: %s", redact(repr(e)))

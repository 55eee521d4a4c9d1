"""What every chat front-end does with a discussion: run it, remember the thread it
lives in (so that a restart can leave a note there), render it through the
platform's sink, and close.

A front-end brings only the sink and where to say a refusal (an ephemeral reply,
an interaction follow-up); validation and everything after are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from core.commands import Request
from core.errors import ParleyError, UsageError, redact
from core.events import DiscussionStarted, Event
from core.ledger import Ledger
from core.render import Renderer
from core.services import Services
from core.sink import Sink

log = logging.getLogger("parley.threads")


class Requests:
    """The requests a chat front-end has taken on and not finished.

    Platforms want an answer within seconds, so each request runs as its own task
    after the acknowledgement; this keeps them referenced, logs (redacted) what
    failed, cancels them at shutdown, and lets tests and benchmarks wait for quiet.
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.spawned = 0
        self._taken = asyncio.Event()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.spawned += 1
        self._taken.set()
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s request failed: %s", type(self).__name__, redact(repr(task.exception())))

    async def idle(self, spawned: int = 0, within: float = 30.0) -> None:
        """Wait until at least ``spawned`` requests were taken on and every one has finished."""
        async with asyncio.timeout(within):
            while self.spawned < spawned:
                self._taken.clear()
                await self._taken.wait()
            while self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def shutdown(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def discuss_in_thread(
    services: Services,
    req: Request,
    *,
    conversation: str,
    front_end: str,
    thread: tuple[str, dict[str, Any]],
    make_sink: Callable[[str], Sink],
    on_error: Callable[[str], Awaitable[Any]],
    on_renderer: Callable[[Renderer], None] | None = None,
) -> None:
    """Run ``req`` and stream it into one thread.

    ``thread`` is ``(destination, ref)`` as the front-end's restart recovery reads it
    back (``ref`` gets ``"kind": "thread"``). ``make_sink(discussion_id)`` builds the
    sink; ``on_error`` shows a refusal (unknown persona, provider paused…) to the
    person who asked, before anything is posted. The renderer keeps the ledger of
    open messages; the thread itself stays in it until the discussion ends.
    """
    events = services.engine.run(req, conversation=conversation, front_end=front_end)
    try:
        first = await anext(events)
    except (UsageError, ParleyError) as e:
        await on_error(f"⚠️ {e.message}")
        return
    assert isinstance(first, DiscussionStarted)
    sink = make_sink(first.discussion_id)
    ledger = Ledger(services.store, first.discussion_id, sink)
    destination, ref = thread
    thread_entry = ledger.thread(destination, ref)
    renderer = Renderer(sink, ledger=ledger)
    if on_renderer is not None:
        on_renderer(renderer)
    try:
        await renderer.consume(_prepend(first, events))
        await sink.aclose()  # a sink may finish work in the background
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()
    ledger.close(thread_entry)


async def _prepend(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for ev in rest:
        yield ev

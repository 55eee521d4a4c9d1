"""What every chat front-end does with a discussion: run it, remember the thread it
lives in (so that a restart can leave a note there), render it through the
platform's sink, and close.

A front-end brings only the sink and where to say a refusal (an ephemeral reply,
an interaction follow-up); validation and everything after are the same.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from core.commands import Request
from core.errors import ParleyError, UsageError
from core.events import DiscussionStarted, Event
from core.render import Renderer, Sink
from core.services import Services


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
    person who asked, before anything is posted.
    """
    events = services.engine.run(req, conversation=conversation, front_end=front_end)
    try:
        first = await anext(events)
    except (UsageError, ParleyError) as e:
        await on_error(f"⚠️ {e.message}")
        return
    assert isinstance(first, DiscussionStarted)
    store = services.store
    destination, ref = thread
    thread_post = store.record_post(
        first.discussion_id, None, front_end, destination, json.dumps({**ref, "kind": "thread"})
    )
    sink = make_sink(first.discussion_id)
    renderer = Renderer(sink)
    if on_renderer is not None:
        on_renderer(renderer)
    try:
        await renderer.consume(_prepend(first, events))
        aclose = getattr(sink, "aclose", None)  # a sink may finish work in the background
        if aclose is not None:
            await aclose()
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()
    store.close_posts([thread_post])


async def _prepend(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for ev in rest:
        yield ev

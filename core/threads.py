"""What every chat front-end does with a discussion: run it, remember the thread it
lives in (so that a restart can leave a note there), render it through the
platform's sink, and close.

A front-end brings only the sink and where to say a refusal (an ephemeral reply,
an interaction follow-up); validation and everything after are the same.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from core.config import Settings
from core.errors import ParleyError, UsageError, redact
from core.events import DiscussionStarted, Event
from core.governance import Grant
from core.ledger import Ledger
from core.render import Renderer
from core.services import Services
from core.sink import Sink
from core.stops import STOP_GRACE, STOPPED

log = logging.getLogger("parley.threads")


class Admission:
    """How many discussions may run at once per workspace (Slack workspace, Discord
    server) and per person in it; a limit of 0 or less means no limit.

    A front-end calls :meth:`enter` before it acknowledges a discussion (it is a
    dictionary lookup) and shows the UsageError's sentence privately if refused;
    otherwise it releases the returned :class:`Ticket` when the discussion ends,
    however it ends. Counts that fall to zero are forgotten.
    """

    def __init__(self, per_workspace: int, per_user: int) -> None:
        self.per_workspace = per_workspace
        self.per_user = per_user
        self.workspaces: dict[str, int] = {}
        self.users: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        return cls(settings.max_running_per_workspace, settings.max_running_per_user)

    def enter(self, workspace: str, user: str) -> Ticket:
        """A ticket for one more discussion, or UsageError (busy: try again later)."""
        mine = self.users.get((workspace, user), 0)
        if 0 < self.per_user <= mine:
            raise UsageError(
                f"You already have {mine} discussions running. Try again when one of them finishes "
                f"(at most {self.per_user} per person: PARLEY_MAX_RUNNING_PER_USER)."
            )
        here = self.workspaces.get(workspace, 0)
        if 0 < self.per_workspace <= here:
            raise UsageError(
                f"Parley is busy: {here} discussions are running here. Try again in a minute "
                f"(at most {self.per_workspace} at once: PARLEY_MAX_RUNNING_PER_WORKSPACE)."
            )
        self.users[(workspace, user)] = mine + 1
        self.workspaces[workspace] = here + 1
        return Ticket(self, workspace, user)

    @property
    def running(self) -> int:
        return sum(self.workspaces.values())

    def _leave(self, workspace: str, user: str) -> None:
        _decrement(self.users, (workspace, user))
        _decrement(self.workspaces, workspace)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    n = counts.pop(key, 0) - 1
    if n > 0:
        counts[key] = n


@dataclass(slots=True)
class Ticket:
    """One admitted discussion; :meth:`release` it when the discussion ends (idempotent)."""

    admission: Admission
    workspace: str
    user: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._leave(self.workspace, self.user)


class FrontDoor:
    """Requests taken in and not yet acknowledged, so that the work acknowledged requests
    start waits for them: acknowledgements first.

    An acknowledgement is due within seconds (Slack: 3 s) and costs a fraction of a
    millisecond; what follows one (a discussion's first posts, its provider connections)
    costs milliseconds and can wait a moment. On one event loop, a burst of requests would
    otherwise queue each acknowledgement behind the discussions of the ones before it.
    A front-end wraps each request it must acknowledge in :meth:`inside`; work spawned
    after an acknowledgement (:meth:`Requests.spawn`) waits in :meth:`clear` until no
    request is inside, then starts one per turn of the event loop, so that a request
    arriving meanwhile is read between two of them and goes first again; and after at most
    ``most`` seconds whatever happens, so that a steady stream of requests never starves it.
    """

    def __init__(self, most: float = 0.5) -> None:
        self.most = most
        self.count = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waking = False

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0 and self._waiting:
                self._wake()

    def _wake(self) -> None:
        if not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        """Let the next waiting work start (on the next turn of the loop, the one after)."""
        self._waking = False
        if self.count:
            return  # a request came in: it goes first
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # not given up (its ``most`` passed, or it was cancelled)
                waiter.set_result(None)
                break
        if self._waiting:
            self._wake()

    async def clear(self) -> None:
        """Return when this work's turn comes: no request inside, the work queued before it
        started; or after ``most`` seconds."""
        if self.count == 0 and not self._waiting:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if self.count == 0:
            self._wake()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.most):
                await waiter


def settle_heap() -> None:
    """Start-up is over: collect its garbage, then freeze what is left (:func:`gc.freeze`).

    What a front-end builds before it serves (services, the catalog, personas, the bolt or
    discord.py client, every module) lives as long as the process; frozen, the cyclic
    collector no longer walks it on every full collection, and a full collection no longer
    stops the event loop for tens of milliseconds in the middle of a burst of requests
    waiting for their acknowledgement. :meth:`Requests.shutdown` undoes it."""
    gc.collect()
    gc.freeze()


class Requests:
    """The requests a chat front-end has taken on and not finished.

    Platforms want an answer within seconds, so each request runs as its own task
    after the acknowledgement; this keeps them referenced, logs (redacted) what
    failed, cancels them at shutdown, and lets tests and benchmarks wait for quiet.
    Spawned work starts after the acknowledgements still due (:class:`FrontDoor`).
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.spawned = 0
        self._taken = asyncio.Event()
        self.door = FrontDoor()

    def spawn(self, coro: Awaitable[Any], *, behind_acks: bool = True) -> asyncio.Task[Any]:
        """Run ``coro`` as a request's own task; with ``behind_acks`` (work that follows an
        acknowledgement) once the requests in :attr:`door` are acknowledged. Work that itself
        acknowledges passes ``behind_acks=False``."""
        if behind_acks and asyncio.iscoroutine(coro):
            coro = self._behind_acks(coro)
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.spawned += 1
        self._taken.set()
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def _behind_acks(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            await self.door.clear()
        except BaseException:
            coro.close()  # cancelled before it started (a shutdown): it never runs
            raise
        return await coro

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

    async def shutdown(self, within: float = 10.0) -> None:
        """Cancel every request and wait for them, at most ``within`` seconds: each
        renderer says "interrupted" where it can within its grace; what is still open
        after that, the next start's recovery marks."""
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=within)
            if late:
                log.warning("%d request(s) did not stop within %.0fs; leaving them", len(late), within)
        gc.unfreeze()  # what start-up froze (settle_heap) can be collected again once it is dropped


async def discuss_in_thread(
    services: Services,
    grant: Grant,
    *,
    conversation: str,
    front_end: str,
    thread: tuple[str, dict[str, Any]],
    make_sink: Callable[[str], Sink],
    on_error: Callable[[str], Awaitable[Any]],
    on_renderer: Callable[[Renderer], None] | None = None,
) -> None:
    """Run an admitted discussion (:meth:`core.governance.Governance.admit`) and stream it into one thread.

    ``thread`` is ``(destination, ref)`` as the front-end's restart recovery reads it
    back (``ref`` gets ``"kind": "thread"``). ``make_sink(discussion_id)`` builds the
    sink; ``on_error`` shows a refusal (unknown persona, provider paused…) to the
    person who asked, before anything is posted. The renderer keeps the ledger of
    open messages; the thread itself stays in it until the discussion ends.
    """
    events = services.engine.run(grant.request, conversation=conversation, front_end=front_end, grant=grant)
    try:
        first = await anext(events)
    except (UsageError, ParleyError) as e:
        grant.release()
        await on_error(f"⚠️ {e.message}")
        return
    except BaseException:
        grant.release()
        raise
    assert isinstance(first, DiscussionStarted)
    sink = make_sink(first.discussion_id)
    ledger = Ledger(services.store, first.discussion_id, sink)
    destination, ref = thread
    thread_entry = ledger.thread(destination, ref)
    renderer = Renderer(sink, ledger=ledger, metrics=services.metrics)
    if on_renderer is not None:
        on_renderer(renderer)
    task = asyncio.current_task()
    stopped = False

    def stop() -> None:  # /stop, from this process or another replica (core.stops)
        nonlocal stopped
        stopped = True
        renderer.stop_notice = STOPPED
        renderer.grace = max(renderer.grace, STOP_GRACE)  # not a shutdown: let the answers say so
        if task is not None:
            task.cancel()

    unregister = services.stops.register(first.discussion_id, stop)
    try:
        await renderer.consume(_prepend(first, events))
        await sink.aclose()  # a sink may finish work in the background
    except asyncio.CancelledError:
        if not stopped or task is None or task.uncancel() > 0:
            raise  # a shutdown: what stays open, the next start (or a survivor) marks
    finally:
        unregister()
        with contextlib.suppress(Exception):
            await events.aclose()
    ledger.close(thread_entry)


async def _prepend(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for ev in rest:
        yield ev


def run_service(main: Coroutine[Any, Any, Any]) -> None:
    """Run a long-lived front-end until it ends, Ctrl-C (KeyboardInterrupt, as
    ``asyncio.run`` raises it) or SIGTERM (what ``docker stop`` and systemd send): both
    cancel it, so requests shut down as on Ctrl-C (replies say they were interrupted,
    within their grace) instead of vanishing mid-write."""

    async def guarded() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopping = False

        def stop() -> None:
            nonlocal stopping
            stopping = True
            if task is not None:
                task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            await main
        except asyncio.CancelledError:
            if not stopping:
                raise
            log.info("stopped by SIGTERM")
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(guarded())

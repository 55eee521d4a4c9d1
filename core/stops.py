"""Stopping a running discussion from whichever replica the request reaches.

``/stop`` can arrive at any replica (a load balancer picks one), while the discussion runs
in the process that started it. :meth:`Stops.request` writes the request on each matching
discussion (:meth:`core.store.Store.request_stop`), stops the ones this process runs, and
publishes the others' ids on the coordinator (:meth:`core.coord.Coordinator.publish`): the
owner, subscribed, stops its own at once. A message can be missed (Redis pub/sub delivers at
most once; without Redis only this process hears it), so every process also looks for stop
requests on its own runs at each takeover check (:meth:`poll`, every sixth of the lease): a
stop always happens, at once with Redis, within seconds without it.

A stopped discussion ends like a cancelled one: each unfinished answer keeps what it showed
and says it was stopped, the discussion is recorded as interrupted, and its thread is closed
(no restart note later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.coord import Unavailable
from core.errors import redact

if TYPE_CHECKING:
    from core.governance.scope import Caller
    from core.services import Services

log = logging.getLogger("parley.stops")

#: The coordinator topic stop requests are published on.
TOPIC = "stop"
#: What an answer that was cut off by /stop says.
STOPPED = "Stopped: someone asked to stop this discussion (/stop)."
#: Seconds a stopped discussion's answers may take to say so (a shutdown allows less).
STOP_GRACE = 30.0


class Stops:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._local: dict[str, Callable[[], None]] = {}
        self._listener: asyncio.Task[None] | None = None

    def register(self, discussion_id: str, stop: Callable[[], None]) -> Callable[[], None]:
        """``stop()`` ends this process's run of ``discussion_id``; returns the unregistration."""
        self._local[discussion_id] = stop
        if self._listener is None and self.services.coord.shared:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return lambda: self._local.pop(discussion_id, None) and None

    def running(self) -> set[str]:
        return set(self._local)

    def _stop(self, discussion_id: str) -> bool:
        stop = self._local.pop(discussion_id, None)
        if stop is None:
            return False
        log.info("stopping discussion %s on request", discussion_id)
        stop()
        return True

    async def request(self, caller: Caller) -> int:
        """Stop the caller's running discussions in their channel (an admin's: anyone's there),
        wherever they run. Returns how many were asked to stop."""
        store = self.services.store
        ids = await store.request_stop(caller.workspace, caller.channel, None if caller.admin else caller.user)
        for did in ids:
            if not self._stop(did):
                try:
                    await self.services.coord.publish(TOPIC, did)
                except Unavailable:
                    pass  # its owner finds the request at its next check
        return len(ids)

    async def poll(self) -> None:
        """Stop this process's runs whose stop request was not heard (a missed message, no Redis)."""
        for did in await self.services.store.stop_requests():
            self._stop(did)

    async def _listen(self) -> None:
        try:
            async for did in self.services.coord.subscribe(TOPIC):
                self._stop(did)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the poll still finds every request
            log.warning("stop requests are no longer heard at once: %s", redact(repr(e)))

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None

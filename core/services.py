"""build_services(settings) -> Services: the one place things are wired."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from core import ledger
from core.config import Settings
from core.coord import Coordinator, LocalCoordinator, coordinator
from core.discussion import Engine
from core.governance import Governance
from core.ops import Metrics
from core.personas import PersonaBook
from core.providers.base import HTTPClient
from core.providers.catalog import load_catalog
from core.providers.http import AiohttpClient
from core.providers.registry import Registry
from core.providers.spec import Catalog
from core.stops import Stops
from core.store import Store


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    store: Store
    http: HTTPClient
    registry: Registry
    personas: PersonaBook
    engine: Engine
    governance: Governance
    metrics: Metrics
    #: What replicas share (rate budgets, 429 pauses, event dedupe): Redis with PARLEY_REDIS_URL.
    coord: Coordinator = field(default_factory=LocalCoordinator)
    #: Work that lives as long as the services (the takeover watch), cancelled first at close.
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Stopping running discussions from any replica (/stop).
    stops: Stops = field(init=False)

    def __post_init__(self) -> None:
        self.stops = Stops(self)

    def keep(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def take_over(self, front_end: str, mark: Callable[[dict[str, Any], str], Awaitable[None]]) -> int:
        """At a front-end's start: edit what dead processes of ``front_end`` left open
        (``mark(ref, shown)``) and settle their budget reservations, then keep doing so every
        sixth of the lease while this process runs (:func:`core.ledger.watch`), so that a
        replica that dies is taken over by a survivor, not only by its own restart. Each check
        also stops this process's runs whose /stop it has not heard (:meth:`Stops.poll`)."""
        n = await ledger.recover(self.store, front_end, mark)
        self.keep(ledger.watch(self.store, front_end, mark, also=self._each_check))
        return n

    async def _each_check(self) -> None:
        self.governance.db.settle_orphans()
        await self.stops.poll()

    async def aclose(self) -> None:
        for task in list(self.background):
            task.cancel()
        for task in list(self.background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.stops.aclose()
        await self.governance.aclose()
        await self.registry.aclose()
        await self.http.aclose()
        await self.coord.aclose()
        self.store.close()

    async def __aenter__(self) -> Services:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def build_services(settings: Settings | None = None, *, http: HTTPClient | None = None) -> Services:
    settings = settings or Settings()
    catalog = load_catalog(settings.config)
    store = Store(settings.store_target, lease=settings.lease_seconds)
    client = http or AiohttpClient(settings.connect_timeout, settings.read_timeout)
    registry = Registry(catalog, settings, client, store)
    personas = PersonaBook(settings.personas_dir)
    engine = Engine(registry, personas, store, settings)
    metrics = Metrics()
    metrics.watch(store)
    engine.turns.metrics = metrics
    engine.metrics = metrics
    governance = Governance(store, settings, engine.planner, registry, engine.turns.history)
    if settings.policy_file is not None:
        from core.governance.policyfile import seed

        seed(governance, settings.policy_file, personas)
    governance.db.settle_orphans()  # reservations of processes that died mid-discussion
    return Services(settings, catalog, store, client, registry, personas, engine, governance, metrics,
                    coordinator(settings))

"""build_services(settings) -> Services: the one place things are wired."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    async def aclose(self) -> None:
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

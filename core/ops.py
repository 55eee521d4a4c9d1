"""Operations: Prometheus metrics, health and readiness for the long-running front-ends.

:class:`Metrics` keeps its own registry (several services in one process, as in
tests, never collide). The turn runner counts turns, tokens and cost; the renderer
counts platform 429s, open streams and how long a turn waits for its first visible
text; the store's writer queue is read when scraped. :func:`routes` serves
``/healthz`` (the process answers), ``/readyz`` (the store answers a query and its
writer thread is alive, and, when ``PARLEY_REDIS_URL`` is set, the Redis that
replicas share (:mod:`core.coord`) answers a ping; 503 with the reasons otherwise) and
``/metrics``. Names are prefixed ``parley_``.

A load balancer or an orchestrator takes a replica out of rotation while ``/readyz``
says 503 and restarts it when ``/healthz`` stops answering: a store or Redis that is
down makes every replica unready, never kills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from core.events import TurnFailed, TurnFinished
    from core.services import Services
    from core.store import Store

#: Seconds from a turn's start to its first visible text: the freshness people feel.
FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter("parley_turns", "Turns finished, by provider, model and status",
                             ["provider", "model", "status"], registry=r)
        self.tokens = Counter("parley_tokens", "Tokens, by provider, model and direction (input, output)",
                              ["provider", "model", "direction"], registry=r)
        self.cost = Counter("parley_cost_usd", "Cost in USD from the catalog's prices",
                            ["provider", "model"], registry=r)
        self.rate_limited = Counter("parley_platform_rate_limited", "Platform 429s the renderer waited out",
                                    ["front_end"], registry=r)
        self.freshness = Histogram("parley_first_text_visible_seconds",
                                   "Seconds from a turn's start to its first text on the platform",
                                   ["front_end"], buckets=FRESHNESS_BUCKETS, registry=r)
        self.open_streams = Gauge("parley_open_streams", "Turns being written on a platform now",
                                  ["front_end"], registry=r)
        self.queued_writes = Gauge("parley_queued_writes", "Store writes queued for the writer thread", registry=r)
        self.discussions = Counter("parley_discussions", "Discussions started, by mode", ["mode"], registry=r)

    def watch(self, store: Store) -> None:
        self.queued_writes.set_function(lambda: float(store.writer.pending))

    def turn(self, result: TurnFinished | TurnFailed) -> None:
        t, u = result.turn, result.usage
        status = "finished" if result.type == "turn_finished" else "failed"
        self.turns.labels(t.provider, t.model, status).inc()
        self.tokens.labels(t.provider, t.model, "input").inc(u.input_tokens)
        self.tokens.labels(t.provider, t.model, "output").inc(u.output_tokens)
        self.cost.labels(t.provider, t.model).inc(u.cost_usd)

    def text(self) -> bytes:
        return generate_latest(self.registry)


#: Seconds /readyz waits for each dependency before calling it unready (a Redis that
#: accepts connections but never answers must not hang the probe).
READY_TIMEOUT = 2.0


async def _answers(what: str, ping: Callable[[], Any], within: float) -> str | None:
    """None when ``ping()`` (plain or awaitable) returns without an error and not False;
    otherwise the problem, named by the exception's type only (a message could carry a
    URL with its password)."""
    try:
        result = ping()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, within)
    except TimeoutError:
        return f"{what}: no answer within {within:g}s"
    except Exception as e:  # refused, reset, authentication, a closed pool, a corrupt file…
        return f"{what}: {type(e).__name__}"
    return f"{what}: did not answer" if result is False else None


async def _ready(services: Services, within: float = READY_TIMEOUT) -> dict[str, str]:
    """Each dependency's state, ``"ok"`` or the problem: the process serves when all are ok."""
    store = services.store
    ping = getattr(store, "ping", None) or (lambda: store.peek("select 1"))
    checks = {"store": await _answers("store", ping, within) or "ok"}
    writer = getattr(store, "writer", None)
    if checks["store"] == "ok" and writer is not None and not writer.alive:
        checks["store"] = "store: the writer thread has stopped"
    coord = services.coord
    if coord.shared:  # Redis (PARLEY_REDIS_URL); this process's memory needs no check
        checks["redis"] = await _answers("redis", coord.ping, within) or "ok"
    return checks


def routes(
    services: Services, running: Callable[[], int] | None = None, *, ready_timeout: float = READY_TIMEOUT
) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        body: dict[str, Any] = {"ok": True}
        if running is not None:
            body["running"] = running()
        return web.json_response(body)

    async def readyz(_: web.Request) -> web.Response:
        checks = await _ready(services, ready_timeout)
        problems = [v for v in checks.values() if v != "ok"]
        body = {
            "ready": not problems,
            "problems": problems,
            "checks": {k: v == "ok" for k, v in checks.items()},
        }
        return web.json_response(body, status=503 if problems else 200)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=services.metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


@contextlib.asynccontextmanager
async def serving(
    services: Services,
    port: int | None,
    host: str = "0.0.0.0",
    running: Callable[[], int] | None = None,
    *,
    ready_timeout: float = READY_TIMEOUT,
) -> AsyncIterator[int | None]:
    """Serve :func:`routes` on ``host:port`` for a front-end without an HTTP port of its own
    (the Discord bot: PARLEY_OPS_PORT); yields the bound port, or None when ``port`` is unset."""
    if not port and port != 0:
        yield None
        return
    app = web.Application()
    app.add_routes(routes(services, running, ready_timeout=ready_timeout))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = getattr(site, "_server", None)
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
    try:
        yield bound
    finally:
        await runner.cleanup()

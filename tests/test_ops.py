# ruff: noqa: F811  (the fixtures imported from test_engine are redefined as arguments)
"""Operations: /healthz, /readyz and /metrics (Prometheus text from prometheus-client),
the renderer's metrics, and structured JSON logs carrying the discussion id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from core import logs, ops
from core.commands import parse
from core.config import Settings
from core.coord import RedisCoordinator
from core.ops import Metrics
from core.render import Renderer
from core.services import Services, build_services
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.servers import Redis, running
from tests.test_engine import llm, svc  # noqa: F401  (fixtures)
from tests.test_render import RecordingSink, events_for, prose


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_readiness_and_metrics_are_served(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="Tuesday.", usage="top", prompt_tokens=100, completion_tokens=10)
    [ev async for ev in svc.engine.run(parse("ask", "provider:alpha When?"))]
    async with ops.serving(svc, 0, "127.0.0.1", lambda: 2) as port, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200 and await r.json() == {"ok": True, "running": 2}
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            got = samples(await r.text())
        alpha = (("model", "alpha-1"), ("provider", "alpha"))
        assert got[("parley_turns_total", (*alpha, ("status", "finished")))] == 1
        assert got[("parley_tokens_total", (("direction", "input"), *alpha))] == 100
        assert got[("parley_tokens_total", (("direction", "output"), *alpha))] == 10
        assert got[("parley_cost_usd_total", alpha)] == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
        assert got[("parley_discussions_total", (("mode", "single"),))] == 1
        assert ("parley_queued_writes", ()) in got
        svc.store.close()  # the store is gone: not ready, and says why
        async with http.get(f"{base}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["ready"] is False and any("store" in p for p in body["problems"])


async def test_the_renderer_counts_429s_open_streams_and_freshness() -> None:
    metrics = Metrics()
    sink = RecordingSink(limit=300, fail_every=3)
    sink.front_end = "test"  # type: ignore[attr-defined]
    renderer = Renderer(sink, metrics=metrics)
    await renderer.consume(events_for({t: prose(120, i) for i, t in enumerate("ab")}))
    got = samples(metrics.text().decode())
    assert got[("parley_platform_rate_limited_total", (("front_end", "test"),))] == renderer.rate_limited > 0
    assert got[("parley_first_text_visible_seconds_count", (("front_end", "test"),))] == 2  # one per turn
    assert got[("parley_open_streams", (("front_end", "test"),))] == 0  # all written


async def test_json_logs_carry_the_discussion_id_and_are_redacted(
    svc: Services, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("json", logging.INFO)
        root.handlers[0].stream = stream  # type: ignore[attr-defined]
        log = logging.getLogger("parley.test")
        log.info("before any discussion")
        events = svc.engine.run(parse("ask", "provider:alpha When?"))
        first = await anext(events)
        log.warning("inside, with a key test-key-alpha-0123456789 in it")
        [ev async for ev in events]
        log.info("after")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.strip()]
    by_message = {x["message"].split(",")[0]: x for x in lines}
    assert by_message["before any discussion"]["discussion_id"] is None
    inside = by_message["inside"]
    assert inside["discussion_id"] == first.discussion_id and inside["level"] == "warning"
    assert "test-key-alpha" not in stream.getvalue() and "[redacted]" in inside["message"]
    assert by_message["after"]["discussion_id"] is None
    with pytest.raises(ValueError, match="PARLEY_LOG_FORMAT"):
        logs.configure("yaml")



async def readiness(svc: Services, within: float = ops.READY_TIMEOUT) -> tuple[int, dict]:
    async with (
        ops.serving(svc, 0, "127.0.0.1", ready_timeout=within) as port,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status, await r.json()


async def test_readiness_checks_the_configured_redis(
    make_settings: Callable[..., Settings], redis_url: str, tmp_path: Path
) -> None:
    """PARLEY_REDIS_URL set: /readyz pings that Redis (the session's real server)."""
    services = build_services(make_settings(PARLEY_REDIS_URL=redis_url, PARLEY_DB=str(tmp_path / "p.db")))
    probe = redis.asyncio.Redis.from_url(redis_url)
    try:
        before = int((await probe.info("stats"))["total_commands_processed"])
        status, body = await readiness(services)
        after = int((await probe.info("stats"))["total_commands_processed"])
    finally:
        await probe.aclose()
        await services.aclose()
    assert status == 200 and body["ready"] is True and body["problems"] == []
    assert body["checks"] == {"store": True, "redis": True}
    assert after - before >= 2  # the first INFO, then the probe's PING (more when it connected)


async def test_without_redis_only_the_store_is_checked(svc: Services) -> None:
    status, body = await readiness(svc)
    assert status == 200 and body["checks"] == {"store": True}


async def test_readiness_follows_the_shared_redis(svc: Services) -> None:
    """A replica is ready while its Redis answers, and unready (503, saying which) once it is down."""
    with running(Redis) as server:
        svc.coord = RedisCoordinator(server.url(), timeout=1.0)
        try:
            status, body = await readiness(svc)
            assert status == 200 and body["checks"] == {"store": True, "redis": True}
        finally:
            server.stop()
        status, body = await readiness(svc)
    assert status == 503 and body["ready"] is False
    assert body["checks"] == {"store": True, "redis": False}
    assert body["problems"] == ["redis: ConnectionError"]


async def test_a_redis_that_never_answers_makes_the_replica_unready_not_stuck(svc: Services) -> None:
    """A server that accepts the connection and says nothing: /readyz answers 503 at its own timeout,
    and names neither the URL nor its password."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    svc.coord = RedisCoordinator(f"redis://:hunter2-secret@127.0.0.1:{port}/0", timeout=30.0)
    try:
        status, body = await readiness(svc, within=0.2)
    finally:
        for w in accepted:
            w.close()
        server.close()
    assert accepted, "the probe reached the server"
    assert status == 503 and body["problems"] == ["redis: no answer within 0.2s"]
    assert "hunter2" not in json.dumps(body)


async def test_readiness_on_postgres_follows_the_database(
    make_settings: Callable[..., Settings], pg_url: str, tmp_path: Path
) -> None:
    """The store on PostgreSQL (PARLEY_DATABASE_URL): ready while the database answers, 503 once it is gone."""
    import psycopg

    services = build_services(make_settings(PARLEY_DATABASE_URL=pg_url, PARLEY_DB=str(tmp_path / "unused.db")))
    try:
        status, body = await readiness(services)
        assert status == 200 and body["checks"] == {"store": True}
        base, name = pg_url.rsplit("/", 1)
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f"drop database {name} with (force)")
        status, body = await readiness(services)
    finally:
        await services.aclose()
    assert status == 503 and body["checks"]["store"] is False
    assert len(body["problems"]) == 1 and body["problems"][0].startswith("store: ")
    assert "parley@" not in json.dumps(body)  # the URL is not in the answer

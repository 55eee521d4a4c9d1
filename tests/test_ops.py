# ruff: noqa: F811  (the fixtures imported from test_engine are redefined as arguments)
"""Operations: /healthz, /readyz and /metrics (Prometheus text from prometheus-client),
the renderer's metrics, and structured JSON logs carrying the discussion id."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import logs, ops
from core.commands import parse
from core.ops import Metrics
from core.render import Renderer
from core.services import Services
from tests.fakes.llm_server import FakeLLMServer, Scenario
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

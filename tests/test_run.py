"""`parley run`: every configured chat front-end in one process, stopping together."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bots import run
from core.errors import UsageError


def test_if_one_front_end_fails_to_start_the_others_stop(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    stopped: list[str] = []

    async def failing(services: Any) -> None:
        await asyncio.sleep(0.05)
        raise UsageError("Discord rejected DISCORD_TOKEN (401 Unauthorized).")

    async def forever(services: Any) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append("slack")

    parts = {("slack", "configured"): lambda: True, ("discord", "configured"): lambda: True,
             ("slack", "serve"): forever, ("discord", "serve"): failing}
    monkeypatch.setattr(run, "load_front_end", lambda name, attr="main": parts[(name, attr)])
    assert run.main([]) == 2
    assert stopped == ["slack"]
    assert "rejected DISCORD_TOKEN" in capsys.readouterr().err

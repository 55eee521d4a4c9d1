"""The engine: turns a Request into a stream of Events.

``Engine.run`` handles every mode: ``single`` (one turn, with the fallback
provider when the first is unavailable), ``parallel`` (every panelist at
once) and ``consensus`` (:mod:`core.consensus`), all on the same turn runner
(:mod:`core.turn`), and ends with a structured summary.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING

from core.commands import Request
from core.consensus import consensus, stage_titles
from core.errors import UNAVAILABLE, ErrorKind, UsageError
from core.events import (
    DiscussionFinished,
    DiscussionStarted,
    Event,
    Totals,
    TurnFailed,
    TurnFinished,
    TurnSummary,
)
from core.history import History
from core.logs import DISCUSSION
from core.plan import Panelist, Planner, Run
from core.providers.base import Message
from core.turn import TurnRunner, merge

if TYPE_CHECKING:
    from core.config import Settings
    from core.governance import Grant
    from core.ops import Metrics
    from core.personas import PersonaBook
    from core.providers.registry import Registry
    from core.store import Store


class Engine:
    def __init__(self, registry: Registry, personas: PersonaBook, store: Store, settings: Settings) -> None:
        self.registry = registry
        self.personas = personas
        self.store = store
        self.settings = settings
        self.planner = Planner(registry, personas, settings)
        self.turns = TurnRunner(registry, store, self.planner, History(store, self.planner))
        self.metrics: Metrics | None = None

    def panel(self, request: Request) -> list[Panelist]:
        """The validated panel for ``request`` (raises UsageError with the fix)."""
        return self.planner.panel(request)

    async def run(
        self,
        request: Request,
        *,
        conversation: str | None = None,
        front_end: str = "cli",
        discussion_id: str | None = None,
        grant: Grant | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Run a whole discussion. Validation errors raise UsageError before anything is stored.

        ``grant`` (from :meth:`core.governance.Governance.admit`) brings the request as
        admitted, its panel, own keys and budget reservation, settled when the run ends."""
        if grant is not None:
            request, panel = grant.request, grant.panel
        if request.mode is None:
            raise UsageError(f"/{request.command} is not a discussion.")
        try:
            if grant is None:
                panel = self.panel(request)
            past = None
            if conversation and not request.fresh:
                # Read after this process's queued writes (its earlier turns are in), off the loop.
                past = await self.store.ahistory(conversation)
            elif request.continues:
                await self.store.settled()  # the turn it continues is in before it is read
        except BaseException:
            if grant is not None:
                grant.release()
            raise
        caller = grant.caller if grant is not None else None
        did = self.store.start_discussion(
            mode=request.mode,
            command=request.command,
            prompt=request.prompt,
            options=request.options(),
            conversation=conversation,
            front_end=front_end,
            discussion_id=discussion_id,
            where=(caller.workspace, caller.channel, caller.user) if caller is not None else None,
        )
        run = Run(did, request, conversation)
        run.past = past
        if self.metrics is not None:
            self.metrics.discussions.labels(request.mode).inc()
        if request.continues:
            run.prefill = self.continuation(request.continues)
        if grant is not None:
            grant.attach(did)
            run.keys = grant.keys
            run.permits = grant.permits
        stages = stage_titles(request.rounds or 1, request.depth, request.method) if request.mode == "consensus" else []
        marked = DISCUSSION.set(did)  # every log line from here on names the discussion
        yield DiscussionStarted(did, request.mode, request.prompt, [p.title for p in panel], stages)
        finished = False
        try:
            # aclosing: when the reader stops (cancelled, or closed this stream), the inner
            # streams close now, and their turns record that they were interrupted.
            if request.mode == "consensus":
                async with aclosing(consensus(self.turns, run, panel)) as stream:
                    async for ev in stream:
                        yield ev
            else:
                async with aclosing(merge([self.turns.turn(run, self.turns.first(run, p)) for p in panel])) as stream:
                    async for ev in stream:
                        yield ev
                if request.mode == "single":
                    async with aclosing(self.fallback(run, panel[0])) as stream:
                        async for ev in stream:
                            yield ev
            final = summary(run)
            self.store.finish_discussion(did, final.status, final.total.cost_usd, final.message)
            if grant is not None:
                grant.settle(run.results, did)
            finished = True
            yield final
        finally:
            if not finished:
                self.store.finish_discussion(
                    did, "interrupted", run.cost, "The discussion was stopped before it finished."
                )
            if grant is not None:
                grant.settle(run.results, did)
            with contextlib.suppress(ValueError, RuntimeError):  # closed from another context
                DISCUSSION.reset(marked)

    def continuation(self, turn_id: str) -> list[Message]:
        """The question and the kept text of ``turn_id``, for a turn that continues it."""
        turn = self.store.turn(turn_id)
        if turn is None or not turn.get("text"):
            return []
        question = self.store.discussion(turn["discussion_id"]).get("prompt") or ""
        return [Message("user", question), Message("assistant", turn["text"])]

    async def fallback(self, run: Run, panelist: Panelist) -> AsyncGenerator[Event, None]:
        """``ask`` only: a provider that is unavailable, unreachable or timed out before any
        text hands over to PARLEY_FALLBACK_PROVIDER; the new turn's note says why."""
        last = run.results[-1] if run.results else None
        name = self.settings.fallback_provider
        if not (isinstance(last, TurnFailed) and name and not last.text):
            return
        why = FALLBACK_REASONS.get(last.error.kind)
        if why is None:
            return
        spec, model = self.registry.resolve(name)
        if spec.id == panelist.provider.id or not run.permits(spec.id, model.id):
            return
        alt = Panelist(panelist.persona, spec, model)
        ts = self.turns.first(run, alt)
        ts.note = f"Falling back to {spec.id} because {panelist.provider.id} {why}: {last.error.message}"
        async for ev in self.turns.turn(run, ts):
            yield ev


#: Failures (before any text) that PARLEY_FALLBACK_PROVIDER covers, and how the note says them.
FALLBACK_REASONS = {
    **{str(kind): "is unavailable" for kind in (*UNAVAILABLE, ErrorKind.NOT_CONFIGURED)},
    str(ErrorKind.UNREACHABLE): "could not be reached",
    str(ErrorKind.TIMEOUT): "did not answer in time",
}


def summary(run: Run) -> DiscussionFinished:
    """The structured end of a discussion: one line per turn, totals, ranking, message."""
    turns = [
        TurnSummary(
            turn_id=r.turn.turn_id,
            label=r.turn.label,
            stage=r.turn.stage,
            round=r.turn.round,
            provider=r.turn.provider,
            model=r.turn.model,
            persona=r.turn.persona_id,
            status="finished" if isinstance(r, TurnFinished) else "failed",
            error=r.error if isinstance(r, TurnFailed) else None,
            ttft_ms=_r(r.ttft_ms),
            latency_ms=_r(r.latency_ms),
            input_tokens=r.usage.input_tokens,
            output_tokens=r.usage.output_tokens,
            cost_usd=r.usage.cost_usd,
            estimated=r.usage.estimated,
        )
        for r in run.results
    ]
    ok = sum(1 for t in turns if t.status == "finished")
    if run.failed_hard or ok == 0:
        status = "failed"
    elif ok < len(turns):
        status = "partial"
    else:
        status = "finished"
    total = Totals(
        turns=len(turns),
        failed=len(turns) - ok,
        input_tokens=sum(r.usage.input_tokens for r in run.results),
        output_tokens=sum(r.usage.output_tokens for r in run.results),
        cost_usd=round(run.cost, 8),
        wall_ms=_r((time.perf_counter() - run.started) * 1000),
    )
    return DiscussionFinished(run.id, status, turns, total, run.message, run.ranking, run.request.mode or "",
                              run.reviewers, run.votes)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)

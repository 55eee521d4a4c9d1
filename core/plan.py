"""Planning a discussion: who is on the panel, with what settings.

The shared discussion types live here (:class:`Panelist`, :class:`TurnSpec`,
:class:`Run`) so that the engine, the turn runner and the consensus protocol
all import them from one place and none imports another's module.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from core.commands import Request
from core.errors import UsageError
from core.events import RankEntry, TurnFailed, TurnFinished, TurnInfo
from core.personas import NEUTRAL, Persona
from core.providers.base import Message, Structured
from core.providers.spec import ModelSpec, ProviderSpec
from core.records import PastDiscussion, new_id

if TYPE_CHECKING:
    from core.config import Settings
    from core.personas import PersonaBook
    from core.providers.registry import Registry

#: The persona that writes a consensus synthesis unless a persona file overrides ``moderator``.
MODERATOR = Persona(
    id="moderator",
    name="Moderator",
    role="Panel moderator",
    emoji="⚖️",
    system_prompt=(
        "You are the moderator of a panel of experts. You do not add opinions of your own: you "
        "weigh the panel's final positions and their peer rankings, and write the single best "
        "answer the evidence supports, stating clearly where the panel agrees, where it "
        "disagrees, which minority views deserve attention, and how confident the panel is."
    ),
)


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
    """Everything one turn needs; built by the modes, run by :class:`core.turn.TurnRunner`."""

    panelist: Panelist
    user: str
    history: list[Message]
    stage: str = "answer"
    round: int = 0
    system_extra: str = ""
    note: str | None = None
    #: Ask for this JSON object (a ballot) where the wire can constrain output.
    structured: Structured | None = None


class Run:
    """Per-discussion state: id, sequence numbers, results."""

    def __init__(self, discussion_id: str, request: Request, conversation: str | None) -> None:
        self.id = discussion_id
        self.request = request
        self.conversation = conversation
        self.seq = itertools.count(1)
        self.results: list[TurnFinished | TurnFailed] = []
        self.started = time.perf_counter()
        self.ranking: list[RankEntry] | None = None
        #: A consensus's last review round: reviewers asked, and how many cast a usable ballot.
        self.reviewers = 0
        self.votes = 0
        self.message: str | None = None
        self.failed_hard = False
        self.past: list[PastDiscussion] | None = None
        #: Own keys by provider id (core.governance): used instead of the environment's.
        self.keys: dict[str, SecretStr] = {}
        #: Messages after the history and before the question (Continue: the question and the kept text).
        self.prefill: list[Message] = []
        #: Whether policy lets a provider/model run here (the /ask fallback asks).
        self.permits: Callable[[str, str], bool] = lambda _provider, _model: True

    @property
    def cost(self) -> float:
        return sum(r.usage.cost_usd for r in self.results)


class Planner:
    """Turns a request into a validated panel and per-turn settings."""

    def __init__(self, registry: Registry, personas: PersonaBook, settings: Settings) -> None:
        self.registry = registry
        self.personas = personas
        self.settings = settings

    def panel(self, request: Request) -> list[Panelist]:
        """The cross product of the requested personas and providers (validated).

        Each distinct name is resolved once and the panel is counted before it is built,
        so however long the lists, the work is bounded by the personas and models that exist.
        """
        personas = list({p.id: p for p in map(self.personas.get, dict.fromkeys(request.personas))}.values())
        personas = personas or [NEUTRAL]
        resolved = (self.registry.resolve(c, request.model) for c in dict.fromkeys(request.providers))
        choices = {(spec.id, m.id): (spec, m) for spec, m in resolved}
        count = len(personas) * max(1, len(choices))
        limit = self.settings.max_turns
        if request.mode == "consensus":
            if count < 2:
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
            turns = count * (1 + rounds) + 1
            if turns > limit * 3:
                raise UsageError(
                    f"That consensus would run {turns} turns; the limit is {limit * 3}. Use fewer "
                    f"panelists or rounds (PARLEY_MAX_TURNS)."
                )
        elif count > limit:
            raise UsageError(
                f"That is {count} turns ({len(personas)} personas × {max(1, len(choices))} providers); the "
                f"limit is {limit} (PARLEY_MAX_TURNS). Name fewer personas or providers."
            )
        panel: list[Panelist] = []
        for persona in personas:
            if choices:
                panel += [Panelist(persona, spec, m) for spec, m in choices.values()]
            else:
                panel.append(Panelist(persona, *self.registry.resolve(persona.provider,
                                                                     request.model or persona.model)))
        if request.mode == "consensus":
            self.moderator(request.moderator, panel[0])  # unknown moderator: fail now
        return panel

    def moderator(self, choice: str | None, fallback: Panelist) -> Panelist:
        """``moderator:`` (or PARLEY_MODERATOR) names a persona id or a provider[/model]."""
        choice = choice or self.settings.moderator
        persona = self.personas.personas.get("moderator", MODERATOR)
        if not choice:
            return Panelist(persona, fallback.provider, fallback.model)
        if choice.lower() in self.personas.personas and "/" not in choice:
            p = self.personas.get(choice)
            spec, model = self.registry.resolve(p.provider or fallback.provider.id, p.model)
            return Panelist(p, spec, model)
        spec, model = self.registry.resolve(choice)
        return Panelist(persona, spec, model)

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

    @staticmethod
    def system_prompt(panelist: Panelist, extra: str = "") -> str:
        parts = [panelist.persona.system_prompt.strip()]
        if extra:
            parts.append(extra.strip())
        return "\n\n".join(parts)

    @staticmethod
    def info(panelist: Panelist, stage: str, round_: int) -> TurnInfo:
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

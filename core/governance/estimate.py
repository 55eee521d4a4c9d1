"""The worst case a discussion can cost, from the catalog's prices, before it runs.

Every turn is priced at its input (system prompt, question, the history it will
be sent, and in a consensus the answers it reviews) plus ``max_tokens`` of output.
Input text counts one token per UTF-8 byte: byte-level BPE tokenizers (OpenAI,
Anthropic, Moonshot) never produce more tokens than bytes, so the figure is an upper
bound whatever the language (four characters a token would be four times too low
for Chinese or Japanese text).
A consensus review reads every other panelist's answer, so reviews grow with the
square of the panel: N panelists × R rounds × (N answers of up to max_tokens).
``/ask`` also counts the fallback provider, in case it takes over. A consensus also
counts what its recoveries may add: one format reminder per review (its input is the
review and the reviewer's reply), a devil's advocate turn (``method:debate``) and the
synthesis retried once on the dearest panelist's provider; ``depth:`` leaves out the
stages it skips.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from core.commands import Request
from core.plan import Panelist, Planner
from core.usage import cost_usd


def upper_tokens(text: str) -> int:
    """At most this many tokens: one per UTF-8 byte."""
    return len(text.encode("utf-8", "surrogatepass"))


#: :func:`upper_tokens` of personas' system prompts, which every admission prices again.
_prompt_tokens = functools.lru_cache(maxsize=1024)(upper_tokens)

#: Characters of the review and synthesis instructions around the quoted answers (core/consensus.py).
REVIEW_OVERHEAD_CHARS = 2_000
#: Tokens a chat message adds beyond its text (role, separators).
MESSAGE_TOKENS = 8


@dataclass(slots=True)
class Estimate:
    usd: float = 0.0
    turns: int = 0
    #: Per provider id: worst-case USD (own-key providers may be left out of budgets).
    by_provider: dict[str, float] | None = None

    def add(self, panelist: Panelist, input_tokens: int, output_tokens: int) -> None:
        usd = cost_usd(panelist.model, input_tokens, output_tokens, 0)
        self.usd += usd
        self.turns += 1
        if self.by_provider is None:
            self.by_provider = {}
        pid = panelist.provider.id
        self.by_provider[pid] = self.by_provider.get(pid, 0.0) + usd

    def counted(self, free: Iterable[str]) -> float:
        """The estimate without the providers in ``free`` (own keys that budgets do not count)."""
        skip = set(free)
        return sum(v for k, v in (self.by_provider or {}).items() if k not in skip)


def worst_case(
    planner: Planner,
    request: Request,
    panel: list[Panelist],
    *,
    history_chars: int = 0,  # UTF-8 bytes of the history sent
    moderator: Panelist | None = None,
    fallback: Panelist | None = None,
) -> Estimate:
    est = Estimate()
    base = upper_tokens(request.prompt) + MESSAGE_TOKENS * 2 + history_chars

    def first(p: Panelist) -> tuple[int, int]:
        return base + _prompt_tokens(p.persona.system_prompt), planner.max_tokens(p, request)

    for p in panel:
        est.add(p, *first(p))
    if request.mode == "single" and fallback is not None:
        alt = Estimate()
        alt.add(fallback, *first(fallback))
        if alt.usd > est.usd:
            est = alt
    if request.mode != "consensus":
        return est
    depth = request.depth or "full"
    if depth == "answers":
        return est
    answers = sum(planner.max_tokens(p, request) for p in panel)
    overhead = REVIEW_OVERHEAD_CHARS + upper_tokens(request.prompt)
    for _ in range(request.rounds or 1):
        for p in panel:
            review_in = overhead + _prompt_tokens(p.persona.system_prompt) + answers
            est.add(p, review_in, planner.max_tokens(p, request))
            est.add(p, review_in + planner.max_tokens(p, request) + REVIEW_OVERHEAD_CHARS, planner.max_tokens(p, request))
    if depth == "ranked":
        return est
    dearest = max(panel, key=lambda p: cost_usd(p.model, 1000, planner.max_tokens(p, request), 0))
    if request.method == "debate":
        est.add(dearest, overhead + _prompt_tokens(dearest.persona.system_prompt) + planner.max_tokens(dearest, request),
                planner.max_tokens(dearest, request))
    moderators = [moderator, dearest] if moderator is not None else []
    for m in moderators:
        est.add(m, overhead + _prompt_tokens(m.persona.system_prompt) + answers * 2, planner.max_tokens(m, request))
    return est

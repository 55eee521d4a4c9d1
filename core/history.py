"""Context for follow-ups: earlier exchanges of a conversation, from the store.

Each panelist sees what *it* (or, after a consensus, the moderator) said last
time, newest kept first within what fits the model's window beside the prompt
and the answer. Chat history is never read from the platform.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.commands import Request
from core.personas import NEUTRAL
from core.plan import Panelist, Planner, Run
from core.providers.base import Message
from core.records import PastDiscussion
from core.usage import estimate_tokens

if TYPE_CHECKING:
    from core.store import Store


class History:
    def __init__(self, store: Store, planner: Planner) -> None:
        self.store = store
        self.planner = planner

    def messages(self, run: Run, panelist: Panelist, budget_chars: int) -> list[Message]:
        """Earlier exchanges of the conversation, newest kept first within the budget."""
        if not run.conversation:
            return []
        if run.past is None:  # read once per discussion, not once per panelist
            run.past = self.store.history(run.conversation)
        pairs: list[tuple[str, str]] = []
        for past in run.past:
            answer = past_answer(past, panelist)
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

    def budget(self, panelist: Panelist, request: Request, extra: str = "") -> int:
        """Characters of history that fit the model's window beside the prompt and answer."""
        tokens = panelist.model.context - self.planner.max_tokens(panelist, request)
        tokens -= estimate_tokens(panelist.persona.system_prompt + request.prompt + extra) + 64
        return max(0, tokens * 4)


def past_answer(past: PastDiscussion, panelist: Panelist) -> str:
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

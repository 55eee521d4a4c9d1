"""Tokens to dollars, from the catalog's prices (USD per 1M tokens).

Billing trusts the provider's ``usage``; only when a provider sends none are
tokens estimated (about four characters a token) and the row says so.
"""

from __future__ import annotations

from core.events import TurnUsage
from core.providers.base import Usage
from core.providers.spec import ModelSpec


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def cost_usd(model: ModelSpec, input_tokens: int, output_tokens: int, cached_tokens: int) -> float:
    cached = min(cached_tokens, input_tokens)
    cached_price = model.cached_input if model.cached_input is not None else model.input
    return (
        (input_tokens - cached) * model.input + cached * cached_price + output_tokens * model.output
    ) / 1_000_000


def turn_usage(model: ModelSpec, usage: Usage | None, prompt_text: str, answer: str) -> TurnUsage:
    """Provider usage when present; an estimate (flagged) otherwise."""
    if usage is not None and (usage.input_tokens or usage.output_tokens):
        i, o, c, est = usage.input_tokens, usage.output_tokens, usage.cached_tokens, False
    else:
        i, o, c, est = estimate_tokens(prompt_text), estimate_tokens(answer), 0, True
    return TurnUsage(i, o, c, round(cost_usd(model, i, o, c), 8), est)

"""Retries around any wire, only before the first token.

Retryable kinds (rate limited, overloaded, time-out, unreachable) are tried
again with capped exponential backoff and full jitter, honouring the
provider's ``retry-after(-ms)``. Never retried: auth, quota, bad request,
context too long. Once text has been yielded the error surfaces instead: the
user has already seen part of an answer and a retry would repeat it.
Non-text chunks (usage from ``message_start``) are held back until the first
text so that a retried attempt is not double counted.

Retries share the turn's deadline (:mod:`core.turn` enforces it around this
whole stream): ``remaining()`` says how much of it is left, and a wait that
would not fit is not started. An error given up on after several attempts
says what was tried: ``(after 3 attempts: overloaded, overloaded, timeout)``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from core.errors import ParleyError
from core.providers.base import ChatRequest, Chunk, ReasoningChunk, TextChunk, Wire


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3  # total, including the first
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: A server asking us to wait longer than this is not waited for.
    max_retry_after: float = 30.0

    def delay(self, attempt: int, error: ParleyError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if attempt >= self.attempts or not error.retryable:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def attempts_note(kinds: Sequence[str]) -> str:
    """``(after 3 attempts: overloaded, overloaded, timeout)``; empty for a single attempt."""
    return f"(after {len(kinds)} attempts: {', '.join(kinds)})" if len(kinds) > 1 else ""


def given_up(error: ParleyError, earlier: Sequence[ParleyError]) -> ParleyError:
    """``error``, ending a run of attempts that failed with ``earlier``, saying so."""
    note = attempts_note([*(str(e.kind) for e in earlier), str(error.kind)])
    return error.noted(note) if note else error


async def stream_with_retries(
    wire: Wire,
    request: ChatRequest,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[int, ParleyError, float], None] | None = None,
    remaining: Callable[[], float] | None = None,
) -> AsyncGenerator[Chunk, None]:
    attempt = 0
    failed: list[ParleyError] = []
    while True:
        attempt += 1
        held: list[Chunk] = []
        started = False
        try:
            async for chunk in wire.stream(request):
                if started:
                    yield chunk
                elif isinstance(chunk, (TextChunk, ReasoningChunk)):
                    started = True
                    for h in held:
                        yield h
                    yield chunk
                else:
                    held.append(chunk)
            for h in held if not started else ():
                yield h
            return
        except ParleyError as err:
            if started:
                raise
            wait = policy.delay(attempt, err)
            if wait is None or (remaining is not None and wait >= remaining()):
                raise given_up(err, failed) from None
            failed.append(err)
            if on_retry:
                on_retry(attempt, err, wait)
            await sleep(wait)

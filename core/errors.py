"""The error taxonomy.

Every error Parley shows a person is a :class:`ParleyError` with a ``kind`` (a
stable machine name, used in JSON events, the database and exit codes) and a
``message``: one or two sentences that say what happened and how to fix it,
naming the provider and the setting or environment variable to change.

Vendor error bodies are classified here, once, for every wire: a provider's
``error.type``/``error.code`` says more than its HTTP status (a 429 can mean
"slow down" or "your balance is empty").
"""

from __future__ import annotations

import difflib
import email.utils
import json
import re
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from core.events import ErrorInfo


class ErrorKind(StrEnum):
    AUTH = "auth"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    BAD_REQUEST = "bad_request"
    CONTEXT_TOO_LONG = "context_too_long"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    TRUNCATED = "truncated"
    NOT_CONFIGURED = "not_configured"
    USAGE = "usage"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal"


#: Kinds worth another attempt, provided nothing has been shown yet.
RETRYABLE = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.UNREACHABLE}
)
#: Kinds that make a provider unavailable for a cool-down after a real call.
UNAVAILABLE = frozenset({ErrorKind.AUTH, ErrorKind.QUOTA_EXHAUSTED})


class ParleyError(Exception):
    """An error with a user-facing sentence."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        provider: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = redact(message)
        self.provider = provider
        self.retry_after = retry_after
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def info(self) -> ErrorInfo:
        return ErrorInfo(str(self.kind), self.message, self.provider or None)

    def __str__(self) -> str:
        return self.message


class UsageError(ParleyError):
    """Bad input from a person: exit status 2, shown privately where possible."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.USAGE, message)


def suggest(word: str, choices: Iterable[str], what: str) -> str:
    """``Unknown persona 'rilye'. Did you mean 'riley'? Known personas: ...``"""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word.lower(), choices, n=3, cutoff=0.5)
    msg = f"Unknown {what} '{word}'."
    if close:
        msg += " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    shown = ", ".join(choices[:30]) + (" ..." if len(choices) > 30 else "")
    return msg + f" Known {what}s: {shown}."


# --- secrets -----------------------------------------------------------------

_SECRET_VALUES: set[str] = set()
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|xox[abposr]-[A-Za-z0-9\-]{6,}|xapp-[A-Za-z0-9\-]{6,}"
    r"|AIza[0-9A-Za-z_\-]{20,}|gsk_[A-Za-z0-9]{10,}|Bearer\s+[A-Za-z0-9._\-]{8,})"
)


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` removes it from any text."""
    if value and len(value) >= 6:
        _SECRET_VALUES.add(value)


def redact(text: str) -> str:
    """Remove known secret values and anything shaped like a key from ``text``."""
    for value in _SECRET_VALUES:
        if value in text:
            text = text.replace(value, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)


# --- vendor error bodies -------------------------------------------------------

# Vendor error types/codes meaning "your balance or plan is exhausted": never
# retried. OpenAI: insufficient_quota, billing_*; Moonshot:
# exceeded_current_quota_error (https://platform.moonshot.ai/docs/api/chat#error-explanation);
# DeepSeek answers 402 "Insufficient Balance".
QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "exceeded_current_quota_error",
        "billing_hard_limit_reached",
        "billing_not_active",
        "insufficient_balance",
        "quota_exceeded",
        "resource_exhausted_quota",
    }
)
OVERLOAD_CODES = frozenset(
    {"engine_overloaded_error", "overloaded_error", "server_overloaded", "api_error"}
)
CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_WORDS = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|prompt is too long"
    r"|exceeds? the (?:model'?s )?(?:maximum|max)|input is too long|reduce the length",
    re.I,
)


def parse_error_body(body: str | bytes | Mapping[str, Any] | None) -> tuple[str, str]:
    """Return ``(type_or_code, message)`` from any vendor's error body."""
    if body is None:
        return "", ""
    data: Any = body
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            data = json.loads(text)
        except ValueError:
            return "", text.strip()[:300]
    if isinstance(data, list) and data:  # Gemini sometimes wraps the error in a list
        data = data[0]
    if not isinstance(data, Mapping):
        return "", str(data)[:300]
    err = data.get("error", data)
    if isinstance(err, str):
        return str(data.get("type") or data.get("code") or ""), err
    if not isinstance(err, Mapping):
        return "", str(err)[:300]
    code = err.get("code")
    etype = err.get("type") or err.get("status")
    # Prefer the more specific of type/code: OpenAI puts insufficient_quota in both,
    # Moonshot only in type, some gateways only in code.
    ident = ""
    for candidate in (code, etype):
        if isinstance(candidate, str) and candidate:
            if candidate in QUOTA_CODES or candidate in OVERLOAD_CODES or candidate in CONTEXT_CODES:
                ident = candidate
                break
            ident = ident or candidate
    return ident, str(err.get("message") or data.get("message") or "").strip()


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` (OpenAI/Anthropic) or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(ra) if ra else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    return None


def classify(
    *,
    provider: str,
    label: str,
    key_env: str | None,
    auth_hint: str | None,
    status: int | None,
    body: str | bytes | Mapping[str, Any] | None,
    headers: Mapping[str, str] | None = None,
    model: str | None = None,
) -> ParleyError:
    """Turn a vendor error (HTTP status and/or body) into a ParleyError."""
    ident, detail = parse_error_body(body)
    detail = redact(detail)[:300]
    retry_after = retry_after_seconds(headers or {})
    said = f" ({label} said: {detail})" if detail else ""
    where = f"{label} (provider '{provider}')"

    def err(kind: ErrorKind, msg: str) -> ParleyError:
        return ParleyError(kind, msg, provider=provider, retry_after=retry_after, status=status)

    if ident in QUOTA_CODES or status == 402:
        return err(
            ErrorKind.QUOTA_EXHAUSTED,
            f"{where} says the account's quota or balance is exhausted{said}. Top up or raise the "
            f"limit in the vendor's console, or pick another provider with provider:NAME.",
        )
    if status in (401, 403) or ident in ("authentication_error", "invalid_authentication_error",
                                         "invalid_api_key", "permission_error"):
        fix = f"Check {key_env}." if key_env else "Check the provider's credentials."
        msg = f"{where} rejected the API key (HTTP {status or 401}){said}. {fix}"
        if auth_hint:
            msg += " " + auth_hint
        return err(ErrorKind.AUTH, msg)
    if ident in CONTEXT_CODES or status == 413 or (
        status in (400, 422) and _CONTEXT_WORDS.search(detail)
    ):
        return err(
            ErrorKind.CONTEXT_TOO_LONG,
            f"The prompt and history are too long for {model or 'the model'} at {where}{said}. "
            f"Shorten the question, start a new thread, or choose a model with a larger window.",
        )
    if ident in OVERLOAD_CODES or status in (500, 502, 503, 504, 529):
        return err(
            ErrorKind.OVERLOADED,
            f"{where} is overloaded or failing (HTTP {status}){said}. Try again shortly or use "
            f"another provider.",
        )
    if status == 429 or ident in ("rate_limit_exceeded", "rate_limit_reached_error",
                                  "rate_limit_error"):
        wait = f" Retry after {retry_after:.0f}s." if retry_after else ""
        return err(
            ErrorKind.RATE_LIMITED,
            f"{where} is rate limiting requests{said}.{wait} Slow down or raise the tier.",
        )
    if status == 408:
        return err(ErrorKind.TIMEOUT, f"{where} timed out (HTTP 408){said}. Try again.")
    if status == 409:
        return err(ErrorKind.OVERLOADED, f"{where} reported a conflict (HTTP 409){said}.")
    if status == 404:
        return err(
            ErrorKind.BAD_REQUEST,
            f"{where} does not know model '{model}' or the endpoint (HTTP 404){said}. Check "
            f"model:NAME, the provider's base URL, or update the model list in PARLEY_CONFIG.",
        )
    return err(
        ErrorKind.BAD_REQUEST,
        f"{where} rejected the request (HTTP {status}){said}. This is usually an unsupported "
        f"model or parameter; check model:NAME and temperature:VALUE.",
    )

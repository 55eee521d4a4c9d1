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
    #: The stream completed but held no answer text (reasoning only, max_tokens, or a
    #: server that ended it early, like llama-server interrupted by another request).
    EMPTY = "empty"
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

    def noted(self, note: str) -> ParleyError:
        """The same error with ``note`` appended to its message."""
        return ParleyError(self.kind, f"{self.message} {note}", provider=self.provider,
                           retry_after=self.retry_after, status=self.status)

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
    r"(sk-[A-Za-z0-9_\-]{8,}|xox[abposre]-[A-Za-z0-9\-]{6,}|xapp-[A-Za-z0-9\-]{6,}"
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
    {"engine_overloaded_error", "overloaded_error", "server_overloaded", "api_error", "server_error",
     "internal_error", "internal_server_error", "service_unavailable", "unavailable", "overloaded"}
)
RATE_CODES = frozenset(
    {"rate_limit_exceeded", "rate_limit_reached_error", "rate_limit_error", "too_many_requests"}
)
AUTH_CODES = frozenset({"authentication_error", "invalid_authentication_error", "invalid_api_key"})
FORBIDDEN_CODES = frozenset(
    {"permission_error", "permission_denied", "unsupported_country_region_territory", "request_forbidden"}
)
#: In-stream error types that blame the request; any other in-stream error is the server failing.
INVALID_CODES = frozenset({"invalid_request_error", "invalid_request", "bad_request", "invalid_argument",
                           "not_found_error", "model_not_found"})
# Anthropic answers 400 invalid_request_error "Your credit balance is too low ...".
_QUOTA_WORDS = re.compile(
    r"credit balance|insufficient (?:balance|credits?|funds|quota)|out of credits|purchase credits"
    r"|exceeded your current quota",
    re.I,
)
_REGION_WORDS = re.compile(r"\b(?:country|countries|region|territory|location)\b", re.I)
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
    key_fix: str | None = None,
    url_setting: str | None = None,
) -> ParleyError:
    """Turn a vendor error (HTTP status and/or body) into a ParleyError.

    ``status`` is None for an error object inside a 200 event stream: its type says
    what it is. ``key_fix`` replaces "Check KEY_ENV." and ``url_setting`` names what
    sets the base URL (both name the config file and table for a config provider).
    """
    ident, detail = parse_error_body(body)
    ident = ident.lower()
    detail = redact(detail)[:300]
    retry_after = retry_after_seconds(headers or {})
    said = f" ({label} said: {detail})" if detail else ""
    where = f"{label} (provider '{provider}')"
    via = f"HTTP {status}" if status is not None else "an error in the stream after HTTP 200"

    def err(kind: ErrorKind, msg: str) -> ParleyError:
        return ParleyError(kind, msg, provider=provider, retry_after=retry_after, status=status)

    if ident in QUOTA_CODES or status == 402 or (
        status in (None, 400, 403, 429) and _QUOTA_WORDS.search(detail)
    ):
        return err(
            ErrorKind.QUOTA_EXHAUSTED,
            f"{where} says the account's quota or balance is exhausted{said}. Top up or raise the "
            f"limit in the vendor's console, or pick another provider with provider:NAME.",
        )
    if status == 403 or ident in FORBIDDEN_CODES:
        if ident == "unsupported_country_region_territory" or _REGION_WORDS.search(detail):
            fix = f", or the vendor's endpoint for your region ({url_setting})" if url_setting else ""
            msg = (f"{where} refused access from this country or region ({via}){said}; the key itself "
                   f"was not rejected. Use another provider{fix}.")
        else:
            msg = (f"{where} accepted the key but refused access ({via}): it has no permission for "
                   f"model '{model}' or this endpoint{said}. Enable the model for the key's project "
                   f"or organisation in the vendor's console, or pick another model with model:NAME.")
        return err(ErrorKind.AUTH, msg)
    if status == 401 or ident in AUTH_CODES:
        fix = key_fix or (f"Check {key_env}." if key_env else "Check the provider's credentials.")
        msg = f"{where} rejected the API key ({via}){said}. {fix}"
        if auth_hint:
            msg += " " + auth_hint
        return err(ErrorKind.AUTH, msg)
    if ident in CONTEXT_CODES or status == 413 or (
        status in (None, 400, 422) and _CONTEXT_WORDS.search(detail)
    ):
        return err(
            ErrorKind.CONTEXT_TOO_LONG,
            f"The prompt and history are too long for {model or 'the model'} at {where}{said}. "
            f"Shorten the question, start a new thread, or choose a model with a larger window.",
        )
    rate = status == 429 or ident in RATE_CODES
    if ident in OVERLOAD_CODES or not rate and (
        status in (500, 502, 503, 504, 529) or (status is None and ident not in INVALID_CODES)
    ):
        return err(
            ErrorKind.OVERLOADED,
            f"{where} is overloaded or failing ({via}){said}. Try again shortly or use "
            f"another provider.",
        )
    if rate:
        wait = f" Retry after {retry_after:.0f}s." if retry_after else ""
        return err(
            ErrorKind.RATE_LIMITED,
            f"{where} is rate limiting requests ({via}){said}.{wait} Slow down or raise the tier.",
        )
    if status == 408:
        return err(ErrorKind.TIMEOUT, f"{where} timed out (HTTP 408){said}. Try again.")
    if status == 409:
        return err(ErrorKind.OVERLOADED, f"{where} reported a conflict (HTTP 409){said}.")
    if status == 404:
        url = url_setting or "the provider's base URL"
        return err(
            ErrorKind.BAD_REQUEST,
            f"{where} does not know model '{model}' or the endpoint (HTTP 404){said}. Check "
            f"model:NAME, {url}, or update the model list in PARLEY_CONFIG.",
        )
    return err(
        ErrorKind.BAD_REQUEST,
        f"{where} rejected the request ({via}){said}. This is usually an unsupported "
        f"model or parameter; check model:NAME and temperature:VALUE.",
    )

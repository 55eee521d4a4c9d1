"""Reading what the Slack Web API said when it refused a call."""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackApiError

#: Errors no retry will fix: the renderer stops writing the turn (what is shown stays).
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "thread_not_found",
        "account_inactive",
        "token_revoked",
        "invalid_auth",
        "not_authed",
        "no_permission",
        "restricted_action",
        "team_access_not_granted",
        "ekm_access_denied",
    }
)


def slack_error(e: SlackApiError) -> str:
    """The ``error`` code of a refused call (``is_archived``, ``ratelimited``…), or ""."""
    data = getattr(e.response, "data", None)
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def response_header(headers: Any, name: str) -> Any:
    """A response header by case-insensitive ``name`` (slack_sdk may give lists), or None."""
    for k, v in (headers or {}).items():
        if k.lower() == name:
            return v[0] if isinstance(v, list) else v
    return None


def retry_after(e: SlackApiError) -> float:
    """Seconds a 429 asks us to wait (1 if it does not say)."""
    value = response_header(getattr(e.response, "headers", None), "retry-after")
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0

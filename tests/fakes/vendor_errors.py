"""Vendor error responses as the vendors document them: (status, body, headers)."""

from __future__ import annotations

from typing import Any

Err = tuple[int, dict[str, Any], dict[str, str]]


def openai_invalid_key() -> Err:
    return 401, {"error": {"message": "Incorrect API key provided: sk-abc***xyz. You can find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, {}


def openai_rate_limited(retry_after_ms: int = 20) -> Err:
    return 429, {"error": {"message": "Rate limit reached for gpt-4.1-mini on requests per min (RPM): Limit 500, Used 500, Requested 1.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}, {"retry-after-ms": str(retry_after_ms)}


def openai_insufficient_quota() -> Err:
    return 429, {"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}, {}


def openai_context_length() -> Err:
    return 400, {"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}, {}


def openai_server_error() -> Err:
    return 500, {"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": None, "code": None}}, {}


def openai_model_not_found() -> Err:
    return 404, {"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": None, "code": "model_not_found"}}, {}


def moonshot_invalid_auth() -> Err:
    return 401, {"error": {"message": "Invalid Authentication", "type": "invalid_authentication_error"}}, {}


def moonshot_quota_exhausted() -> Err:
    return 429, {"error": {"message": "Your account org-xxx <ak-xxx> is suspended, please check your plan and billing details", "type": "exceeded_current_quota_error"}}, {}


def moonshot_rate_limited(retry_after: int = 1) -> Err:
    return 429, {"error": {"message": "Your account org-xxx <ak-xxx> request reached organization max RPM: 3, please try again after 1 seconds", "type": "rate_limit_reached_error"}}, {"retry-after": str(retry_after)}


def moonshot_overloaded() -> Err:
    return 429, {"error": {"message": "The engine is currently overloaded, please try again later", "type": "engine_overloaded_error"}}, {}


def moonshot_context_too_long() -> Err:
    return 400, {"error": {"message": "Invalid request: Your request exceeded model token limit: 262144", "type": "invalid_request_error"}}, {}


def anthropic_invalid_key() -> Err:
    return 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}, {}


def anthropic_rate_limited(retry_after: int = 1) -> Err:
    return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}, {"retry-after": str(retry_after)}


def anthropic_overloaded() -> Err:
    return 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, {}


def anthropic_prompt_too_long() -> Err:
    return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}}, {}


ANTHROPIC_STREAM_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def deepseek_insufficient_balance() -> Err:
    return 402, {"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": None, "code": "invalid_request_error"}}, {}


def anthropic_credit_balance() -> Err:
    return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}, {}


def anthropic_permission() -> Err:
    return 403, {"type": "error", "error": {"type": "permission_error", "message": "Your API key does not have permission to use the specified resource."}}, {}


def openai_unsupported_region() -> Err:
    return 403, {"error": {"code": "unsupported_country_region_territory", "message": "Country, region, or territory not supported", "param": None, "type": "request_forbidden"}}, {}


# Error objects sent inside a 200 event stream (no HTTP status to go by), per wire.
STREAM_ERRORS: dict[str, dict[str, dict[str, Any]]] = {
    "openai_chat": {
        "server": {"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error", "param": None, "code": None}},
        "rate": {"error": {"message": "Rate limit reached for requests", "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
        "quota": {"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}},
    },
    "anthropic_messages": {
        "server": {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
        "rate": {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}},
        "quota": {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API."}},
    },
}

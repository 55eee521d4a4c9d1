"""HTTP plumbing shared by the HTTP wires: open a streaming POST, map failures.

Transport failures become ParleyErrors here, once: connect errors are
``unreachable``, read time-outs ``timeout``, a connection dropped mid-body
``truncated``; HTTP error statuses go through :func:`core.errors.classify`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from core.errors import ErrorKind, ParleyError, classify
from core.providers.base import Endpoint


def vendor_error(
    endpoint: Endpoint,
    status: int | None,
    body: Any,
    headers: Mapping[str, str] | None = None,
    model: str | None = None,
) -> ParleyError:
    spec = endpoint.spec
    return classify(
        provider=spec.id,
        label=spec.label,
        key_env=spec.key_env,
        auth_hint=spec.auth_hint,
        status=status,
        body=body,
        headers=headers,
        model=model,
    )


def transport_error(endpoint: Endpoint, exc: httpx.HTTPError) -> ParleyError:
    spec = endpoint.spec
    where = f"{spec.label} (provider '{spec.id}')"
    setting = f" Check {spec.base_url_env} and your network." if spec.base_url_env else ""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)):
        return ParleyError(
            ErrorKind.UNREACHABLE,
            f"Cannot reach {where} at {endpoint.base_url}: {type(exc).__name__}.{setting}",
            provider=spec.id,
        )
    if isinstance(exc, httpx.TimeoutException):
        return ParleyError(
            ErrorKind.TIMEOUT,
            f"{where} did not answer in time ({type(exc).__name__}). Try again, or raise "
            f"PARLEY_READ_TIMEOUT for slow models.",
            provider=spec.id,
        )
    return ParleyError(
        ErrorKind.TRUNCATED,
        f"The connection to {where} dropped before the answer was complete "
        f"({type(exc).__name__}).",
        provider=spec.id,
    )


@asynccontextmanager
async def open_stream(
    endpoint: Endpoint,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    model: str,
) -> AsyncIterator[AsyncIterator[str]]:
    """POST ``body`` and yield the response's line iterator; errors are ParleyErrors."""
    url = endpoint.base_url.rstrip("/") + path
    try:
        async with endpoint.http.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code >= 400:
                raw = await resp.aread()
                raise vendor_error(endpoint, resp.status_code, raw, resp.headers, model)
            yield _lines(endpoint, resp)
    except httpx.HTTPError as exc:
        raise transport_error(endpoint, exc) from None


async def _lines(endpoint: Endpoint, resp: httpx.Response) -> AsyncIterator[str]:
    # Split bytes ourselves: httpx's aiter_lines adds a text decoder and a line
    # decoder per chunk, a measurable share of the per-token cost (bench/core_bench).
    # SSE lines end with \n, \r\n or \r; UTF-8 never has those bytes inside a character.
    buf = b""
    try:
        async for data in resp.aiter_bytes():
            if buf:
                data = buf + data
            hold = data.endswith(b"\r")  # maybe half of a \r\n: decide with the next read
            if hold:
                data = data[:-1]
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            *lines, buf = data.split(b"\n")
            if hold:
                buf += b"\r"
            for line in lines:
                yield line.decode("utf-8", "replace")
        if buf:
            yield buf.rstrip(b"\r").decode("utf-8", "replace")
    except httpx.HTTPError as exc:
        raise transport_error(endpoint, exc) from None


async def get_json(endpoint: Endpoint, path: str, headers: dict[str, str]) -> Any:
    url = endpoint.base_url.rstrip("/") + path
    try:
        resp = await endpoint.http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise transport_error(endpoint, exc) from None
    if resp.status_code >= 400:
        raise vendor_error(endpoint, resp.status_code, resp.content, resp.headers)
    try:
        return resp.json()
    except ValueError:
        raise ParleyError(
            ErrorKind.BAD_REQUEST,
            f"{endpoint.spec.label} answered {path} with something that is not JSON; is "
            f"{endpoint.spec.base_url_env or 'the base URL'} pointing at the API?",
            provider=endpoint.spec.id,
        ) from None

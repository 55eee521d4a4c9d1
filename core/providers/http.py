"""HTTP plumbing shared by the HTTP wires: one small client interface, two adapters.

Production streams through aiohttp: its C HTTP parser carries about ten times
more concurrent token streams per core than httpx's pure-Python h11 (measured
in bench/core_bench.py: 500 streams at 50 chunks/s each, event-loop lag p99
47 ms with aiohttp against 2.9 s with httpx). :class:`HttpxClient` adapts an
``httpx.AsyncClient`` to the same interface, so wire tests can use
``httpx.MockTransport``.

Transport failures become ParleyErrors here, once: connect errors are
``unreachable``, read time-outs ``timeout``, a connection dropped mid-body
``truncated``; HTTP error statuses go through :func:`core.errors.classify`.
So does the stream policy shared by the HTTP wires: a 200 that is a web page
(``text/html``) is not an event stream (``unreachable``, naming the base URL
setting); a line over :data:`MAX_LINE` and an event whose data is not a JSON
object end the turn as ``truncated``, keeping the text already received.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from core.errors import ErrorKind, ParleyError, classify
from core.providers.base import Endpoint


@dataclass(slots=True)
class Reply:
    """A streaming HTTP response, whichever client produced it."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks])


class AiohttpClient:
    """The production client: one pooled aiohttp session, created in the running loop."""

    def __init__(self, connect_timeout: float, read_timeout: float, limit: int = 1000) -> None:
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=self.limit, limit_per_host=self.limit),
                headers={"user-agent": "parley/0.1"},
            )
        return self._session

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[Reply]:
        async with self._get().request(method, url, json=json, headers=headers) as resp:
            yield Reply(resp.status, resp.headers, resp.content.iter_any())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxClient:
    """Adapter for an ``httpx.AsyncClient`` (tests use it with ``httpx.MockTransport``)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[Reply]:
        async with self.client.stream(method, url, json=json, headers=headers) as resp:
            yield Reply(resp.status_code, resp.headers, resp.aiter_bytes())

    async def aclose(self) -> None:
        await self.client.aclose()


# --- errors -----------------------------------------------------------------------------

#: The longest SSE line accepted (bytes): an answer arrives in small deltas, never in one line.
MAX_LINE = 1 << 20
#: Content types that are never an event stream (captive portals, proxies, a site's front page).
_NOT_A_STREAM = re.compile(r"html|xml", re.I)

_CONNECT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol,
            aiohttp.ClientConnectorError, aiohttp.InvalidURL)
_TIMEOUT = (httpx.TimeoutException, asyncio.TimeoutError, aiohttp.ServerTimeoutError)
TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, asyncio.TimeoutError)


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
        headers={k.lower(): v for k, v in (headers or {}).items()},
        model=model,
        key_fix=spec.key_fix(),
        url_setting=endpoint.url_hint(),
    )


def transport_error(endpoint: Endpoint, exc: BaseException) -> ParleyError:
    spec = endpoint.spec
    where = endpoint.spec.where
    setting = f" Check {endpoint.url_hint()} and your network."
    if isinstance(exc, _CONNECT):
        return ParleyError(
            ErrorKind.UNREACHABLE,
            f"Cannot reach {where} at {endpoint.base_url}: {type(exc).__name__}.{setting}",
            provider=spec.id,
        )
    if isinstance(exc, _TIMEOUT):
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


def truncated(endpoint: Endpoint, missing: str) -> ParleyError:
    """A stream that ended cleanly at the HTTP level but without its terminator."""
    return ParleyError(
        ErrorKind.TRUNCATED,
        f"{endpoint.spec.where} ended the stream before it was complete ({missing}); the answer "
        f"may be cut short.",
        provider=endpoint.spec.id,
    )


def event_object(endpoint: Endpoint, data: str) -> dict[str, Any]:
    """An SSE event's data as a JSON object; anything else ends the turn (kind ``truncated``)."""
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        return obj
    raise ParleyError(
        ErrorKind.TRUNCATED,
        f"{endpoint.spec.where} sent a malformed stream event ({data[:60]!r} is not a JSON object); "
        f"Parley stopped there and kept the text received before it. Try again; if it "
        f"persists, the provider or a proxy in between is mangling the stream.",
        provider=endpoint.spec.id,
    )


def not_a_stream(endpoint: Endpoint, url: str, content_type: str) -> ParleyError:
    """A 200 that is a web page: a captive portal, a proxy's login page or a wrong base URL."""
    return ParleyError(
        ErrorKind.UNREACHABLE,
        f"{endpoint.spec.where} answered {url} with a {content_type.split(';')[0].strip()} page, not an "
        f"event stream: a captive portal, a proxy's sign-in page or a wrong base URL is in the way. "
        f"Check {endpoint.url_hint()}: it should be the API's base URL (usually ending in /v1). "
        f"Then check your network.",
        provider=endpoint.spec.id,
    )


def line_too_long(endpoint: Endpoint) -> ParleyError:
    return ParleyError(
        ErrorKind.TRUNCATED,
        f"{endpoint.spec.where} sent a stream line longer than {MAX_LINE >> 20} MB, which no answer "
        f"needs; Parley stopped reading there and kept the text received before it.",
        provider=endpoint.spec.id,
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
            if resp.status >= 400:
                raise vendor_error(endpoint, resp.status, await resp.read(), resp.headers, model)
            content_type = resp.headers.get("content-type") or ""
            if _NOT_A_STREAM.search(content_type):
                raise not_a_stream(endpoint, url, content_type)
            yield _lines(endpoint, resp.chunks)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(endpoint, exc) from None


async def _lines(endpoint: Endpoint, chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    # Split bytes ourselves (cheaper than a text decoder plus a line decoder per
    # chunk). SSE lines end with \n, \r\n or \r; UTF-8 never has those bytes
    # inside a character, so decoding whole lines is safe.
    buf = b""
    try:
        async for data in chunks:
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
                if len(line) > MAX_LINE:
                    raise line_too_long(endpoint)
                yield line.decode("utf-8", "replace")
            if len(buf) > MAX_LINE:
                raise line_too_long(endpoint)
        if buf:
            yield buf.rstrip(b"\r").decode("utf-8", "replace")
    except TRANSPORT_ERRORS as exc:
        raise transport_error(endpoint, exc) from None


async def get_json(endpoint: Endpoint, path: str, headers: dict[str, str]) -> Any:
    url = endpoint.base_url.rstrip("/") + path
    try:
        async with endpoint.http.stream("GET", url, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise vendor_error(endpoint, resp.status, raw, resp.headers)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(endpoint, exc) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ParleyError(
            ErrorKind.BAD_REQUEST,
            f"{endpoint.spec.label} answered {path} with something that is not JSON; is "
            f"{endpoint.url_hint()} pointing at the API?",
            provider=endpoint.spec.id,
        ) from None

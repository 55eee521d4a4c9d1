"""HTTP plumbing shared by the HTTP wires: one small client interface, two adapters.

Production streams through aiohttp (:class:`AiohttpClient`), whose HTTP parser is
written in C. :class:`HttpxClient` adapts an ``httpx.AsyncClient`` to the same
interface, so wire tests can use ``httpx.MockTransport``.

Per chunk of a stream the client does as little as it can: PARLEY_READ_TIMEOUT
(silence on the socket, per attempt) is one lazily re-armed timer per response
(:class:`Deadline`), not a timer made and cancelled at every read as aiohttp's own
``sock_read`` does; the body's bytes go straight into one :class:`SSEDecoder`
(:func:`open_stream` yields lists of events, one list per read).

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
import msgspec

from core.errors import ErrorKind, ParleyError, classify
from core.providers.base import ChatRequest, Endpoint
from core.providers.sse import LineTooLong, SSEDecoder, SSEEvent


class Deadline:
    """Interrupts an await that outlives a deadline which moves as work progresses, with one
    timer for the whole life of the thing it guards (a response body, a turn).

    Progress only moves a float (:meth:`due` reads it); the timer, when it rings early,
    re-arms itself at the deadline now in force, so the hot path creates no timer per
    chunk. It cancels the task only while :meth:`guard` awaits, never while the
    caller works between two awaits, and :meth:`guard` turns that cancellation into
    :meth:`expired`'s exception, as ``asyncio.timeout`` does."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._waiting: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._rang = False

    def due(self) -> float:
        """When (loop time) the deadline in force falls."""
        raise NotImplementedError

    def expired(self) -> BaseException:
        """What :meth:`guard` raises when the deadline passed while it waited."""
        raise NotImplementedError

    def _ring(self) -> None:
        self._timer = None
        at = self.due()
        if self.loop.time() < at:
            self._timer = self.loop.call_at(at, self._ring)  # progress moved the deadline
        elif self._waiting is not None:
            self._rang = True
            self._waiting.cancel()
        # else: due while the caller works; guard() sees it before its next await

    async def guard(self, awaitable: Any) -> Any:
        """Await ``awaitable``; raises :meth:`expired` when the deadline passes first."""
        at = self.due()
        if self.loop.time() >= at:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # a coroutine never awaited
            raise self.expired()
        if self._timer is None:
            self._timer = self.loop.call_at(at, self._ring)
        task = self._waiting = asyncio.current_task()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._rang and task is not None and task.uncancel() == 0:
                self._rang = False
                raise self.expired() from None
            raise
        finally:
            self._waiting = None

    def rearm(self) -> None:
        """The deadline moved earlier: ring at the new time (a later one re-arms by itself)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self.loop.call_at(self.due(), self._ring)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _ReadTimeout(Deadline):
    """PARLEY_READ_TIMEOUT on one response: the socket said nothing for ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.last = self.loop.time()

    def due(self) -> float:
        return self.last + self.timeout

    def expired(self) -> BaseException:
        return aiohttp.ServerTimeoutError("Timeout on reading data from socket")


async def _aiohttp_body(content: aiohttp.StreamReader, read_timeout: float | None) -> AsyncIterator[bytes]:
    if not read_timeout:
        while data := await content.readany():
            yield data
        return
    clock = _ReadTimeout(read_timeout)
    try:
        while data := await clock.guard(content.readany()):
            clock.last = clock.loop.time()
            yield data
    finally:
        clock.close()


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
        # aiohttp's sock_read guards the wait for the response head; the body is guarded by
        # one timer of ours (_aiohttp_body): aiohttp makes, schedules and cancels a timer at
        # every read, the largest single cost per chunk in bench/core_bench.py's profile.
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.read_timeout = read_timeout
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
            conn = resp.connection
            if conn is not None and conn.protocol is not None:
                conn.protocol.read_timeout = None  # the body's reads: _aiohttp_body
            yield Reply(resp.status, resp.headers, _aiohttp_body(resp.content, self.read_timeout))

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
#: A read of fewer bytes than this is followed by :attr:`ChatRequest.gather` seconds of letting
#: the stream's next chunks arrive; a larger one by none (the stream is ahead of its reader).
GATHER_BELOW = 16 * 1024
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


_decode = msgspec.json.Decoder().decode


def event_object(endpoint: Endpoint, data: str) -> dict[str, Any]:
    """An SSE event's data as a JSON object; anything else ends the turn (kind ``truncated``)."""
    try:
        obj = _decode(data)
    except msgspec.DecodeError:
        try:  # what msgspec refuses and the standard library reads (NaN, huge numbers)
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
    request: ChatRequest,
) -> AsyncIterator[AsyncIterator[list[SSEEvent]]]:
    """POST ``body`` and yield an iterator of the response's events, one list per read
    (never empty), reads ``request.gather`` apart; errors are ParleyErrors."""
    url = endpoint.base_url.rstrip("/") + path
    model = request.model.id
    try:
        async with endpoint.http.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status >= 400:
                raise vendor_error(endpoint, resp.status, await resp.read(), resp.headers, model)
            content_type = resp.headers.get("content-type") or ""
            if _NOT_A_STREAM.search(content_type):
                raise not_a_stream(endpoint, url, content_type)
            yield _events(endpoint, resp.chunks, request)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(endpoint, exc) from None


async def _events(
    endpoint: Endpoint, chunks: AsyncIterator[bytes], request: ChatRequest
) -> AsyncIterator[list[SSEEvent]]:
    decoder = SSEDecoder(MAX_LINE)
    try:
        async for data in chunks:
            if events := decoder.feed(data):
                yield events
            if request.gather and len(data) < GATHER_BELOW:
                # Let the next chunks arrive meanwhile: one wake-up, one read for all of them.
                # (A read this large says the stream is ahead of us: no waiting then.)
                await asyncio.sleep(request.gather)
        if events := decoder.end():
            yield events
    except LineTooLong:
        raise line_too_long(endpoint) from None
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

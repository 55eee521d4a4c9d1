"""A round-robin HTTP reverse proxy on loopback, standing for the load balancer in front of
several ``parley slack`` replicas (one Request URL, many processes).

Each request that reaches the proxy goes to the next replica in turn, as nginx's or an
ingress's round robin does. The method, path, query, headers and body are forwarded
byte for byte (Slack's signature covers the timestamp and the raw body, so nothing may
be re-encoded); only hop-by-hop headers are dropped, as a proxy must
(RFC 9110 §7.6.1), and the replica's answer comes back the same way.

For tests that need a given request at a given replica (Slack retrying an event that
lands on another replica), :meth:`RoundRobinProxy.pin` sends the next request(s) to a
chosen replica, and :meth:`RoundRobinProxy.forward` sends one request there directly.
A replica that refuses the connection (killed) is skipped for the next one, as a load
balancer's health check would; every request is recorded in :attr:`RoundRobinProxy.log`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

#: Headers that describe one connection, not the message (never forwarded by a proxy).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
    )
)


@dataclass
class Forwarded:
    """One request the proxy handled: where it went and what came back."""

    replica: int  # index into the proxy's targets (-1: no replica answered)
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes
    status: int
    at: float


class RoundRobinProxy:
    """Forward every request to ``targets`` (base URLs such as ``http://127.0.0.1:3001``) in turn."""

    def __init__(self, targets: list[str], *, skip_refused: bool = True, timeout: float = 30.0) -> None:
        if not targets:
            raise ValueError("a proxy needs at least one target")
        self.targets = [t.rstrip("/") for t in targets]
        self.skip_refused = skip_refused
        self.timeout = timeout
        self.log: list[Forwarded] = []
        self._next = 0
        self._pinned: deque[int] = deque()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # No cookie jar, no auto headers (the replica must see exactly what Slack sent).
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> RoundRobinProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- routing ---------------------------------------------------------------------------------------
    def pin(self, *replicas: int) -> None:
        """The next requests go to these replicas, one each, in this order (then round robin resumes)."""
        for r in replicas:
            if not 0 <= r < len(self.targets):
                raise IndexError(f"no replica {r}")
            self._pinned.append(r)

    def _choose(self) -> tuple[int, bool]:
        """The replica for the next request, and whether it was pinned (then never skipped)."""
        if self._pinned:
            return self._pinned.popleft(), True
        r = self._next
        self._next = (self._next + 1) % len(self.targets)
        return r, False

    def sent_to(self, replica: int) -> list[Forwarded]:
        return [f for f in self.log if f.replica == replica]

    # --- forwarding ------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        first, pinned = self._choose()
        order = [first] if pinned or not self.skip_refused else [
            (first + k) % len(self.targets) for k in range(len(self.targets))
        ]
        for replica in order:
            try:
                status, headers, payload = await self.forward(
                    replica, request.method, request.raw_path, request.headers, body
                )
            except aiohttp.ClientConnectionError:
                continue  # refused (the replica is gone): the balancer tries the next one
            except TimeoutError:
                return web.Response(status=504, text="the replica did not answer in time")
            return web.Response(status=status, headers=headers, body=payload)
        self.log.append(Forwarded(-1, request.method, request.raw_path, CIMultiDict(request.headers), body, 502,
                                  time.monotonic()))
        return web.Response(status=502, text="no replica answered")

    async def forward(
        self, replica: int, method: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """Send one request to ``replica`` as it came (``path_qs`` as received, still %-encoded);
        returns its status, headers and body."""
        assert self._http is not None, "start() the proxy first"
        out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)
        entry = Forwarded(replica, method, path_qs, CIMultiDict(out), body, 0, time.monotonic())
        try:
            async with self._http.request(
                method, URL(self.targets[replica] + path_qs, encoded=True), headers=out, data=body or None,
                skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
                allow_redirects=False,
            ) as r:
                payload = await r.read()
                back = CIMultiDict((k, v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP)
                entry.status = r.status
                return r.status, back, payload
        except (aiohttp.ClientConnectionError, TimeoutError):
            entry.status = 502
            raise
        finally:
            self.log.append(entry)

"""HTTP mode's front door: ``POST /slack/events`` (and ``GET /healthz``).

Every request is checked here before bolt sees it, cheaply and with one short log
line per refusal (never the body: a flood of large unsigned requests must not
become a flood of log):

- larger than :data:`MAX_REQUEST_BYTES`: 413 (aiohttp stops reading there);
- not text, not JSON or form data bolt can read: 400;
- a missing or bad signature, or a timestamp more than five minutes off
  (https://api.slack.com/authentication/verifying-requests-from-slack): 401.

Bolt's own verification is off (it would log every refused body at INFO); this
is the only way into the app over HTTP, so there is exactly one check.

Installed in many workspaces, ``GET /slack/install`` and ``GET /slack/oauth_redirect``
(``installs``, :meth:`bots.slack.oauth.SlackOAuth.routes`) are served too: a browser
comes there, not Slack, so they are not signed; bolt's flow checks the install's state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bots.slack.manifest import EVENTS_PATH
from core.threads import FrontDoor

log = logging.getLogger("parley.slack")

#: Slack's payloads for what Parley subscribes to are a few KB; a 40,000-character
#: message with its blocks stays well under this.
MAX_REQUEST_BYTES = 512 * 1024


def web_app(
    app: AsyncApp,
    signing_secret: str | None,
    running: Callable[[], int],
    ops: list[web.RouteDef] | None = None,
    *,
    installs: list[web.RouteDef] | None = None,
    door: FrontDoor | None = None,
) -> web.Application:
    """The aiohttp application serving ``app``, ``ops`` (health, readiness, metrics:
    :func:`core.ops.routes`) and ``installs`` (the OAuth install routes, if any). Without a
    signing secret every event is refused (HTTP mode is only served with one). Each request
    is inside ``door`` until it is answered: the work of those answered before waits for it."""
    verifier = SignatureVerifier(signing_secret) if signing_secret else None
    door = door or FrontDoor()

    async def events(request: web.Request) -> web.Response:
        with door.inside():
            return await _events(request)

    async def _events(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.warning("Slack: refused a request larger than %d bytes from %s", MAX_REQUEST_BYTES, request.remote)
            return web.json_response({"error": "request too large"}, status=413)
        try:
            bolt_request = AsyncBoltRequest(
                body=raw.decode("utf-8"), query=request.query_string, headers=dict(request.headers)
            )
        except Exception as e:  # not UTF-8, not JSON, JSON that is not an object…
            log.warning("Slack: refused a malformed request from %s (%s)", request.remote, type(e).__name__)
            return web.json_response({"error": "malformed request"}, status=400)
        if not _signed(verifier, raw, request):
            log.warning("Slack: refused a request with a missing or bad signature from %s", request.remote)
            return web.json_response({"error": "invalid request"}, status=401)
        return await to_aiohttp_response(await app.async_dispatch(bolt_request))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "running": running()})

    web_app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    web_app.add_routes([web.post(EVENTS_PATH, events)])
    web_app.add_routes(ops if ops is not None else [web.get("/healthz", healthz)])
    web_app.add_routes(installs or [])
    return web_app


def _signed(verifier: SignatureVerifier | None, raw: bytes, request: web.Request) -> bool:
    if verifier is None:
        return False
    try:
        return verifier.is_valid(
            raw,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
        )
    except ValueError:  # a timestamp that is not a number
        return False

"""``parley slack``: run the Slack app, or print its manifest.

Socket Mode when ``SLACK_APP_TOKEN`` is set (``/healthz``, ``/readyz`` and ``/metrics`` then
on ``PARLEY_OPS_HOST``:``PARLEY_OPS_PORT``), otherwise HTTP on ``/slack/events`` (and those
three) on ``SLACK_HOST``:``PORT``. With ``SLACK_CLIENT_ID`` and
``SLACK_CLIENT_SECRET`` instead of ``SLACK_BOT_TOKEN``, Parley is installed in many
workspaces (HTTP mode, :mod:`bots.slack.oauth`: ``/slack/install`` and
``/slack/oauth_redirect`` too). ``parley run`` starts it when :func:`configured`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.app import SlackFront
from bots.slack.config import SlackSettings, api_url, check_oauth, check_tokens, oauth_mode
from bots.slack.manifest import EVENTS_PATH, INSTALL_PATH, manifest
from bots.slack.oauth import AccessLogger as OAuthAccessLogger
from bots.slack.oauth import SlackOAuth
from core import logs, ops
from core.config import Settings
from core.errors import UsageError
from core.services import Services
from core.threads import run_service

log = logging.getLogger("parley.slack")


def configured() -> bool:
    """Whether a Slack bot token (or an app's OAuth credentials) is set (``parley run`` then starts Slack)."""
    settings = SlackSettings()
    return settings.bot_token is not None or oauth_mode(settings)


def _secret_key(settings: Settings) -> str | None:
    return settings.secret_key.get_secret_value() if settings.secret_key else None


def build_front(services: Services, settings: SlackSettings) -> SlackFront:
    """The front-end for these settings: one bot token, or installed in many workspaces."""
    if oauth_mode(settings):
        _, _, signing = check_oauth(settings, secret_key=_secret_key(services.settings))
        oauth = SlackOAuth.from_settings(services.store, settings, _secret_key(services.settings))
        client = AsyncWebClient(base_url=api_url(settings), timeout=30)  # no token: each workspace has its own
        return SlackFront(services, client, signing_secret=signing, oauth=oauth)
    bot, app_token, secret = check_tokens(settings, http=True)
    client = AsyncWebClient(token=bot, base_url=api_url(settings), timeout=30)
    return SlackFront(services, client, signing_secret=None if app_token else secret)


async def serve(
    services: Services, settings: SlackSettings | None = None, *, port: int | None = None
) -> None:
    """Run until cancelled: Socket Mode with an app token, else HTTP."""
    settings = settings or SlackSettings()
    front = build_front(services, settings)
    app_token = None if oauth_mode(settings) else check_tokens(settings, http=True)[1]
    await front.start()
    try:
        if app_token:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            handler = AsyncSocketModeHandler(
                front.app, app_token, web_client=AsyncWebClient(base_url=api_url(settings))
            )
            await handler.connect_async()
            log.info("Slack: connected in Socket Mode")
            try:
                # No HTTP port of its own: health, readiness and metrics on PARLEY_OPS_PORT.
                core = services.settings
                async with ops.serving(services, core.ops_port, core.ops_host, lambda: len(front.tasks)) as bound:
                    if bound is not None:
                        log.info("Slack: /healthz, /readyz and /metrics on %s:%d", core.ops_host, bound)
                    await asyncio.Event().wait()
            finally:
                await handler.close_async()
        else:
            quiet = {"access_log_class": OAuthAccessLogger} if front.oauth is not None else {}
            runner = web.AppRunner(front.web_app(), **quiet)  # type: ignore[arg-type]
            await runner.setup()
            port = settings.port if port is None else port
            site = web.TCPSite(runner, settings.host, port)
            await site.start()
            log.info("Slack: listening on %s:%d%s", settings.host, port, EVENTS_PATH)
            if front.oauth is not None:
                log.info("Slack: installs start at %s (one bot token per workspace)", INSTALL_PATH)
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()
    finally:
        await front.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="parley slack", description="Run the Slack app, or print its manifest.")
    p.add_argument("what", nargs="?", choices=["serve", "manifest"], default="serve")
    p.add_argument("--port", type=int, help="HTTP mode port (default: PORT or 3000)")
    p.add_argument("--request-url", help="manifest: the public https URL of /slack/events (HTTP mode)")
    p.add_argument("--socket-mode", action="store_true", help="manifest: Socket Mode (no public URL needed)")
    p.add_argument(
        "--oauth",
        action="store_true",
        help="manifest: installed in many workspaces (SLACK_CLIENT_ID): adds the Redirect URL next to "
        "--request-url",
    )
    p.add_argument(
        "--followups",
        action="store_true",
        help="manifest: follow-ups without a mention in Parley's threads (reads channel messages; "
        "then /policy followups on)",
    )
    args = p.parse_args(list(argv or []))
    if args.what == "manifest":
        if args.oauth and (args.socket_mode or not args.request_url):
            print("parley: --oauth needs --request-url (HTTP mode): Slack redirects installers there", file=sys.stderr)
            return 2
        if not args.socket_mode and not args.request_url:
            args.socket_mode = True
        print(
            json.dumps(
                manifest(socket_mode=args.socket_mode, request_url=args.request_url, followups=args.followups,
                         oauth=args.oauth),
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    slack = SlackSettings()
    if not oauth_mode(slack):
        check_tokens(slack, http=True)
    settings = Settings()
    if oauth_mode(slack):
        check_oauth(slack, secret_key=_secret_key(settings))
    logs.configure(settings.log_format)

    async def go() -> None:
        from core.services import build_services

        async with build_services(settings) as services:
            await serve(services, slack, port=args.port)

    try:
        run_service(go())
    except KeyboardInterrupt:
        pass
    except UsageError as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 2
    return 0

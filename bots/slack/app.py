"""``parley slack``: the Slack app (slack-bolt ``AsyncApp``), a thin adapter over the core.

- Slash commands (every discussion and information command of the one command
  table, plus the ``/parley`` umbrella) are acknowledged at once; a discussion
  posts a parent message in the channel and streams each turn as a reply in its
  thread. Errors in the command come back as an ephemeral reply with the fix.
- ``@Parley`` mentions answer in a thread under the mention; a mention inside a
  thread (or a direct message in a DM thread) continues that thread's discussion.
- Socket Mode when ``SLACK_APP_TOKEN`` is set, otherwise HTTP on ``/slack/events``
  with request signatures verified by bolt (bad signatures and timestamps older
  than five minutes get 401).
- At start-up, messages left open by a previous process are marked interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from slack_bolt.app.async_server import AsyncSlackAppServer
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.format import to_mrkdwn
from bots.slack.manifest import EVENTS_PATH, manifest, slash_commands
from bots.slack.sink import INTERRUPTED, SlackSink, WorkspaceBudgets, retry_after, slack_error
from core.commands import UMBRELLA, Request, help_text, parse, parse_line
from core.config import Settings
from core.errors import ParleyError, UsageError, redact
from core.services import Services
from core.threads import Requests, discuss_in_thread

log = logging.getLogger("parley.slack")

FRONT_END = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
THREAD_INTERRUPTED = "⚠️ Interrupted: Parley restarted before this discussion finished. Ask again to rerun it."
_AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")


def check_tokens(settings: Settings, *, http: bool) -> tuple[str, str | None, str | None]:
    """The bot token, app token and signing secret, or a UsageError saying how to fix them."""
    if settings.slack_bot_token is None:
        raise UsageError(
            "SLACK_BOT_TOKEN is not set. Create the app from `parley slack manifest` "
            "(see docs/slack.md), install it to your workspace, and put its Bot User OAuth Token "
            "(xoxb-…) in .env as SLACK_BOT_TOKEN."
        )
    bot = settings.slack_bot_token.get_secret_value().strip()
    if not bot.startswith("xoxb-"):
        kind = {"xoxp-": "a user token", "xapp-": "an app-level token", "xoxe": "a refresh token"}
        what = next((v for k, v in kind.items() if bot.startswith(k)), "not a bot token")
        raise UsageError(
            f"SLACK_BOT_TOKEN is {what}. Use the Bot User OAuth Token from OAuth & Permissions; "
            "it starts with xoxb-."
        )
    app = settings.slack_app_token.get_secret_value().strip() if settings.slack_app_token else None
    if app is not None and not app.startswith("xapp-"):
        raise UsageError(
            "SLACK_APP_TOKEN is not an app-level token (those start with xapp-). Create one under Basic "
            "Information → App-Level Tokens with the connections:write scope, or unset it to use HTTP mode."
        )
    secret = (
        settings.slack_signing_secret.get_secret_value().strip() if settings.slack_signing_secret else None
    )
    if http and app is None and not secret:
        raise UsageError(
            "HTTP mode needs SLACK_SIGNING_SECRET (Basic Information → App Credentials) to verify that "
            "requests come from Slack. Or set SLACK_APP_TOKEN to use Socket Mode instead."
        )
    return bot, app, secret


def api_url(settings: Settings) -> str:
    url = settings.slack_api_url or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


class Dedupe:
    """Slack re-delivers an event it thinks was not acknowledged; handle each ``event_id`` once."""

    def __init__(self, size: int = 10_000) -> None:
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.size = size

    def first(self, event_id: str | None) -> bool:
        if not event_id:
            return True
        if event_id in self.seen:
            return False
        self.seen[event_id] = None
        if len(self.seen) > self.size:
            self.seen.popitem(last=False)
        return True


class SlackFront(Requests):
    """The bolt app plus everything it needs; built once per process."""

    def __init__(
        self,
        services: Services,
        client: AsyncWebClient,
        *,
        signing_secret: str | None,
        budgets: Callable[[], WorkspaceBudgets] = WorkspaceBudgets,
        stream_life: float | None = None,
    ) -> None:
        self.services = services
        self.client = client
        self.make_budgets = budgets
        self.stream_life = stream_life
        self.workspaces: dict[str, WorkspaceBudgets] = {}
        self.dedupe = Dedupe()
        super().__init__()
        self.customize = False
        self.bot_user_id: str | None = None
        self.team_id: str | None = None
        self.app = AsyncApp(
            client=client,
            signing_secret=signing_secret or "",
            request_verification_enabled=signing_secret is not None,
            logger=logging.getLogger("parley.slack.bolt"),
        )
        for name in slash_commands():
            self.app.command(f"/{name}")(self.on_command)
        self.app.event("app_mention")(self.on_mention)
        self.app.event("message")(self.on_message)

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the token with Slack, learn the granted scopes, and close what a restart left open."""
        try:
            resp = await self.client.auth_test()
        except SlackApiError as e:
            err = slack_error(e)
            if err in _AUTH_ERRORS:
                raise UsageError(
                    f"Slack rejected SLACK_BOT_TOKEN ({err}). Reinstall the app to your workspace and copy "
                    "the Bot User OAuth Token from OAuth & Permissions into .env."
                ) from None
            raise UsageError(f"Slack auth.test failed ({err or e.response.status_code}).") from None
        self.bot_user_id = resp.get("user_id")
        self.team_id = resp.get("team_id")
        scopes = {s.strip() for s in str(_header(resp.headers, "x-oauth-scopes") or "").split(",")}
        self.customize = "chat:write.customize" in scopes
        await self.recover()

    async def recover(self) -> int:
        """Mark every message a previous process left open as interrupted. Returns how many."""
        store = self.services.store
        store.mark_interrupted([FRONT_END])
        n = 0
        for post in store.open_posts(FRONT_END):
            ref = json.loads(post["ref"])
            try:
                await self._mark_interrupted(ref, post.get("text") or "")
                n += 1
            except Exception as e:  # keep going: one deleted message must not block the rest
                log.warning("could not mark %s interrupted: %s", ref.get("ts"), redact(str(e)))
            store.close_posts([post["id"]])
        return n

    async def _mark_interrupted(self, ref: dict[str, Any], shown: str) -> None:
        channel, ts, kind = ref["channel"], ref["ts"], ref["kind"]
        if kind == "thread":
            await self.client.chat_postMessage(channel=channel, thread_ts=ts, text=THREAD_INTERRUPTED)
            return
        if kind == "stream":
            try:
                await self.client.chat_stopStream(channel=channel, ts=ts, markdown_text="\n\n" + INTERRUPTED)
                return
            except SlackApiError as e:
                if slack_error(e) != "message_not_in_streaming_state":
                    raise
            shown = to_mrkdwn(shown)  # the stream ended on its own: rewrite it as a plain message
        text = shown.removesuffix(" …") + "\n\n" + INTERRUPTED
        await self.client.chat_update(channel=channel, ts=ts, text=text)

    def web_app(self) -> web.Application:
        server = AsyncSlackAppServer(port=0, path=EVENTS_PATH, app=self.app)

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"ok": True, "running": len(self.tasks)})

        server.web_app.add_routes([web.get("/healthz", healthz)])
        return server.web_app

    def budgets(self, team: str | None) -> WorkspaceBudgets:
        key = team or self.team_id or "-"
        b = self.workspaces.get(key)
        if b is None:
            b = self.workspaces[key] = self.make_budgets()
        return b

    # --- slash commands ----------------------------------------------------------------------------
    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        name = command["command"].lstrip("/")
        text = (command.get("text") or "").strip()
        max_chars = self.services.settings.max_prompt_chars
        try:
            if name == UMBRELLA:
                req = parse("help", "") if not text else parse_line(text, max_prompt_chars=max_chars)
            else:
                req = parse(name, text, max_prompt_chars=max_chars)
            if req.mode is not None:
                self.services.engine.panel(req)  # unknown persona/provider, missing key: say so now
        except (UsageError, ParleyError) as e:
            await ack(text=f"⚠️ {e.message}")
            return
        await ack()
        if req.mode is None:
            self.spawn(self._info(req.command, respond))
            return
        self.spawn(self._from_command(req, command, respond))

    async def _info(self, name: str, respond: Callable[..., Awaitable[Any]]) -> None:
        await respond(text=to_mrkdwn(await self._info_text(name)), response_type="ephemeral")

    async def _info_text(self, name: str) -> str:
        if name == "help":
            return help_text() + "\n\nMention me (`@Parley compare …`) in a thread to follow up."
        from core.info import info_text

        return await info_text(self.services, name)

    async def _from_command(self, req: Request, command: dict[str, Any], respond: Any) -> None:
        channel, user, team = command["channel_id"], command["user_id"], command.get("team_id")
        budgets = self.budgets(team)
        panel = ", ".join(p.title for p in self.services.engine.panel(req))
        quoted = "\n".join("> " + line for line in to_mrkdwn(req.prompt).splitlines())
        parent_text = f"<@{user}> asked · *{req.command}* · {panel}\n{quoted}"
        ts = None
        for attempt in range(5):
            await budgets.post(channel).acquire(0.0)
            try:
                resp = await self.client.chat_postMessage(channel=channel, text=parent_text)
                ts = str(resp["ts"])
                break
            except SlackApiError as e:
                if e.response.status_code == 429:
                    budgets.post(channel).pause(retry_after(e))
                    continue
                await respond(text=_post_error(slack_error(e)), response_type="ephemeral")
                return
            except Exception as e:  # network trouble: back off and retry
                log.warning("posting the parent message failed: %s", redact(str(e)))
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
        if ts is None:
            await respond(
                text="⚠️ Slack did not accept the message; please try again.", response_type="ephemeral"
            )
            return
        await self._discuss(
            req, team, channel, ts, user, on_error=lambda m: respond(text=m, response_type="ephemeral")
        )

    # --- mentions and direct messages -----------------------------------------------------------
    async def on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if not self.dedupe.first(body.get("event_id")):
            return
        if event.get("subtype") or event.get("bot_id"):
            return
        self.spawn(self._from_message(event, body.get("team_id")))

    async def on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        # Direct messages only: in channels Parley answers when mentioned.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        if not self.dedupe.first(body.get("event_id")):
            return
        self.spawn(self._from_message(event, body.get("team_id")))

    async def _from_message(self, event: dict[str, Any], team: str | None) -> None:
        channel, user = event["channel"], event.get("user", "")
        thread_ts = event.get("thread_ts") or event["ts"]
        text = _strip_mention(event.get("text") or "", self.bot_user_id)

        async def ephemeral(message: str) -> None:
            with contextlib.suppress(SlackApiError):
                await self.client.chat_postEphemeral(
                    channel=channel, user=user, thread_ts=thread_ts, text=message
                )

        try:
            req = (
                parse_line(text, max_prompt_chars=self.services.settings.max_prompt_chars)
                if text
                else parse("help", "")
            )
        except UsageError as e:
            await ephemeral(f"⚠️ {e.message}")
            return
        if req.mode is None:
            await self.budgets(team).post(channel).acquire(0.0)
            await self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=to_mrkdwn(await self._info_text(req.command))
            )
            return
        await self._discuss(req, team, channel, thread_ts, user, on_error=ephemeral)

    # --- the discussion, streamed into the thread ---------------------------------------------
    async def _discuss(
        self,
        req: Request,
        team: str | None,
        channel: str,
        thread_ts: str,
        user: str,
        *,
        on_error: Callable[[str], Awaitable[Any]],
    ) -> None:
        conversation = f"slack:{team or self.team_id}:{channel}:{thread_ts}"

        def make_sink(discussion_id: str) -> SlackSink:
            return SlackSink(
                self.client,
                self.budgets(team),
                channel,
                thread_ts,
                store=self.services.store,
                discussion_id=discussion_id,
                recipient_user_id=user or None,
                recipient_team_id=team or self.team_id,
                customize=self.customize,
                **({"stream_life": self.stream_life} if self.stream_life is not None else {}),
            )

        await discuss_in_thread(
            self.services,
            req,
            conversation=conversation,
            front_end=FRONT_END,
            thread=(f"{channel}:{thread_ts}", {"channel": channel, "ts": thread_ts}),
            make_sink=make_sink,
            on_error=on_error,
        )


def _strip_mention(text: str, bot_user_id: str | None) -> str:
    if bot_user_id:
        text = text.replace(f"<@{bot_user_id}>", " ")
    else:
        text = re.sub(r"^\s*<@[A-Z0-9]+>", " ", text)
    return " ".join(text.split())


def _header(headers: Any, name: str) -> Any:
    for k, v in (headers or {}).items():
        if k.lower() == name:
            return v[0] if isinstance(v, list) else v
    return None


def _post_error(err: str) -> str:
    if err in ("not_in_channel", "channel_not_found"):
        return (
            "⚠️ I can't post in this channel. Invite me with `/invite @Parley` "
            "(or grant the chat:write.public scope) and try again."
        )
    if err == "is_archived":
        return "⚠️ This channel is archived; I can't post here."
    if err == "missing_scope":
        return "⚠️ The app is missing a scope: reinstall it from `parley slack manifest`."
    return f"⚠️ Slack did not accept the message ({err}). Please try again."


# --- entry points -------------------------------------------------------------------------------------
async def serve(services: Services, settings: Settings, *, port: int | None = None) -> None:
    """Run until cancelled: Socket Mode with an app token, else HTTP."""
    bot, app_token, secret = check_tokens(settings, http=True)
    client = AsyncWebClient(token=bot, base_url=api_url(settings), timeout=30)
    front = SlackFront(services, client, signing_secret=None if app_token else secret)
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
                await asyncio.Event().wait()
            finally:
                await handler.close_async()
        else:
            runner = web.AppRunner(front.web_app())
            await runner.setup()
            site = web.TCPSite(runner, "0.0.0.0", port or settings.port)
            await site.start()
            log.info("Slack: listening on :%d%s", port or settings.port, EVENTS_PATH)
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
    args = p.parse_args(list(argv or []))
    if args.what == "manifest":
        if not args.socket_mode and not args.request_url:
            args.socket_mode = True
        print(
            json.dumps(
                manifest(socket_mode=args.socket_mode, request_url=args.request_url),
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    settings = Settings()
    check_tokens(settings, http=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def go() -> None:
        from core.services import build_services

        async with build_services(settings) as services:
            await serve(services, settings, port=args.port)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
    except UsageError as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 2
    return 0

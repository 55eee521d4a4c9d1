"""The Slack app (slack-bolt ``AsyncApp``): a thin adapter over the core.

- Slash commands (every discussion and information command of the one command
  table, plus the ``/parley`` umbrella) are acknowledged at once; a discussion
  posts a parent message in the channel and streams each turn as a reply in its
  thread. Errors in the command come back as an ephemeral reply with the fix.
- ``@Parley`` mentions answer in a thread under the mention; a mention inside a
  thread (or a direct message in a DM thread) continues that thread's discussion.
- Over HTTP (:meth:`SlackFront.web_app`, ``/slack/events``) every request is size-
  and signature-checked before bolt sees it (:mod:`bots.slack.http`);
  :mod:`bots.slack.main` serves it, or connects in Socket Mode.
- Bolt authorises each request from a per-workspace cache of ``auth.test``
  (:mod:`bots.slack.auth`); discussions are capped per workspace and per person
  (:class:`core.threads.Admission`), checked before a command is acknowledged.
- Budgets are kept per workspace and per channel only while they matter
  (:mod:`bots.slack.budgets`); every text Parley did not write goes through
  :func:`bots.slack.format.escape`.
- At start-up, messages left open by a previous process are marked interrupted
  (:mod:`bots.slack.recovery`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack import http
from bots.slack.auth import Authorizer
from bots.slack.budgets import IdleMap, WorkspaceBudgets
from bots.slack.errors import response_header, retry_after, slack_error
from bots.slack.format import doc_to_mrkdwn, escape, to_mrkdwn
from bots.slack.manifest import slash_commands
from bots.slack.recovery import recover
from bots.slack.sink import FRONT_END, STREAM_LIFE, SlackSink
from core import info
from core.commands import UMBRELLA, Request, parse, parse_line
from core.errors import ParleyError, UsageError, redact
from core.present import code, line, strong
from core.services import Services
from core.threads import Admission, Requests, Ticket, discuss_in_thread

log = logging.getLogger("parley.slack")

_AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")
#: Appended to the help in Slack.
MENTION_HINT = line("Mention me (", code("@Parley compare …"), ") in a thread to follow up.")


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
        self.signing_secret = signing_secret
        self.make_budgets = budgets
        self.stream_life = stream_life
        self.workspaces: IdleMap[str, WorkspaceBudgets] = IdleMap(
            lambda _: self.make_budgets(), WorkspaceBudgets.idle
        )
        self.admission = Admission.from_settings(services.settings)
        self.dedupe = Dedupe()
        super().__init__()
        self.customize = False
        self.bot_user_id: str | None = None
        self.team_id: str | None = None
        self.authorizer = Authorizer(client)
        self.app = AsyncApp(
            # Tokenless: bolt then authorises with ``authorize`` (one auth.test per
            # workspace) instead of an auth.test per request until the first answers.
            client=AsyncWebClient(base_url=client.base_url, timeout=client.timeout, logger=client.logger),
            authorize=self.authorizer,
            signing_secret=signing_secret or "",
            request_verification_enabled=False,  # bots.slack.http verifies, without logging bodies
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
        self.authorizer.seed(resp)
        scopes = {s.strip() for s in str(response_header(resp.headers, "x-oauth-scopes") or "").split(",")}
        self.customize = "chat:write.customize" in scopes
        await recover(self.client, self.services.store)

    def web_app(self) -> web.Application:
        return http.web_app(self.app, self.signing_secret, lambda: len(self.tasks))

    def workspace(self, team: str | None) -> str:
        return team or self.team_id or "-"

    def budgets(self, team: str | None) -> WorkspaceBudgets:
        return self.workspaces.get(self.workspace(team))

    def admit(self, team: str | None, user: str) -> Ticket:
        """A place for one more discussion, or UsageError saying Parley is busy."""
        return self.admission.enter(self.workspace(team), user)

    # --- slash commands ----------------------------------------------------------------------------
    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        name = command["command"].lstrip("/")
        text = (command.get("text") or "").strip()
        max_chars, turns = self.services.settings.max_prompt_chars, self.services.settings.max_turns
        try:
            if name == UMBRELLA:
                req = parse("help", "") if not text else parse_line(text, max_prompt_chars=max_chars, max_turns=turns)
            else:
                req = parse(name, text, max_prompt_chars=max_chars, max_turns=turns)
            if req.mode is not None:
                self.services.engine.panel(req)  # unknown persona/provider, missing key: say so now
            ticket = None if req.mode is None else self.admit(command.get("team_id"), command["user_id"])
        except (UsageError, ParleyError) as e:
            await ack(text=escape(f"⚠️ {e.message}"))
            return
        await ack()
        if ticket is None:
            self.spawn(self._info(req.command, respond))
            return
        task = self.spawn(self._from_command(req, command, respond))
        task.add_done_callback(lambda _: ticket.release())  # even if cancelled before it starts

    async def _info(self, name: str, respond: Callable[..., Awaitable[Any]]) -> None:
        await respond(text=await self._info_text(name), response_type="ephemeral")

    async def _info_text(self, name: str) -> str:
        doc = (await info.answer(self.services, name)).doc
        if name == "help":
            doc = [*doc, line(), MENTION_HINT]
        return doc_to_mrkdwn(doc)

    async def _from_command(self, req: Request, command: dict[str, Any], respond: Any) -> None:
        channel, user, team = command["channel_id"], command["user_id"], command.get("team_id")
        budgets = self.budgets(team)
        panel = ", ".join(p.title for p in self.services.engine.panel(req))
        quoted = "\n".join("> " + ln for ln in to_mrkdwn(req.prompt).splitlines())
        asked = doc_to_mrkdwn([line(strong(req.command), f" · {panel}")])
        parent_text = f"<@{user}> asked · {asked}\n{quoted}"
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
                await respond(text=escape(_post_error(slack_error(e))), response_type="ephemeral")
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
            req, team, channel, ts, user, on_error=lambda m: respond(text=escape(m), response_type="ephemeral")
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
                    channel=channel, user=user, thread_ts=thread_ts, text=escape(message)
                )

        try:
            req = (
                parse_line(text, max_prompt_chars=self.services.settings.max_prompt_chars,
                           max_turns=self.services.settings.max_turns)
                if text
                else parse("help", "")
            )
        except UsageError as e:
            await ephemeral(f"⚠️ {e.message}")
            return
        if req.mode is None:
            await self.budgets(team).post(channel).acquire(0.0)
            await self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=await self._info_text(req.command)
            )
            return
        try:
            ticket = self.admit(team, user)
        except UsageError as e:
            await ephemeral(f"⚠️ {e.message}")
            return
        try:
            await self._discuss(req, team, channel, thread_ts, user, on_error=ephemeral)
        finally:
            ticket.release()

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
                recipient_user_id=user or None,
                recipient_team_id=team or self.team_id,
                customize=self.customize,
                stream_life=STREAM_LIFE if self.stream_life is None else self.stream_life,
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
    return text.strip()  # the question keeps its own line breaks; the grammar splits the options


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
    return f"⚠️ Slack did not accept the message ({err}). Please try again."  # escaped by the caller

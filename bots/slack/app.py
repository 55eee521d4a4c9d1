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
  (:mod:`bots.slack.auth`), or, installed in many workspaces through OAuth, from each
  workspace's installation (:mod:`bots.slack.oauth`: every Web API call then goes with that
  workspace's token, :meth:`SlackFront.client_for`); discussions are capped per workspace and per person
  (:class:`core.threads.Admission`) and admitted by governance (policy, budget,
  own keys: :meth:`core.governance.Governance.admit`) before a command is
  acknowledged; soft budget alerts are sent to the workspace's admins by DM.
- Everything else (``/budget``, ``/policy``, ``/keys``, ``/panel``, ``/usage``,
  ``/forget``, information) is answered by :func:`core.info.answer` after the
  acknowledgement, for a caller whose admin flag comes from ``users.info``
  (:mod:`bots.slack.admins`). ``/keys set`` without a key opens a modal; App Home
  shows spend, budgets and controls (:mod:`bots.slack.home`).
- Budgets are kept per workspace and per channel only while they matter
  (:mod:`bots.slack.budgets`); every text Parley did not write goes through
  :func:`bots.slack.format.escape`.
- At start-up, messages left open by a previous process are marked interrupted
  (:mod:`bots.slack.recovery`).
- Buttons and menus under answers and summaries (``block_actions`` whose action id is
  a :class:`core.actions.Action`) are acknowledged at once and acted on after: feedback
  and votes answer ephemerally; "Ask again with…" and "Compare with…" open an ephemeral
  menu of what policy lets this person choose; the actions that start a discussion are
  admitted by governance and run in the same thread, like a mention follow-up.
- With ``/policy followups on`` (and the ``message.channels``/``message.groups`` events
  of ``parley slack manifest --followups``), a reply in one of Parley's own threads is a
  follow-up without a mention; the Messages tab (agent DMs) gets suggested prompts.
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

from bots.slack import blocks, home, http, views
from bots.slack.admins import Admins
from bots.slack.auth import Authorizer
from bots.slack.budgets import IdleMap, WorkspaceBudgets
from bots.slack.errors import response_header, retry_after, slack_error
from bots.slack.format import doc_to_mrkdwn, escape, to_mrkdwn
from bots.slack.home import warning
from bots.slack.manifest import slash_commands
from bots.slack.oauth import NOT_INSTALLED, SlackOAuth
from bots.slack.recovery import marker
from bots.slack.sink import FRONT_END, STREAM_LIFE, SlackSink
from core import coord, info, ops
from core.actions import MENUS, Action, Actions
from core.commands import OPTIONS, UMBRELLA, Request, parse, parse_line
from core.errors import ParleyError, UsageError, redact
from core.governance import Grant
from core.governance.keys import OFF
from core.governance.scope import Caller
from core.present import code, line, strong
from core.services import Services
from core.threads import Admission, Requests, Ticket, discuss_in_thread, settle_heap

log = logging.getLogger("parley.slack")

_AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")
#: Appended to the help in Slack.
MENTION_HINT = line("Mention me (", code("@Parley compare …"), ") in a thread to follow up.")
#: Commands whose answer depends on whether the person is an admin (users.info is asked for these only).
ADMIN_AWARE = frozenset({"budget", "policy", "keys", "panel", "usage", "forget", "stop"})
#: Every name (and alias) of an option: a word ``name:value`` with one of these is an option.
_OPTION_NAMES = frozenset(n for o in OPTIONS.values() for n in (o.name, *o.aliases))
#: How long a modal submission may wait for users.info (Slack wants its answer within 3 s).
SUBMIT_LOOKUP_SECONDS = 1.5
#: The action ids of Parley's buttons and menus under answers and summaries (core.actions.Action).
ACTION_IDS = re.compile(r"^parley:")
#: How long a discussion's progress (status, task list) may take to settle once it ended or stopped.
SETTLE_SECONDS = 3.0


#: Seconds an event id is remembered across replicas (Slack retries within minutes: X-Slack-Retry-Num).
EVENT_TTL = 3600.0


class Dedupe(coord.Dedupe):
    """Slack re-delivers an event it thinks was not acknowledged (``X-Slack-Retry-Num``), maybe to
    another replica: each ``event_id`` is handled once, across replicas when they share Redis."""

    def __init__(self, coordinator: coord.Coordinator | None = None, size: int = 10_000) -> None:
        super().__init__(coordinator, "slack:event", ttl=EVENT_TTL, size=size)


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
        oauth: SlackOAuth | None = None,
    ) -> None:
        """``client`` carries the one bot token; with ``oauth`` (installed in many workspaces)
        it carries none, and each workspace's calls go through :meth:`client_for`."""
        self.services = services
        self.client = client
        self.oauth = oauth
        self.signing_secret = signing_secret
        self.make_budgets = budgets
        self.stream_life = stream_life
        self.workspaces: IdleMap[str, WorkspaceBudgets] = IdleMap(
            # With PARLEY_REDIS_URL every replica draws from one budget per workspace and method.
            lambda team: self.make_budgets().share(services.coord, team), WorkspaceBudgets.idle
        )
        self.admission = Admission.from_settings(services.settings)
        self.dedupe = Dedupe(services.coord)
        super().__init__()
        self.customize = False
        self.bot_user_id: str | None = None
        self.team_id: str | None = None
        self.authorizer = Authorizer(client)
        self.admins = Admins(client)
        self._team_admins: collections.OrderedDict[str, Admins] = collections.OrderedDict()
        self.actions = Actions(services)
        authorization: dict[str, Any] = {"authorize": self.authorizer} if oauth is None else {
            # each workspace's installation; bolt's install flow on Parley's stores;
            # app_uninstalled and tokens_revoked delete from them
            "authorize": oauth.authorizer,
            "installation_store": oauth.installations,
            "oauth_settings": oauth.settings,
            "oauth_flow": oauth.flow,
            "user_facing_authorize_error_message": NOT_INSTALLED,
        }
        self.app = AsyncApp(
            # Tokenless: bolt then authorises with ``authorize`` (one auth.test per
            # workspace) instead of an auth.test per request until the first answers.
            client=AsyncWebClient(base_url=client.base_url, timeout=client.timeout, logger=client.logger),
            signing_secret=signing_secret or "",
            request_verification_enabled=False,  # bots.slack.http verifies, without logging bodies
            # Answer when the listener returns. Otherwise bolt runs each listener as a task and polls
            # for its ack every 10 ms: at least 10 ms on every request, and under a burst hundreds of
            # pollers on the loop. Every listener here acks (an event: returns, once its dedupe check
            # is done) before its work, which it spawns.
            process_before_response=True,
            logger=logging.getLogger("parley.slack.bolt"),
            **authorization,
        )
        if oauth is not None:
            self.app.enable_token_revocation_listeners()
        for name in slash_commands():
            self.app.command(f"/{name}")(self.on_command)
        self.app.event("app_mention")(self.on_mention)
        self.app.event("message")(self.on_message)
        self.app.event("app_home_opened")(self.on_home_opened)
        for action_id in (views.OPEN_BUDGET, views.OPEN_POLICY, views.OPEN_KEY):
            self.app.action(action_id)(self.on_home_button)
        self.app.action(ACTION_IDS)(self.on_action)
        for callback_id in (views.KEYS_SET, views.BUDGET_SET, views.POLICY_ADD):
            self.app.view_submission(callback_id)(self.on_submit)

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the token with Slack, learn the granted scopes, and close what a restart left open.
        Installed in many workspaces, each workspace's installation says these: only the restart's
        leftovers are closed here."""
        if self.oauth is not None:
            await self.services.take_over(FRONT_END, self.oauth.mark)
            settle_heap()
            return
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
        await self.services.take_over(FRONT_END, marker(self.client))
        settle_heap()  # what start-up made stays: no full collection walks it again mid-burst

    def web_app(self) -> web.Application:
        return http.web_app(self.app, self.signing_secret, lambda: len(self.tasks),
                            ops.routes(self.services, lambda: len(self.tasks)),
                            installs=self.oauth.routes() if self.oauth is not None else None, door=self.door)

    # --- which bot, in which workspace ------------------------------------------------------------
    def client_for(self, team: str | None) -> AsyncWebClient:
        """The Web API client for ``team``: the one bot token's, or that workspace's installation's."""
        return self.client if self.oauth is None else self.oauth.client(team)

    async def identity(self, team: str | None) -> tuple[str | None, bool]:
        """Parley's bot user in ``team``, and whether it may post under personas' names
        (``chat:write.customize``)."""
        if self.oauth is None:
            return self.bot_user_id, self.customize
        return await self.oauth.identity(team)

    def admins_for(self, caller: Caller) -> Admins:
        """Who is an admin in the caller's workspace, asked with that workspace's token."""
        if self.oauth is None:
            return self.admins
        team = caller.workspace.removeprefix(f"{FRONT_END}:")
        admins = self._team_admins.get(team)
        if admins is None:
            admins = self._team_admins[team] = Admins(self.client_for(team))
            while len(self._team_admins) > 1000:
                self._team_admins.popitem(last=False)
        self._team_admins.move_to_end(team)
        return admins

    def workspace(self, team: str | None) -> str:
        return team or self.team_id or "-"

    def budgets(self, team: str | None) -> WorkspaceBudgets:
        return self.workspaces.get(self.workspace(team))

    def admit(self, team: str | None, user: str) -> Ticket:
        """A place for one more discussion, or UsageError saying Parley is busy."""
        return self.admission.enter(self.workspace(team), user)

    def caller(self, team: str | None, user: str, channel: str, *, private: bool) -> Caller:
        """Who asks, where (a thread is in its channel): the scope of policy, budgets, keys and panels."""
        return Caller(f"slack:{self.workspace(team)}", user, channel, private=private, front_end=FRONT_END)

    def conversation(self, team: str | None, channel: str, thread_ts: str) -> str:
        return f"slack:{team or self.team_id}:{channel}:{thread_ts}"

    async def _admitted(self, req: Request, caller: Caller, *, conversation: str | None = None) -> Grant:
        """Governance's admission (policy, panel, keys, budget reservation); raises its refusal."""
        grant = await self.services.governance.admit(req, caller, conversation=conversation)
        if grant.alerts:
            self.spawn(self._send_alerts(caller.workspace, list(grant.alerts)))
        return grant

    async def _send_alerts(self, workspace: str, alerts: list[str]) -> None:
        """Soft budget alerts, by DM to each admin; a DM that fails is logged and the rest go on."""
        team = workspace.removeprefix("slack:")
        for admin in self.services.governance.admins(workspace):
            for text in alerts:
                try:
                    await self.budgets(team).post(admin).acquire(0.0)
                    await self.client_for(team).chat_postMessage(channel=admin, text=escape(text))
                except SlackApiError as e:
                    log.warning("Slack: could not DM a budget alert to %s (%s)", admin, slack_error(e))
                except Exception as e:
                    log.warning("Slack: could not DM a budget alert to %s (%s)", admin, redact(str(e)))

    # --- slash commands ----------------------------------------------------------------------------
    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        name = command["command"].lstrip("/")
        text = (command.get("text") or "").strip()
        team, user = command.get("team_id"), command["user_id"]
        max_chars, turns = self.services.settings.max_prompt_chars, self.services.settings.max_turns
        asked = _key_form(name, text)
        if asked is not None:  # /keys set provider:NAME without a key: ask for it where nobody else sees it
            await ack()
            self.spawn(self._open_key_modal(command, asked, respond))
            return
        # Slash commands and their answers are seen by the person who typed them only.
        caller = self.caller(team, user, command.get("channel_id", ""), private=True)
        ticket: Ticket | None = None
        grant: Grant | None = None
        try:
            if name == UMBRELLA:
                req = parse("help", "") if not text else parse_line(text, max_prompt_chars=max_chars, max_turns=turns)
            else:
                req = parse(name, text, max_prompt_chars=max_chars, max_turns=turns)
            if req.mode is not None:
                ticket = self.admit(team, user)
                grant = await self._admitted(req, caller)
        except (UsageError, ParleyError) as e:
            if ticket is not None:
                ticket.release()
            await ack(text=escape(warning(e)))
            return
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        try:
            await ack()
        except BaseException:
            if ticket is not None and grant is not None:
                ticket.release()
                grant.release()
            raise
        if ticket is None or grant is None:
            self.spawn(self._info(req, caller, respond))
            return
        task = self.spawn(self._from_command(grant, command, respond))
        task.add_done_callback(lambda _: _release(ticket, grant))  # even if cancelled before it starts

    async def _info(self, req: Request, caller: Caller, respond: Callable[..., Awaitable[Any]]) -> None:
        text, _ = await self._answer(req, caller)
        await respond(text=text, response_type="ephemeral")

    async def _answer(self, req: Request, caller: Caller) -> tuple[str, bool]:
        """A command that is not a discussion, answered by core: (mrkdwn, whether it succeeded)."""
        if req.command in ADMIN_AWARE:
            caller = await self.admins_for(caller).check(caller)
        try:
            doc = (await info.answer(self.services, req, caller=caller)).doc
        except (UsageError, ParleyError) as e:
            return escape(warning(e)), False
        if req.command == "help":
            doc = [*doc, line(), MENTION_HINT]
        return doc_to_mrkdwn(doc), True

    async def _open_key_modal(self, command: dict[str, Any], options: dict[str, str], respond: Any) -> None:
        if not self.services.governance.own_keys_enabled:
            await respond(text=escape(f"⚠️ {OFF}"), response_type="ephemeral")
            return
        provider = options.get("provider", options.get("providers", "")).split(",")[0].split("/")[0].lower()
        view = views.key_modal(
            home.key_providers(self.services),
            provider=provider or None,
            scope=options.get("scope", "user"),
            metadata={"channel": command.get("channel_id", ""), "from": "command"},
        )
        try:
            await self.client_for(command.get("team_id")).views_open(trigger_id=command.get("trigger_id", ""), view=view)
        except SlackApiError as e:
            log.warning("Slack: views.open failed (%s)", slack_error(e))
            await respond(
                text="⚠️ I could not open the form to set a key (it must open within 3 s). Run the command "
                "again, or set it in a direct message with me: `keys set provider:NAME KEY`.",
                response_type="ephemeral",
            )

    async def _from_command(self, grant: Grant, command: dict[str, Any], respond: Any) -> None:
        channel, user, team = command["channel_id"], command["user_id"], command.get("team_id")
        budgets = self.budgets(team)
        req = grant.request  # as admitted: a saved panel and the channel's defaults filled in
        panel = ", ".join(p.title for p in grant.panel)
        quoted = "\n".join("> " + ln for ln in to_mrkdwn(req.prompt).splitlines())
        asked = doc_to_mrkdwn([line(strong(req.command), f" · {panel}")])
        parent_text = f"<@{user}> asked · {asked}\n{quoted}"
        ts = None
        for attempt in range(5):
            await budgets.post(channel).acquire(0.0)
            try:
                resp = await self.client_for(team).chat_postMessage(channel=channel, text=parent_text)
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
            grant, team, channel, ts, user, on_error=lambda m: respond(text=escape(m), response_type="ephemeral")
        )

    # --- mentions and direct messages -----------------------------------------------------------
    async def on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if not await self.dedupe.first(body.get("event_id")):
            return
        if event.get("subtype") or event.get("bot_id"):
            return
        self.spawn(self._from_message(event, body.get("team_id")))

    async def on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        # Direct messages; in channels Parley answers when mentioned, or (followups on) a reply
        # in one of its own threads.
        if event.get("subtype") or event.get("bot_id"):
            return
        kind = event.get("channel_type")
        if kind == "im":
            if await self.dedupe.first(body.get("event_id")):
                self.spawn(self._from_message(event, body.get("team_id")))
            return
        thread_ts = event.get("thread_ts")
        if kind not in ("channel", "group") or not thread_ts or thread_ts == event.get("ts"):
            return  # not a reply in a thread
        if _mentions(event.get("text") or "", (await self.identity(body.get("team_id")))[0]):
            return  # app_mention answers it
        if await self.dedupe.first(body.get("event_id")):
            self.spawn(self._follow_up(event, body.get("team_id")))

    async def _follow_up(self, event: dict[str, Any], team: str | None) -> None:
        """A reply without a mention in a thread: a follow-up if the workspace turned them on and the
        thread is one of Parley's (a discussion of it is stored); otherwise it is not for Parley."""
        if not self.services.governance.followups(f"slack:{self.workspace(team)}"):
            return
        conversation = self.conversation(team, event["channel"], event["thread_ts"])
        if not self.services.store.has_conversation(conversation):
            return
        await self._from_message(event, team)

    async def _from_message(self, event: dict[str, Any], team: str | None) -> None:
        channel, user = event["channel"], event.get("user", "")
        thread_ts = event.get("thread_ts") or event["ts"]
        text = _strip_mention(event.get("text") or "", (await self.identity(team))[0])
        client = self.client_for(team)
        # A direct message is seen by this person only; a mention in a channel by everyone there.
        caller = self.caller(team, user, channel, private=event.get("channel_type") == "im")

        async def ephemeral(message: str) -> None:
            with contextlib.suppress(SlackApiError):
                await client.chat_postEphemeral(
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
            await ephemeral(warning(e))
            return
        if req.mode is None:
            answer, ok = await self._answer(req, caller)
            if not ok:  # a refusal (a key typed in a channel, an admin command) only for the one who asked
                with contextlib.suppress(SlackApiError):
                    await client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, text=answer)
                return
            await self.budgets(team).post(channel).acquire(0.0)
            await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=answer)
            return
        try:
            ticket = self.admit(team, user)
        except UsageError as e:
            await ephemeral(warning(e))
            return
        try:
            try:
                grant = await self._admitted(req, caller, conversation=self.conversation(team, channel, thread_ts))
            except (UsageError, ParleyError) as e:
                await ephemeral(warning(e))
                return
            try:
                await self._discuss(grant, team, channel, thread_ts, user, on_error=ephemeral)
            finally:
                grant.release()
        finally:
            ticket.release()

    # --- App Home and modals ----------------------------------------------------------------------
    async def on_home_opened(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        tab = event.get("tab", "home")
        if tab not in ("home", "messages") or not event.get("user"):
            return
        if not await self.dedupe.first(body.get("event_id")):
            return
        if tab == "messages":
            if event.get("channel"):
                self.spawn(self.suggest_prompts(body.get("team_id"), event["user"], event["channel"]))
            return
        self.spawn(self.publish_home(body.get("team_id"), event["user"]))

    async def suggest_prompts(self, team: str | None, user: str, channel: str) -> None:
        """The Messages tab (an agent DM): up to four suggested prompts from the saved panels this
        person may run. An agent app sets them for the DM without a ``thread_ts``: with one the call
        silently fails (https://docs.slack.dev/reference/methods/assistant.threads.setSuggestedPrompts)."""
        caller = self.caller(team, user, channel, private=True)
        title, prompts = await home.suggested_prompts(self.services, caller)
        try:
            await self.client_for(team).assistant_threads_setSuggestedPrompts(
                channel_id=channel, title=title, prompts=prompts
            )
        except SlackApiError as e:
            log.warning("Slack: setSuggestedPrompts failed (%s)", slack_error(e))

    async def publish_home(self, team: str | None, user: str) -> None:
        """Build and publish ``user``'s Home tab (after it opens, and after a change made from it)."""
        caller = self.caller(team, user, "", private=True)
        caller = await self.admins_for(caller).check(caller)
        view = await home.home_view(self.services, caller)
        try:
            await self.client_for(team).views_publish(user_id=user, view=view)
        except SlackApiError as e:
            log.warning("Slack: views.publish failed (%s)", slack_error(e))

    async def on_home_button(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        view = home.opened(self.services, action.get("action_id", ""), {"from": "home"})
        if view is not None:
            team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id")
            self.spawn(self._open_modal(team, body.get("trigger_id", ""), view))
        await ack()

    async def _open_modal(self, team: str | None, trigger_id: str, view: dict[str, Any]) -> None:
        try:
            await self.client_for(team).views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as e:
            log.warning("Slack: views.open failed (%s)", slack_error(e))

    async def on_submit(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        """A modal's submission, answered by core as the command it stands for; a refusal goes back
        on the field it is about (``response_action: errors``), success replaces the modal with the answer."""
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id")
        user = (body.get("user") or {}).get("id", "")
        callback_id = view.get("callback_id", "")
        values = views.values(view)
        channel = values.get("channel") or views.metadata(view).get("channel") or ""
        caller = self.caller(team, user, str(channel), private=True)  # only this person sees a modal
        form = None
        try:
            form = home.form(callback_id, values)
            caller = await self.admins_for(caller).check(caller, within=SUBMIT_LOOKUP_SECONDS)
            answer = await info.answer(self.services, form.request, caller=caller)
        except (UsageError, ParleyError) as e:
            await ack(response_action="errors", errors=home.errors(e, form, callback_id))
            return
        self.spawn(self.publish_home(team, user))  # the change is committed: show it
        await ack(response_action="update", view=views.notice(form.title, doc_to_mrkdwn(answer.doc)))

    # --- buttons and menus under answers and summaries -------------------------------------------
    async def on_action(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        """A click on a Parley button or menu: acknowledged first (Slack wants it within 3 s), acted on after."""
        await ack()
        picked = Action.decode(_action_value(action))
        if picked is not None:
            self.spawn(self._act(picked, body, respond))

    async def _act(self, act: Action, body: dict[str, Any], respond: Any) -> None:
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id")
        user = (body.get("user") or {}).get("id", "")
        container = body.get("container") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id", "")
        message = body.get("message") or {}
        thread_ts = str(message.get("thread_ts") or container.get("thread_ts") or message.get("ts") or "")
        # The answer is seen by the person who clicked only.
        caller = self.caller(team, user, channel, private=True)
        picked = act.kind in MENUS and bool(act.choice)  # a choice made in an ephemeral menu: replace it

        async def say(text: str) -> None:
            try:
                await respond(text=text, response_type="ephemeral", replace_original=picked)
            except Exception as e:  # the response_url expired (30 min) or Slack refused it
                log.warning("Slack: could not answer a click (%s)", redact(str(e)))

        try:
            if act.kind in MENUS and not act.choice:
                choices = self.actions.choices(caller, act)
                if not choices:
                    await say("⚠️ There is nothing else here that you may choose for this.")
                    return
                await respond(
                    text=act.label,
                    blocks=blocks.menu_blocks(act, choices),
                    response_type="ephemeral",
                    replace_original=False,
                )
                return
            if act.kind in ("up", "down", "vote"):
                if not await self.actions.claim(act, caller):
                    return  # a double click or a redelivery: the first one answered
                try:
                    if act.kind == "vote":
                        answer = await self.actions.vote(caller, act.target, act.choice)
                    else:
                        answer = await self.actions.feedback(caller, act.target, 1 if act.kind == "up" else -1)
                except (UsageError, ParleyError):
                    await self.actions.release(act, caller)  # refused: a later click is answered again
                    raise
                await say(doc_to_mrkdwn(answer.doc))
                return
            await self._start(act, caller, team, channel, thread_ts, say)
        except (UsageError, ParleyError) as e:
            await say(escape(warning(e)))

    async def _start(
        self, act: Action, caller: Caller, team: str | None, channel: str, thread_ts: str,
        say: Callable[[str], Awaitable[None]],
    ) -> None:
        """An action that starts a discussion: admitted like any request, run in the thread it came from."""
        req, conversation = self.actions.request(caller, act)
        where = _thread_of(conversation)
        if where is not None:
            channel, thread_ts = where
        if not channel or not thread_ts:
            raise UsageError("I could not tell which thread this button belongs to; ask in the thread instead.")
        ticket = self.admit(team, caller.user)
        try:
            grant = await self._admitted(req, caller, conversation=self.conversation(team, channel, thread_ts))
            try:
                if not await self.actions.claim(act, caller):
                    return  # a double click or a redelivery: the first one runs
                if act.choice:
                    chosen = escape(act.choice.partition(":")[2])
                    await say(f"▶️ {act.label.rstrip('…')}: {chosen}. Answering in the thread.")
                await self._discuss(
                    grant, team, channel, thread_ts, caller.user, on_error=lambda m: say(escape(m))
                )
            finally:
                grant.release()
        finally:
            ticket.release()

    # --- the discussion, streamed into the thread ---------------------------------------------
    async def _discuss(
        self,
        grant: Grant,
        team: str | None,
        channel: str,
        thread_ts: str,
        user: str,
        *,
        on_error: Callable[[str], Awaitable[Any]],
    ) -> None:
        conversation = self.conversation(team, channel, thread_ts)
        made: list[SlackSink] = []
        _, customize = await self.identity(team)

        def make_sink(discussion_id: str) -> SlackSink:
            sink = SlackSink(
                self.client_for(team),
                self.budgets(team),
                channel,
                thread_ts,
                recipient_user_id=user or None,
                recipient_team_id=team or self.team_id,
                customize=customize,
                stream_life=STREAM_LIFE if self.stream_life is None else self.stream_life,
            )
            made.append(sink)
            return sink

        try:
            await discuss_in_thread(
                self.services,
                grant,
                conversation=conversation,
                front_end=FRONT_END,
                thread=(f"{channel}:{thread_ts}", {"channel": channel, "ts": thread_ts, "team": team or self.team_id}),
                make_sink=make_sink,
                on_error=on_error,
            )
        finally:
            # However it ended (finished, failed, interrupted): no status left spinning, no stage
            # left "in progress" in the task list.
            for sink in made:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(SETTLE_SECONDS):
                        await sink.settle()


def _release(ticket: Ticket, grant: Grant) -> None:
    ticket.release()
    grant.release()  # settles nothing if the discussion settled itself


def _key_form(name: str, text: str) -> dict[str, str] | None:
    """For ``/keys set [provider:NAME] [scope:…]`` with no key (also under ``/parley``): its options."""
    words = text.split()
    if name == UMBRELLA:
        if not words or words[0].lower().lstrip("/") != "keys":
            return None
        words = words[1:]
    elif name != "keys":
        return None
    if not words or words[0].lower() != "set":
        return None
    options: dict[str, str] = {}
    for w in words[1:]:
        key, sep, value = w.partition(":")
        if not sep or key.lower() not in _OPTION_NAMES:
            return None  # a key was typed (or something else): core answers it
        options[key.lower()] = value
    return options


def _action_value(action: dict[str, Any]) -> str:
    """What a click carries: a menu's chosen option, a button's (or feedback button's) value, its id."""
    chosen = (action.get("selected_option") or {}).get("value")
    return str(chosen or action.get("value") or action.get("action_id") or "")


def _thread_of(conversation: str | None) -> tuple[str, str] | None:
    """``(channel, thread_ts)`` of a conversation id this front-end made (:meth:`SlackFront.conversation`)."""
    parts = (conversation or "").split(":")
    if len(parts) == 4 and parts[0] == "slack" and parts[2] and parts[3]:
        return parts[2], parts[3]
    return None


def _mentions(text: str, bot_user_id: str | None) -> bool:
    """Whether a message mentions Parley (then ``app_mention`` answers it)."""
    if bot_user_id:
        return f"<@{bot_user_id}>" in text
    return re.match(r"^\s*<@[A-Z0-9]+>", text) is not None


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

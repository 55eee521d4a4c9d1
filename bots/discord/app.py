"""The Discord bot's handlers (discord.py): interactions and mentions, a thin adapter over the core.

- Slash commands (``/ask``, ``/compare``, ``/consensus``, ``/budget set``, ``/keys set``,
  ``/panel save``…) are generated from the one command table
  (:mod:`bots.discord.commands`) and synced only when the table changed (a hash kept
  in the store): to one guild with ``DISCORD_GUILD_ID``, else globally.
- Every request is made by a :class:`~core.governance.scope.Caller` (:func:`caller_of`,
  :func:`message_caller`): the server (or the person's DMs), the channel (a thread's
  parent: threads inherit its policy), the member's roles, whether Discord says they
  may manage the server, and whether only they see it (slash commands answer
  ephemerally; a mention in a channel is public). Governance admits a discussion
  (policy, saved panel, own keys, budget) before it is acknowledged; its soft budget
  alerts go to the workspace's admins by DM.
- A discussion is deferred at once (ephemeral "thinking"), then a parent message
  in the channel says who asked what of whom, a thread is created from it, each
  turn streams into the thread as its own message through the shared Renderer
  (:mod:`bots.discord.sink`), and the deferred response is edited to point at the
  thread. Nothing streams through the interaction webhook (its token dies after
  15 minutes).
- ``@Parley compare providers:a,b Question`` in a channel answers in a new thread;
  a mention inside a thread is a follow-up with that thread's context
  (conversation ``discord:<thread_id>``). Works without the message-content intent.
- Under answers and summaries (:mod:`bots.discord.components`): buttons whose ``custom_id``
  is a :class:`core.actions.Action`, and after a compare a native poll. A click (a component
  interaction) is decoded, claimed once (:meth:`core.actions.Actions.claim`) and acted on:
  feedback and votes are confirmed privately; "Ask again with…" and "Compare with…" open a
  private menu of what policy lets *this* person use; what starts a discussion goes through
  governance and runs in the same thread, like a mention follow-up. Poll votes arrive as
  gateway events (``on_raw_poll_vote_add``/``_remove``). Everything is read from the store,
  so a button works after a restart and on another replica.
- With ``PARLEY_DISCORD_MESSAGE_CONTENT=1`` (the privileged intent) and ``/policy followups on``,
  a message without a mention in one of Parley's threads is a follow-up too.
- Installed to a person (a user install) in a server Parley's bot is not in, or in a group
  DM, Parley cannot post in the channel: the discussion is rendered through the interaction
  itself (:class:`bots.discord.sink.InteractionSink`, at most 5 follow-ups). One started by a choice
  in a private menu is headed by a public follow-up (the original response is that private menu).
- An interaction is handled once (its id, :class:`core.coord.Dedupe`), across processes when they
  share Redis: a gateway replay, or two processes running the same shard during a rolling
  deploy, would otherwise answer it twice.
- At start-up, messages a previous process left open are marked interrupted
  (:mod:`bots.discord.recovery`). Settings and the client: :mod:`bots.discord.config`;
  entry points: :mod:`bots.discord.main`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from bots.discord import components, recovery
from bots.discord.commands import command_payloads, complete, payload_hash, request_from
from bots.discord.format import CONTENT_LIMIT, NO_MENTIONS, chunks, doc_to_markdown, thread_name
from bots.discord.permissions import missing_message, missing_permissions, permission_message
from bots.discord.ratelimit import ChannelBudgets, draw_global
from bots.discord.sink import FRONT_END, MAX_FOLLOWUPS, DiscordSink, InteractionSink
from core import info
from core.actions import MENUS, STARTS, Action, Actions, Polls
from core.commands import COMMANDS, Request, parse, parse_line
from core.coord import Dedupe
from core.errors import ParleyError, UsageError, redact
from core.governance import Grant
from core.governance.scope import Caller
from core.render import Renderer
from core.services import Services
from core.threads import Admission, Requests, Ticket, discuss_in_thread

log = logging.getLogger("parley.discord")
#: Appended to /help: how to reach the bot without a slash command.
MENTION_HELP = (
    "\n\nMention me (`@Parley compare providers:a,b Question`) in a channel to start a thread, "
    "or in a thread to follow up."
)
#: Seconds an interaction id is remembered across processes (its token lives 15 minutes).
INTERACTION_TTL = 900.0


# --- who asks, and where ----------------------------------------------------------------------------------


def workspace_of(guild_id: int | None, user_id: int) -> str:
    """A server is ``discord:<guild_id>``; a person's DMs with the bot are ``discord:dm:<user_id>``."""
    return f"discord:{guild_id}" if guild_id else f"discord:dm:{user_id}"


def _policy_channel(channel: Any, channel_id: int | None) -> str:
    """Where a request counts as asked: a thread's parent channel (threads inherit its policy)."""
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return str(channel.parent_id)
    return str(channel_id) if channel_id else ""


def _roles(member: Any) -> frozenset[str]:
    """A member's role ids and names (a rule may name either), without @everyone."""
    if not isinstance(member, discord.Member):
        return frozenset()
    roles = [r for r in member.roles if not r.is_default()]
    return frozenset([str(r.id) for r in roles] + [r.name for r in roles])


def _owns(guild: discord.Guild | None, user_id: int) -> bool:
    return guild is not None and guild.owner_id is not None and guild.owner_id == user_id


def caller_of(interaction: discord.Interaction) -> Caller:
    """The person behind a slash command. Its answers are ephemeral, so it is private."""
    user_id = interaction.user.id
    perms = interaction.permissions  # the member's, in this channel (empty outside a server)
    in_guild = interaction.guild_id is not None
    return Caller(
        workspace_of(interaction.guild_id, user_id),
        str(user_id),
        _policy_channel(interaction.channel, interaction.channel_id),
        roles=_roles(interaction.user),
        admin=in_guild and (perms.manage_guild or perms.administrator or _owns(interaction.guild, user_id)),
        private=True,
        front_end=FRONT_END,
    )


def message_caller(message: discord.Message, channel: Any) -> Caller:
    """The person behind a mention (or a DM). A mention in a server channel is public."""
    author = message.author
    guild = message.guild
    admin = False
    if guild is not None and isinstance(author, discord.Member):
        perms = author.guild_permissions
        admin = perms.manage_guild or perms.administrator or _owns(guild, author.id)
    return Caller(
        workspace_of(guild.id if guild else None, author.id),
        str(author.id),
        _policy_channel(channel, channel.id),
        roles=_roles(author),
        admin=admin,
        private=guild is None,
        front_end=FRONT_END,
    )


def through_interaction(interaction: discord.Interaction) -> bool:
    """Whether Parley can only answer through the interaction: installed to the person who
    asked (``authorizing_integration_owners`` has USER_INSTALL, not this server's GUILD_INSTALL)
    somewhere its bot cannot post: a server it is not a member of, or a group DM (context 2).
    The bot's own DMs (context 1) it can always write in."""
    if interaction.is_guild_integration() or not interaction.is_user_integration():
        return False
    return not interaction.context.dm_channel


def shown(message: str) -> str:
    """A refusal as the person sees it: the core's sentence, marked once."""
    return message if message.startswith(("⛔", "⚠️")) else f"⚠️ {message}"


# --- the front-end ------------------------------------------------------------------------------------------


class DiscordFront(Requests):
    """Event handlers and start-up duties for one client; built once per process."""

    def __init__(
        self,
        services: Services,
        client: discord.Client,
        *,
        budgets: ChannelBudgets | None = None,
        on_renderer: Callable[[Renderer], None] | None = None,
    ) -> None:
        self.services = services
        self.client = client
        # With PARLEY_REDIS_URL every shard process draws from one global bucket and one per channel.
        self.budgets = (budgets or ChannelBudgets()).share(services.coord)
        draw_global(client, self.budgets.bot)  # every request with the bot token, whatever its route
        self.admission = Admission.from_settings(services.settings)
        self.dedupe = Dedupe(services.coord, "discord:interaction", ttl=INTERACTION_TTL)
        super().__init__()
        #: Shown each discussion's renderer (tests and benchmarks read its counters); none is kept here.
        self.on_renderer = on_renderer
        self.actions = Actions(services)
        self.polls = Polls(self.actions)
        client.event(self.on_interaction)
        client.event(self.on_message)
        client.event(self.on_raw_poll_vote_add)
        client.event(self.on_raw_poll_vote_remove)

    # --- lifecycle ------------------------------------------------------------------------------------
    async def login(self, token: str) -> None:
        try:
            await self.client.login(token)
        except discord.LoginFailure:
            raise UsageError(
                "Discord rejected DISCORD_TOKEN (401 Unauthorized). Reset the token under Bot in the developer "
                "portal (https://discord.com/developers/applications) and update .env."
            ) from None
        except discord.HTTPException as e:
            raise UsageError(f"Discord refused the login ({e.status}): {redact(e.text)}") from None

    async def start(self, *, guild_id: int | None = None, force_sync: bool = False) -> bool:
        """After login: close what a restart left open, then sync commands if the table changed."""
        await self.recover()
        return await self.sync_commands(guild_id, force=force_sync)

    async def sync_commands(self, guild_id: int | None, *, force: bool = False) -> bool:
        """Bulk-overwrite the commands when their payload changed since the last sync. Returns whether it did."""
        app_id = self.client.application_id
        if app_id is None:
            raise UsageError("Discord did not tell us the application id; log in first.")
        payloads = command_payloads(self.services.settings.max_prompt_chars)
        scope = f"guild:{guild_id}" if guild_id else "global"
        key = f"discord.commands.{app_id}.{scope}"
        digest = payload_hash(payloads)
        store = self.services.store
        if not force and store.get_meta(key) == digest:
            log.info("Discord: %d commands unchanged (%s), not syncing", len(payloads), scope)
            return False
        http = self.client.http
        if guild_id:
            await http.bulk_upsert_guild_commands(app_id, guild_id, payloads)
        else:
            await http.bulk_upsert_global_commands(app_id, payloads)
        store.set_meta(key, digest)
        log.info("Discord: synced %d commands (%s)", len(payloads), scope)
        return True

    async def recover(self) -> int:
        """Mark every message dead processes left open as interrupted (and keep doing so while
        this one runs: a shard process that dies is taken over by another). Returns how many."""
        return await self.services.take_over(FRONT_END, recovery.marker(self.client))

    # --- interactions -----------------------------------------------------------------------------------
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if await self.dedupe.first(interaction.id):
            self.spawn(self._interaction(interaction))

    async def _interaction(self, interaction: discord.Interaction) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        if interaction.type is discord.InteractionType.component:
            await self._component(interaction, data)
            return
        name = str(data.get("name", ""))
        if name not in COMMANDS:
            return
        options = list(data.get("options") or [])
        if interaction.type is discord.InteractionType.autocomplete:
            workspace = workspace_of(interaction.guild_id, interaction.user.id)
            choices = complete(self.services, name, options, workspace=workspace)
            with contextlib.suppress(discord.HTTPException):
                await interaction.response.autocomplete(
                    [app_commands.Choice(name=c["name"], value=c["value"]) for c in choices]
                )
            return
        if interaction.type is not discord.InteractionType.application_command:
            return
        caller = caller_of(interaction)
        ticket: Ticket | None = None
        grant: Grant | None = None
        try:
            try:
                limits = self.services.settings
                req = request_from(name, options, max_prompt_chars=limits.max_prompt_chars,
                                   max_turns=limits.max_turns)
                if req.mode is not None:
                    ticket = self.admit(interaction.guild_id, interaction.user.id)
                    # Policy, saved panel, own keys and budget: a refusal is said now, privately.
                    grant = await self.services.governance.admit(
                        req, caller, conversation=self._conversation(interaction.channel, interaction.channel_id)
                    )
            except (UsageError, ParleyError) as e:
                await interaction.response.send_message(shown(e.message), ephemeral=True)
                return
            # Defer within Discord's 3 seconds; everything slower happens after. A discussion
            # shown through the interaction is public, like the thread it stands in for.
            public = grant is not None and through_interaction(interaction)
            await interaction.response.defer(ephemeral=not public, thinking=True)
            if grant is None:
                await self._info(interaction, req, caller)
            else:
                self._alert(caller.workspace, grant.alerts)
                if public:
                    await self._through(interaction, grant, f"discord:i:{interaction.id}")
                else:
                    await self._from_command(interaction, grant)
        finally:
            if grant is not None:
                grant.release()  # a no-op once the discussion settled it
            if ticket is not None:
                ticket.release()

    @staticmethod
    def _conversation(channel: Any, channel_id: int | None) -> str | None:
        """The conversation a discussion here continues: a thread's or a DM's (a new thread has none yet)."""
        if channel_id is not None and isinstance(channel, (discord.Thread, discord.DMChannel)):
            return f"discord:{channel_id}"
        return None

    def admit(self, guild_id: int | None, user_id: int) -> Ticket:
        """A place for one more discussion in this server (or this person's DMs), or UsageError."""
        return self.admission.enter(str(guild_id) if guild_id else f"dm:{user_id}", str(user_id))

    async def _info_text(self, req: Request, caller: Caller) -> str:
        """The answer to a command that is not a discussion, or the sentence refusing it."""
        try:
            text = doc_to_markdown((await info.answer(self.services, req, caller=caller)).doc)
        except (UsageError, ParleyError) as e:
            return shown(e.message)
        return text + MENTION_HELP if req.command == "help" else text

    async def _info(self, interaction: discord.Interaction, req: Request, caller: Caller) -> None:
        parts = chunks(await self._info_text(req, caller))
        await interaction.edit_original_response(content=parts[0])
        for part in parts[1:]:
            await interaction.followup.send(part, ephemeral=True)

    # --- budget alerts --------------------------------------------------------------------------------
    def _alert(self, workspace: str, alerts: list[str]) -> None:
        """Tell the workspace's admins, by DM, that a soft budget threshold was crossed (in the background)."""
        if alerts:
            self.spawn(self._send_alerts(workspace, "\n".join(alerts)))

    async def _send_alerts(self, workspace: str, text: str) -> None:
        for admin_id in self.services.governance.admins(workspace):
            if not admin_id.isdigit():  # an id of another platform in PARLEY_ADMINS
                continue
            try:
                dm = await self.client.create_dm(discord.Object(int(admin_id)))
                for part in chunks(text):
                    await self.budgets.channel(dm.id).acquire(0.0)
                    await dm.send(content=part, allowed_mentions=NO_MENTIONS)
            except discord.HTTPException as e:
                log.warning("could not DM a budget alert to admin %s (%s): %s", admin_id, e.status, redact(e.text))

    async def _from_command(self, interaction: discord.Interaction, grant: Grant) -> None:
        req = grant.request  # as admitted: a saved panel and the channel's defaults filled in

        async def tell(message: str) -> None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content=message)

        channel = interaction.channel
        in_thread = isinstance(channel, discord.Thread)
        in_guild = interaction.guild_id is not None and channel is not None and not isinstance(
            channel, (discord.DMChannel, discord.GroupChannel)
        )
        if in_guild:
            needed = ["view", "send_thread"] + ([] if in_thread else ["send", "create_thread", "read_history"])
            missing = missing_permissions(interaction.app_permissions, needed)
            if missing:
                await tell(missing_message(missing))
                return
        if channel is None or interaction.channel_id is None:
            await tell("⚠️ I can't tell which channel this came from; please try again in a channel.")
            return
        panel = ", ".join(p.title for p in grant.panel)
        quoted = "\n".join("> " + line for line in req.prompt.splitlines()) or "> …"
        parent_text = f"{interaction.user.mention} asked · **/{req.command}** · {panel}\n{quoted}"
        parent_text = parent_text[:CONTENT_LIMIT]
        messageable: Any = channel
        if not isinstance(channel, discord.abc.Messageable):
            messageable = self.client.get_partial_messageable(interaction.channel_id, guild_id=interaction.guild_id)
        op = "send_thread" if in_thread else "send"
        try:
            await self.budgets.channel(interaction.channel_id).acquire(0.0)
            parent = await messageable.send(content=parent_text, allowed_mentions=NO_MENTIONS)
            target = interaction.channel_id
            if in_guild and not in_thread:
                op = "create_thread"
                thread = await parent.create_thread(name=thread_name(req.prompt))
                target = thread.id
        except discord.HTTPException as e:
            await tell(permission_message(op, e) if e.status in (403, 404) else
                       f"⚠️ Discord did not accept the message ({e.status}); please try again.")
            return
        if target != interaction.channel_id:
            await tell(f"🧵 Answering in <#{target}>.")
        else:
            await tell("✅ Answering below.")
        await self._discuss(grant, target, in_thread=in_guild, on_problem=tell)

    # --- through the interaction (a user install where the bot cannot post) ---------------------------
    async def _through(self, interaction: discord.Interaction, grant: Grant, conversation: str, *,
                       head_followup: bool = False) -> None:
        """``head_followup``: the original response is the private menu this choice replaced, so the
        head (who asked what) is a public follow-up of its own, and the turns have one follow-up less."""
        req = grant.request
        panel = ", ".join(p.title for p in grant.panel)
        quoted = "\n".join("> " + line for line in req.prompt.splitlines()) or "> …"
        head = f"{interaction.user.mention} asked · **/{req.command}** · {panel}\n{quoted}"[:CONTENT_LIMIT]

        async def tell(message: str) -> None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.followup.send(message, ephemeral=True)

        head_message: int | None = None
        if head_followup:
            try:
                head_message = (await interaction.followup.send(head, wait=True, allowed_mentions=NO_MENTIONS)).id
            except discord.HTTPException:
                return  # Discord takes no reply to this interaction: there is nowhere to show it
        else:
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content=head, allowed_mentions=NO_MENTIONS)

        def make_sink(discussion_id: str) -> InteractionSink:
            return InteractionSink(interaction, self.budgets, head=head, head_message=head_message,
                                   max_followups=MAX_FOLLOWUPS - (head_message is not None))

        await discuss_in_thread(
            self.services, grant, conversation=conversation, front_end=FRONT_END,
            thread=(f"interaction:{interaction.id}", {"interaction": interaction.id}), make_sink=make_sink,
            on_error=tell, on_renderer=self.on_renderer,
        )

    # --- buttons, menus and polls -----------------------------------------------------------------------
    async def _component(self, interaction: discord.Interaction, data: dict[str, Any]) -> None:
        """A click on a button or a choice in a menu under one of Parley's messages."""
        action = Action.decode(str(data.get("custom_id", "")))
        if action is None:
            return  # not Parley's
        action = components.choice_of(action, data)
        # A choice in the private menu Parley opened replaces that menu; anything else is answered privately.
        in_menu = action.kind in MENUS and bool(action.choice)
        caller = caller_of(interaction)

        async def say(text: str, rows: list[dict[str, Any]] | None = None) -> None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content=text[:CONTENT_LIMIT], allowed_mentions=NO_MENTIONS,
                                                         view=components.view(rows or []))

        if action.kind in STARTS and (action.choice or action.kind not in MENUS):
            await self._start(interaction, caller, action, in_menu=in_menu)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)  # within Discord's 3 seconds
        try:
            if action.kind in MENUS:
                choices = self.actions.choices(caller, action)
                if not choices:
                    await say("⛔ There is nothing else here that you may use for this.")
                    return
                await say(f"**{action.label}**", components.menu(action, choices))
                return
            if not await self.actions.claim(action, caller):
                await say("✅ Already done.")
                return
            try:
                if action.kind in ("up", "down"):
                    answer = await self.actions.feedback(caller, action.target, 1 if action.kind == "up" else -1)
                elif action.kind == "vote" and action.choice:
                    answer = await self.actions.vote(caller, action.target, action.choice)
                else:
                    return
            except (UsageError, ParleyError):
                await self.actions.release(action, caller)  # refused: a later click is answered again
                raise
            await say(doc_to_markdown(answer.doc))
        except (UsageError, ParleyError) as e:
            await say(shown(e.message))

    async def _start(self, interaction: discord.Interaction, caller: Caller, action: Action, *, in_menu: bool) -> None:
        """An action that starts a discussion: admitted like any request, then run in the same thread."""
        ticket: Ticket | None = None
        grant: Grant | None = None
        try:
            try:
                ticket = self.admit(interaction.guild_id, interaction.user.id)
                req, conversation = self.actions.request(caller, action)
                grant = await self.services.governance.admit(req, caller, conversation=conversation)
                if not await self.actions.claim(action, caller):
                    raise UsageError("✅ Already on it: a click a moment ago started this.")
            except (UsageError, ParleyError) as e:
                if grant is not None:
                    grant.release()
                    grant = None
                text = e.message if e.message.startswith("✅") else shown(e.message)
                if in_menu:
                    await interaction.response.edit_message(content=text, view=components.view([]))
                else:
                    await interaction.response.send_message(text, ephemeral=True)
                return
            public = through_interaction(interaction)
            if in_menu:
                await interaction.response.edit_message(content=f"✅ {action.label.rstrip('…')}: "
                                                        f"{action.choice.partition(':')[2]}", view=components.view([]))
            else:
                await interaction.response.defer(ephemeral=not public, thinking=True)
            self._alert(caller.workspace, grant.alerts)
            if public:
                await self._through(interaction, grant, conversation or f"discord:i:{interaction.id}",
                                    head_followup=in_menu)
                return

            async def tell(message: str) -> None:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.followup.send(message, ephemeral=True)

            if not in_menu:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.edit_original_response(content="✅ Answering below.")
            channel_id = interaction.channel_id
            assert channel_id is not None
            await self._discuss(grant, channel_id, in_thread=isinstance(interaction.channel, discord.Thread),
                                on_problem=tell, conversation=conversation)
        finally:
            if grant is not None:
                grant.release()
            if ticket is not None:
                ticket.release()

    async def on_raw_poll_vote_add(self, payload: discord.RawPollVoteActionEvent) -> None:
        self.spawn(self._poll_vote(payload, added=True))

    async def on_raw_poll_vote_remove(self, payload: discord.RawPollVoteActionEvent) -> None:
        self.spawn(self._poll_vote(payload, added=False))

    async def _poll_vote(self, payload: discord.RawPollVoteActionEvent, *, added: bool) -> None:
        """A vote on a poll; Parley's polls are the best-answer polls after a compare. A person
        has one vote there, changed by voting again (Discord sends the removal and the new vote)."""
        if self.client.user is not None and payload.user_id == self.client.user.id:
            return
        channel = self.client.get_channel(payload.channel_id)
        caller = Caller(workspace_of(payload.guild_id, payload.user_id), str(payload.user_id),
                        _policy_channel(channel, payload.channel_id), front_end=FRONT_END)
        try:
            await self.polls.vote(caller, str(payload.message_id), payload.answer_id, added=added)
        except (UsageError, ParleyError) as e:
            log.info("a poll vote was not counted: %s", e.message)

    def _record_poll(self, message_id: int, discussion_id: str, answers: dict[int, str]) -> None:
        self.polls.record(str(message_id), discussion_id, answers)

    # --- mentions -------------------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.author.id == me.id:
            return
        is_dm = message.guild is None
        if not is_dm and me.id not in message.raw_mentions:
            if not self._may_follow_up(message):
                return
            self.spawn(self._from_message(message, mentioned=False))
            return
        self.spawn(self._from_message(message))

    def _may_follow_up(self, message: discord.Message) -> bool:
        """A message without a mention may be a follow-up: only with the message content intent, in a
        thread, where an admin turned follow-ups on (whether it is Parley's thread is read after)."""
        if not self.client.intents.message_content or not isinstance(message.channel, discord.Thread):
            return False
        guild = message.guild
        return guild is not None and self.services.governance.followups(workspace_of(guild.id, message.author.id))

    async def _from_message(self, message: discord.Message, *, mentioned: bool = True) -> None:
        me = self.client.user
        assert me is not None
        text = re.sub(rf"<@!?{me.id}>", " ", message.content or "").strip()  # the question keeps its lines
        if not mentioned and (not text or not self.services.store.has_conversation(f"discord:{message.channel.id}")):
            return  # not one of Parley's threads (no discussion there yet): not for us

        async def reply(content: str) -> None:
            for part in chunks(content):
                with contextlib.suppress(discord.HTTPException):
                    await message.reply(content=part, mention_author=False, allowed_mentions=NO_MENTIONS)

        channel: Any = message.channel
        if message.guild is not None and not isinstance(channel, (discord.Thread, discord.abc.GuildChannel)):
            # Not in the cache (a thread created before we connected): ask Discord what it is
            # (its parent channel's policy applies, and a mention in it is a follow-up).
            with contextlib.suppress(discord.HTTPException):
                channel = await self.client.fetch_channel(channel.id)
        caller = message_caller(message, channel)
        ticket: Ticket | None = None
        grant: Grant | None = None
        try:
            try:
                limits = self.services.settings
                req = parse_line(text, max_prompt_chars=limits.max_prompt_chars,
                                 max_turns=limits.max_turns) if text else parse("help", "")
                if req.mode is not None:
                    ticket = self.admit(message.guild.id if message.guild else None, message.author.id)
                    in_conversation = isinstance(channel, discord.Thread) or message.guild is None
                    grant = await self.services.governance.admit(
                        req, caller, conversation=f"discord:{channel.id}" if in_conversation else None
                    )
            except (UsageError, ParleyError) as e:
                await reply(shown(e.message))  # never the text itself: it may hold a key
                return
            if grant is None:
                # A key typed here is refused by the core (admin.PASTED) before anything is stored.
                await reply(await self._info_text(req, caller))
                return
            self._alert(caller.workspace, grant.alerts)
            await self._discuss_message(message, channel, grant, reply)
        finally:
            if grant is not None:
                grant.release()
            if ticket is not None:
                ticket.release()

    async def _discuss_message(
        self, message: discord.Message, channel: Any, grant: Grant, reply: Callable[[str], Awaitable[Any]]
    ) -> None:
        if isinstance(channel, discord.Thread) or message.guild is None:
            await self._discuss(grant, channel.id, in_thread=message.guild is not None, on_problem=reply)
            return
        try:
            thread = await message.create_thread(name=thread_name(grant.request.prompt))
        except discord.HTTPException as e:
            await reply(permission_message("create_thread", e) if e.status in (403, 404) else
                        f"⚠️ Discord did not let me start a thread ({e.status}).")
            return
        await self._discuss(grant, thread.id, in_thread=True, on_problem=reply)

    # --- the discussion, streamed into the thread -----------------------------------------------------
    async def _discuss(
        self, grant: Grant, channel_id: int, *, in_thread: bool, on_problem: Callable[[str], Awaitable[Any]],
        conversation: str | None = None,
    ) -> None:
        def make_sink(discussion_id: str) -> DiscordSink:
            return DiscordSink(self.client, channel_id, self.budgets, in_thread=in_thread, on_problem=on_problem,
                               on_poll=self._record_poll)

        await discuss_in_thread(
            self.services, grant, conversation=conversation or f"discord:{channel_id}", front_end=FRONT_END,
            thread=(str(channel_id), {"channel": channel_id}), make_sink=make_sink, on_error=on_problem,
            on_renderer=self.on_renderer,
        )

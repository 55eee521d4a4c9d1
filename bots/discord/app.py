"""``parley discord``: the Discord bot (discord.py), a thin adapter over the core.

- Slash commands ``/ask``, ``/compare``, ``/consensus``, ``/personas``,
  ``/providers``, ``/usage`` and ``/help`` are generated from the one command
  table (:mod:`bots.discord.commands`) and synced only when the table changed
  (a hash kept in the store): to one guild with ``DISCORD_GUILD_ID``, else globally.
- A discussion is deferred at once (ephemeral "thinking"), then a parent message
  in the channel says who asked what of whom, a thread is created from it, each
  turn streams into the thread as its own message through the shared Renderer,
  and the deferred response is edited to point at the thread. Nothing streams
  through the interaction webhook (its token dies after 15 minutes).
- ``@Parley compare providers:a,b Question`` in a channel answers in a new thread;
  a mention inside a thread is a follow-up with that thread's context
  (conversation ``discord:<thread_id>``). Works without the message-content intent.
- At start-up, messages a previous process left open are marked interrupted.
- ``PARLEY_DISCORD_SHARDS``: ``auto`` (AutoShardedClient), ``8`` (all 8 shards
  here), or ``0-3/8`` (shards 0..3 of 8: split shards across processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord
from discord import app_commands

from bots.discord.commands import command_payloads, complete, payload_hash, request_from
from bots.discord.sink import (
    FRONT_END,
    INTERRUPTED,
    NO_MENTIONS,
    STREAMING_MARK,
    THREAD_INTERRUPTED,
    ChannelBudgets,
    DiscordSink,
    chunks,
    missing_permissions,
    permission_message,
    rate_limit_trace,
    to_discord,
)
from core.commands import COMMANDS, Request, help_text, parse, parse_line
from core.config import Settings
from core.errors import ParleyError, UsageError, redact
from core.render import Renderer
from core.services import Services
from core.threads import Requests, discuss_in_thread

log = logging.getLogger("parley.discord")

DEFAULT_API_URL = "https://discord.com/api/v10"
#: What the bot needs in a channel, for the invite URL and the pre-check.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    create_public_threads=True,
    send_messages_in_threads=True,
    embed_links=True,
    read_message_history=True,
)
SCOPES = ("bot", "applications.commands")
THREAD_NAME_LIMIT = 100


# --- configuration --------------------------------------------------------------------------------------


def check_token(settings: Settings) -> str:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise UsageError(
            "DISCORD_TOKEN is not set. Create an application at https://discord.com/developers/applications, "
            "open Bot → Reset Token, and put the token in .env as DISCORD_TOKEN (see docs/discord.md)."
        )
    return settings.discord_token.get_secret_value().strip()


def configure_api(settings: Settings) -> None:
    """``DISCORD_API_URL`` overrides the REST base (a proxy, or a loopback fake in tests)."""
    discord.http.Route.BASE = (settings.discord_api_url or DEFAULT_API_URL).rstrip("/")


_SHARDS = re.compile(r"^(?P<ids>\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)/(?P<count>\d+)$")


def parse_shards(spec: str | None) -> dict[str, Any] | None:
    """``PARLEY_DISCORD_SHARDS`` as AutoShardedClient arguments; None for a plain (unsharded) client.

    ``auto``: Discord's recommended shard count, all in this process. ``8``: shards
    0..7 here. ``0-3/8`` or ``0,2,4-5/8``: these shard ids of 8 (the other ids run
    in other processes).
    """
    if spec is None or not spec.strip():
        return None
    text = spec.strip().lower()
    if text == "auto":
        return {}
    if text.isdigit() and int(text) > 0:
        return {"shard_count": int(text)}
    m = _SHARDS.match(text)
    if m:
        count = int(m.group("count"))
        ids: list[int] = []
        for part in m.group("ids").split(","):
            lo, _, hi = part.partition("-")
            ids += list(range(int(lo), int(hi or lo) + 1))
        if count > 0 and ids and max(ids) < count:
            return {"shard_count": count, "shard_ids": sorted(set(ids))}
    raise UsageError(
        f"PARLEY_DISCORD_SHARDS={spec!r} is not understood. Use auto, a shard count (8), or shard ids of a "
        "count (0-3/8 runs shards 0, 1, 2 and 3 of 8 in this process)."
    )


def make_client(settings: Settings, **options: Any) -> discord.Client:
    """The discord.py client: no privileged intents, no pings, 429s surfaced to the renderer."""
    intents = discord.Intents.default()
    intents.typing = False
    intents.message_content = False  # mentions and DMs still carry their content
    kwargs: dict[str, Any] = {
        "intents": intents,
        "allowed_mentions": NO_MENTIONS,
        "http_trace": rate_limit_trace(),
        "chunk_guilds_at_startup": False,
        **options,
    }
    shards = parse_shards(settings.discord_shards)
    if shards is None:
        return discord.Client(**kwargs)
    return discord.AutoShardedClient(**kwargs, **shards)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)


def thread_name(prompt: str) -> str:
    name = " ".join(prompt.split()) or "Parley"
    return name if len(name) <= THREAD_NAME_LIMIT else name[: THREAD_NAME_LIMIT - 1].rstrip() + "…"


# --- the front-end ------------------------------------------------------------------------------------------


class DiscordFront(Requests):
    """Event handlers and start-up duties for one client; built once per process."""

    def __init__(self, services: Services, client: discord.Client, *, budgets: ChannelBudgets | None = None) -> None:
        self.services = services
        self.client = client
        self.budgets = budgets or ChannelBudgets()
        super().__init__()
        self.renderers: list[Renderer] = []
        client.event(self.on_interaction)
        client.event(self.on_message)

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
        """Mark every message a previous process left open as interrupted. Returns how many."""
        store = self.services.store
        store.mark_interrupted([FRONT_END])
        n = 0
        for post in store.open_posts(FRONT_END):
            try:
                ref = json.loads(post["ref"])
                await self._mark_interrupted(ref, post.get("text") or "")
                n += 1
            except Exception as e:  # one deleted message must not block the rest
                log.warning("could not mark post %s interrupted: %s", post["id"], redact(str(e)))
            store.close_posts([post["id"]])
        return n

    async def _mark_interrupted(self, ref: dict[str, Any], shown: str) -> None:
        channel = self.client.get_partial_messageable(int(ref["channel"]))
        if ref.get("kind") == "thread":
            await channel.send(content=THREAD_INTERRUPTED, allowed_mentions=NO_MENTIONS)
            return
        message = channel.get_partial_message(int(ref["message"]))
        if not shown:
            shown = (await message.fetch()).content
        note = "\n\n" + INTERRUPTED
        text = shown.removesuffix(STREAMING_MARK).rstrip()
        if text.endswith("\n…"):
            text = text[:-2]
        text = text[: 2000 - len(note)] + note
        await message.edit(content=text, allowed_mentions=NO_MENTIONS)

    # --- interactions -----------------------------------------------------------------------------------
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        self.spawn(self._interaction(interaction))

    async def _interaction(self, interaction: discord.Interaction) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        name = str(data.get("name", ""))
        if name not in COMMANDS:
            return
        options = list(data.get("options") or [])
        if interaction.type is discord.InteractionType.autocomplete:
            choices = complete(self.services, name, options)
            with contextlib.suppress(discord.HTTPException):
                await interaction.response.autocomplete(
                    [app_commands.Choice(name=c["name"], value=c["value"]) for c in choices]
                )
            return
        if interaction.type is not discord.InteractionType.application_command:
            return
        try:
            req = request_from(name, options, max_prompt_chars=self.services.settings.max_prompt_chars)
            if req.mode is not None:
                self.services.engine.panel(req)  # unknown persona/provider, missing key: say so now
        except (UsageError, ParleyError) as e:
            await interaction.response.send_message(f"⚠️ {e.message}", ephemeral=True)
            return
        # Defer within Discord's 3 seconds; everything slower happens after.
        await interaction.response.defer(ephemeral=True, thinking=True)
        if req.mode is None:
            await self._info(interaction, req.command)
        else:
            await self._from_command(interaction, req)

    async def _info_text(self, name: str) -> str:
        if name == "help":
            return to_discord(help_text()) + (
                "\n\nMention me (`@Parley compare providers:a,b Question`) in a channel to start a thread, "
                "or in a thread to follow up."
            )
        from core.info import info_text

        return to_discord(await info_text(self.services, name))

    async def _info(self, interaction: discord.Interaction, name: str) -> None:
        parts = chunks(await self._info_text(name))
        await interaction.edit_original_response(content=parts[0])
        for part in parts[1:]:
            await interaction.followup.send(part, ephemeral=True)

    async def _from_command(self, interaction: discord.Interaction, req: Request) -> None:
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
                await tell(
                    f"⚠️ I'm missing {', '.join(f'**{m}**' for m in missing)} here. Ask a server admin to grant "
                    f"{'it' if len(missing) == 1 else 'them'} to the Parley role (Server Settings → Roles, or the "
                    f"channel's Permissions), then try again."
                )
                return
        if channel is None or interaction.channel_id is None:
            await tell("⚠️ I can't tell which channel this came from; please try again in a channel.")
            return
        panel = ", ".join(p.title for p in self.services.engine.panel(req))
        quoted = "\n".join("> " + line for line in req.prompt.splitlines()) or "> …"
        parent_text = f"{interaction.user.mention} asked · **/{req.command}** · {panel}\n{quoted}"
        parent_text = parent_text[:2000]
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
        await self._discuss(req, target, in_thread=in_guild, on_problem=tell)

    # --- mentions -------------------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.author.id == me.id:
            return
        is_dm = message.guild is None
        if not is_dm and me.id not in message.raw_mentions:
            return
        self.spawn(self._from_message(message))

    async def _from_message(self, message: discord.Message) -> None:
        me = self.client.user
        assert me is not None
        text = re.sub(rf"<@!?{me.id}>", " ", message.content or "")
        text = " ".join(text.split())

        async def reply(content: str) -> None:
            for part in chunks(content):
                with contextlib.suppress(discord.HTTPException):
                    await message.reply(content=part, mention_author=False, allowed_mentions=NO_MENTIONS)

        try:
            req = parse_line(text, max_prompt_chars=self.services.settings.max_prompt_chars) if text else parse(
                "help", ""
            )
            if req.mode is not None:
                self.services.engine.panel(req)
        except (UsageError, ParleyError) as e:
            await reply(f"⚠️ {e.message}")
            return
        if req.mode is None:
            await reply(await self._info_text(req.command))
            return
        channel: Any = message.channel
        if message.guild is not None and not isinstance(channel, (discord.Thread, discord.abc.GuildChannel)):
            # Not in the cache (a thread created before we connected): ask Discord what it is.
            with contextlib.suppress(discord.HTTPException):
                channel = await self.client.fetch_channel(channel.id)
        if isinstance(channel, discord.Thread) or message.guild is None:
            await self._discuss(req, channel.id, in_thread=message.guild is not None, on_problem=reply)
            return
        try:
            thread = await message.create_thread(name=thread_name(req.prompt))
        except discord.HTTPException as e:
            await reply(permission_message("create_thread", e) if e.status in (403, 404) else
                        f"⚠️ Discord did not let me start a thread ({e.status}).")
            return
        await self._discuss(req, thread.id, in_thread=True, on_problem=reply)

    # --- the discussion, streamed into the thread -----------------------------------------------------
    async def _discuss(
        self, req: Request, channel_id: int, *, in_thread: bool, on_problem: Callable[[str], Awaitable[Any]]
    ) -> None:
        def make_sink(discussion_id: str) -> DiscordSink:
            return DiscordSink(
                self.client, channel_id, self.budgets, in_thread=in_thread, store=self.services.store,
                discussion_id=discussion_id, on_problem=on_problem,
            )

        await discuss_in_thread(
            self.services, req, conversation=f"discord:{channel_id}", front_end=FRONT_END,
            thread=(str(channel_id), {"channel": channel_id}), make_sink=make_sink, on_error=on_problem,
            on_renderer=self.renderers.append,
        )


# --- entry points -------------------------------------------------------------------------------------------


async def serve(services: Services, settings: Settings) -> None:
    """Log in, recover, sync commands, then stay connected to the gateway until cancelled."""
    token = check_token(settings)
    configure_api(settings)
    client = make_client(settings)
    front = DiscordFront(services, client)
    try:
        await front.login(token)
        await front.start(guild_id=settings.discord_guild_id)
        log.info("Discord: logged in as %s; connecting to the gateway", client.user)
        await client.connect(reconnect=True)
    finally:
        await front.shutdown()
        await client.close()


async def _with_login(settings: Settings, fn: Callable[[DiscordFront], Awaitable[int]]) -> int:
    from core.services import build_services

    token = check_token(settings)
    configure_api(settings)
    async with build_services(settings) as services:
        client = make_client(settings)
        front = DiscordFront(services, client)
        try:
            await front.login(token)
            return await fn(front)
        finally:
            await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="parley discord",
        description="Run the Discord bot, print its invite URL, or (re)sync its slash commands.",
    )
    p.add_argument("what", nargs="?", choices=["serve", "invite", "sync", "commands"], default="serve",
                   help="serve (default); invite: print the invite URL; sync: re-sync commands now; "
                        "commands: print the generated command JSON")
    args = p.parse_args(list(argv or []))
    if args.what == "commands":
        print(json.dumps(command_payloads(Settings().max_prompt_chars), indent=2, ensure_ascii=False))
        return 0
    try:
        settings = Settings()
        check_token(settings)
        parse_shards(settings.discord_shards)
        if args.what == "invite":

            async def invite(front: DiscordFront) -> int:
                assert front.client.application_id is not None
                print(invite_url(front.client.application_id))
                return 0

            return asyncio.run(_with_login(settings, invite))
        if args.what == "sync":

            async def sync(front: DiscordFront) -> int:
                await front.sync_commands(settings.discord_guild_id, force=True)
                scope = f"guild {settings.discord_guild_id}" if settings.discord_guild_id else "globally"
                print(f"parley: synced {len(COMMANDS)} commands {scope}")
                return 0

            return asyncio.run(_with_login(settings, sync))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

        async def go() -> None:
            from core.services import build_services

            async with build_services(settings) as services:
                await serve(services, settings)

        asyncio.run(go())
    except KeyboardInterrupt:
        return 0
    except UsageError as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 2
    return 0

"""The Discord front-end's settings and client setup.

``DISCORD_TOKEN`` (the bot token), ``DISCORD_GUILD_ID`` (sync commands to one
server instead of globally), ``DISCORD_API_URL`` (the REST base: a proxy, or a
loopback fake in tests), ``PARLEY_DISCORD_SHARDS``: ``auto``
(AutoShardedClient), ``8`` (all 8 shards here), or ``0-3/8`` (shards 0..3 of 8:
split shards across processes), and ``PARLEY_DISCORD_MESSAGE_CONTENT=1``: ask for
the privileged message content intent, so that a message in one of Parley's threads
without a mention can be a follow-up (when an admin turned ``/policy followups on``).

:func:`intents` is exactly what the handlers use: servers and their channels and
threads, messages in servers and DMs (a mention carries its text without the
privileged intent), poll votes (the best-answer poll after a compare), and message
content only when asked for.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord
import yarl
from discord.gateway import DiscordWebSocket
from pydantic import AliasChoices, Field, SecretStr

from bots.discord.format import NO_MENTIONS
from bots.discord.permissions import PERMISSIONS
from bots.discord.ratelimit import rate_limit_trace
from core.config import EnvSettings
from core.errors import UsageError

log = logging.getLogger("parley.discord")

DEFAULT_API_URL = "https://discord.com/api/v10"
SCOPES = ("bot", "applications.commands")


class DiscordSettings(EnvSettings):
    """What the Discord front-end reads from the environment (and ``.env``)."""

    token: SecretStr | None = Field(None, validation_alias=AliasChoices("DISCORD_TOKEN"))
    guild_id: int | None = Field(None, validation_alias=AliasChoices("DISCORD_GUILD_ID"))
    api_url: str | None = Field(None, validation_alias=AliasChoices("DISCORD_API_URL"))
    shards: str | None = Field(None, validation_alias=AliasChoices("PARLEY_DISCORD_SHARDS"))
    #: The privileged message content intent (enable it under Bot → Privileged Gateway Intents too).
    message_content: bool = Field(False, validation_alias=AliasChoices("PARLEY_DISCORD_MESSAGE_CONTENT"))


def check_token(settings: DiscordSettings) -> str:
    if settings.token is None or not settings.token.get_secret_value().strip():
        raise UsageError(
            "DISCORD_TOKEN is not set. Create an application at https://discord.com/developers/applications, "
            "open Bot → Reset Token, and put the token in .env as DISCORD_TOKEN (see docs/discord.md)."
        )
    return settings.token.get_secret_value().strip()


def configure_api(settings: DiscordSettings) -> None:
    """``DISCORD_API_URL`` overrides the REST base (a proxy, or a loopback fake in tests)."""
    discord.http.Route.BASE = (settings.api_url or DEFAULT_API_URL).rstrip("/")


async def configure_gateway(client: discord.Client) -> int:
    """Connect to the gateway the API names: the ``url`` of ``GET /gateway/bot``
    (https://discord.com/developers/docs/topics/gateway#get-gateway-bot). discord.py asks for it
    only with ``auto`` sharding and otherwise dials its built-in URL; from here on every connection
    and reconnection uses the one the API at ``DISCORD_API_URL`` gave (a loopback fake's, in tests). Returns
    Discord's recommended shard count; a configured total below it is logged (Discord refuses
    too few shards with close code 4011)."""
    recommended, url, _limits = await client.http.get_bot_gateway()
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
    total = client.shard_count if isinstance(client, discord.AutoShardedClient) else 1
    if total is not None and total < recommended:
        log.warning("Discord recommends %d shards for this bot; PARLEY_DISCORD_SHARDS runs %d in all",
                    recommended, total)
    return int(recommended)


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


#: Gateway events that carry what people typed (a ``/keys set`` key, a key pasted in a DM).
_TYPED = frozenset({"INTERACTION_CREATE", "MESSAGE_CREATE", "MESSAGE_UPDATE"})


class _NoTypedText(logging.Filter):
    """discord.py logs every gateway event whole at DEBUG (``discord.gateway``), before Parley
    has read it: drop the events that carry people's text, so a key never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(a, dict) and a.get("t") in _TYPED for a in args)


_GATEWAY_FILTER = _NoTypedText()


def intents(settings: DiscordSettings) -> discord.Intents:
    """The gateway intents Parley uses, and no other
    (https://discord.com/developers/docs/events/gateway#gateway-intents)."""
    return discord.Intents(
        guilds=True,  # servers, channels, threads (THREAD_CREATE): where a message or a click comes from
        guild_messages=True,  # mentions in channels and threads
        dm_messages=True,  # DMs with the bot
        guild_polls=True,  # MESSAGE_POLL_VOTE_ADD/REMOVE: votes on the best-answer poll
        dm_polls=True,
        # Privileged: the text of messages that do not mention the bot (follow-ups in Parley's threads).
        message_content=settings.message_content,
    )


def make_client(settings: DiscordSettings, **options: Any) -> discord.Client:
    """The discord.py client: only the intents used, no pings, 429s surfaced to the renderer,
    no typed text in discord.py's debug log."""
    logging.getLogger("discord.gateway").addFilter(_GATEWAY_FILTER)  # once: a filter is added once
    kwargs: dict[str, Any] = {
        "intents": intents(settings),
        "allowed_mentions": NO_MENTIONS,
        "http_trace": rate_limit_trace(),
        "chunk_guilds_at_startup": False,
        **options,
    }
    shards = parse_shards(settings.shards)
    if shards is None:
        return discord.Client(**kwargs)
    return discord.AutoShardedClient(**kwargs, **shards)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)

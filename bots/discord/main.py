"""``parley discord``: run the bot, print its invite URL, or (re)sync its slash commands.

:func:`configured` and :func:`serve` are what ``parley run`` uses
(``bots/run.py``); :func:`main` is the ``parley discord`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from bots.discord.app import DiscordFront
from bots.discord.commands import command_payloads
from bots.discord.config import (
    DiscordSettings,
    check_token,
    configure_api,
    configure_gateway,
    invite_url,
    make_client,
    parse_shards,
)
from core import logs, ops
from core.commands import COMMANDS
from core.config import Settings
from core.errors import UsageError
from core.services import Services
from core.threads import run_service

log = logging.getLogger("parley.discord")


def configured() -> bool:
    """Whether ``parley run`` should start the Discord bot: a token is set."""
    return DiscordSettings().token is not None


async def serve(services: Services, settings: DiscordSettings | None = None) -> None:
    """Log in, recover, sync commands, then stay connected to the gateway until cancelled."""
    settings = settings or DiscordSettings()
    token = check_token(settings)
    configure_api(settings)
    client = make_client(settings)
    front = DiscordFront(services, client)
    core_settings = services.settings
    try:
        async with ops.serving(services, core_settings.ops_port, core_settings.ops_host, lambda: len(front.tasks)):
            await front.login(token)
            await front.start(guild_id=settings.guild_id)
            await configure_gateway(client)
            log.info("Discord: logged in as %s; connecting to the gateway", client.user)
            await client.connect(reconnect=True)
    finally:
        await front.shutdown()
        await client.close()


async def _with_login(settings: DiscordSettings, fn: Callable[[DiscordFront], Awaitable[int]]) -> int:
    from core.services import build_services

    token = check_token(settings)
    configure_api(settings)
    async with build_services(Settings()) as services:
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
        settings = DiscordSettings()
        check_token(settings)
        parse_shards(settings.shards)
        if args.what == "invite":

            async def invite(front: DiscordFront) -> int:
                assert front.client.application_id is not None
                print(invite_url(front.client.application_id))
                return 0

            return asyncio.run(_with_login(settings, invite))
        if args.what == "sync":

            async def sync(front: DiscordFront) -> int:
                await front.sync_commands(settings.guild_id, force=True)
                scope = f"guild {settings.guild_id}" if settings.guild_id else "globally"
                print(f"parley: synced {len(COMMANDS)} commands {scope}")
                return 0

            return asyncio.run(_with_login(settings, sync))
        logs.configure(Settings().log_format)

        async def go() -> None:
            from core.services import build_services

            async with build_services(Settings()) as services:
                await serve(services, settings)

        run_service(go())
    except KeyboardInterrupt:
        return 0
    except UsageError as e:
        print(f"parley: {e.message}", file=sys.stderr)
        return 2
    return 0

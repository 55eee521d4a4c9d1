"""``parley run`` (what ``make run`` starts): every configured front-end.

Slack when ``SLACK_BOT_TOKEN`` is set, Discord when ``DISCORD_TOKEN`` is set
(both in one process if both are), the terminal console otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from core.config import Settings

    settings = Settings()
    chat = []
    if settings.slack_bot_token is not None:
        chat.append("slack")
    if settings.discord_token is not None:
        chat.append("discord")
    if not chat:
        from bots.console.app import main as console_main

        return console_main(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve_all() -> None:
        from core.services import build_services

        async with build_services(settings) as services:
            tasks = []
            if "slack" in chat:
                from bots.slack.app import serve as slack_serve

                tasks.append(slack_serve(services, settings))
            if "discord" in chat:
                from bots.discord.app import serve as discord_serve

                tasks.append(discord_serve(services, settings))
            await asyncio.gather(*tasks)

    print(f"parley: starting {' and '.join(chat)} (Ctrl-C to stop)")
    try:
        asyncio.run(serve_all())
    except KeyboardInterrupt:
        return 0
    return 0

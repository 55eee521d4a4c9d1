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
    from bots.cli import load_front_end

    if not chat:
        return int(load_front_end("console")(argv))
    serves = {name: load_front_end(name, "serve") for name in chat}  # fail before starting any

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve_all() -> None:
        from core.services import build_services

        async with build_services(settings) as services:
            await asyncio.gather(*(serve(services, settings) for serve in serves.values()))

    print(f"parley: starting {' and '.join(chat)} (Ctrl-C to stop)")
    try:
        asyncio.run(serve_all())
    except KeyboardInterrupt:
        return 0
    return 0

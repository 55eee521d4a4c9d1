"""``parley run`` (what ``make run`` starts): every configured front-end.

Slack when ``SLACK_BOT_TOKEN`` is set, Discord when ``DISCORD_TOKEN`` is set
(both in one process if both are), the terminal console otherwise. Each chat
front-end's ``bots/<name>/main.py`` says whether it is ``configured()`` and
``serve(services)``s until cancelled, reading its own settings.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from bots.cli import load_front_end
from core import logs
from core.config import Settings
from core.errors import UsageError
from core.services import build_services
from core.threads import run_service

#: The long-running chat front-ends, in start order.
CHAT_FRONT_ENDS = ("slack", "discord")


def main(argv: Sequence[str] | None = None) -> int:
    chat = [name for name in CHAT_FRONT_ENDS if load_front_end(name, "configured")()]
    if not chat:
        return int(load_front_end("console")(argv))
    serves = {name: load_front_end(name, "serve") for name in chat}  # fail before starting any
    settings = Settings()
    logs.configure(settings.log_format)

    async def serve_all() -> None:
        async with build_services(settings) as services, asyncio.TaskGroup() as group:
            # If one front-end fails (a rejected token at start-up), the others stop too.
            for serve in serves.values():
                group.create_task(serve(services))

    print(f"parley: starting {' and '.join(chat)} (Ctrl-C to stop)")
    try:
        run_service(serve_all())
    except KeyboardInterrupt:
        return 0
    except ExceptionGroup as group:
        usage, other = group.split(UsageError)
        if other is not None or usage is None:
            raise
        for e in usage.exceptions:
            print(f"parley: {e}", file=sys.stderr)
        return 2
    return 0

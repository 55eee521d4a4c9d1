"""``parley console`` entry point: the interactive terminal, or piped lines as commands."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from rich.console import Console

from bots.console.app import repl
from core.config import Settings
from core.errors import UsageError
from core.services import build_services


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()

    async def go() -> int:
        async with build_services(Settings()) as services:
            if not sys.stdin.isatty():
                # Piped input: each line is a command, then exit.
                return await repl(services, console, [line for line in sys.stdin.read().splitlines()])
            return await repl(services, console)

    try:
        return asyncio.run(go())
    except UsageError as e:
        console.print(f"[red]parley: {e.message}[/red]")
        return 2

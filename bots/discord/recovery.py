"""At start-up: the Discord messages a previous process left open say they were interrupted.

The ledger (:mod:`core.ledger`) recorded every open turn message and thread;
:func:`core.ledger.recover` walks them and this module edits each one: a turn
message keeps what it showed plus a note, a thread gets a note of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord

from bots.discord.format import CONTENT_LIMIT, NO_MENTIONS, STREAMING_MARK
from bots.discord.sink import FRONT_END
from core import ledger
from core.store import Store

INTERRUPTED = "⚠️ Interrupted: Parley restarted while this reply was being written. Ask again to rerun it."
THREAD_INTERRUPTED = "⚠️ Interrupted: Parley restarted before this discussion finished. Ask again to rerun it."


def interrupted_text(shown: str) -> str:
    """What a turn message left open shows after a restart: its text without the writing mark, plus the note."""
    note = "\n\n" + INTERRUPTED
    text = shown.removesuffix(STREAMING_MARK).rstrip()
    if text.endswith("\n…"):  # a placeholder that never got text
        text = text[:-2]
    return text[: CONTENT_LIMIT - len(note)] + note


def marker(client: discord.Client) -> Callable[[dict[str, Any], str], Awaitable[None]]:
    """How this front-end marks one message a dead process left open."""

    async def mark(ref: dict[str, Any], shown: str) -> None:
        if ref.get("interaction"):
            return  # rendered through an interaction whose token has died: nothing can be written there
        channel = client.get_partial_messageable(int(ref["channel"]))
        if ref.get("kind") == "thread":
            await channel.send(content=THREAD_INTERRUPTED, allowed_mentions=NO_MENTIONS)
            return
        message = channel.get_partial_message(int(ref["message"]))
        if not shown:  # recorded, but what it showed was not: ask Discord
            shown = (await message.fetch()).content
        await message.edit(content=interrupted_text(shown), allowed_mentions=NO_MENTIONS)

    return mark


async def recover(client: discord.Client, store: Store) -> int:
    """Mark every message a dead process left open as interrupted. Returns how many."""
    return await ledger.recover(store, FRONT_END, marker(client))

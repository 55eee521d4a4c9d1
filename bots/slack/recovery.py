"""At start-up: every Slack message a previous process left open says it was interrupted.

The renderer's ledger records each open message (``{"channel", "ts", "kind"}``
and what it shows) and each discussion thread; :func:`core.ledger.recover`
walks what is still open and this module edits it on Slack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.errors import slack_error
from bots.slack.format import to_mrkdwn
from bots.slack.sink import FRONT_END
from core.ledger import recover as recover_posts
from core.store import Store

INTERRUPTED = "⚠️ Interrupted: Parley restarted while this reply was being written. Ask again to rerun it."
THREAD_INTERRUPTED = "⚠️ Interrupted: Parley restarted before this discussion finished. Ask again to rerun it."


async def mark_interrupted(client: AsyncWebClient, ref: dict[str, Any], shown: str) -> None:
    """Edit one open message (or leave a note in a discussion's thread) to say it was interrupted."""
    channel, ts, kind = ref["channel"], ref["ts"], ref["kind"]
    if not ts:
        return  # a reply held back under load and never posted: there is nothing to edit
    if kind == "thread":
        await client.chat_postMessage(channel=channel, thread_ts=ts, text=THREAD_INTERRUPTED)
        return
    if kind == "stream":
        try:
            await client.chat_stopStream(channel=channel, ts=ts, markdown_text="\n\n" + INTERRUPTED)
            return
        except SlackApiError as e:
            if slack_error(e) != "message_not_in_streaming_state":
                raise
        shown = to_mrkdwn(shown)  # the stream ended on its own: rewrite it as a plain message
    text = shown.removesuffix(" …") + "\n\n" + INTERRUPTED
    await client.chat_update(channel=channel, ts=ts, text=text)


def marker(client: AsyncWebClient) -> Callable[[dict[str, Any], str], Awaitable[None]]:
    """How this front-end marks one message interrupted, with its one bot token."""

    async def mark(ref: dict[str, Any], shown: str) -> None:
        await mark_interrupted(client, ref, shown)

    return mark


async def recover(client: AsyncWebClient, store: Store) -> int:
    """Mark every Slack message a dead process left open as interrupted. Returns how many."""
    return await recover_posts(store, FRONT_END, marker(client))

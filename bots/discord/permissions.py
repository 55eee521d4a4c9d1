"""What the bot needs in a channel, and the sentence that says what is missing and where to grant it."""

from __future__ import annotations

import discord

#: What the bot needs in a channel, for the invite URL and the pre-check.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    create_public_threads=True,
    send_messages_in_threads=True,
    embed_links=True,
    read_message_history=True,
)
#: What each operation needs, as Discord names the permission in the UI.
NEEDS = {
    "send": "Send Messages",
    "send_thread": "Send Messages in Threads",
    "create_thread": "Create Public Threads",
    "read_history": "Read Message History",
    "embed": "Embed Links",
    "view": "View Channel",
}
#: Permissions.<attr> for the pre-check of an interaction's ``app_permissions``.
PERMISSION_ATTRS = {
    "send": "send_messages",
    "send_thread": "send_messages_in_threads",
    "create_thread": "create_public_threads",
    "read_history": "read_message_history",
    "embed": "embed_links",
    "view": "view_channel",
}
_GRANT = (
    "Ask a server admin to grant {it} to the Parley role (Server Settings → Roles, or the channel's "
    "Permissions), then try again."
)


def permission_message(op: str, error: discord.HTTPException | None = None, where: str = "this channel") -> str:
    """A sentence naming what is missing and where to grant it."""
    code = getattr(error, "code", 0)
    if code == 50001:  # Missing Access
        op = "view"
    if code in (50083, 50084):
        return "⚠️ This thread is archived or locked, so I can't write in it. Unarchive it or ask in the channel."
    if code == 10003:
        return "⚠️ The channel or thread was deleted, so I stopped writing."
    need = NEEDS.get(op, "Send Messages")
    return f"⚠️ I'm missing the **{need}** permission in {where}. {_GRANT.format(it='it')}"


def missing_permissions(perms: discord.Permissions, ops: list[str]) -> list[str]:
    return [NEEDS[op] for op in ops if not getattr(perms, PERMISSION_ATTRS[op])]


def missing_message(missing: list[str]) -> str:
    """The pre-check's answer when an interaction's ``app_permissions`` lack some of what is needed."""
    names = ", ".join(f"**{m}**" for m in missing)
    return f"⚠️ I'm missing {names} here. {_GRANT.format(it='it' if len(missing) == 1 else 'them')}"

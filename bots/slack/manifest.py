"""The Slack app manifest, generated from the one command table.

``parley slack manifest`` prints it; paste it at https://api.slack.com/apps →
Create New App → From a manifest. The slash commands come from
:data:`core.commands.COMMANDS`, so the app Slack knows cannot drift from the code.
Interactivity (App Home buttons and modals) goes to the same request URL as events.
"""

from __future__ import annotations

from typing import Any

from core.commands import COMMANDS, UMBRELLA

EVENTS_PATH = "/slack/events"

#: Bot scopes and why each is needed.
BOT_SCOPES = {
    "commands": "slash commands",
    "chat:write": "post and stream replies",
    "chat:write.customize": "reply under each persona's name",
    "app_mentions:read": "answer @Parley mentions",
    "im:history": "answer direct messages",
    "im:read": "answer direct messages",
    "im:write": "answer direct messages",
    "users:read": "tell workspace admins and owners (users.info) from others for admin commands and App Home",
}
BOT_EVENTS = ["app_mention", "message.im", "app_home_opened"]


def slash_commands() -> list[str]:
    """Every command of the table as a slash command (help via ``/parley help``), plus the umbrella."""
    return [c.name for c in COMMANDS.values() if c.name != "help"] + [UMBRELLA]


def manifest(*, socket_mode: bool, request_url: str | None = None) -> dict[str, Any]:
    if not socket_mode and not request_url:
        raise ValueError("HTTP mode needs the public request URL of /slack/events")
    url = {} if socket_mode else {"url": request_url}
    commands = []
    for name in slash_commands():
        if name == UMBRELLA:
            desc, hint = (
                "Parley: any command, e.g. /parley compare …",
                "ask|compare|consensus|personas|… QUESTION",
            )
        else:
            c = COMMANDS[name]
            desc, hint = c.summary, c.usage.removeprefix(f"/{name}").strip()
        commands.append(
            {
                "command": f"/{name}",
                "description": desc[:100],
                "usage_hint": hint[:100],
                "should_escape": False,
                **url,
            }
        )
    settings: dict[str, Any] = {
        "event_subscriptions": {
            "bot_events": BOT_EVENTS,
            **({} if socket_mode else {"request_url": request_url}),
        },
        # App Home buttons and modals (views.open, view_submission) arrive here.
        "interactivity": {"is_enabled": True, **({} if socket_mode else {"request_url": request_url})},
        "org_deploy_enabled": False,
        "socket_mode_enabled": socket_mode,
        "token_rotation_enabled": False,
    }
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": "Parley",
            "description": "A panel of AI experts: ask one, compare several, or let them reach consensus.",
            "background_color": "#2c2d30",
        },
        "features": {
            "app_home": {
                "home_tab_enabled": True,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": "Parley", "always_online": True},
            "slash_commands": commands,
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": settings,
    }

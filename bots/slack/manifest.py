"""The Slack app manifest, generated from the one command table.

``parley slack manifest`` prints it; paste it at https://api.slack.com/apps →
Create New App → From a manifest. The slash commands come from
:data:`core.commands.COMMANDS`, so the app Slack knows cannot drift from the code.
Interactivity (App Home buttons and modals, the buttons and menus under answers and
summaries) goes to the same request URL as events.

It enables exactly what the app uses: ``--followups`` adds the ``message.channels`` and
``message.groups`` events with the ``channels:history`` and ``groups:history`` scopes,
which let Parley read every message in the public and private channels it is in (it
acts only on replies in its own threads, and only where ``/policy followups on``).
New apps are agents (``agent_view``, https://docs.slack.dev/ai/developing-agents); the
Messages tab stays on for direct messages.
"""

from __future__ import annotations

from typing import Any

from core.commands import COMMANDS, UMBRELLA

EVENTS_PATH = "/slack/events"
#: Installing in many workspaces (bots/slack/oauth.py): where an install starts, and where Slack
#: sends the installer's browser back (the app's Redirect URL).
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"

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
    "assistant:write": "suggested prompts in the Messages tab (assistant.threads.setSuggestedPrompts)",
}
#: With follow-ups without a mention (``parley slack manifest --followups``).
FOLLOWUP_SCOPES = {
    "channels:history": "follow-ups without a mention in Parley's threads in public channels",
    "groups:history": "follow-ups without a mention in Parley's threads in private channels",
}
BOT_EVENTS = ["app_mention", "message.im", "app_home_opened"]
FOLLOWUP_EVENTS = ["message.channels", "message.groups"]
#: What the agent view says about Parley (at most 300 characters: the manifest schema's limit,
#: https://github.com/slackapi/manifest-schema).
AGENT_DESCRIPTION = (
    "A panel of AI experts in your threads: ask one, compare several providers and personas side by "
    "side, or let them review each other and reach consensus."
)


def slash_commands() -> list[str]:
    """Every command of the table as a slash command (help via ``/parley help``), plus the umbrella."""
    return [c.name for c in COMMANDS.values() if c.name != "help"] + [UMBRELLA]


def bot_scopes(*, followups: bool = False) -> list[str]:
    return [*BOT_SCOPES, *(FOLLOWUP_SCOPES if followups else {})]


def bot_events(*, followups: bool = False) -> list[str]:
    return [*BOT_EVENTS, *(FOLLOWUP_EVENTS if followups else [])]


def redirect_url(request_url: str) -> str:
    """The OAuth Redirect URL next to a request URL (``…/slack/events`` → ``…/slack/oauth_redirect``)."""
    base = request_url.rstrip("/").removesuffix(EVENTS_PATH)
    return base + REDIRECT_PATH


def manifest(
    *, socket_mode: bool, request_url: str | None = None, followups: bool = False, oauth: bool = False
) -> dict[str, Any]:
    """``oauth``: for installing in many workspaces (HTTP mode only): the Redirect URL next to
    the request URL is added to ``oauth_config``."""
    if not socket_mode and not request_url:
        raise ValueError("HTTP mode needs the public request URL of /slack/events")
    if oauth and (socket_mode or not request_url):
        raise ValueError("installing in many workspaces needs HTTP mode and the public request URL")
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
            "bot_events": bot_events(followups=followups),
            **({} if socket_mode else {"request_url": request_url}),
        },
        # App Home buttons and modals (views.open, view_submission), and the buttons and menus
        # under answers and summaries (block_actions), arrive here.
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
            "agent_view": {"agent_description": AGENT_DESCRIPTION[:300]},
            "slash_commands": commands,
        },
        "oauth_config": {
            "scopes": {"bot": bot_scopes(followups=followups)},
            **({"redirect_urls": [redirect_url(request_url or "")]} if oauth else {}),
        },
        "settings": settings,
    }

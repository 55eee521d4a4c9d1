"""The Slack front-end's settings (environment plus ``.env``) and their checks."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from core.config import EnvSettings
from core.errors import UsageError

DEFAULT_API_URL = "https://slack.com/api/"


class SlackSettings(EnvSettings):
    """What ``parley slack`` needs besides core's :class:`core.config.Settings`."""

    bot_token: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    app_token: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_APP_TOKEN"))
    signing_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET"))
    api_url: str | None = Field(None, validation_alias=AliasChoices("SLACK_API_URL"))
    #: HTTP mode: the address to listen on (0.0.0.0: every interface; 127.0.0.1 behind a
    #: reverse proxy on the same machine).
    host: str = Field("0.0.0.0", validation_alias=AliasChoices("SLACK_HOST"))
    #: HTTP mode: the port to listen on.
    port: int = Field(3000, validation_alias=AliasChoices("PORT"))


def check_tokens(settings: SlackSettings, *, http: bool) -> tuple[str, str | None, str | None]:
    """The bot token, app token and signing secret, or a UsageError saying how to fix them."""
    if settings.bot_token is None:
        raise UsageError(
            "SLACK_BOT_TOKEN is not set. Create the app from `parley slack manifest` "
            "(see docs/slack.md), install it to your workspace, and put its Bot User OAuth Token "
            "(xoxb-…) in .env as SLACK_BOT_TOKEN."
        )
    bot = settings.bot_token.get_secret_value().strip()
    if not bot.startswith("xoxb-"):
        kind = {"xoxp-": "a user token", "xapp-": "an app-level token", "xoxe": "a refresh token"}
        what = next((v for k, v in kind.items() if bot.startswith(k)), "not a bot token")
        raise UsageError(
            f"SLACK_BOT_TOKEN is {what}. Use the Bot User OAuth Token from OAuth & Permissions; "
            "it starts with xoxb-."
        )
    app = settings.app_token.get_secret_value().strip() if settings.app_token else None
    if app is not None and not app.startswith("xapp-"):
        raise UsageError(
            "SLACK_APP_TOKEN is not an app-level token (those start with xapp-). Create one under Basic "
            "Information → App-Level Tokens with the connections:write scope, or unset it to use HTTP mode."
        )
    secret = settings.signing_secret.get_secret_value().strip() if settings.signing_secret else None
    if http and app is None and not secret:
        raise UsageError(
            "HTTP mode needs SLACK_SIGNING_SECRET (Basic Information → App Credentials) to verify that "
            "requests come from Slack. Or set SLACK_APP_TOKEN to use Socket Mode instead."
        )
    return bot, app, secret


def api_url(settings: SlackSettings) -> str:
    url = settings.api_url or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"

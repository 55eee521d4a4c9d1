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
    #: Installed in many workspaces (bots/slack/oauth.py): the app's Client ID and Client Secret
    #: (Basic Information → App Credentials). With them, Parley serves /slack/install and
    #: /slack/oauth_redirect and keeps one bot token per workspace instead of SLACK_BOT_TOKEN.
    client_id: str | None = Field(None, validation_alias=AliasChoices("SLACK_CLIENT_ID"))
    client_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("SLACK_CLIENT_SECRET"))
    #: The public URL of /slack/oauth_redirect; unset, Slack uses the app's only Redirect URL.
    redirect_uri: str | None = Field(None, validation_alias=AliasChoices("SLACK_REDIRECT_URI"))
    #: Installs also ask for the follow-up scopes (the app was made with ``manifest --followups``).
    followups: bool = Field(False, validation_alias=AliasChoices("SLACK_FOLLOWUPS"))


def oauth_mode(settings: SlackSettings) -> bool:
    """Whether Parley is installed in many workspaces through OAuth (a client id or secret is set)."""
    return bool(settings.client_id or settings.client_secret)


def check_oauth(settings: SlackSettings, *, secret_key: str | None) -> tuple[str, str, str]:
    """Client id, client secret and signing secret for installs in many workspaces, or a
    UsageError saying how to fix them. ``secret_key`` is PARLEY_SECRET_KEY: every
    workspace's bot token is stored encrypted with it."""
    if settings.bot_token is not None:
        raise UsageError(
            "Both SLACK_BOT_TOKEN and SLACK_CLIENT_ID/SLACK_CLIENT_SECRET are set. Use SLACK_BOT_TOKEN alone "
            "for one workspace, or unset it to install Parley in many workspaces through /slack/install "
            "(see docs/slack.md)."
        )
    client_id = (settings.client_id or "").strip()
    client_secret = settings.client_secret.get_secret_value().strip() if settings.client_secret else ""
    if not client_id or not client_secret:
        missing = "SLACK_CLIENT_ID" if not client_id else "SLACK_CLIENT_SECRET"
        raise UsageError(
            f"{missing} is not set. Installing Parley in many workspaces needs both the Client ID and the "
            "Client Secret (Basic Information → App Credentials)."
        )
    if settings.app_token is not None:
        raise UsageError(
            "Installing Parley in many workspaces needs HTTP mode (Slack sends each installer's browser back "
            "to /slack/oauth_redirect): unset SLACK_APP_TOKEN and give the app a public request URL."
        )
    secret = settings.signing_secret.get_secret_value().strip() if settings.signing_secret else ""
    if not secret:
        raise UsageError(
            "HTTP mode needs SLACK_SIGNING_SECRET (Basic Information → App Credentials) to verify that "
            "requests come from Slack."
        )
    if not secret_key:
        raise UsageError(
            "Installing Parley in many workspaces stores each workspace's bot token encrypted with "
            "PARLEY_SECRET_KEY, which is not set. Set it in .env to a long random value (e.g. the output of "
            "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`) and restart. Keep it: tokens "
            "stored with it cannot be read without it (each workspace would have to install Parley again)."
        )
    return client_id, client_secret, secret


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

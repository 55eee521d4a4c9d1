"""Parley installed in many Slack workspaces: bolt's OAuth flow over Parley's own database.

With ``SLACK_CLIENT_ID`` and ``SLACK_CLIENT_SECRET`` (HTTP mode, ``SLACK_SIGNING_SECRET``)
there is no ``SLACK_BOT_TOKEN``: each workspace installs Parley through
``GET /slack/install`` (bolt's :class:`AsyncOAuthFlow`: a single-use state, kept for ten
minutes, in a cookie and in the store; a redirect to Slack's authorize page asking for the
manifest's bot scopes, :func:`bots.slack.manifest.bot_scopes`), Slack sends the browser
back to ``/slack/oauth_redirect`` with a code, and ``oauth.v2.access`` turns the code into
that workspace's bot token.

- :class:`InstallationStore` and :class:`StateStore` are bolt's store interfaces on
  :class:`core.store.Store` (SQLite or PostgreSQL, portable SQL through the writer).
  Tokens, refresh tokens and incoming-webhook URLs are sealed with the
  :class:`core.governance.keys.KeyBox` of ``PARLEY_SECRET_KEY`` (AES-GCM), bound to their
  row and column: the database never holds one in clear, and a ciphertext moved to
  another workspace's row does not open. A state is stored as its SHA-256 only.
- :class:`InstallationAuthorizer` is bolt's ``authorize``: each request gets its
  workspace's bot from the store (cached for :data:`CACHE_SECONDS`, dropped at once when
  this process saves or deletes it; no ``auth.test`` per request: the install recorded the
  bot's ids and scopes). A workspace without an installation is not answered.
- With token rotation on in the app's settings, a bot token within
  :data:`ROTATE_MINUTES` of expiring is refreshed (bolt's ``AsyncTokenRotator``, one
  refresh in flight per workspace) and the new one stored.
- ``app_uninstalled`` deletes the workspace's bot and installations; ``tokens_revoked``
  deletes the bot when its token was revoked, and the installations of the people whose
  tokens were (bolt's built-in listeners on this store). Installing again works.
- :meth:`SlackOAuth.client` is the Web API client of one workspace for everything the
  front-end sends there (:class:`TeamClient`); :meth:`SlackOAuth.recover` marks a
  restart's open messages with each one's workspace token.

Several replicas share the database: an uninstall or re-install handled by one is seen by
the others within :data:`CACHE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from aiohttp import web, web_log
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.async_authorize import AsyncAuthorize
from slack_bolt.error import BoltError
from slack_bolt.oauth.async_callback_options import AsyncCallbackOptions, AsyncFailureArgs, AsyncSuccessArgs
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackTokenRotationError
from slack_sdk.oauth.installation_store import Bot, Installation
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bots.slack.config import SlackSettings, api_url, check_oauth
from bots.slack.errors import slack_error
from bots.slack.manifest import INSTALL_PATH, REDIRECT_PATH, bot_scopes
from bots.slack.recovery import mark_interrupted
from bots.slack.sink import FRONT_END
from core.errors import redact
from core.governance.keys import KeyBox
from core.ledger import recover as recover_posts
from core.store import Store

log = logging.getLogger("parley.slack")

#: Seconds a workspace's installation is kept in memory before it is read again.
CACHE_SECONDS = 30.0
#: Seconds an install's state stays valid (bolt's default: ten minutes).
STATE_SECONDS = 600
#: A rotating bot token is refreshed this close to its expiry (bolt's default).
ROTATE_MINUTES = 120
#: Seconds before a refresh that failed is tried again (the current token serves meanwhile).
RETRY_REFRESH_SECONDS = 60.0
#: Workspaces whose installation (and client) are kept in memory at most.
CACHE_SIZE = 10_000
#: What a person in a workspace without an installation is told (a slash command's answer).
NOT_INSTALLED = (
    "⚠️ Parley is not installed in this workspace any more (it was removed, or its installation "
    "could not be read). A workspace admin can install it again."
)

BOTS = "slack_bots"
INSTALLATIONS = "slack_installations"
STATES = "slack_oauth_states"
_BOT_KEY = ("client_id", "team_id", "enterprise_id")
_INSTALLATION_KEY = (*_BOT_KEY, "user_id")

Key = tuple[str, str]  # (enterprise_id, team_id) as stored: '' for none


def _key(enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None = False) -> Key:
    """An org-wide install (Enterprise Grid) has no team: it is the enterprise's."""
    return enterprise_id or "", "" if is_enterprise_install or not team_id else team_id


def _upsert(table: str, row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, list[Any]]:
    """``insert … on conflict (keys) do update``: the same statement on SQLite and PostgreSQL."""
    cols = list(row)
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
    sql = (
        f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
        f"on conflict ({', '.join(keys)}) do update set {sets}"
    )
    return sql, [row[c] for c in cols]


def authorize_url(base: str) -> str:
    """Slack's authorize page next to its Web API (``https://slack.com/api/`` →
    ``https://slack.com/oauth/v2/authorize``), so that SLACK_API_URL moves both."""
    return urljoin(base, "/oauth/v2/authorize")


class InstallationStore(AsyncInstallationStore):
    """bolt's installation store on Parley's database, tokens sealed (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        box: KeyBox,
        *,
        client_id: str,
        rotator: AsyncTokenRotator | None = None,
        ttl: float = CACHE_SECONDS,
        size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not box.enabled:
            raise ValueError("installations need PARLEY_SECRET_KEY (KeyBox with a secret)")
        self.store = store
        self.box = box
        self.client_id = client_id
        self.rotator = rotator
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._bots: collections.OrderedDict[Key, tuple[float, Bot]] = collections.OrderedDict()
        self._rotations: dict[Key, asyncio.Future[Bot | None]] = {}
        self._retry_at: dict[Key, float] = {}  # a failed refresh is not tried again before this
        self._unreadable: set[Key] = set()  # warned about once
        self.reads = 0  # bots read from the database (for tests)

    @property
    def logger(self) -> logging.Logger:
        return log

    # --- sealing -------------------------------------------------------------------------------
    def _aad(self, key: Key, user: str) -> str:
        return f"slack-install:{self.client_id}:{key[0]}:{key[1]}:{user}"

    def _seal(self, value: str | None, column: str, key: Key, user: str = "") -> str | None:
        return self.box.seal(value, self._aad(key, user), user, column) if value else None

    def _open(self, value: str | None, column: str, key: Key, user: str = "") -> str | None:
        """The clear value, None if there is none; raises LookupError if it cannot be opened."""
        if not value:
            return None
        clear = self.box.open(value, self._aad(key, user), user, column)
        if clear is None:
            raise LookupError(column)
        return clear

    def _where(self, key: Key) -> tuple[str, list[Any]]:
        """A workspace's rows: by team (team ids are unique across enterprises), else the org's."""
        if key[1]:
            return "client_id = ? and team_id = ?", [self.client_id, key[1]]
        return "client_id = ? and team_id = '' and enterprise_id = ?", [self.client_id, key[0]]

    # --- writes --------------------------------------------------------------------------------
    def _bot_row(self, bot: Bot) -> dict[str, Any]:
        key = _key(bot.enterprise_id, bot.team_id, bot.is_enterprise_install)
        return {
            "client_id": self.client_id,
            "team_id": key[1],
            "enterprise_id": key[0],
            "app_id": bot.app_id,
            "enterprise_name": bot.enterprise_name,
            "team_name": bot.team_name,
            "bot_id": bot.bot_id,
            "bot_user_id": bot.bot_user_id,
            "bot_scopes": ",".join(bot.bot_scopes or []),
            "bot_token": self._seal(bot.bot_token, "bot_token", key),
            "bot_refresh_token": self._seal(bot.bot_refresh_token, "bot_refresh_token", key),
            "bot_token_expires_at": bot.bot_token_expires_at,
            "is_enterprise_install": int(bool(bot.is_enterprise_install)),
            "key_id": self.box.key_id,
            "installed_at": float(bot.installed_at or time.time()),
        }

    async def _write(self, statements: list[tuple[str, list[Any]]], key: Key) -> None:
        def write(db: Any) -> None:
            for sql, args in statements:
                db.execute(sql, args)

        try:
            await self.store.writer.acall(write, urgent=True)
        except Exception as e:  # bolt shows "storage_error"; the values never reach a message
            raise BoltError(f"could not store the Slack installation ({type(e).__name__})") from None
        finally:
            self.forget(key)

    async def async_save(self, installation: Installation) -> None:
        key = _key(installation.enterprise_id, installation.team_id, installation.is_enterprise_install)
        user = installation.user_id or ""
        row = {
            "client_id": self.client_id,
            "team_id": key[1],
            "enterprise_id": key[0],
            "user_id": user,
            "app_id": installation.app_id,
            "enterprise_name": installation.enterprise_name,
            "enterprise_url": installation.enterprise_url,
            "team_name": installation.team_name,
            "user_token": self._seal(installation.user_token, "user_token", key, user),
            "user_scopes": ",".join(installation.user_scopes or []),
            "user_refresh_token": self._seal(installation.user_refresh_token, "user_refresh_token", key, user),
            "user_token_expires_at": installation.user_token_expires_at,
            "incoming_webhook_url": self._seal(installation.incoming_webhook_url, "incoming_webhook_url", key, user),
            "incoming_webhook_channel": installation.incoming_webhook_channel,
            "incoming_webhook_channel_id": installation.incoming_webhook_channel_id,
            "incoming_webhook_configuration_url": installation.incoming_webhook_configuration_url,
            "is_enterprise_install": int(bool(installation.is_enterprise_install)),
            "token_type": installation.token_type,
            "key_id": self.box.key_id,
            "installed_at": float(installation.installed_at or time.time()),
        }
        statements = [_upsert(INSTALLATIONS, row, _INSTALLATION_KEY)]
        if installation.bot_token:
            statements.append(_upsert(BOTS, self._bot_row(installation.to_bot()), _BOT_KEY))
        await self._write(statements, key)
        self._unreadable.discard(key)

    async def async_save_bot(self, bot: Bot) -> None:
        if not bot.bot_token:
            return
        key = _key(bot.enterprise_id, bot.team_id, bot.is_enterprise_install)
        await self._write([_upsert(BOTS, self._bot_row(bot), _BOT_KEY)], key)
        self._unreadable.discard(key)

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        key = _key(enterprise_id, team_id)
        where, args = self._where(key)
        await self._write([(f"delete from {BOTS} where {where}", args)], key)

    async def async_delete_installation(
        self, *, enterprise_id: str | None, team_id: str | None, user_id: str | None = None
    ) -> None:
        key = _key(enterprise_id, team_id)
        where, args = self._where(key)
        if user_id is not None:
            where, args = f"{where} and user_id = ?", [*args, user_id]
        await self._write([(f"delete from {INSTALLATIONS} where {where}", args)], key)

    async def async_delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        key = _key(enterprise_id, team_id)
        where, args = self._where(key)
        await self._write(
            [(f"delete from {BOTS} where {where}", args), (f"delete from {INSTALLATIONS} where {where}", args)], key
        )
        log.info("Slack: uninstalled from %s; its tokens are deleted", key[1] or key[0])

    def forget(self, key: Key) -> None:
        """Drop what this process remembers of a workspace (after a change to it)."""
        self._bots.pop(key, None)

    # --- reads ---------------------------------------------------------------------------------
    async def async_find_bot(
        self, *, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None = False
    ) -> Bot | None:
        return await self.bot(team_id, enterprise_id, is_enterprise_install=is_enterprise_install)

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        key = _key(enterprise_id, team_id, is_enterprise_install)
        where, args = self._where(key)
        if user_id is not None:
            where, args = f"{where} and user_id = ?", [*args, user_id]
        rows = self.store.peek(f"select * from {INSTALLATIONS} where {where} order by installed_at desc limit 1", args)
        bot = await self.bot(team_id, enterprise_id, is_enterprise_install=is_enterprise_install)
        if not rows:
            if user_id is not None or bot is None:
                return None
            return Installation(**{**bot.to_dict_for_copying(), "user_id": ""})  # type: ignore[arg-type]
        r = rows[0]
        user, stored = r["user_id"], (r["enterprise_id"], r["team_id"])
        try:
            user_token = self._open(r["user_token"], "user_token", stored, user)
            user_refresh = self._open(r["user_refresh_token"], "user_refresh_token", stored, user)
            webhook = self._open(r["incoming_webhook_url"], "incoming_webhook_url", stored, user)
        except LookupError:
            self._cannot_open(key, r.get("key_id"))
            user_token = user_refresh = webhook = None
        return Installation(
            app_id=r["app_id"],
            enterprise_id=r["enterprise_id"] or None,
            enterprise_name=r["enterprise_name"],
            enterprise_url=r["enterprise_url"],
            team_id=r["team_id"] or None,
            team_name=r["team_name"],
            bot_token=bot.bot_token if bot else None,
            bot_id=bot.bot_id if bot else None,
            bot_user_id=bot.bot_user_id if bot else None,
            bot_scopes=bot.bot_scopes if bot else "",
            bot_refresh_token=bot.bot_refresh_token if bot else None,
            bot_token_expires_at=bot.bot_token_expires_at if bot else None,
            user_id=user,
            user_token=user_token,
            user_scopes=r["user_scopes"] or "",
            user_refresh_token=user_refresh,
            user_token_expires_at=r["user_token_expires_at"],
            incoming_webhook_url=webhook,
            incoming_webhook_channel=r["incoming_webhook_channel"],
            incoming_webhook_channel_id=r["incoming_webhook_channel_id"],
            incoming_webhook_configuration_url=r["incoming_webhook_configuration_url"],
            is_enterprise_install=bool(r["is_enterprise_install"]),
            token_type=r["token_type"],
            installed_at=r["installed_at"],
        )

    async def bot(
        self, team_id: str | None, enterprise_id: str | None = None, *, is_enterprise_install: bool | None = False
    ) -> Bot | None:
        """The workspace's bot as installed now (from memory for :data:`CACHE_SECONDS`); a
        rotating token close to expiry is refreshed first. None: not installed (or unreadable)."""
        key = _key(enterprise_id, team_id, is_enterprise_install)
        if key == ("", ""):
            return None
        hit = self._bots.get(key)
        if hit is not None and hit[0] > self.clock() and not self._due(key, hit[1]):
            self._bots.move_to_end(key)
            return hit[1]
        bot = self._read(key)
        if bot is not None and self._due(key, bot):
            bot = await self._rotate(key, bot)
        if bot is None:
            self.forget(key)
            return None
        self._bots[key] = (self.clock() + self.ttl, bot)
        self._bots.move_to_end(key)
        while len(self._bots) > self.size:
            self._bots.popitem(last=False)
        return bot

    def _read(self, key: Key) -> Bot | None:
        self.reads += 1
        where, args = self._where(key)
        rows = self.store.peek(f"select * from {BOTS} where {where} order by installed_at desc limit 1", args)
        if not rows:
            return None
        r = rows[0]
        stored: Key = (r["enterprise_id"], r["team_id"])
        try:
            token = self._open(r["bot_token"], "bot_token", stored)
            refresh = self._open(r["bot_refresh_token"], "bot_refresh_token", stored)
        except LookupError:
            self._cannot_open(key, r.get("key_id"))
            return None
        if not token:
            return None
        return Bot(
            app_id=r["app_id"],
            enterprise_id=r["enterprise_id"] or None,
            enterprise_name=r["enterprise_name"],
            team_id=r["team_id"] or None,
            team_name=r["team_name"],
            bot_token=token,
            bot_id=r["bot_id"],
            bot_user_id=r["bot_user_id"],
            bot_scopes=r["bot_scopes"] or "",
            bot_refresh_token=refresh,
            bot_token_expires_at=r["bot_token_expires_at"],
            is_enterprise_install=bool(r["is_enterprise_install"]),
            installed_at=r["installed_at"],
        )

    def _cannot_open(self, key: Key, key_id: str | None) -> None:
        if key in self._unreadable:
            return
        self._unreadable.add(key)
        why = "another PARLEY_SECRET_KEY" if key_id and key_id != self.box.key_id else "a damaged or moved row"
        log.warning(
            "Slack: the installation of %s cannot be opened (%s): it is treated as not installed. Restore the "
            "PARLEY_SECRET_KEY it was stored with, or install Parley in that workspace again.",
            key[1] or key[0],
            why,
        )

    # --- token rotation --------------------------------------------------------------------------
    def _due(self, key: Key, bot: Bot) -> bool:
        return (
            self.rotator is not None
            and self._retry_at.get(key, 0.0) <= self.clock()
            and bot.bot_refresh_token is not None
            and bot.bot_token_expires_at is not None
            and bot.bot_token_expires_at <= time.time() + ROTATE_MINUTES * 60
        )

    async def _rotate(self, key: Key, bot: Bot) -> Bot | None:
        flight = self._rotations.get(key)
        if flight is None:
            flight = self._rotations[key] = asyncio.ensure_future(self._refresh(key, bot))
            flight.add_done_callback(lambda _: self._rotations.pop(key, None))
        return await asyncio.shield(flight)  # one waiter cancelled does not cancel the refresh

    async def _refresh(self, key: Key, bot: Bot) -> Bot | None:
        assert self.rotator is not None
        try:
            fresh = await self.rotator.perform_bot_token_rotation(bot=bot, minutes_before_expiration=ROTATE_MINUTES)
        except SlackTokenRotationError as e:
            self._retry_at[key] = self.clock() + RETRY_REFRESH_SECONDS
            expired = (bot.bot_token_expires_at or 0) <= time.time()
            log.warning(
                "Slack: could not refresh the bot token of %s (%s)%s",
                key[1] or key[0],
                slack_error(e.api_error) or "no answer",
                "; it has expired" if expired else "; the current one is used until it expires",
            )
            return None if expired else bot
        except Exception as e:  # Slack unreachable: the same, without an error code
            self._retry_at[key] = self.clock() + RETRY_REFRESH_SECONDS
            log.warning("Slack: could not refresh the bot token of %s (%s)", key[1] or key[0],
                        redact(str(e)) or type(e).__name__)
            return None if (bot.bot_token_expires_at or 0) <= time.time() else bot
        self._retry_at.pop(key, None)
        if fresh is None:
            return bot
        await self.async_save_bot(fresh)
        return fresh



class StateStore(AsyncOAuthStateStore):
    """Install states on Parley's database: each used once, valid for ``ttl`` seconds, stored
    as its SHA-256 (the browser holds the state itself in a cookie)."""

    def __init__(self, store: Store, *, ttl: float = STATE_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    @property
    def logger(self) -> logging.Logger:
        return log

    @staticmethod
    def _digest(state: str) -> str:
        return hashlib.sha256(state.encode()).hexdigest()

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        state = secrets.token_urlsafe(32)
        now = self.clock()
        digest = self._digest(state)

        def write(db: Any) -> None:
            db.execute(f"delete from {STATES} where expires_at < ?", [now])  # the abandoned ones
            db.execute(f"insert into {STATES} (digest, expires_at) values (?, ?)", [digest, now + self.ttl])

        await self.store.writer.acall(write, urgent=True)
        return state

    async def async_consume(self, state: str) -> bool:
        """True once for a state issued here and not expired; False for anything else."""
        if not state:
            return False
        now = self.clock()
        digest = self._digest(state)

        def write(db: Any) -> bool:
            # One statement decides: of two callbacks racing with the same state (two replicas),
            # exactly one deletes the row.
            taken = db.execute(f"delete from {STATES} where digest = ? and expires_at >= ?", [digest, now]).rowcount
            if taken != 1:
                db.execute(f"delete from {STATES} where digest = ?", [digest])  # an expired one
            return bool(taken == 1)

        return bool(await self.store.writer.acall(write, urgent=True))


class InstallationAuthorizer(AsyncAuthorize):
    """``authorize=`` for :class:`slack_bolt.async_app.AsyncApp` in many workspaces: the
    request's workspace's bot, from :class:`InstallationStore` (None: not installed)."""

    def __init__(self, installations: InstallationStore) -> None:
        super().__init__()
        self.installations = installations

    async def __call__(  # type: ignore[override]
        self,
        *,
        context: Any,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        **_: Any,
    ) -> AuthorizeResult | None:
        bot = await self.installations.bot(
            team_id, enterprise_id, is_enterprise_install=bool(context.is_enterprise_install)
        )
        if bot is None:
            return None
        return AuthorizeResult(
            enterprise_id=bot.enterprise_id,
            team_id=bot.team_id or team_id,
            bot_id=bot.bot_id,
            bot_user_id=bot.bot_user_id,
            bot_token=bot.bot_token,
            bot_scopes=bot.bot_scopes,
            user_id=user_id,
        )


class TeamClient(AsyncWebClient):
    """One workspace's Web API client: every call carries the bot token that workspace's
    installation has at that moment (a refreshed one after rotation). Not installed any
    more: the call goes without a token and Slack refuses it (``not_authed``), as it would
    a revoked one."""

    def __init__(self, installations: InstallationStore, team: str, **kwargs: Any) -> None:
        super().__init__(token=None, **kwargs)
        self.installations = installations
        self.team = team

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:  # type: ignore[override]
        explicit = any(isinstance(kwargs.get(k), dict) and "token" in kwargs[k] for k in ("json", "params", "data"))
        bot = None if explicit else await self.installations.bot(self.team)
        if bot is not None:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {bot.bot_token}"}
        return await super().api_call(api_method, **kwargs)


class _OAuthLog(logging.Filter):
    """The install flow's log: its debug records go (they are the Web API's request and
    response dumps, with codes and tokens in them, and the callback's query); what is left
    (a code Slack refused) has its code and state values as ``[redacted]``."""

    _VALUE = re.compile(r"(\b(?:code|state)\b\W{1,6})[\w.\-~%]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        message = record.getMessage()
        cleaned = self._VALUE.sub(r"\1[redacted]", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _flow_logger() -> logging.Logger:
    """The logger of bolt's flow and of the clients that exchange codes and refresh tokens."""
    logger = logging.getLogger("parley.slack.oauth")
    if not any(isinstance(f, _OAuthLog) for f in logger.filters):
        logger.addFilter(_OAuthLog())
    return logger


class AccessLogger(web_log.AccessLogger):
    """aiohttp's access log, without the query of ``/slack/oauth_redirect`` (an install's
    code and state); every other line as aiohttp writes it."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path == REDIRECT_PATH and request.query_string:
            request = request.clone(rel_url=request.rel_url.with_query(None))
        super().log(request, response, time)


async def _installed(args: AsyncSuccessArgs) -> BoltResponse:
    i = args.installation
    log.info("Slack: installed in %s (%s)", i.team_id or i.enterprise_id, i.team_name or i.enterprise_name or "")
    return await args.default.success(args)


async def _refused(args: AsyncFailureArgs) -> BoltResponse:
    log.warning("Slack: refused an installation (%s)", args.reason)
    return await args.default.failure(args)


def _bolt_request(request: web.Request) -> AsyncBoltRequest:
    return AsyncBoltRequest(body="", query=request.query_string, headers=dict(request.headers))


class SlackOAuth:
    """Everything installing in many workspaces needs, built once per process."""

    def __init__(
        self,
        store: Store,
        box: KeyBox,
        *,
        client_id: str,
        client_secret: str,
        base_url: str,
        scopes: list[str],
        redirect_uri: str | None = None,
        timeout: int = 30,
    ) -> None:
        self.store = store
        self.base_url = base_url
        self.timeout = timeout
        logger = _flow_logger()
        rotator = AsyncTokenRotator(
            client_id=client_id,
            client_secret=client_secret,
            client=AsyncWebClient(base_url=base_url, timeout=timeout, logger=logger),
        )
        self.installations = InstallationStore(store, box, client_id=client_id, rotator=rotator)
        self.states = StateStore(store)
        self.authorizer = InstallationAuthorizer(self.installations)
        self.settings = AsyncOAuthSettings(
            client_id=client_id,
            client_secret=client_secret,
            scopes=scopes,
            user_scopes=[],
            redirect_uri=redirect_uri,
            install_path=INSTALL_PATH,
            install_page_rendering_enabled=False,  # straight to Slack's authorize page
            redirect_uri_path=REDIRECT_PATH,
            callback_options=AsyncCallbackOptions(success=_installed, failure=_refused),
            authorization_url=authorize_url(base_url),
            installation_store=self.installations,
            token_rotation_expiration_minutes=ROTATE_MINUTES,
            state_store=self.states,
            state_expiration_seconds=STATE_SECONDS,
            logger=logger,
        )
        self.flow = AsyncOAuthFlow(
            client=AsyncWebClient(base_url=base_url, timeout=timeout, logger=logger), logger=logger,
            settings=self.settings,
        )
        self._clients: collections.OrderedDict[str, TeamClient] = collections.OrderedDict()

    @classmethod
    def from_settings(cls, store: Store, slack: SlackSettings, secret_key: str | None) -> SlackOAuth:
        """From ``SLACK_CLIENT_ID``/``SLACK_CLIENT_SECRET`` and PARLEY_SECRET_KEY (UsageError if one is missing)."""
        client_id, client_secret, _ = check_oauth(slack, secret_key=secret_key)
        return cls(
            store,
            KeyBox(secret_key),
            client_id=client_id,
            client_secret=client_secret,
            base_url=api_url(slack),
            scopes=bot_scopes(followups=slack.followups),
            redirect_uri=slack.redirect_uri or None,
        )

    def client(self, team: str | None) -> AsyncWebClient:
        """The Web API client of ``team``'s installation (one per workspace, kept while used)."""
        key = team or ""
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = TeamClient(
                self.installations, key, base_url=self.base_url, timeout=self.timeout,
                logger=logging.getLogger("parley.slack.web"),
            )
            while len(self._clients) > CACHE_SIZE:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return client

    async def identity(self, team: str | None) -> tuple[str | None, bool]:
        """Parley's bot user in ``team``, and whether it may post under personas' names."""
        bot = await self.installations.bot(team)
        if bot is None:
            return None, False
        return bot.bot_user_id, "chat:write.customize" in (bot.bot_scopes or [])

    def routes(self) -> list[web.RouteDef]:
        """``GET /slack/install`` and ``GET /slack/oauth_redirect`` (bolt's flow)."""

        async def install(request: web.Request) -> web.Response:
            return await to_aiohttp_response(await self.flow.handle_installation(_bolt_request(request)))

        async def callback(request: web.Request) -> web.Response:
            return await to_aiohttp_response(await self.flow.handle_callback(_bolt_request(request)))

        return [web.get(INSTALL_PATH, install), web.get(REDIRECT_PATH, callback)]

    def _team_of(self, ref: dict[str, Any]) -> str | None:
        """The workspace of an open message: recorded with it, else that of the last
        discussion held in its channel (channel ids are unique across workspaces)."""
        if ref.get("team"):
            return str(ref["team"])
        rows = self.store.peek(
            "select workspace from discussions where front_end = ? and channel = ? and workspace is not null "
            "order by created_at desc limit 1",
            [FRONT_END, ref.get("channel")],
        )
        return rows[0]["workspace"].removeprefix(f"{FRONT_END}:") if rows else None

    async def mark(self, ref: dict[str, Any], shown: str) -> None:
        """Mark one open message a dead process left as interrupted, with its workspace's token."""
        team = self._team_of(ref)
        if team is None:
            raise LookupError("no workspace is known for this message")
        await mark_interrupted(self.client(team), ref, shown)

    async def recover(self) -> int:
        """Mark every open message a dead process left as interrupted. Returns how many."""
        return await recover_posts(self.store, FRONT_END, self.mark)

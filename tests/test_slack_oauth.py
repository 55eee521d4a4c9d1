"""Slack installed in many workspaces, through bolt's OAuth flow on Parley's own stores.

End to end: the real bolt app in HTTP mode, as ``parley slack`` builds it from the
environment (``build_front``); a browser's install (``GET /slack/install`` → the loopback
fake's authorize page → ``GET /slack/oauth_redirect`` with the state cookie), the fake's
``oauth.v2.access``, signed events from each workspace. The fake records which
workspace's token made every Web API call, and refuses a revoked one.

The stores on their own run on both dialects: SQLite (a file) and PostgreSQL (a real server).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.oauth.installation_store import Installation

from bots.slack.config import SlackSettings, check_oauth
from bots.slack.main import build_front, configured
from bots.slack.manifest import REDIRECT_PATH, bot_scopes, manifest
from bots.slack.oauth import NOT_INSTALLED, AccessLogger, InstallationStore, StateStore, authorize_url
from core.config import Settings
from core.errors import UsageError
from core.governance.keys import KeyBox
from core.services import build_services
from core.store import Store
from tests.fakes import database_bytes
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.fakes.slack_api import Call, FakeSlackAPI, sign
from tests.test_slack import Rig

COOKIE = "slack-app-oauth-state"


def secret_key() -> str:
    return secrets.token_urlsafe(32)


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (bolt runs event listeners after it acknowledged)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# --- the stores, on both dialects ------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(target: str) -> Any:
    s = Store(target, lease=5)
    yield s
    s.close()


def installation(team: str, token: str, **kw: Any) -> Installation:
    return Installation(
        app_id="A0TEST", team_id=team, team_name=f"Team {team}", bot_token=token, bot_id=f"B{team}",
        bot_user_id=f"UB{team}", bot_scopes="commands,chat:write,chat:write.customize", user_id="U1", **kw
    )


def every_value(store: Store) -> str:
    """Every value of every installation table, as text (to look for a token in clear)."""
    rows = [r for t in ("slack_bots", "slack_installations", "slack_oauth_states") for r in store.peek(f"select * from {t}")]
    return repr(rows)


async def test_an_installation_round_trips_sealed_and_bound_to_its_row(store: Store) -> None:
    box = KeyBox(secret_key())
    installs = InstallationStore(store, box, client_id="C1D")
    t1, t2 = "xoxb-1-" + secrets.token_hex(8), "xoxb-2-" + secrets.token_hex(8)
    user_token, webhook = "xoxp-9-" + secrets.token_hex(8), "https://hooks.slack.com/services/" + secrets.token_hex(8)
    await installs.async_save(installation("T1", t1, user_token=user_token, incoming_webhook_url=webhook))
    await installs.async_save(installation("T2", t2))
    bot = await installs.async_find_bot(enterprise_id=None, team_id="T1")
    assert bot is not None and (bot.bot_token, bot.bot_user_id, bot.team_name) == (t1, "UBT1", "Team T1")
    assert "chat:write.customize" in bot.bot_scopes
    found = await installs.async_find_installation(enterprise_id=None, team_id="T1")
    assert found is not None and (found.bot_token, found.user_token, found.incoming_webhook_url) == (
        t1, user_token, webhook)
    assert (await installs.async_find_bot(enterprise_id=None, team_id="T2")).bot_token == t2  # type: ignore[union-attr]
    assert await installs.async_find_bot(enterprise_id=None, team_id="T3") is None
    # Nothing in clear: not the tokens, not the webhook's URL.
    text = every_value(store)
    assert all(v not in text for v in (t1, t2, user_token, webhook))
    # A ciphertext copied into another workspace's row does not open there: T2 is then unreadable.
    [row] = store.peek("select bot_token from slack_bots where team_id = 'T1'")
    await store.writer.acall(lambda db: db.execute("update slack_bots set bot_token = ? where team_id = 'T2'",
                                                   [row["bot_token"]]))
    fresh = InstallationStore(store, box, client_id="C1D")
    assert await fresh.bot("T2") is None
    assert (await fresh.bot("T1")).bot_token == t1  # type: ignore[union-attr]
    # Another app (client id) sharing the database sees none of these.
    assert await InstallationStore(store, box, client_id="OTHER").bot("T1") is None


async def test_another_secret_key_cannot_open_an_installation(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    token = "xoxb-1-" + secrets.token_hex(8)
    await InstallationStore(store, KeyBox(secret_key()), client_id="C1D").async_save(installation("T1", token))
    other = InstallationStore(store, KeyBox(secret_key()), client_id="C1D")
    with caplog.at_level(logging.WARNING, logger="parley.slack"):
        assert await other.bot("T1") is None
        assert await other.bot("T1") is None
    warnings = [r.getMessage() for r in caplog.records if "cannot be opened" in r.getMessage()]
    assert len(warnings) == 1 and "another PARLEY_SECRET_KEY" in warnings[0]  # said once, with the fix
    assert token not in caplog.text


async def test_deleting_a_bot_an_installer_or_everything(store: Store) -> None:
    installs = InstallationStore(store, KeyBox(secret_key()), client_id="C1D")
    await installs.async_save(installation("T1", "xoxb-1-" + secrets.token_hex(8)))
    assert await installs.bot("T1") is not None  # cached now
    await installs.async_delete_installation(enterprise_id=None, team_id="T1", user_id="U1")
    assert store.peek("select * from slack_installations") == []
    assert await installs.bot("T1") is not None  # the installer's tokens only: the bot stays
    await installs.async_delete_bot(enterprise_id=None, team_id="T1")
    assert await installs.bot("T1") is None  # at once, although it was cached
    assert await installs.async_find_installation(enterprise_id=None, team_id="T1") is None
    await installs.async_save(installation("T1", "xoxb-1-" + secrets.token_hex(8)))
    await installs.async_delete_all(enterprise_id=None, team_id="T1")
    assert await installs.bot("T1") is None
    assert store.peek("select * from slack_bots") == store.peek("select * from slack_installations") == []


async def test_a_second_save_replaces_the_workspace_bot(store: Store) -> None:
    installs = InstallationStore(store, KeyBox(secret_key()), client_id="C1D")
    old, new = "xoxb-1-" + secrets.token_hex(8), "xoxb-1-" + secrets.token_hex(8)
    await installs.async_save(installation("T1", old))
    assert (await installs.bot("T1")).bot_token == old  # type: ignore[union-attr]
    await installs.async_save(installation("T1", new))  # a re-install, or another admin's
    assert (await installs.bot("T1")).bot_token == new  # type: ignore[union-attr]
    assert len(store.peek("select * from slack_bots")) == 1


async def test_a_state_is_used_once_and_expires(store: Store) -> None:
    now = [1_000_000.0]
    states = StateStore(store, ttl=600, clock=lambda: now[0])
    a, b, c = await states.async_issue(), await states.async_issue(), await states.async_issue()
    assert len({a, b, c}) == 3 and all(len(s) >= 40 for s in (a, b, c))
    assert a not in every_value(store)  # kept as its digest
    assert await states.async_consume(a) is True
    assert await states.async_consume(a) is False  # used
    assert await states.async_consume("never-issued") is False
    assert await states.async_consume("") is False
    now[0] += 599
    assert await states.async_consume(b) is True
    now[0] += 2  # c is 601 s old
    assert await states.async_consume(c) is False
    assert store.peek("select * from slack_oauth_states") == []  # nothing left behind
    await states.async_issue()
    now[0] += 10_000
    await states.async_issue()  # abandoned states are swept by later ones
    assert len(store.peek("select * from slack_oauth_states")) == 1


async def test_two_callbacks_with_one_state_install_once(store: Store) -> None:
    states = StateStore(store)
    state = await states.async_issue()
    results = await asyncio.gather(*(StateStore(store).async_consume(state) for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]


# --- end to end ----------------------------------------------------------------------------------
@dataclass
class OAuthRig(Rig):
    base: str = ""

    async def install(self, team: str, *, check: bool = True) -> tuple[int, str]:
        """A browser installs Parley in ``team``: (status, page) of the redirect back to Parley."""
        location, cookie = await self.start_install(team)
        async with self.http.get(location, allow_redirects=False) as r:  # Slack: the admin approves
            assert r.status == 302, await r.text()
            back = r.headers["Location"]
        status, page = await self.callback(back, cookie)
        if check:
            assert status == 200, page
        return status, page

    async def start_install(self, team: str | None = None) -> tuple[str, str]:
        """``GET /slack/install``: Slack's authorize URL and the state cookie set for it."""
        params = {"team": team} if team else {}
        async with self.http.get(self.base + "/slack/install", params=params, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            cookie = r.cookies[COOKIE]
            assert cookie["httponly"] and cookie["secure"]
            return r.headers["Location"], f"{COOKIE}={cookie.value}"

    async def callback(self, url: str, cookie: str | None) -> tuple[int, str]:
        headers = {"Cookie": cookie} if cookie else {}
        async with self.http.get(url, headers=headers, allow_redirects=False) as r:
            return r.status, await r.text()

    async def post_event(self, event: dict[str, Any], team: str) -> tuple[int, str]:
        """A signed event from ``team``: bolt's (status, body)."""
        body = json.dumps({
            "token": "legacy", "team_id": team, "api_app_id": "A0TEST", "type": "event_callback",
            "event_id": "Ev" + secrets.token_hex(4), "event_time": int(time.time()), "event": event,
        })
        headers = {"Content-Type": "application/json", **sign(self.secret, body)}
        async with self.http.post(self.url, data=body, headers=headers) as r:
            return r.status, await r.text()

    def mention_event(self, team: str, channel: str, text: str) -> dict[str, Any]:
        bot = self.slack.teams.get(team, {}).get("bot_user_id", "UBOT")
        ts = f"{int(time.time())}.{secrets.randbelow(10**6):06d}"
        return {"type": "app_mention", "user": "U1", "text": f"<@{bot}> {text}", "channel": channel, "ts": ts,
                "event_ts": ts}

    async def mention(self, team: str, channel: str, text: str = "help") -> list[Call]:
        """An @Parley mention in ``team``, answered: the Web API calls made to answer it."""
        before_calls, before = len(self.slack.calls), self.front.spawned
        assert await self.post_event(self.mention_event(team, channel, text), team) == (200, "")
        await self.front.idle(before + 1)
        return self.slack.calls[before_calls:]

    async def unanswered(self, team: str, channel: str) -> None:
        """An @Parley mention in ``team`` that bolt refuses to authorise: nothing runs, nothing is sent."""
        before_calls, before = len(self.slack.calls), self.front.spawned
        assert await self.post_event(self.mention_event(team, channel, "help"), team) == (200, NOT_INSTALLED)
        assert self.front.spawned == before and self.slack.calls[before_calls:] == []


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store of the rig: SQLite unless a test is parametrized (``indirect``) with "postgres"."""
    kind = str(getattr(request, "param", "sqlite"))
    if kind == "postgres":
        monkeypatch.setenv("PARLEY_DATABASE_URL", request.getfixturevalue("pg_url"))
    return kind


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> AsyncIterator[OAuthRig]:
    async with FakeLLMServer() as llm:
        cfg = tmp_path / "p.toml"
        cfg.write_text(
            f'[providers.one]\nlabel = "one"\nbase_url = "{llm.base_url}"\nkey_env = "K_ONE"\n'
            'default_model = "one-m"\n[providers.one.models."one-m"]\ninput = 1.0\noutput = 2.0\n'
        )
        signing, client_secret = secrets.token_hex(16), secrets.token_hex(16)
        async with FakeSlackAPI(bot_token="xoxb-unused-" + secrets.token_hex(6)) as slack:
            slack.client_id, slack.client_secret = "111.222", client_secret
            for k, v in {
                "PARLEY_CONFIG": str(cfg), "K_ONE": "k-" + secrets.token_hex(8), "PARLEY_SECRET_KEY": secret_key(),
                "SLACK_CLIENT_ID": slack.client_id, "SLACK_CLIENT_SECRET": client_secret,
                "SLACK_SIGNING_SECRET": signing, "SLACK_API_URL": slack.base_url,
            }.items():
                monkeypatch.setenv(k, v)
            services = build_services(Settings())
            front = build_front(services, SlackSettings())
            await front.start()
            runner = web.AppRunner(front.web_app(), access_log_class=AccessLogger)  # as `parley slack` serves it
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            base = f"http://127.0.0.1:{port}"
            slack.redirect_url = base + REDIRECT_PATH  # the app's Redirect URL, as configured at Slack
            async with aiohttp.ClientSession() as http:
                try:
                    yield OAuthRig(services, llm, slack, front, base + "/slack/events", signing, http, base=base)
                finally:
                    await front.shutdown()
                    await runner.cleanup()
                    await services.aclose()


def fake_access(record: logging.LogRecord) -> bool:
    """An access line of the fake Slack's own server (it shares aiohttp's logger with Parley's)."""
    return record.name == "aiohttp.access" and "/slack/" not in record.getMessage()


def answered(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.method in ("chat.postMessage", "chat.postEphemeral") and c.status == 200
            and not c.error]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
async def test_the_install_dance_then_each_workspace_is_answered_with_its_own_token(
    backend: str, rig: OAuthRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    location, cookie = await rig.start_install("T1")
    url = urlsplit(location)
    assert f"{url.scheme}://{url.netloc}{url.path}" == authorize_url(rig.slack.base_url)
    q = parse_qs(url.query)
    assert q["client_id"] == ["111.222"] and q["team"] == ["T1"]
    assert q["scope"] == [",".join(bot_scopes())]  # the manifest's one list of scopes
    assert cookie == f"{COOKIE}={q['state'][0]}"
    async with rig.http.get(location, allow_redirects=False) as r:
        back = r.headers["Location"]
    assert back.startswith(rig.base + REDIRECT_PATH)
    status, page = await rig.callback(back, cookie)
    assert status == 200 and "slack://app?team=T1" in page
    (exchange,) = rig.slack.called("oauth.v2.access")
    assert exchange.status == 200 and not exchange.error
    await rig.install("T2")

    t1 = answered(await rig.mention("T1", "C1"))
    t2 = answered(await rig.mention("T2", "C2"))
    assert t1 and all(c.team == "T1" and c.args["channel"] == "C1" for c in t1)
    assert t2 and all(c.team == "T2" and c.args["channel"] == "C2" for c in t2)
    assert "/ask" in t1[0].args["text"]  # the help, answered in the thread of the mention
    # A workspace that never installed Parley is not answered, and nothing is sent for it.
    await rig.unanswered("T9", "C9")

    # The database holds no token (nor the client secret, nor a state) in clear; nor do the logs.
    tokens = list(rig.slack.tokens)
    assert len(tokens) == 2
    values = every_value(rig.services.store)
    hidden = [*tokens, rig.slack.client_secret or "", q["state"][0]]
    assert all(v not in values for v in hidden)
    raw = database_bytes(rig.services.store)  # every byte on SQLite, every row on PostgreSQL
    assert b"T1" in raw and b"T2" in raw  # it is the store that holds the installations
    assert all(v.encode() not in raw for v in hidden)
    code = parse_qs(urlsplit(back).query)["code"][0]
    ours = "\n".join(r.getMessage() for r in caplog.records if not fake_access(r))
    assert "/slack/oauth_redirect" in ours  # its access line, without the code and the state
    assert all(v not in ours for v in [*hidden, code])
    assert "Slack: installed in T1" in caplog.text


async def test_a_slash_command_discussion_streams_with_its_workspace_token(rig: OAuthRig) -> None:
    await rig.install("T1")
    await rig.install("T2")
    rig.llm.scenarios["one-m"] = Scenario(text="Answered in the second workspace.", chunk_chars=6)
    parent, thread = await rig.discuss("/ask", "provider:one Which token?", team="T2", channel="C2")
    assert "Answered in the second workspace." in "".join(m.text for m in thread)
    sent = [c for c in rig.slack.calls if c.method.startswith(("chat.", "assistant."))]
    assert sent and all(c.team == "T2" and not c.error for c in sent)
    starts = rig.slack.called("chat.startStream")
    assert starts and all(c.args["recipient_team_id"] == "T2" for c in starts)


async def test_app_home_and_the_admin_lookup_use_the_workspace_token(rig: OAuthRig) -> None:
    await rig.install("T1")
    await rig.install("T2")
    before = rig.front.spawned
    await rig.event({"type": "app_home_opened", "user": "U7", "channel": "D0", "tab": "home",
                     "event_ts": str(time.time())}, team="T2")
    await rig.front.idle(before + 1)
    (lookup,) = rig.slack.called("users.info")
    (publish,) = rig.slack.called("views.publish")
    assert (lookup.team, publish.team) == ("T2", "T2") and not publish.error


async def test_refused_states_never_reach_slack(rig: OAuthRig) -> None:
    # Another browser's cookie (or none): the state is not this browser's.
    location, cookie = await rig.start_install("T1")
    async with rig.http.get(location, allow_redirects=False) as r:
        back = r.headers["Location"]
    _, other = await rig.start_install("T1")
    assert (await rig.callback(back, other))[0] == 400
    assert (await rig.callback(back, None))[0] == 400
    # A state Parley never issued, in both the cookie and the query.
    forged = back.split("state=")[0] + "state=forged-state-value"
    assert (await rig.callback(forged, f"{COOKIE}=forged-state-value"))[0] == 401
    assert rig.slack.called("oauth.v2.access") == []
    # The right one works once; the same redirect again is refused before the code is exchanged.
    assert (await rig.callback(back, cookie))[0] == 200
    assert (await rig.callback(back, cookie))[0] == 401
    assert len(rig.slack.called("oauth.v2.access")) == 1
    # An expired state (issued more than ten minutes ago) is refused.
    location, cookie = await rig.start_install("T2")
    async with rig.http.get(location, allow_redirects=False) as r:
        back = r.headers["Location"]
    store = rig.services.store
    await store.writer.acall(lambda db: db.execute("update slack_oauth_states set expires_at = ?",
                                                   [time.time() - 1]))
    assert (await rig.callback(back, cookie))[0] == 401
    assert len(rig.slack.called("oauth.v2.access")) == 1
    await rig.unanswered("T2", "C2")  # T2 never got installed


async def test_a_code_slack_refuses_is_not_installed_and_not_logged(
    rig: OAuthRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    location, cookie = await rig.start_install("T1")
    state = parse_qs(urlsplit(location).query)["state"][0]
    bogus = "9999.bogus-code-" + secrets.token_hex(6)
    status, _ = await rig.callback(f"{rig.base}{REDIRECT_PATH}?code={bogus}&state={state}", cookie)
    assert status == 401
    (exchange,) = rig.slack.called("oauth.v2.access")
    assert exchange.error == "invalid_code"
    assert rig.services.store.peek("select * from slack_bots") == []
    ours = "\n".join(r.getMessage() for r in caplog.records if not fake_access(r))
    assert "Failed to fetch oauth.v2.access" in ours and "refused an installation (invalid_code)" in ours
    assert bogus not in ours and state not in ours  # said without the code or the state


async def test_uninstalled_then_installed_again(rig: OAuthRig) -> None:
    await rig.install("T1")
    await rig.install("T2")
    assert answered(await rig.mention("T1", "C1"))
    rig.slack.uninstall("T1")  # Slack revokes the tokens and tells Parley
    assert await rig.post_event({"type": "app_uninstalled"}, "T1") == (200, "")
    store = rig.services.store
    await until(lambda: not store.peek("select * from slack_bots where team_id = 'T1'"))
    assert store.peek("select * from slack_installations where team_id = 'T1'") == []
    await rig.unanswered("T1", "C1")  # not answered: no call at all
    assert answered(await rig.mention("T2", "C2"))  # the other workspace is untouched
    # Installing again works, with the new token.
    await rig.install("T1")
    again = answered(await rig.mention("T1", "C1"))
    assert again and all(c.team == "T1" for c in again)


async def test_tokens_revoked_for_people_keeps_the_bot_for_the_bot_stops_it(rig: OAuthRig) -> None:
    await rig.install("T1")
    store = rig.services.store
    assert await rig.post_event({"type": "tokens_revoked", "tokens": {"oauth": ["U1"]}}, "T1") == (200, "")
    await until(lambda: not store.peek("select * from slack_installations where team_id = 'T1'"))
    assert answered(await rig.mention("T1", "C1"))  # the installer's user token only: still answered
    bot_user = rig.slack.teams["T1"]["bot_user_id"]
    assert await rig.post_event({"type": "tokens_revoked", "tokens": {"bot": [bot_user]}}, "T1") == (200, "")
    await until(lambda: not store.peek("select * from slack_bots where team_id = 'T1'"))
    await rig.unanswered("T1", "C1")


async def test_a_rotating_token_is_refreshed_once_and_stored_sealed(rig: OAuthRig) -> None:
    rig.slack.rotation = 60  # token rotation on: the installed token expires within the refresh margin
    await rig.install("T1")
    [installed] = rig.slack.tokens
    refresh = next(iter(rig.slack._refresh))
    before, calls_before = rig.front.spawned, len(rig.slack.calls)
    replies = await asyncio.gather(*(rig.post_event(rig.mention_event("T1", f"C{i}", "help"), "T1")
                                     for i in range(4)))  # four events at once, the token due
    assert replies == [(200, "")] * 4
    await rig.front.idle(before + 4)
    refreshes = [c for c in rig.slack.called("oauth.v2.access") if c.args.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 1  # one refresh for all of them
    assert installed in rig.slack.revoked  # the fake retired the old token: only the new one works
    posted = answered(rig.slack.calls[calls_before:])
    assert sorted(c.args["channel"] for c in posted) == ["C0", "C1", "C2", "C3"]
    assert all(c.team == "T1" for c in posted)
    [current] = rig.slack.tokens
    values = every_value(rig.services.store)
    assert current not in values and refresh not in values and installed not in values
    assert answered(await rig.mention("T1", "C1"))
    assert len([c for c in rig.slack.called("oauth.v2.access") if c.args.get("grant_type")]) == 1


async def test_a_refresh_that_fails_keeps_the_current_token_and_is_not_retried_at_once(
    rig: OAuthRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.slack.rotation = 60
    await rig.install("T1")
    rig.slack._refresh.clear()  # Slack refuses the refresh token from now on
    first = answered(await rig.mention("T1", "C1"))
    second = answered(await rig.mention("T1", "C2"))
    assert first and second and all(c.team == "T1" for c in first + second)  # the current token still works
    refreshes = [c for c in rig.slack.called("oauth.v2.access") if c.args.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 1 and refreshes[0].error == "invalid_refresh_token"  # tried once, not per request
    assert "could not refresh the bot token of T1 (invalid_refresh_token)" in caplog.text


async def test_a_restart_marks_open_messages_with_each_workspace_token(rig: OAuthRig) -> None:
    await rig.install("T1")
    await rig.install("T2")
    rig.llm.scenarios["one-m"] = Scenario(text=" ".join(f"w{i}" for i in range(300)), chunk_chars=5,
                                          chunk_delay=0.05)
    for team, channel in (("T1", "C1"), ("T2", "C2")):
        await rig.slash("/ask", "provider:one Long one", team=team, channel=channel)
    await rig.slack.wait_for(lambda: sum(1 for m in rig.slack.messages.values()
                                         if m.thread_ts and len(m.text) > 100) >= 2)
    for t in list(rig.front.tasks):  # the process dies
        t.cancel()
    await asyncio.gather(*rig.front.tasks, return_exceptions=True)
    store = rig.services.store
    store.flush()
    # Each message records its workspace, so recovery needs no lookup to find its token.
    refs = [json.loads(r["ref"]) for r in store.peek("select ref from posts")]
    assert refs and all(r["team"] == ("T1" if r["channel"] == "C1" else "T2") for r in refs)
    with store.db.conn:
        store.db.execute("update posts set open = 1")
        store.db.execute("update discussions set status = 'running', owner = 'a-dead-process'")
    restarted_at = len(rig.slack.calls)
    fresh = build_front(rig.services, SlackSettings())
    await fresh.start()
    edits = [c for c in rig.slack.calls[restarted_at:] if c.method.startswith("chat.")]
    assert {c.team for c in edits} == {"T1", "T2"}
    assert all(c.team == ("T1" if c.args["channel"] == "C1" else "T2") for c in edits)
    assert not [c for c in edits if c.error in ("invalid_auth", "not_authed", "token_revoked")]
    for channel in ("C1", "C2"):
        [parent] = rig.slack.parents(channel)
        thread = rig.slack.thread(channel, parent.ts)
        assert any("Interrupted" in m.text for m in thread if "`one/" in m.text)  # the reply, edited
        assert any("restarted before this discussion finished" in m.text for m in thread)  # the thread's note
    assert store.open_posts("slack") == []


# --- settings ------------------------------------------------------------------------------------
def test_oauth_settings_are_checked_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def settings(**env: str) -> SlackSettings:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return SlackSettings()

    with pytest.raises(UsageError, match="SLACK_CLIENT_SECRET is not set"):
        check_oauth(settings(SLACK_CLIENT_ID="1.2"), secret_key="k")
    assert configured()  # parley run starts Slack with the client id alone (and then says what is missing)
    with pytest.raises(UsageError, match="SLACK_SIGNING_SECRET"):
        check_oauth(settings(SLACK_CLIENT_SECRET="s3cr3t-value"), secret_key="k")
    with pytest.raises(UsageError, match="PARLEY_SECRET_KEY, which is not set") as e:
        check_oauth(settings(SLACK_SIGNING_SECRET="sig"), secret_key=None)
    assert "secrets.token_urlsafe" in e.value.message and "s3cr3t-value" not in e.value.message
    assert check_oauth(settings(), secret_key="k") == ("1.2", "s3cr3t-value", "sig")
    with pytest.raises(UsageError, match="HTTP mode"):
        check_oauth(settings(SLACK_APP_TOKEN="xapp-1-" + secrets.token_hex(6)), secret_key="k")
    monkeypatch.delenv("SLACK_APP_TOKEN")
    with pytest.raises(UsageError, match="Both SLACK_BOT_TOKEN and SLACK_CLIENT_ID"):
        check_oauth(settings(SLACK_BOT_TOKEN="xoxb-1-" + secrets.token_hex(6)), secret_key="k")


async def test_without_a_secret_key_oauth_mode_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"SLACK_CLIENT_ID": "1.2", "SLACK_CLIENT_SECRET": "s", "SLACK_SIGNING_SECRET": "g"}.items():
        monkeypatch.setenv(k, v)
    services = build_services(Settings())
    try:
        with pytest.raises(UsageError, match="PARLEY_SECRET_KEY"):
            build_front(services, SlackSettings())
    finally:
        await services.aclose()


def test_the_manifest_for_many_workspaces_has_the_redirect_url(monkeypatch: pytest.MonkeyPatch) -> None:
    m = manifest(socket_mode=False, request_url="https://parley.example.com/slack/events", oauth=True)
    assert m["oauth_config"]["redirect_urls"] == ["https://parley.example.com/slack/oauth_redirect"]
    assert "redirect_urls" not in manifest(socket_mode=True)["oauth_config"]
    with pytest.raises(ValueError):
        manifest(socket_mode=True, oauth=True)
    monkeypatch.setenv("SLACK_FOLLOWUPS", "1")
    assert SlackSettings().followups and "channels:history" in bot_scopes(followups=True)


"""Governance in Slack end to end: the real bolt app in HTTP mode gets signed slash
commands, events and interactive payloads (App Home buttons, modal submissions);
its Web API calls go to the loopback fake of Slack, whose ``users.info`` says who is
an admin; the providers are the fake LLM server, which records every request."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack import views
from bots.slack.app import SlackFront
from bots.slack.manifest import BOT_SCOPES, manifest
from core.config import Settings
from core.services import build_services
from tests.fakes import database_bytes, use_store_target
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.fakes.slack_api import FakeSlackAPI, sign
from tests.test_slack import PROVIDERS, Rig, body_of, bot_token

ADMIN = "U0ADMIN"  # a workspace admin, as users.info says


@dataclass
class GovRig(Rig):
    async def answer(self, command: str, text: str, **kw: Any) -> str:
        """A command answered after its ack (ephemerally, via response_url): that answer's text."""
        before, answered = self.front.spawned, len(self.slack.responses)
        status, body = await self.slash(command, text, **kw)
        assert (status, body) == (200, ""), body
        await self.front.idle(before + 1)
        (response,) = self.slack.responses[answered:]
        assert response["response_type"] == "ephemeral"
        return str(response["text"])

    async def refused(self, command: str, text: str, **kw: Any) -> str:
        """A command refused in its ack: the ack's text."""
        status, body = await self.slash(command, text, **kw)
        assert status == 200 and body, body
        return str(json.loads(body)["text"]) if body.startswith("{") else body  # bolt may answer plain text

    async def interact(self, payload: dict[str, Any]) -> tuple[int, str]:
        """A signed interactive payload (a button, a modal submission), as Slack posts it."""
        body = urlencode({"payload": json.dumps(payload)})
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(self.secret, body)}
        async with self.http.post(self.url, data=body, headers=headers) as r:
            return r.status, await r.text()

    async def mention(self, text: str, *, channel: str = "C1", user: str = "U1", **extra: Any) -> str:
        """An @Parley mention, handled to the end; its ts (the thread it answers in)."""
        before = self.front.spawned
        ts = f"{int(time.time())}.{secrets.randbelow(10**6):06d}"
        await self.event(
            {
                "type": "app_mention",
                "user": user,
                "text": f"<@UBOT> {text}",
                "ts": ts,
                "channel": channel,
                "event_ts": ts,
                **extra,
            }
        )
        await self.front.idle(before + 1)
        return ts

    async def dm(self, text: str, *, user: str = "U1", channel: str = "D1") -> str:
        before = self.front.spawned
        ts = f"{int(time.time())}.{secrets.randbelow(10**6):06d}"
        await self.event(
            {
                "type": "message",
                "channel_type": "im",
                "user": user,
                "text": text,
                "ts": ts,
                "channel": channel,
                "event_ts": ts,
            }
        )
        await self.front.idle(before + 1)
        return ts

    async def open_home(self, user: str) -> dict[str, Any]:
        before = self.front.spawned
        await self.event(
            {
                "type": "app_home_opened",
                "user": user,
                "channel": "D0",
                "tab": "home",
                "event_ts": str(time.time()),
            }
        )
        await self.front.idle(before + 1)
        return self.slack.homes[user]

    async def submit(
        self, view: dict[str, Any], values: dict[str, Any], *, user: str = ADMIN
    ) -> dict[str, Any]:
        """Submit a modal Parley opened with ``values`` by block id; what Parley answered (or {})."""
        state: dict[str, Any] = {}
        for block in view["blocks"]:
            if block["type"] != "input":
                continue
            bid, kind = block["block_id"], block["element"]["type"]
            v = values.get(bid)
            if kind in ("static_select", "radio_buttons"):
                el = {"type": kind, "selected_option": {"value": v} if v is not None else None}
            elif kind == "users_select":
                el = {"type": kind, "selected_user": v}
            elif kind == "multi_users_select":
                el = {"type": kind, "selected_users": v or []}
            elif kind == "conversations_select":
                el = {"type": kind, "selected_conversation": v}
            else:
                el = {"type": kind, "value": v}
            state[bid] = {views.VALUE: el}
        before = self.front.spawned
        status, body = await self.interact(
            {
                "type": "view_submission",
                "team": {"id": "T0TEST", "domain": "parley-test"},
                "user": {"id": user, "team_id": "T0TEST"},
                "api_app_id": "A0TEST",
                "trigger_id": "9.9.9",
                "view": {**view, "id": "VMODAL", "team_id": "T0TEST", "state": {"values": state}},
            }
        )
        assert status == 200, body
        await self.front.idle(before)
        return json.loads(body) if body else {}

    async def click(self, action_id: str, *, user: str = ADMIN) -> dict[str, Any]:
        """Press an App Home button; the modal it opened."""
        opened, before = len(self.slack.modals), self.front.spawned
        status, _ = await self.interact(
            {
                "type": "block_actions",
                "team": {"id": "T0TEST", "domain": "parley-test"},
                "user": {"id": user, "team_id": "T0TEST"},
                "api_app_id": "A0TEST",
                "trigger_id": f"T-{action_id}",
                "container": {"type": "view", "view_id": "VHOME"},
                "view": {"id": "VHOME", "type": "home"},
                "actions": [
                    {
                        "action_id": action_id,
                        "block_id": "parley_home_actions",
                        "type": "button",
                        "value": action_id,
                        "action_ts": str(time.time()),
                    }
                ],
            }
        )
        assert status == 200
        await self.front.idle(before)
        (modal,) = self.slack.modals[opened:]
        assert modal["trigger_id"] == f"T-{action_id}"
        return dict(modal["view"])

    def rows(self, table: str) -> list[dict[str, Any]]:
        self.services.store.flush()
        return self.services.store.peek(f"select * from {table}")  # noqa: S608


@pytest.fixture
async def rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[GovRig]:
    use_store_target(request)  # a test that takes store_target runs on SQLite and on PostgreSQL
    monkeypatch.setenv("PARLEY_SECRET_KEY", secrets.token_urlsafe(32))
    async with FakeLLMServer() as llm:
        cfg = tmp_path / "p.toml"
        cfg.write_text(
            "".join(
                f'[providers.{p}]\nlabel = "{p}"\nbase_url = "{llm.base_url}"\nkey_env = "K_{p.upper()}"\n'
                f'default_model = "{p}-m"\n[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 2.0\n'
                for p in PROVIDERS
            )
        )
        monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
        for p in PROVIDERS:
            monkeypatch.setenv(f"K_{p.upper()}", "k-" + secrets.token_hex(8))
        token, secret = bot_token(), secrets.token_hex(16)
        async with FakeSlackAPI(bot_token=token) as slack:
            slack.admins.add(ADMIN)
            services = build_services(Settings())
            front = SlackFront(
                services, AsyncWebClient(token=token, base_url=slack.base_url), signing_secret=secret
            )
            await front.start()
            runner = web.AppRunner(front.web_app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            async with aiohttp.ClientSession() as http:
                try:
                    yield GovRig(
                        services, llm, slack, front, f"http://127.0.0.1:{port}/slack/events", secret, http
                    )
                finally:
                    await front.shutdown()
                    await runner.cleanup()
                    await services.aclose()


def chat_requests(rig: GovRig) -> list[Any]:
    return [r for r in rig.llm.requests if r.path.endswith(("/chat/completions", "/messages"))]


def replies(rig: GovRig, channel: str, ts: str, provider: str) -> list[str]:
    return [body_of(m) for m in rig.slack.thread(channel, ts) if f"`{provider}/" in m.text]


def shown(view: dict[str, Any]) -> str:
    """Every text a view shows."""
    out = []
    for b in view["blocks"]:
        if "text" in b:
            out.append(b["text"]["text"])
        out += [
            e.get("text", "") if isinstance(e.get("text"), str) else e.get("text", {}).get("text", "")
            for e in b.get("elements", [])
        ]
    return "\n".join(out)


def action_ids(view: dict[str, Any]) -> set[str]:
    return {e["action_id"] for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]}


# --- policy ---------------------------------------------------------------------------------------------
async def test_a_denied_provider_is_refused_with_its_rule_and_nothing_is_sent(rig: GovRig) -> None:
    done = await rig.answer("/policy", "deny providers:two", user=ADMIN)
    assert "✅ Added rule(s) #1" in done
    text = await rig.refused("/ask", "provider:two Hi", user="U1")
    assert text.startswith("⛔ The provider two is not allowed here") and "⚠️" not in text, text
    assert "rule #1" in text and "deny providers:two" in text and "/policy" in text
    assert chat_requests(rig) == [] and rig.slack.parents() == []
    assert not [c for c in rig.slack.called("users.info") if c.args.get("user") == "U1"]  # not before an ack
    rig.llm.scenarios["one-m"] = Scenario(text="Allowed.")
    parent, _ = await rig.discuss("/ask", "provider:one Hi", user="U1")  # the rest still runs
    assert replies(rig, parent.channel, parent.ts, "one") == ["Allowed."]


async def test_a_channels_default_provider_answers_a_plain_mention_there(rig: GovRig) -> None:
    done = await rig.answer("/policy", "default provider:three", user=ADMIN, channel="C7")
    assert "✅ Defaults set for" in done and "this channel" in done
    for p in PROVIDERS:
        rig.llm.scenarios[f"{p}-m"] = Scenario(text=f"From {p}.")
    ts = await rig.mention("What now?", channel="C7")
    assert replies(rig, "C7", ts, "three") == ["From three."]
    assert [r.model for r in chat_requests(rig)] == ["three-m"]
    ts = await rig.mention("What now?", channel="C8")  # another channel keeps the workspace's default
    assert replies(rig, "C8", ts, "one") == ["From one."]


async def test_a_thread_inherits_its_channels_default(rig: GovRig) -> None:
    await rig.answer("/policy", "default provider:three", user=ADMIN, channel="C7")
    rig.llm.scenarios["three-m"] = Scenario(text="Three again.")
    ts = await rig.mention("First?", channel="C7")
    await rig.mention("Follow-up?", channel="C7", thread_ts=ts)
    assert replies(rig, "C7", ts, "three") == ["Three again.", "Three again."]
    assert {r.model for r in chat_requests(rig)} == {"three-m"}


async def test_a_non_admin_is_refused_admin_commands_and_nothing_changes(rig: GovRig) -> None:
    text = await rig.answer("/budget", "set scope:workspace daily:1", user="U1")
    assert text.startswith("⛔ /budget set is for workspace admins"), text
    text = await rig.answer("/policy", "deny providers:two", user="U1")
    assert text.startswith("⛔ /policy deny is for workspace admins"), text
    assert rig.rows("budgets") == [] and rig.rows("policy_rules") == [] and rig.rows("audit") == []
    assert [c.args["user"] for c in rig.slack.called("users.info")] == ["U1"]  # asked once, then cached
    rig.slack.admins.add("U1")  # promoted in Slack: the answer is cached for five minutes
    text = await rig.answer("/budget", "set scope:workspace daily:1", user="U1")
    assert text.startswith("⛔") and rig.rows("budgets") == []
    rig.front.admins.known.clear()  # ... after which Slack is asked again
    text = await rig.answer("/budget", "set scope:workspace daily:1", user="U1")
    assert text.startswith("✅ Budget set") and len(rig.rows("budgets")) == 1


async def test_without_users_read_nobody_is_an_admin_but_parley_admins(
    rig: GovRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.slack.scopes = "commands,chat:write"  # an app installed before users:read was added
    text = await rig.answer("/budget", "set scope:workspace daily:1", user=ADMIN)
    assert text.startswith("⛔") and "users:read" in caplog.text
    rig.services.governance.env_admins.add(ADMIN)  # PARLEY_ADMINS
    text = await rig.answer("/budget", "set scope:workspace daily:1", user=ADMIN)
    assert text.startswith("✅")


# --- budgets --------------------------------------------------------------------------------------------
async def test_a_hard_stop_is_refused_in_the_ack_with_the_estimate_and_nothing_is_sent(rig: GovRig) -> None:
    await rig.answer("/budget", "set scope:workspace daily:0.001", user=ADMIN)
    text = await rig.refused("/compare", "providers:one,two What should we charge?", user="U1")
    assert text.startswith("⛔ Over budget") and "⚠️" not in text, text
    assert "could cost up to $0.0045" in text and "$1.00" not in text
    assert "resets" in text and "Nothing was sent" in text
    assert rig.llm.requests == []  # not a single request reached the provider
    assert rig.slack.parents() == [] and not rig.slack.called("chat.postMessage")
    assert rig.front.admission.running == 0
    (spend,) = rig.services.store.peek("select count(*) as n from spend")
    assert spend["n"] == 0  # nothing reserved


async def test_a_soft_alert_is_sent_to_admins_by_dm_once(rig: GovRig) -> None:
    await rig.answer("/budget", "set scope:workspace daily:0.1 soft:1", user=ADMIN)  # alert at $0.001
    rig.llm.scenarios["one-m"] = Scenario(text="Cheap.")
    for _ in range(2):  # each ask reserves ~$0.002: both cross the soft threshold
        parent, _ = await rig.discuss("/ask", "provider:one Hi", user="U1")
        assert replies(rig, parent.channel, parent.ts, "one") == ["Cheap."]
    dms = [c for c in rig.slack.called("chat.postMessage") if c.args["channel"] == ADMIN]
    assert len(dms) == 1, dms
    assert "Budget alert" in dms[0].args["text"] and "$0.10" in dms[0].args["text"]


async def test_an_alert_dm_that_fails_is_logged_and_the_discussion_runs(
    rig: GovRig, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.answer("/budget", "set scope:workspace daily:0.1 soft:1", user=ADMIN)
    rig.slack.archived.add(ADMIN)  # every chat.* call to that DM fails
    rig.llm.scenarios["one-m"] = Scenario(text="Still here.")
    parent, _ = await rig.discuss("/ask", "provider:one Hi", user="U1")
    assert replies(rig, parent.channel, parent.ts, "one") == ["Still here."]
    assert [c.error for c in rig.slack.called("chat.postMessage") if c.args["channel"] == ADMIN] == [
        "is_archived"
    ]
    assert "could not DM a budget alert" in caplog.text


# --- own keys -------------------------------------------------------------------------------------------
# Where the key is stored does not depend on how it was given: one way of giving it runs on PostgreSQL too.
@pytest.mark.parametrize(
    "via, store_target",
    [("dm", "sqlite"), ("slash", "sqlite"), ("modal", "sqlite"), ("modal", "postgres")],
    indirect=["store_target"],
)
async def test_a_persons_own_key_is_used_and_never_shown_logged_or_stored(
    rig: GovRig, caplog: pytest.LogCaptureFixture, via: str, store_target: str
) -> None:
    caplog.set_level(logging.DEBUG)  # bolt, slack_sdk and Parley at their most talkative
    key = "sk-own-" + secrets.token_hex(16)
    if via == "dm":
        ts = await rig.dm(f"keys set provider:one {key}")
        (saved,) = rig.slack.thread("D1", ts)
        assert "Saved your one key ending …" + key[-4:] in saved.text
    elif via == "slash":  # only the person sees a slash command and its answer
        saved_text = await rig.answer("/keys", f"set provider:one {key}", user="U1")
        assert "Saved your one key ending …" + key[-4:] in saved_text
    else:
        status, body = await rig.slash("/keys", "set provider:one")
        assert (status, body) == (200, "")
        await rig.front.idle(1)
        (opened,) = rig.slack.modals
        assert opened["trigger_id"] == "1.2.3"  # the slash command's
        view = opened["view"]
        kinds = {b["block_id"]: b["element"]["type"] for b in view["blocks"] if b["type"] == "input"}
        assert kinds["provider"] == "static_select" and kinds["key"] == "plain_text_input"
        provider = next(b for b in view["blocks"] if b.get("block_id") == "provider")["element"]
        assert provider["initial_option"]["value"] == "one"
        offered = {o["value"] for o in provider["options"]}
        assert set(PROVIDERS) <= offered and len(offered) <= 100  # the catalog's providers that take a key
        assert not {s.id for s in rig.services.catalog.providers.values() if not s.key_required} & offered
        answer = await rig.submit(view, {"provider": "one", "key": key, "scope": "user"}, user="U1")
        assert answer["response_action"] == "update"
        assert "Saved your one key ending …" + key[-4:] in shown(answer["view"])
    (row,) = rig.rows("provider_keys")
    assert (row["user"], row["provider"]) == ("U1", "one") and key not in json.dumps(row)

    rig.llm.scenarios["one-m"] = Scenario(text="On your key.")
    parent, _ = await rig.discuss("/ask", "provider:one Hi", user="U1")
    assert replies(rig, parent.channel, parent.ts, "one") == ["On your key."]
    assert rig.llm.requests_for("one-m")[-1].headers["Authorization"] == f"Bearer {key}"
    await rig.discuss("/ask", "provider:one Hi", user="U2", channel="C2")  # someone else: the operator's key
    assert rig.llm.requests_for("one-m")[-1].headers["Authorization"] == f"Bearer {os.environ['K_ONE']}"

    sent = json.dumps([c.args for c in rig.slack.calls]) + json.dumps(rig.slack.responses)
    sent += "\n".join(m.text for m in rig.slack.messages.values())
    assert key not in sent
    assert key not in caplog.text and key[:-4] not in caplog.text
    assert "chat.postMessage" in caplog.text  # the client libraries' request logs were captured
    stored = database_bytes(rig.services.store)
    assert key[-4:].encode() in stored and key.encode() not in stored  # its row is there, sealed


def test_keys_set_opens_the_modal_only_when_no_key_was_typed() -> None:
    from bots.slack.app import _key_form

    assert _key_form("keys", "set provider:one") == {"provider": "one"}
    assert _key_form("keys", "set") == {}
    assert _key_form("parley", "keys set scope:workspace providers:two") == {
        "scope": "workspace",
        "providers": "two",
    }
    assert _key_form("keys", "set provider:one sk-abc123") is None  # a key: core stores it
    assert _key_form("keys", "set provider:one sk:abc") is None  # a key with a colon is not an option
    assert _key_form("keys", "list") is None and _key_form("ask", "set provider:one") is None


async def test_a_key_typed_in_a_channel_is_refused_and_not_stored(
    rig: GovRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk-leak-" + secrets.token_hex(16)
    ts = await rig.mention(f"keys set provider:one {key}", channel="C3")
    (eph,) = rig.slack.ephemeral
    assert eph["user"] == "U1" and eph["thread_ts"] == ts
    assert "rotate the key" in eph["text"] and "did not store it" in eph["text"]
    assert rig.rows("provider_keys") == []
    assert not rig.slack.called("chat.postMessage")  # nothing in the channel
    sent = json.dumps([c.args for c in rig.slack.calls])
    assert key not in sent and key not in caplog.text


async def test_keys_set_without_a_key_says_own_keys_are_off_instead_of_opening_a_modal(
    rig: GovRig,
) -> None:
    rig.services.governance.box.enabled = False
    text = await rig.answer("/keys", "set provider:one")
    assert "PARLEY_SECRET_KEY" in text and rig.slack.modals == []


async def test_a_workspace_key_from_the_modal_is_for_admins_only(rig: GovRig) -> None:
    view = views.key_modal([(p, p) for p in PROVIDERS], provider="two")
    key = "sk-ws-" + secrets.token_hex(16)
    answer = await rig.submit(view, {"provider": "two", "key": key, "scope": "workspace"}, user="U1")
    assert answer["response_action"] == "errors" and "admins" in answer["errors"]["scope"]
    assert key not in json.dumps(answer) and rig.rows("provider_keys") == []
    answer = await rig.submit(view, {"provider": "two", "key": key, "scope": "workspace"}, user=ADMIN)
    assert answer["response_action"] == "update"
    (row,) = rig.rows("provider_keys")
    assert (row["user"], row["provider"]) == ("", "two")


# --- saved panels -----------------------------------------------------------------------------------------
async def test_a_saved_panel_round_trip(rig: GovRig) -> None:
    text = await rig.answer("/panel", "save launch providers:one,two personas:riley", user="U1")
    assert "✅ Saved panel launch" in text
    text = await rig.answer("/panel", "show launch", user="U2")
    assert "launch" in text and "providers:one,two" in text and "personas:riley" in text
    lookups = len(rig.slack.called("users.info"))
    for p in PROVIDERS:
        rig.llm.scenarios[f"{p}-m"] = Scenario(text=f"{p} says hi.")
    parent, _ = await rig.discuss("/compare", "panel:launch Where to launch?", user="U2")
    assert "Riley Engstrom" in parent.text
    assert replies(rig, parent.channel, parent.ts, "one") == ["one says hi."]
    assert replies(rig, parent.channel, parent.ts, "two") == ["two says hi."]
    assert sorted(r.model for r in chat_requests(rig)) == ["one-m", "two-m"]
    assert len(rig.slack.called("users.info")) == lookups  # a discussion never asks Slack who is an admin
    text = await rig.refused("/compare", "panel:lunch Q?", user="U2")
    assert "Unknown panel 'lunch'" in text and "launch" in text


# --- App Home ---------------------------------------------------------------------------------------------
async def _spend_something(rig: GovRig) -> None:
    await rig.answer("/budget", "set scope:workspace daily:5 monthly:50", user=ADMIN)
    await rig.answer("/panel", "save launch providers:one,two", user=ADMIN)
    await rig.answer("/panel", "save pricey providers:three", user=ADMIN)
    await rig.answer("/policy", "deny providers:three", user=ADMIN)
    rig.llm.scenarios["one-m"] = Scenario(text="Spent.")
    await rig.discuss("/ask", "provider:one Hi", user="U1", channel="C1")


async def test_app_home_for_an_admin_shows_spend_budgets_health_panels_and_controls(rig: GovRig) -> None:
    await _spend_something(rig)
    view = await rig.open_home(ADMIN)
    assert view["type"] == "home" and len(view["blocks"]) <= 100
    text = shown(view)
    for title in ("This month's spend", "Budgets", "Policy", "Providers", "Saved panels", "Own keys"):
        assert title in text, title
    assert "This month by user" in text and "`U1`" in text
    assert "This month by channel" in text and "`C1`" in text
    assert "`one/one-m`" in text  # by provider and model
    assert "$5.00" in text and "left" in text and "$50.00" in text  # caps and what remains
    assert "🟢 `one`" in text  # provider health
    assert "`launch`" in text and "`pricey`" in text
    assert action_ids(view) == {views.OPEN_BUDGET, views.OPEN_POLICY, views.OPEN_KEY}
    assert all(len(b["text"]["text"]) <= 3000 for b in view["blocks"] if b["type"] == "section")


async def test_app_home_for_others_shows_their_usage_and_the_panels_they_may_run(rig: GovRig) -> None:
    await _spend_something(rig)
    view = await rig.open_home("U1")
    text = shown(view)
    assert "Your spend" in text and "left" in text
    assert "This month by user" not in text and "`C1`" not in text and "Providers" not in text
    assert "`launch`" in text and "pricey" not in text  # three is denied here
    assert action_ids(view) == set()


async def test_the_messages_tab_publishes_nothing(rig: GovRig) -> None:
    await rig.event(
        {
            "type": "app_home_opened",
            "user": ADMIN,
            "channel": "D0",
            "tab": "messages",
            "event_ts": str(time.time()),
        }
    )
    await rig.open_home("U1")  # handled after the event before it
    assert [c.args["user_id"] for c in rig.slack.called("views.publish")] == ["U1"]


async def test_home_modals_go_through_core_and_republish_the_home(rig: GovRig, store_target: str) -> None:
    await rig.open_home(ADMIN)
    modal = await rig.click(views.OPEN_BUDGET)
    assert modal["callback_id"] == views.BUDGET_SET and len(modal["blocks"]) <= 100

    answer = await rig.submit(modal, {"scope": "workspace"})  # neither cap given
    assert answer["response_action"] == "errors" and "daily:USD" in answer["errors"]["daily"]
    answer = await rig.submit(modal, {"scope": "channel", "daily": "1"})  # a channel cap with no channel
    assert answer["response_action"] == "errors" and set(answer["errors"]) == {"channel"}
    answer = await rig.submit(modal, {"scope": "workspace", "daily": "2"}, user="U1")  # not an admin
    assert answer["response_action"] == "errors" and "admins" in answer["errors"]["scope"]
    assert rig.rows("budgets") == []

    published = len(rig.slack.called("views.publish"))
    answer = await rig.submit(modal, {"scope": "user", "user": "U2", "daily": "2", "soft": "50"})
    assert answer["response_action"] == "update" and "✅ Budget set for" in shown(answer["view"])
    (cap,) = rig.rows("budgets")
    assert (cap["scope"], cap["target"], cap["daily_usd"], cap["soft_pct"]) == ("user", "U2", 2.0, 50)
    assert len(rig.slack.called("views.publish")) == published + 1  # the home shows the change

    modal = await rig.click(views.OPEN_POLICY)
    answer = await rig.submit(modal, {"effect": "deny", "dimension": "providers", "values": "twoo"})
    assert answer["response_action"] == "errors" and "Did you mean 'two'" in answer["errors"]["values"]
    answer = await rig.submit(
        modal,
        {"effect": "deny", "dimension": "providers", "values": "two", "scope": "channel", "channel": "C5"},
    )
    assert answer["response_action"] == "update"
    (rule,) = rig.rows("policy_rules")
    assert (rule["effect"], rule["dimension"], rule["pattern"], rule["channel"]) == (
        "deny",
        "providers",
        "two",
        "C5",
    )
    text = await rig.refused("/ask", "provider:two Hi", channel="C5")
    assert text.startswith("⛔ The provider two is not allowed here")
    answer = await rig.submit(
        modal, {"effect": "allow", "dimension": "personas", "values": "riley, morgan", "users": ["U3"]}
    )
    assert answer["response_action"] == "update"
    assert "allow `personas:riley` — workspace for user:U3" in shown(rig.slack.homes[ADMIN])  # republished

    modal = await rig.click(views.OPEN_KEY)
    assert modal["callback_id"] == views.KEYS_SET


async def test_the_home_stays_within_block_kit_limits_with_many_panels(rig: GovRig) -> None:
    for i in range(120):
        await rig.services.governance.db.save_panel(
            "slack:T0TEST",
            ADMIN,
            f"p{i:03d}-" + "x" * 30,
            {"providers": ["one", "two"], "personas": ["riley"]},
        )
    view = await rig.open_home(ADMIN)  # the fake refuses what Slack refuses (over 100 blocks, long sections)
    assert len(view["blocks"]) <= 100
    assert all(len(b["text"]["text"]) <= 3000 for b in view["blocks"] if b["type"] == "section")
    assert "p000-" in shown(view) and "p119-" in shown(view)


# --- the app Slack knows ---------------------------------------------------------------------------------------
def test_the_manifest_enables_app_home_interactivity_and_the_admin_scope() -> None:
    url = "https://parley.example.com/slack/events"
    m = manifest(socket_mode=False, request_url=url)
    assert m["settings"]["interactivity"] == {"is_enabled": True, "request_url": url}
    assert "app_home_opened" in m["settings"]["event_subscriptions"]["bot_events"]
    assert m["features"]["app_home"]["home_tab_enabled"] is True
    assert "users:read" in m["oauth_config"]["scopes"]["bot"] and "admin" in BOT_SCOPES["users:read"]
    names = {c["command"] for c in m["features"]["slash_commands"]}
    assert {"/budget", "/policy", "/keys", "/panel", "/forget"} <= names
    assert manifest(socket_mode=True)["settings"]["interactivity"] == {"is_enabled": True}

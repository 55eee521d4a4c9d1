"""Governance on Discord end to end: policy, budgets, own keys and saved panels through the
real discord.py client, the loopback fake of Discord's REST API and the fake LLM server
(which counts every request, so "nothing was sent" is checked, not assumed).

The server here is not owned by the people in the tests: a member is an admin only when
Discord says they have Manage Server (the interaction's ``permissions``, or a role's)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord
import pytest

from bots.discord.app import DiscordFront
from bots.discord.commands import MANAGE_GUILD, command_payloads, request_from
from bots.discord.config import DiscordSettings, configure_api, make_client
from bots.discord.ratelimit import ChannelBudgets
from core.commands import COMMANDS
from core.config import Settings
from core.governance.admin import PASTED
from core.services import build_services
from tests.fakes import database_bytes, use_store_target
from tests.fakes.discord_api import FakeDiscordAPI, StoredMessage, iso, snowflake
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.test_discord import ALL_PERMISSIONS, PROVIDERS, Rig, bot_token, user

#: What every member may do here: see, talk, use slash commands, start and write in threads.
MEMBER = discord.Permissions(view_channel=True, send_messages=True, use_application_commands=True,
                             read_message_history=True, create_public_threads=True,
                             send_messages_in_threads=True)
#: An admin is a member who may also manage the server (0x20).
ADMIN = discord.Permissions(MEMBER.value | 0x20)
ENV_KEY = "k-0123456789"


class GovRig(Rig):
    """The rig of tests/test_discord.py in a server owned by someone else, with an admin
    role, a plain member and a second admin who holds Manage Server through a role only."""

    admin_id: int
    role_admin_id: int
    admin_role: int
    owner_id: int

    def member_json(self, uid: int) -> dict[str, Any]:
        roles = [str(self.admin_role)] if uid == self.role_admin_id else []
        perms = ADMIN if uid == self.admin_id else MEMBER
        if uid == self.role_admin_id:
            perms = ADMIN
        return {"user": user(uid, f"u{uid}"), "roles": roles, "joined_at": iso(), "deaf": False, "mute": False,
                "flags": 0, "pending": False, "permissions": str(perms.value)}

    def connect(self) -> None:
        super().connect()
        role = {"position": 1, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        self.parsers["GUILD_UPDATE"]({
            "id": str(self.guild_id), "name": "Parley Test", "owner_id": str(self.owner_id), "roles": [
                {**role, "id": str(self.guild_id), "name": "@everyone", "permissions": str(MEMBER.value),
                 "position": 0},
                {**role, "id": str(self.admin_role), "name": "Moderators", "permissions": str(ADMIN.value)},
            ], "emojis": [], "stickers": [], "features": [],
        })

    def command(self, name: str, sub: str | None = None, options: dict[str, Any] | None = None, *,
                by: int | None = None, channel: dict[str, Any] | None = None, focused: str | None = None) -> str:
        """An INTERACTION_CREATE for ``/name [sub] options`` (an autocomplete when ``focused``)."""
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)
        opts: list[dict[str, Any]] = []
        for k, v in (options or {}).items():
            o: dict[str, Any] = {"name": k, "type": 10 if isinstance(v, float) else 4 if isinstance(v, int) else 3,
                                 "value": v}
            if k == focused:
                o["focused"] = True
            opts.append(o)
        if sub is not None:
            opts = [{"name": sub, "type": 1, "options": opts}]
        ch = channel or self.channel_json()
        self.parsers["INTERACTION_CREATE"]({
            "id": str(snowflake()), "application_id": str(self.api.app_id), "type": 4 if focused else 2,
            "data": {"id": str(snowflake()), "name": name, "type": 1, "options": opts},
            "guild_id": str(self.guild_id), "channel_id": ch["id"], "channel": ch,
            "member": self.member_json(by or self.user_id), "token": token, "version": 1,
            "app_permissions": ALL_PERMISSIONS, "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)}, "context": 0,
            "attachment_size_limit": 8388608,
        })
        return token

    def say(self, text: str, *, by: int | None = None, channel_id: int | None = None) -> int:
        """A message mentioning the bot in a server channel (or thread)."""
        uid = by or self.user_id
        mid, bot, channel = snowflake(), self.api.bot_user(), channel_id or self.channel_id
        member = {k: v for k, v in self.member_json(uid).items() if k not in ("user", "permissions")}
        self.parsers["MESSAGE_CREATE"]({
            "id": str(mid), "channel_id": str(channel), "guild_id": str(self.guild_id), "author": user(uid),
            "member": member, "content": f"<@{bot['id']}> {text}", "timestamp": iso(), "edited_timestamp": None,
            "tts": False, "mention_everyone": False, "mentions": [bot], "mention_roles": [], "attachments": [],
            "embeds": [], "pinned": False, "type": 0, "flags": 0, "components": [],
        })
        self.api.messages[mid] = StoredMessage(mid, channel, user(uid), text)
        return mid

    def direct(self, text: str, *, by: int | None = None) -> int:
        """A DM to the bot (no mention needed; only the sender sees it)."""
        uid = by or self.user_id
        mid, dm = snowflake(), self.api.dms.setdefault(uid, snowflake())
        self.parsers["MESSAGE_CREATE"]({
            "id": str(mid), "channel_id": str(dm), "author": user(uid), "content": text, "timestamp": iso(),
            "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0, "components": [],
        })
        return mid

    def answer(self) -> str:
        """The last thing the person was told privately: an immediate reply or the deferred one, edited."""
        last = self.api.interaction_responses[-1]
        if last["type"] == 4:
            assert last["data"]["flags"] & 64  # ephemeral
            return str(last["data"]["content"])
        assert last["type"] == 5 and last["data"]["flags"] & 64
        return str(self.api.original_edits[-1]["content"])

    def replies(self, channel_id: int | None = None) -> list[str]:
        return [m.content for m in self.api.channel_messages(channel_id or self.channel_id) if m.author.get("bot")]

    def discussions(self) -> list[dict[str, Any]]:
        return list(self.services.store.db.table("discussions").rows)


@pytest.fixture
async def gov(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[GovRig]:
    use_store_target(request)  # a test that takes store_target runs on SQLite and on PostgreSQL
    app_id = snowflake()
    token = bot_token(app_id)
    async with FakeLLMServer() as llm, FakeDiscordAPI(token=token, app_id=app_id) as api:
        cfg = tmp_path / "p.toml"
        cfg.write_text("".join(
            f'[providers.{p}]\nlabel = "{p.title()}"\nbase_url = "{llm.base_url}"\nkey_env = "K_{p.upper()}"\n'
            f'default_model = "{p}-m"\n[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 1.0\n'
            for p in PROVIDERS
        ))
        monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
        for p in PROVIDERS:
            monkeypatch.setenv(f"K_{p.upper()}", ENV_KEY)
        monkeypatch.setenv("PARLEY_SECRET_KEY", secrets.token_urlsafe(32))
        monkeypatch.setenv("DISCORD_TOKEN", token)
        monkeypatch.setenv("DISCORD_API_URL", api.base_url)
        monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # restored after the test
        settings = DiscordSettings()
        configure_api(settings)
        services = build_services(Settings())
        client = make_client(settings, guild_ready_timeout=0.01)
        front = DiscordFront(services, client, budgets=ChannelBudgets())
        guild, channel = snowflake(), snowflake()
        api.add_channel(channel, guild)
        try:
            await front.login(token)
            rig = GovRig(services, llm, api, client, front, guild, channel, snowflake())
            rig.admin_id, rig.role_admin_id, rig.admin_role, rig.owner_id = (snowflake() for _ in range(4))
            front.on_renderer = rig.renderers.append
            rig.connect()
            yield rig
        finally:
            await front.shutdown()
            await client.close()
            await services.aclose()


# --- command payloads ----------------------------------------------------------------------------------


def _chars(o: dict[str, Any]) -> int:
    """What Discord counts against a command's 8,000 characters: names, descriptions, choice values."""
    n = len(o.get("name", "")) + len(o.get("description", ""))
    n += sum(len(c["name"]) + len(str(c["value"])) for c in o.get("choices", []))
    return n + sum(_chars(x) for x in o.get("options", []))


async def test_command_payloads_carry_actions_and_admin_defaults(gov: GovRig) -> None:
    payloads = {p["name"]: p for p in command_payloads()}
    assert {n for n, p in payloads.items() if p.get("default_member_permissions") == MANAGE_GUILD == "32"} == {
        "budget", "policy"}
    assert {n for n, p in payloads.items() if "default_member_permissions" in p} == {"budget", "policy"}

    def subs(name: str) -> dict[str, dict[str, Any]]:
        assert all(o["type"] == 1 for o in payloads[name]["options"])
        return {o["name"]: o for o in payloads[name]["options"]}

    keys, panel = subs("keys"), subs("panel")
    assert list(keys) == ["list", "set", "delete"] and list(panel) == ["list", "save", "show", "delete"]
    key, *rest = keys["set"]["options"]
    assert (key["name"], key["type"], key["required"]) == ("key", 3, True) and "autocomplete" not in key
    assert [o["name"] for o in rest] == ["provider", "scope"]  # one provider: singular
    assert [o["name"] for o in keys["delete"]["options"]] == ["provider", "scope"]
    assert [o["name"] for o in subs("policy")["deny"]["options"]][:1] == ["providers"]
    name = panel["save"]["options"][0]
    assert (name["name"], name["required"]) == ("name", True)
    assert panel["show"]["options"][0].get("autocomplete") is True  # an existing panel
    scope = next(o for o in subs("budget")["set"]["options"] if o["name"] == "scope")
    assert [c["value"] for c in scope["choices"]] == ["workspace", "channel", "user"]
    daily = next(o for o in subs("budget")["set"]["options"] if o["name"] == "daily")
    assert (daily["type"], daily["min_value"]) == (10, 0)
    assert next(o for o in payloads["compare"]["options"] if o["name"] == "panel")["autocomplete"] is True
    for p in payloads.values():
        assert _chars(p) <= 8000 and len(p["options"]) <= 25
        assert all(len(s.get("options", [])) <= 25 for s in p["options"])
    # The one table: every command of COMMANDS is synced, and a changed table syncs again.
    assert await gov.front.start() is True
    assert {c["name"] for c in gov.api.commands["global"]} == set(COMMANDS)
    assert await gov.front.start() is False


def test_sub_command_options_go_through_the_shared_grammar() -> None:
    req = request_from("budget", [{"type": 1, "name": "set", "options": [
        {"name": "scope", "type": 3, "value": "workspace"}, {"name": "daily", "type": 10, "value": 5},
        {"name": "soft", "type": 4, "value": 50}]}])
    assert (req.command, req.action, req.params) == ("budget", "set", {"scope": "workspace", "daily": 5.0,
                                                                       "soft": 50})
    secret = "sk-" + secrets.token_urlsafe(24)
    req = request_from("keys", [{"type": 1, "name": "set", "options": [
        {"name": "key", "type": 3, "value": secret}, {"name": "provider", "type": 3, "value": "one"}]}])
    assert (req.action, req.providers, req.secret) == ("set", ["one"], secret) and secret not in repr(req)
    req = request_from("panel", [{"type": 1, "name": "save", "options": [
        {"name": "name", "type": 3, "value": "Launch"}, {"name": "providers", "type": 3, "value": "one,two"}]}])
    assert (req.action, req.name, req.providers) == ("save", "launch", ["one", "two"])
    req = request_from("compare", [{"name": "prompt", "value": "Q?"}, {"name": "panel", "value": "launch"}])
    assert (req.panel, req.prompt) == ("launch", "Q?")


# --- policy ------------------------------------------------------------------------------------------------


async def test_a_denied_provider_is_refused_with_the_rule_and_nothing_is_sent(gov: GovRig) -> None:
    await gov.run(lambda: gov.command("policy", "deny", {"providers": "two"}, by=gov.admin_id))
    assert "✅ Added rule(s) #" in gov.answer()
    [rule] = gov.services.governance.db.rules(f"discord:{gov.guild_id}")
    await gov.run(lambda: gov.command("compare", None, {"prompt": "Price?", "providers": "one,two"}))
    refusal = gov.answer()
    assert gov.api.interaction_responses[-1]["type"] == 4  # refused before the acknowledgement
    assert "⛔ The provider two is not allowed here" in refusal and f"rule #{rule.id}" in refusal
    assert not gov.llm.requests and not gov.thread_ids() and not gov.discussions()
    # A mention is refused the same way, in a reply that names the rule.
    await gov.run(lambda: gov.say("ask provider:two Hello?"))
    assert f"rule #{rule.id}" in gov.replies()[-1]
    assert not gov.llm.requests and not gov.thread_ids()


async def test_threads_inherit_their_channel_policy(gov: GovRig) -> None:
    gov.llm.default = Scenario(text="Fine.")
    await gov.run(lambda: gov.command("ask", None, {"prompt": "First?", "provider": "two"}))
    [thread_id] = gov.thread_ids()
    await gov.run(lambda: gov.command("policy", "deny", {"providers": "two", "scope": "channel"},
                                      by=gov.admin_id))
    assert "✅" in gov.answer()
    sent = len(gov.llm.requests)
    thread = gov.api.threads[thread_id]
    assert thread["parent_id"] == str(gov.channel_id)
    await gov.run(lambda: gov.command("ask", None, {"prompt": "Again?", "provider": "two"}, channel=thread))
    assert f"channel {gov.channel_id}" in gov.answer() and "not allowed here" in gov.answer()
    await gov.run(lambda: gov.say("ask provider:two In the thread?", channel_id=thread_id))  # not cached
    assert "not allowed here" in gov.replies(thread_id)[-1]
    assert len(gov.llm.requests) == sent
    # Elsewhere in the server the channel's rule does not apply.
    other = snowflake()
    gov.api.add_channel(other, gov.guild_id)
    await gov.run(lambda: gov.command("ask", None, {"prompt": "Elsewhere?", "provider": "two"},
                                      channel=gov.channel_json(other)))
    assert len(gov.llm.requests) == sent + 1


async def test_rules_for_roles_match_a_members_role_names_and_ids(gov: GovRig) -> None:
    gov.llm.default = Scenario(text="Fine.")
    await gov.run(lambda: gov.command("policy", "deny", {"providers": "one", "roles": "Moderators"},
                                      by=gov.admin_id))
    await gov.run(lambda: gov.command("policy", "deny", {"providers": "two", "roles": str(gov.admin_role)},
                                      by=gov.admin_id))
    for provider in ("one", "two"):
        await gov.run(lambda p=provider: gov.command("ask", None, {"prompt": "Hi?", "provider": p},
                                                     by=gov.role_admin_id))
        assert f"The provider {provider} is not allowed here" in gov.answer()
        await gov.run(lambda p=provider: gov.say(f"ask provider:{p} Hi?", by=gov.role_admin_id))
        assert f"The provider {provider} is not allowed here" in gov.replies()[-1]
    assert not gov.llm.requests
    await gov.run(lambda: gov.command("ask", None, {"prompt": "Hi?", "provider": "one"}))  # not a moderator
    assert [r.model for r in gov.llm.requests] == ["one-m"]


# --- budgets -----------------------------------------------------------------------------------------------


async def test_budget_set_needs_manage_server(gov: GovRig) -> None:
    workspace = f"discord:{gov.guild_id}"
    await gov.run(lambda: gov.command("budget", "set", {"daily": 5.0}))  # a plain member
    assert gov.answer().startswith("⛔ /budget set is for workspace admins")
    await gov.run(lambda: gov.say("budget set daily:5"))
    assert gov.replies()[-1].startswith("⛔ /budget set is for workspace admins")
    assert gov.services.governance.db.caps(workspace) == []
    # The interaction says this member may manage the server (0x20): allowed.
    await gov.run(lambda: gov.command("budget", "set", {"scope": "workspace", "daily": 5.0}, by=gov.admin_id))
    assert "✅ Budget set for **the workspace**" in gov.answer()
    [cap] = gov.services.governance.db.caps(workspace)
    assert (cap.scope, cap.daily, cap.updated_by) == ("workspace", 5.0, str(gov.admin_id))
    # A mention from a member whose role grants Manage Server: allowed too.
    await gov.run(lambda: gov.say("budget set monthly:50", by=gov.role_admin_id))
    assert "✅ Budget set" in gov.replies()[-1]
    [cap] = gov.services.governance.db.caps(workspace)
    assert (cap.daily, cap.monthly) == (5.0, 50.0)


async def test_a_hard_stop_refuses_before_anything_is_sent(gov: GovRig) -> None:
    await gov.run(lambda: gov.command("budget", "set", {"scope": "workspace", "daily": 0.001}, by=gov.admin_id))
    assert "✅" in gov.answer()
    await gov.run(lambda: gov.command("compare", None, {"prompt": "Price?", "providers": "one,two"}))
    refusal = gov.answer()
    assert gov.api.interaction_responses[-1]["type"] == 4  # ephemeral, not deferred
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert refusal.startswith("⛔ Over budget: this /compare could cost up to $0.00")
    assert "daily cap of $0.00" in refusal
    assert f"resets at 00:00 UTC on {tomorrow}" in refusal and "Nothing was sent" in refusal
    assert not gov.llm.requests and not gov.thread_ids() and not gov.discussions()
    assert gov.front.admission.running == 0  # the refused request gave its place back


async def test_a_discussion_that_never_starts_gives_its_reservation_back(gov: GovRig) -> None:
    # Room for one /compare's worst case (about $0.0021), not two.
    await gov.run(lambda: gov.command("budget", "set", {"daily": 0.003}, by=gov.admin_id))
    gov.api.forbid("POST", rf"^/channels/{gov.channel_id}/messages$", times=1)  # the parent message fails
    await gov.run(lambda: gov.command("compare", None, {"prompt": "Price?", "providers": "one,two"}))
    assert "**Send Messages**" in gov.answer() and not gov.llm.requests
    gov.llm.default = Scenario(text="Now it runs.")
    await gov.run(lambda: gov.command("compare", None, {"prompt": "Price?", "providers": "one,two"}))
    assert "Answering in" in gov.answer()  # admitted: the first reservation was released
    assert len(gov.llm.requests) == 2


async def test_a_soft_threshold_is_told_to_the_admins_by_dm(gov: GovRig) -> None:
    gov.llm.default = Scenario(text="Cheap answer.")
    # /ask's worst case here is about $0.001 (1,024 output tokens at $1/M): past 5% of $0.01, under the cap.
    await gov.run(lambda: gov.command("budget", "set", {"daily": 0.01, "soft": 5}, by=gov.admin_id))
    assert "✅" in gov.answer()
    await gov.run(lambda: gov.command("ask", None, {"prompt": "Cheap?", "provider": "one"}))
    [thread_id] = gov.thread_ids()
    assert gov.turn_messages(thread_id)
    await gov.front.idle()
    [alert] = gov.api.dm_messages(gov.admin_id)
    assert alert.content.startswith("⚠️ Budget alert") and "soft threshold 5%" in alert.content
    assert not gov.api.dm_messages(gov.user_id)  # the person who asked is not an admin
    await gov.run(lambda: gov.command("ask", None, {"prompt": "Again?", "provider": "one"}))
    await gov.front.idle()
    assert len(gov.api.dm_messages(gov.admin_id)) == 1  # once per period


# --- saved panels ------------------------------------------------------------------------------------------


async def test_a_saved_panel_round_trip(gov: GovRig) -> None:
    gov.llm.scenarios["one-m"] = Scenario(text="One says Tuesday.")
    gov.llm.scenarios["two-m"] = Scenario(text="Two says Thursday.")
    await gov.run(lambda: gov.command("panel", "save", {"name": "launch-review", "personas": "riley",
                                                        "providers": "one,two"}))
    assert "✅ Saved panel launch-review" in gov.answer()
    await gov.run(lambda: gov.command("compare", None, {"prompt": "", "panel": "la"}, focused="panel"))
    resp = gov.api.interaction_responses[-1]
    assert resp["type"] == 8 and [c["value"] for c in resp["data"]["choices"]] == ["launch-review"]
    assert "providers:one,two" in resp["data"]["choices"][0]["name"]
    await gov.run(lambda: gov.command("panel", "show", {"name": ""}, focused="name"))
    assert [c["value"] for c in gov.api.interaction_responses[-1]["data"]["choices"]] == ["launch-review"]
    await gov.run(lambda: gov.command("panel", "list"))
    assert "`launch-review`" in gov.answer()
    await gov.run(lambda: gov.command("compare", None, {"prompt": "When do we launch?", "panel": "launch-review"}))
    [thread_id] = gov.thread_ids()
    parent = gov.api.messages[thread_id]
    assert "Riley Engstrom" in parent.content and "/compare" in parent.content
    bodies = sorted(m.content.split("\n", 1)[1] for m in gov.turn_messages(thread_id))
    assert bodies == ["One says Tuesday.", "Two says Thursday."]
    assert sorted(r.model for r in gov.llm.requests) == ["one-m", "two-m"]
    # Another server does not see it.
    other = f"discord:{snowflake()}"
    from bots.discord.commands import complete

    assert complete(gov.services, "compare", [{"name": "panel", "value": "", "focused": True}],
                    workspace=other) == []


# --- own keys ----------------------------------------------------------------------------------------------


def bearer(headers: dict[str, str]) -> str:
    return next(v for k, v in headers.items() if k.lower() == "authorization")


async def test_keys_typed_in_public_are_refused_and_private_ones_are_used(
    gov: GovRig, caplog: pytest.LogCaptureFixture, store_target: str
) -> None:
    caplog.set_level(logging.DEBUG)
    leaked = "sk-" + secrets.token_hex(24)
    await gov.run(lambda: gov.say(f"keys set provider:one {leaked}"))
    told = gov.replies()[-1]
    assert told == PASTED and "rotate" in told
    assert list(gov.services.store.db.table("provider_keys").rows) == []
    # Given privately (a /keys set interaction: only the person sees it), it is stored, sealed.
    mine = "sk-" + secrets.token_hex(24)
    await gov.run(lambda: gov.command("keys", "set", {"key": mine, "provider": "one"}))
    assert gov.answer().startswith(f"✅ Saved your one key ending …{mine[-4:]}, encrypted")
    [row] = gov.services.store.db.table("provider_keys").rows
    assert (row["workspace"], row["user"], row["provider"]) == (f"discord:{gov.guild_id}", str(gov.user_id), "one")
    assert mine not in json.dumps(row)
    # ... and used: the provider sees it as the bearer key, for this person only.
    gov.llm.default = Scenario(text="On your key.")
    await gov.run(lambda: gov.command("ask", None, {"prompt": "Whose key?", "provider": "one"}))
    assert bearer(gov.llm.requests[-1].headers) == f"Bearer {mine}"
    await gov.run(lambda: gov.command("ask", None, {"prompt": "And mine?", "provider": "one"}, by=gov.admin_id))
    assert bearer(gov.llm.requests[-1].headers) == f"Bearer {ENV_KEY}"
    # A DM is private too: a key given there is kept (for that person's DMs with the bot).
    dm_key = "sk-" + secrets.token_hex(24)
    await gov.run(lambda: gov.direct(f"keys set provider:two {dm_key}"))
    assert gov.api.dm_messages(gov.user_id)[-1].content.startswith("✅ Saved your two key")
    assert {r["workspace"] for r in gov.services.store.db.table("provider_keys").rows} == {
        f"discord:{gov.guild_id}", f"discord:dm:{gov.user_id}"}
    # discord.py logs each gateway event whole at DEBUG, before Parley reads it: not those with typed text.
    event = {"t": "INTERACTION_CREATE", "op": 0, "d": {"data": {"options": [{"value": mine}]}}}
    logging.getLogger("discord.gateway").debug("For Shard ID %s: WebSocket Event: %s", None, event)
    logging.getLogger("discord.gateway").debug("For Shard ID %s: WebSocket Event: %s", None, {"t": "READY"})
    assert "'READY'" in caplog.text
    # No key appears anywhere: not in what the bot wrote, not in the logs, not in the database.
    gov.services.store.db.conn.commit()
    shown = "\n".join(m.content for m in gov.api.messages.values() if m.author.get("bot"))
    shown += json.dumps([gov.api.interaction_responses, gov.api.original_edits, gov.api.followups])
    stored = database_bytes(gov.services.store)
    assert b"And mine?" in stored  # the discussions are there to be searched
    for key in (leaked, mine, dm_key):
        assert key not in shown and key not in caplog.text and key.encode() not in stored

"""Actions under Parley's Discord messages end to end: buttons, menus, polls, the stage line,
follow-ups without a mention and the user install, through the real discord.py client, the
loopback fake of Discord's REST API (component interactions and poll votes fed as gateway
payloads) and the fake LLM server (which counts requests, so "nothing ran" is checked)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from bots.discord.app import DiscordFront
from bots.discord.commands import command_payloads
from bots.discord.components import validate, validate_poll
from bots.discord.config import DiscordSettings, configure_api, intents, make_client
from bots.discord.format import CONTENT_LIMIT
from bots.discord.ratelimit import ChannelBudgets
from core.actions import Action, Actions
from core.config import Settings
from core.services import build_services
from tests.fakes import vendor_errors as ve
from tests.fakes.discord_api import FakeDiscordAPI, StoredMessage, iso, snowflake
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.test_discord import ALL_PERMISSIONS, PROVIDERS, bot_token, user
from tests.test_discord_governance import ENV_KEY, GovRig

# --- the rig ---------------------------------------------------------------------------------------------


class ActRig(GovRig):
    token: str
    #: A server the bot is not a member of, and a channel there: where Parley installed to the person
    #: (a user install) can answer only through the interaction.
    away_guild: int
    away_channel: dict[str, Any]

    def interaction_json(self, token: str, *, by: int, away: bool) -> dict[str, Any]:
        """What every INTERACTION_CREATE here carries: in the rig's server, or (``away``) a user install elsewhere."""
        if away:
            where = {"guild_id": str(self.away_guild), "channel_id": self.away_channel["id"],
                     "channel": self.away_channel, "authorizing_integration_owners": {"1": str(by)},
                     "app_permissions": str(discord.Permissions(send_messages=True).value)}
        else:
            where = {"guild_id": str(self.guild_id), "authorizing_integration_owners": {"0": str(self.guild_id)},
                     "app_permissions": ALL_PERMISSIONS, "guild_locale": "en-US"}
        return {"id": str(snowflake()), "application_id": str(self.api.app_id), "member": self.member_json(by),
                "token": token, "version": 1, "locale": "en-US", "entitlements": [], "context": 0,
                "attachment_size_limit": 8388608, **where}

    def installed(self, name: str, options: dict[str, Any]) -> str:
        """``/name options`` in the server the bot is not in (a user install); returns the token."""
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)
        self.parsers["INTERACTION_CREATE"]({
            **self.interaction_json(token, by=self.user_id, away=True), "type": 2,
            "data": {"id": str(snowflake()), "name": name, "type": 1,
                     "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()]},
        })
        return token

    def buttons(self, m: StoredMessage) -> dict[str, str]:
        """label (or emoji) → custom_id of a message's buttons, after checking Discord's limits."""
        validate(m.components)
        return {c.get("label") or c["emoji"]["name"]: c["custom_id"] for r in m.components for c in r["components"]
                if c["type"] == 2}

    def thread(self) -> int:
        """The first thread Parley started (clicks go there unless told otherwise)."""
        thread_id = self.thread_ids()[0]
        if self.client.get_channel(thread_id) is None:
            self.thread_created(thread_id)
        return thread_id

    def click(self, custom_id: str, *, by: int | None = None, values: list[str] | None = None,
              message: StoredMessage | None = None, channel_id: int | None = None, away: bool = False) -> str:
        """An INTERACTION_CREATE of type 3: a button (or, with ``values``, a select) clicked; ``away``:
        on a message of a user-install discussion, in the server the bot is not in."""
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)
        channel_id = int(self.away_channel["id"]) if away else channel_id or self.thread()
        msg = message or StoredMessage(snowflake(), channel_id, self.api.bot_user(), "", 0)
        # Until a response makes a message of its own, the interaction's original is the message
        # its component is on (an update, type 7, edits that one).
        self.api.webhook[token] = [msg]
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": 3 if values else 2}
        if values:
            data["values"] = values
        where = {} if away else {"channel_id": str(channel_id), "channel": self.api.channel_json(channel_id)}
        self.parsers["INTERACTION_CREATE"]({
            **self.interaction_json(token, by=by or self.user_id, away=away), **where, "type": 3, "data": data,
            "message": {**self.api.message_json(msg), "channel_id": str(channel_id)},
        })
        return token

    def vote(self, message: StoredMessage, answer_id: int, *, by: int, added: bool = True) -> None:
        self.parsers["MESSAGE_POLL_VOTE_ADD" if added else "MESSAGE_POLL_VOTE_REMOVE"]({
            "user_id": str(by), "channel_id": str(message.channel_id), "message_id": str(message.id),
            "guild_id": str(self.guild_id), "answer_id": answer_id,
        })

    def told(self, token: str) -> str:
        """What the clicker was told privately, however it was answered."""
        for r in reversed(self.api.interaction_responses):
            if r["token"] == token and r["type"] in (4, 7):
                assert r["type"] == 7 or r["data"]["flags"] & 64
                return str(r["data"]["content"])
        [original] = [m for m in self.api.webhook[token][:1] if m is not None]
        return original.content

    def menu(self, token: str) -> tuple[str, list[str]]:
        """The private menu a click opened: its select's custom_id and option values."""
        first = next(r for r in self.api.interaction_responses if r["token"] == token)
        assert first["type"] == 5 and first["data"]["flags"] & 64  # ephemeral
        m = self.api.webhook[token][0]
        assert m is not None
        validate(m.components)
        [row] = m.components
        [sel] = row["components"]
        return sel["custom_id"], [o["value"] for o in sel["options"]]

    def summary(self, thread_id: int) -> StoredMessage:
        return self.api.channel_messages(thread_id)[-1]

    def discussions(self) -> list[dict[str, Any]]:
        return list(self.services.store.db.table("discussions").rows)

    async def restart(self, **env: str) -> None:
        """A new process: a new client, front-end and services on the same database."""
        await self.front.shutdown()
        await self.client.close()
        await self.services.aclose()
        settings = DiscordSettings()
        self.services = build_services(Settings())
        self.client = make_client(settings, guild_ready_timeout=0.01)
        self.front = DiscordFront(self.services, self.client, budgets=ChannelBudgets())
        self.front.on_renderer = self.renderers.append
        await self.front.login(self.token)
        self.connect()


@pytest.fixture
async def act(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ActRig]:
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
        rig = ActRig(services, llm, api, client, front, guild, channel, snowflake())
        rig.token = token
        rig.away_guild = snowflake()
        rig.away_channel = {"id": str(snowflake()), "type": 0, "guild_id": str(rig.away_guild), "name": "general",
                            "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None, "flags": 0}
        rig.admin_id, rig.role_admin_id, rig.admin_role, rig.owner_id = (snowflake() for _ in range(4))
        try:
            await front.login(token)
            front.on_renderer = rig.renderers.append
            rig.connect()
            yield rig
        finally:
            await rig.front.shutdown()
            await rig.client.close()
            await rig.services.aclose()


async def compare(act: ActRig, providers: str = "one,two") -> int:
    act.llm.scenarios["one-m"] = Scenario(text="One says Tuesday.")
    act.llm.scenarios["two-m"] = Scenario(text="Two says Thursday.")
    act.llm.scenarios["three-m"] = Scenario(text="Three says Friday.")
    await act.run(lambda: act.command("compare", None, {"prompt": "When do we launch?", "providers": providers}))
    return act.thread()


async def fire(act: ActRig, fn: Any) -> Any:
    """Feed a gateway payload and wait until the request it started has finished."""
    before = act.front.spawned
    out = fn()
    await act.front.idle(before + 1)
    return out


async def ignored(act: ActRig, fn: Any) -> None:
    """Feed a gateway payload that must start nothing: once the client dispatched it, nothing was taken on."""
    before = act.front.spawned
    fn()
    for _ in range(3):  # the client dispatches an event in a task of its own
        await asyncio.sleep(0)
    assert act.front.spawned == before


def answers(act: ActRig, thread_id: int) -> list[StoredMessage]:
    return act.turn_messages(thread_id)


# --- under an answer -------------------------------------------------------------------------------------


async def test_feedback_buttons_confirm_privately_and_are_changeable(act: ActRig) -> None:
    act.llm.scenarios["one-m"] = Scenario(text="Launch on Tuesday.")
    await act.run(lambda: act.command("ask", None, {"prompt": "When?", "provider": "one"}))
    thread_id = act.thread()
    [turn] = answers(act, thread_id)
    buttons = act.buttons(turn)
    assert list(buttons) == ["👍", "👎", "Ask again with…"]  # no Continue: the answer was not cut
    turn_id = Action.decode(buttons["👍"]).target  # type: ignore[union-attr]
    await act.run(lambda: act.click(buttons["👍"]))
    assert "👍" in act.told(act.api.interaction_responses[-1]["token"])
    rows = act.services.store.peek("select user, value from feedback where turn_id = ?", [turn_id])
    assert rows == [{"user": str(act.user_id), "value": 1}]
    token = ""

    def again() -> None:
        nonlocal token
        token = act.click(buttons["👍"])

    await act.run(again)  # a double click: said once, done once
    assert act.told(token) == "✅ Already done."
    await act.run(lambda: act.click(buttons["👎"]))  # changed
    rows = act.services.store.peek("select user, value from feedback where turn_id = ?", [turn_id])
    assert rows == [{"user": str(act.user_id), "value": -1}]


async def test_a_cut_answer_can_be_continued_in_the_same_thread(act: ActRig) -> None:
    act.llm.scenarios["one-m"] = Scenario(text="The plan has three steps: first", finish_reason="length")
    await act.run(lambda: act.command("ask", None, {"prompt": "The plan?", "provider": "one"}))
    thread_id = act.thread()
    [turn] = answers(act, thread_id)
    buttons = act.buttons(turn)
    assert "Continue" in buttons
    act.llm.scenarios["one-m"] = Scenario(text="second, third.")
    await act.run(lambda: act.click(buttons["Continue"]))
    assert act.thread_ids() == [thread_id]  # the same thread, no new one
    texts = [m.content for m in answers(act, thread_id)]
    assert len(texts) == 2 and texts[1].endswith("second, third.")
    sent = act.llm.requests_for("one-m")[-1].body["messages"]
    assert any("The plan has three steps: first" in str(m["content"]) for m in sent)  # it goes on from the kept text


async def test_ask_again_menu_lists_only_what_policy_allows_this_person(act: ActRig) -> None:
    await act.run(lambda: act.command("policy", "deny", {"providers": "three", "users": f"<@{act.user_id}>"},
                                      by=act.admin_id))
    act.llm.scenarios["one-m"] = Scenario(text="One says Tuesday.")
    await act.run(lambda: act.command("ask", None, {"prompt": "When?", "provider": "one"}))
    thread_id = act.thread()
    [turn] = answers(act, thread_id)
    again = act.buttons(turn)["Ask again with…"]
    mine = await fire(act, lambda: act.click(again))
    select_id, values = act.menu(mine)
    assert "provider:two" in values and "provider:three" not in values and "provider:one" not in values
    assert any(v.startswith("persona:") for v in values)
    theirs = await fire(act, lambda: act.click(again, by=act.admin_id))  # built when clicked, for the clicker
    assert "provider:three" in act.menu(theirs)[1]
    before = len(act.discussions())
    act.llm.scenarios["two-m"] = Scenario(text="Two says Thursday.")
    chosen = await fire(act, lambda: act.click(select_id, values=["provider:two"], message=act.api.webhook[mine][0]))
    update = next(r for r in act.api.interaction_responses if r["token"] == chosen)
    assert update["type"] == 7 and update["data"]["components"] == []  # the menu is replaced
    assert act.thread_ids() == [thread_id] and len(act.discussions()) == before + 1
    assert answers(act, thread_id)[-1].content.endswith("Two says Thursday.")
    # the chosen value is refused for someone policy does not allow, whatever the client sends
    denied = await fire(act, lambda: act.click(select_id, values=["provider:three"], message=act.api.webhook[mine][0]))
    assert "⛔" in act.told(denied) and len(act.discussions()) == before + 1
    assert not act.llm.requests_for("three-m")


# --- under a summary -------------------------------------------------------------------------------------


async def test_compare_summary_has_a_poll_whose_votes_are_changeable(act: ActRig) -> None:
    thread_id = await compare(act)
    summary = act.summary(thread_id)
    assert list(act.buttons(summary)) == ["Consensus on these", "Compare with…"]
    assert summary.poll is not None
    validate_poll({**summary.poll, "duration": 24})
    labels = [a["poll_media"]["text"] for a in summary.poll["answers"]]
    assert sorted(labels) == ["one/one-m", "two/two-m"]
    did = act.discussions()[-1]["id"]
    turns = {t["provider"]: t["id"] for t in act.services.store.turns(did) if t["stage"] == "answer"}
    one = labels.index("one/one-m") + 1
    two = labels.index("two/two-m") + 1

    async def vote(answer_id: int, by: int, added: bool = True) -> None:
        await act.run(lambda: act.vote(summary, answer_id, by=by, added=added))

    def votes() -> dict[str, str]:
        rows = act.services.store.peek("select user, turn_id from votes where discussion_id = ?", [did])
        return {r["user"]: r["turn_id"] for r in rows}

    await vote(one, act.user_id)
    await vote(two, act.admin_id)
    assert votes() == {str(act.user_id): turns["one"], str(act.admin_id): turns["two"]}
    await vote(one, act.user_id, added=False)  # changed: Discord removes the old vote, adds the new
    await vote(two, act.user_id)
    assert votes() == {str(act.user_id): turns["two"], str(act.admin_id): turns["two"]}
    await vote(two, act.admin_id, added=False)
    assert votes() == {str(act.user_id): turns["two"]}


async def test_consensus_on_these_after_a_restart_and_a_double_click_runs_once(act: ActRig) -> None:
    thread_id = await compare(act)
    consensus = act.buttons(act.summary(thread_id))["Consensus on these"]
    await act.restart()  # a new process acts on a button of the old one
    act.llm.default = Scenario(text="Answer. RANKING: A > B\nREVISED ANSWER: revised")
    before = len(act.discussions())
    spawned = act.front.spawned
    first = act.click(consensus, channel_id=thread_id)
    second = act.click(consensus, channel_id=thread_id)
    await act.front.idle(spawned + 2)
    assert len(act.discussions()) == before + 1
    assert act.discussions()[-1]["mode"] == "consensus"
    assert "Already on it" in act.told(second) or "Already on it" in act.told(first)
    assert act.thread_ids() == [thread_id]
    # its stage line was posted in the same thread and ends all ✅
    line = next(m for m in act.api.channel_messages(thread_id) if m.content.startswith(("⏳", "✅ Stage")))
    assert line.content.count("✅") == 3 and line.edits == 3


async def test_compare_with_and_refusals_change_nothing(act: ActRig) -> None:
    thread_id = await compare(act)
    compare_with = act.buttons(act.summary(thread_id))["Compare with…"]
    # someone the policy does not allow to run a compare: refused privately, nothing runs
    await act.run(lambda: act.command("policy", "deny", {"commands": "compare", "users": f"<@{act.role_admin_id}>"},
                                      by=act.admin_id))
    before, sent = len(act.discussions()), len(act.llm.requests)
    token = await fire(act, lambda: act.click(Action.decode(compare_with).with_choice("provider:three").encode(),  # type: ignore[union-attr]
                      by=act.role_admin_id))
    assert act.told(token).startswith("⛔") and len(act.discussions()) == before and len(act.llm.requests) == sent
    # a provider paused after an auth failure says so, and is not asked
    act.llm.scenarios["three-m"] = Scenario(http_error=ve.openai_invalid_key())
    await act.run(lambda: act.command("ask", None, {"prompt": "Hi?", "provider": "three"}))
    three = len(act.llm.requests_for("three-m"))
    menu = await fire(act, lambda: act.click(compare_with))
    select_id, values = act.menu(menu)
    assert "provider:three" in values and not {"provider:one", "provider:two"} & set(values)
    chosen = await fire(act, lambda: act.click(select_id, values=["provider:three"], message=act.api.webhook[menu][0]))
    assert "paused" in act.told(chosen).lower() and len(act.llm.requests_for("three-m")) == three
    # a budget that is spent says so
    await act.run(lambda: act.command("budget", "set", {"scope": "workspace", "daily": 0.000001}, by=act.admin_id))
    consensus = await fire(act, lambda: act.click(act.buttons(act.summary(thread_id))["Consensus on these"]))
    assert "budget" in act.told(consensus).lower()
    assert len(act.discussions()) == before + 1  # only the /ask above


# --- follow-ups without a mention ------------------------------------------------------------------------


def plain(act: ActRig, text: str, channel_id: int) -> None:
    """A message in a thread that does not mention the bot."""
    mid = snowflake()
    member = {k: v for k, v in act.member_json(act.user_id).items() if k not in ("user", "permissions")}
    act.parsers["MESSAGE_CREATE"]({
        "id": str(mid), "channel_id": str(channel_id), "guild_id": str(act.guild_id), "author": user(act.user_id),
        "member": member, "content": text, "timestamp": iso(), "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
        "pinned": False, "type": 0, "flags": 0, "components": [],
    })


@pytest.mark.parametrize("content_intent", [False, True])
async def test_follow_ups_without_a_mention_need_the_intent_and_the_setting(
    act: ActRig, monkeypatch: pytest.MonkeyPatch, content_intent: bool
) -> None:
    if content_intent:
        monkeypatch.setenv("PARLEY_DISCORD_MESSAGE_CONTENT", "1")
        await act.restart()
    assert act.client.intents.message_content is content_intent
    act.llm.scenarios["one-m"] = Scenario(echo=True)
    await act.run(lambda: act.command("ask", None, {"prompt": "First question?", "provider": "one"}))
    thread_id = act.thread()
    await act.run(lambda: act.command("policy", "followups", {"name": "on"}, by=act.admin_id))
    if content_intent:
        await fire(act, lambda: plain(act, "And the second?", thread_id))
    else:
        await ignored(act, lambda: plain(act, "And the second?", thread_id))
    assert len(answers(act, thread_id)) == (2 if content_intent else 1)
    await act.run(lambda: act.command("policy", "followups", {"name": "off"}, by=act.admin_id))
    await ignored(act, lambda: plain(act, "And a third?", thread_id))
    assert len(answers(act, thread_id)) == (2 if content_intent else 1)  # off: ignored either way


# --- the user install ------------------------------------------------------------------------------------


async def test_a_user_install_discussion_fits_in_five_follow_ups(act: ActRig) -> None:
    act.api.followup_limit = 5  # Discord's, for a user-installed app
    act.llm.default = Scenario(text="Short answer. RANKING: A > B > C\nREVISED ANSWER: revised")
    token = await fire(act, lambda: act.installed("consensus", {"prompt": "Ship it?", "providers": "one,two,three"}))
    first = next(r for r in act.api.interaction_responses if r["token"] == token)
    assert first["type"] == 5 and not int((first.get("data") or {}).get("flags") or 0) & 64  # public, like a thread
    assert not act.api.calls_to("POST", "/channels/")  # nothing posted in a channel it cannot write in
    shown = act.api.interaction_messages(token)
    assert len(shown) == 6 and len([f for f in act.api.followups if f["token"] == token]) == 5
    head = shown[0].content
    assert "/consensus" in head and head.endswith("✅ Stage 3 · Moderator synthesis")
    text = "\n".join(m.content for m in shown[1:])
    assert text.count("Short answer.") == 7  # 3 answers, 3 reviews, the synthesis: none lost
    assert "**Total**" in shown[-1].content
    assert "Compare with…" in act.buttons(shown[-1])  # the summary's actions keep their place
    assert all(len(m.content) <= CONTENT_LIMIT for m in shown)
    for m in shown:
        validate(m.components)


async def installed_compare(act: ActRig) -> list[StoredMessage]:
    """A /compare of one and two in the server the bot is not in; what it shows."""
    act.api.followup_limit = 5
    act.llm.scenarios["one-m"] = Scenario(text="One says Tuesday.")
    act.llm.scenarios["two-m"] = Scenario(text="Two says Thursday.")
    act.llm.scenarios["three-m"] = Scenario(text="Three says Friday.")
    token = await fire(act, lambda: act.installed("compare", {"prompt": "When do we launch?", "providers": "one,two"}))
    shown = act.api.interaction_messages(token)
    assert len(shown) == 4 and "**Total**" in shown[-1].content  # the head, two answers, the summary
    return shown


def through(act: ActRig, token: str, clicked: StoredMessage) -> list[StoredMessage]:
    """What a discussion started by a click shows through that click's interaction (other than
    the clicked message), after checking that it stayed there: public, nothing posted in a channel, within a user
    install's 5 follow-ups."""
    assert not act.api.calls_to("POST", "/channels/")
    shown = [m for m in act.api.interaction_messages(token) if m is not clicked]
    assert shown and shown[0].content.startswith(f"<@{act.user_id}> asked")  # the head, in the original
    assert not any(m.flags & 64 for m in shown)  # everyone who saw the question sees the answers
    assert len([f for f in act.api.followups if f["token"] == token]) <= 5
    for m in shown:
        validate(m.components)
    return shown


async def test_a_user_install_answers_buttons_act_through_the_click(act: ActRig) -> None:
    shown = await installed_compare(act)
    one = next(m for m in shown if "One says Tuesday." in m.content)
    buttons = act.buttons(one)
    # 👍 is recorded, and said privately
    up = await fire(act, lambda: act.click(buttons["👍"], message=one, away=True))
    assert "👍" in act.told(up)
    turn_id = Action.decode(buttons["👍"]).target  # type: ignore[union-attr]
    rows = act.services.store.peek("select user, value from feedback where turn_id = ?", [turn_id])
    assert rows == [{"user": str(act.user_id), "value": 1}]
    for thumb, value in (("👎", -1), ("👍", 1)):  # changed, and changed back at once
        token = await fire(act, lambda thumb=thumb: act.click(buttons[thumb], message=one, away=True))
        assert thumb in act.told(token)
        rows = act.services.store.peek("select user, value from feedback where turn_id = ?", [turn_id])
        assert rows == [{"user": str(act.user_id), "value": value}]
    # "Ask again with…" opens the private menu; the choice runs through the choosing interaction
    mine = await fire(act, lambda: act.click(buttons["Ask again with…"], message=one, away=True))
    select_id, values = act.menu(mine)
    assert "provider:three" in values and "provider:one" not in values
    before = act.discussions()
    chosen = await fire(act, lambda: act.click(select_id, values=["provider:three"], message=act.api.webhook[mine][0],
                                               away=True))
    [new] = [d for d in act.discussions() if d["id"] not in {b["id"] for b in before}]
    assert new["conversation"] == before[-1]["conversation"]  # the same conversation as the compare
    menu = act.api.webhook[mine][0]
    assert menu is not None and menu.components == [] and menu.content.startswith("✅")  # the menu is replaced
    again = through(act, chosen, menu)
    assert "/ask" in again[0].content and "Three" in again[0].content
    assert len(again) == 3 and again[1].content.endswith("Three says Friday.") and "**Total**" in again[2].content
    assert "👍" in act.buttons(again[1])


async def test_a_user_install_consensus_on_these_runs_through_the_click(act: ActRig) -> None:
    shown = await installed_compare(act)
    act.llm.scenarios.clear()
    act.llm.default = Scenario(text="Short answer. RANKING: A > B\nREVISED ANSWER: revised")
    consensus = act.buttons(shown[-1])["Consensus on these"]
    before = len(act.discussions())
    token = await fire(act, lambda: act.click(consensus, message=shown[-1], away=True))
    assert len(act.discussions()) == before + 1 and act.discussions()[-1]["mode"] == "consensus"
    first = next(r for r in act.api.interaction_responses if r["token"] == token)
    assert first["type"] == 5  # a message of its own, not an edit of the summary
    out = through(act, token, shown[-1])
    assert len(out) == 6  # the head and 5 follow-ups: 2 answers, 2 reviews, the synthesis and the summary
    assert "/consensus" in out[0].content and out[0].content.endswith("✅ Stage 3 · Moderator synthesis")
    assert "\n".join(m.content for m in out[1:]).count("Short answer.") == 5
    assert "**Total**" in out[-1].content and "Compare with…" in act.buttons(out[-1])


async def test_a_user_install_compare_with_keeps_the_head_in_five_follow_ups(act: ActRig) -> None:
    act.api.followup_limit = 5
    act.llm.default = Scenario(text="Hello.")
    token = await fire(act, lambda: act.installed("compare", {"prompt": "Q?", "personas": "riley,morgan,devon",
                                                              "providers": "one,two"}))
    summary = act.api.interaction_messages(token)[-1]
    menu = await fire(act, lambda: act.click(act.buttons(summary)["Compare with…"], message=summary, away=True))
    select_id, values = act.menu(menu)
    assert "provider:three" in values and "provider:one" not in values
    clicked = act.api.webhook[menu][0]
    assert clicked is not None
    chosen = await fire(act, lambda: act.click(select_id, values=["provider:three"], message=clicked, away=True))
    assert act.discussions()[-1]["mode"] == "parallel"
    out = through(act, chosen, clicked)
    # the head takes a follow-up of its own (the original is the private menu): 4 are left for 9 answers
    assert len(out) == 5 and "/compare" in out[0].content
    assert "\n".join(m.content for m in out[1:]).count("`three/three-m`") == 3  # its answers, none lost
    assert "**Total**" in out[-1].content and "Consensus on these" in act.buttons(out[-1])


async def test_a_user_install_compare_votes_with_a_menu_that_is_changeable(act: ActRig) -> None:
    shown = await installed_compare(act)
    summary = shown[-1]
    assert summary.poll is None  # poll votes reach only a bot that is in the server
    validate(summary.components)
    [select_id] = [c["custom_id"] for r in summary.components for c in r["components"] if c["type"] == 3]
    options = {o["label"]: o["value"] for r in summary.components for c in r["components"] if c["type"] == 3
               for o in c["options"]}
    assert sorted(options) == ["one/one-m", "two/two-m"]
    did = act.discussions()[-1]["id"]
    turns = {t["provider"]: t["id"] for t in act.services.store.turns(did) if t["stage"] == "answer"}
    assert options == {"one/one-m": turns["one"], "two/two-m": turns["two"]}
    tally = Actions(act.services).tally

    async def choose(provider: str, by: int | None = None) -> str:
        return str(await fire(act, lambda: act.click(select_id, values=[options[f"{provider}/{provider}-m"]],
                                                     message=summary, by=by, away=True)))

    told = await choose("one")
    assert "one/one-m" in act.told(told)
    assert tally(did) == [{"turn_id": turns["one"], "votes": 1}]
    await choose("two", by=act.admin_id)
    assert sorted((r["turn_id"], r["votes"]) for r in tally(did)) == sorted([(turns["one"], 1), (turns["two"], 1)])
    told = await choose("two")  # changed
    assert "two/two-m" in act.told(told)
    assert tally(did) == [{"turn_id": turns["two"], "votes": 2}]
    told = await choose("one")  # and changed back
    assert "one/one-m" in act.told(told)
    assert sorted((r["turn_id"], r["votes"]) for r in tally(did)) == sorted([(turns["one"], 1), (turns["two"], 1)])
    assert not act.api.calls_to("POST", "/channels/")


# --- what is enabled, and the limits ---------------------------------------------------------------------


def test_sync_enables_exactly_the_intents_contexts_and_integration_types_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used = discord.Intents(guilds=True, guild_messages=True, dm_messages=True, guild_polls=True, dm_polls=True)
    assert intents(DiscordSettings()) == used
    monkeypatch.setenv("PARLEY_DISCORD_MESSAGE_CONTENT", "1")
    with_content = discord.Intents(**{**dict(used), "message_content": True})
    assert intents(DiscordSettings()) == with_content
    for p in command_payloads():
        assert p["contexts"] == [0, 1, 2] and p["integration_types"] == [0, 1]


async def test_the_client_asks_for_those_intents(monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(DiscordSettings())
    assert client.intents == intents(DiscordSettings()) and not client.intents.message_content
    await client.close()


def test_component_limits_are_validated() -> None:
    def row(n: int, prefix: str = "b") -> dict[str, Any]:
        return {"type": 1, "components": [{"type": 2, "style": 2, "label": "x", "custom_id": f"{prefix}{i}"}
                                          for i in range(n)]}

    validate([row(5, f"r{i}-") for i in range(5)])
    with pytest.raises(ValueError, match="action rows"):
        validate([row(1, f"r{i}-") for i in range(6)])
    with pytest.raises(ValueError, match="buttons in a row"):
        validate([row(6)])
    with pytest.raises(ValueError, match="custom_id"):
        validate([{"type": 1, "components": [{"type": 2, "style": 2, "label": "x", "custom_id": "x" * 101}]}])
    with pytest.raises(ValueError, match="unique"):
        validate([row(1), row(1)])
    options = [{"label": f"o{i}", "value": f"v{i}"} for i in range(26)]
    with pytest.raises(ValueError, match="select options"):
        validate([{"type": 1, "components": [{"type": 3, "custom_id": "s", "options": options}]}])
    with pytest.raises(ValueError, match="answers"):
        validate_poll({"question": {"text": "q"}, "duration": 24,
                       "answers": [{"poll_media": {"text": str(i)}} for i in range(11)]})
    with pytest.raises(ValueError, match="question"):
        validate_poll({"question": {"text": "q" * 301}, "duration": 24, "answers": [{"poll_media": {"text": "a"}}]})
    with pytest.raises(ValueError, match="55"):
        validate_poll({"question": {"text": "q"}, "duration": 24, "answers": [{"poll_media": {"text": "a" * 56}}]})

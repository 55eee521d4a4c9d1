"""The Discord front-end end to end: the real discord.py client logs in against a loopback
fake of Discord's REST API (``Route.BASE`` pointed at it); gateway payloads (READY,
GUILD_CREATE, INTERACTION_CREATE, MESSAGE_CREATE, THREAD_CREATE) go through the client's
own parsers; the providers are the fake LLM server."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest

from bots.discord import main as discord_main
from bots.discord.app import DiscordFront
from bots.discord.commands import command_payloads, request_from
from bots.discord.config import DiscordSettings, configure_api, invite_url, make_client, parse_shards
from bots.discord.format import CONTENT_LIMIT, header, thread_name
from bots.discord.ratelimit import CHANNEL_LIMIT, CHANNEL_WINDOW, ChannelBudgets
from bots.discord.recovery import INTERRUPTED, THREAD_INTERRUPTED
from core.commands import COMMANDS, OPTIONS
from core.config import Settings
from core.errors import UsageError
from core.services import Services, build_services
from tests.fakes import database_bytes, use_store_target
from tests.fakes import vendor_errors as ve
from tests.fakes.discord_api import FakeDiscordAPI, StoredMessage, iso, snowflake
from tests.fakes.llm_server import FakeLLMServer, Scenario

PROVIDERS = ("one", "two", "three")
ALL_PERMISSIONS = str(discord.Permissions.all().value)


def bot_token(user_id: int) -> str:
    """Shaped like a bot token (base64 user id . timestamp . hmac), made up at run time."""
    head = base64.b64encode(str(user_id).encode()).decode().rstrip("=")
    return f"{head}.{secrets.token_urlsafe(5)}.{secrets.token_urlsafe(27)}"


def user(uid: int, name: str = "ada", bot: bool = False) -> dict[str, Any]:
    return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name.title(), "avatar": None,
            "bot": bot, "flags": 0}


@dataclass
class Rig:
    services: Services
    llm: FakeLLMServer
    api: FakeDiscordAPI
    client: discord.Client
    front: DiscordFront
    guild_id: int
    channel_id: int
    user_id: int
    #: Every discussion's renderer, as the front-end hands it to an observer (it keeps none itself).
    renderers: list[Any] = field(default_factory=list)

    @property
    def parsers(self) -> dict[str, Any]:
        return self.client._connection.parsers

    def channel_json(self, channel_id: int | None = None) -> dict[str, Any]:
        return {"id": str(channel_id or self.channel_id), "type": 0, "guild_id": str(self.guild_id),
                "name": "general", "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None,
                "topic": None, "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}

    def member(self) -> dict[str, Any]:
        return {"user": user(self.user_id), "roles": [], "joined_at": iso(), "deaf": False, "mute": False,
                "flags": 0, "pending": False, "permissions": ALL_PERMISSIONS}

    def connect(self) -> None:
        """What the gateway sends after IDENTIFY: READY, then the guild with its channels."""
        self.parsers["READY"]({
            "v": 10, "user": self.api.bot_user(), "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": secrets.token_hex(8), "resume_gateway_url": "wss://gateway.invalid",
            "shard": [0, 1], "application": {"id": str(self.api.app_id), "flags": 0},
        })
        self.parsers["GUILD_CREATE"]({
            "id": str(self.guild_id), "name": "Parley Test", "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": str(self.user_id), "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
            "roles": [{"id": str(self.guild_id), "name": "@everyone", "permissions": ALL_PERMISSIONS,
                       "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False,
                       "flags": 0}],
            "emojis": [], "stickers": [], "features": [], "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None, "description": None, "banner": None,
            "premium_tier": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
            "joined_at": iso(), "large": False, "unavailable": False, "member_count": 2,
            "members": [], "channels": [self.channel_json()], "threads": [], "voice_states": [],
            "presences": [], "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
            "premium_progress_bar_enabled": False,
        })

    def interaction(self, name: str, options: dict[str, Any] | None = None, *, channel: dict[str, Any] | None = None,
                    kind: int = 2, focused: str | None = None, app_permissions: str = ALL_PERMISSIONS) -> str:
        """Feed an INTERACTION_CREATE for /name; returns the interaction token."""
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)
        opts = []
        for k, v in (options or {}).items():
            o: dict[str, Any] = {"name": k, "type": 10 if isinstance(v, float) else 4 if isinstance(v, int) else 3,
                                 "value": v}
            if k == focused:
                o["focused"] = True
            opts.append(o)
        ch = channel or self.channel_json()
        self.parsers["INTERACTION_CREATE"]({
            "id": str(snowflake()), "application_id": str(self.api.app_id), "type": kind,
            "data": {"id": str(snowflake()), "name": name, "type": 1, "options": opts},
            "guild_id": str(self.guild_id), "channel_id": ch["id"], "channel": ch, "member": self.member(),
            "token": token, "version": 1, "app_permissions": app_permissions, "locale": "en-US",
            "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0, "attachment_size_limit": 8388608,
        })
        return token

    def mention(self, text: str, *, channel_id: int | None = None) -> int:
        mid = snowflake()
        bot = self.api.bot_user()
        self.parsers["MESSAGE_CREATE"]({
            "id": str(mid), "channel_id": str(channel_id or self.channel_id), "guild_id": str(self.guild_id),
            "author": user(self.user_id), "member": {k: v for k, v in self.member().items() if k != "user"},
            "content": f"<@{bot['id']}> {text}", "timestamp": iso(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [bot], "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": False, "type": 0, "flags": 0, "components": [],
        })
        self.api.add_channel(channel_id or self.channel_id, self.guild_id)
        self.api.messages[mid] = StoredMessage(mid, channel_id or self.channel_id, user(self.user_id), text)
        return mid

    def thread_created(self, thread_id: int) -> None:
        """The gateway's THREAD_CREATE for a thread the bot made."""
        self.parsers["THREAD_CREATE"]({**self.api.threads[thread_id], "newly_created": True})

    async def run(self, fn: Any) -> None:
        before = self.front.spawned
        fn()
        await self.front.idle(before + 1)

    def thread_ids(self) -> list[int]:
        return sorted(self.api.threads)

    def turn_messages(self, channel_id: int) -> list[StoredMessage]:
        """Messages in a thread that carry a turn (label line first)."""
        return [m for m in self.api.channel_messages(channel_id) if m.content.split("\n", 1)[0].count("`") >= 2]


def body(content: str) -> str:
    """A turn message's text without its label line."""
    return content.split("\n", 1)[1]


@pytest.fixture
async def rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    use_store_target(request)  # a test that takes store_target runs on SQLite and on PostgreSQL
    app_id = snowflake()
    token = bot_token(app_id)
    async with FakeLLMServer() as llm, FakeDiscordAPI(token=token, app_id=app_id) as api:
        cfg = tmp_path / "p.toml"
        cfg.write_text(
            "".join(
                f'[providers.{p}]\nlabel = "{p.title()}"\nbase_url = "{llm.base_url}"\nkey_env = "K_{p.upper()}"\n'
                f'default_model = "{p}-m"\n[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 1.0\n'
                for p in PROVIDERS
            )
        )
        monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
        for p in PROVIDERS:
            monkeypatch.setenv(f"K_{p.upper()}", "k-0123456789")
        monkeypatch.setenv("DISCORD_TOKEN", token)
        monkeypatch.setenv("DISCORD_API_URL", api.base_url)
        monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # restored after the test
        settings = DiscordSettings()
        configure_api(settings)
        services = build_services(Settings())
        client = make_client(settings, guild_ready_timeout=0.01)
        # Discord's real per-channel budgets (5 writes per 5 s): what runs in production is what is tested.
        budgets = ChannelBudgets()
        assert (budgets.limit, budgets.window) == (CHANNEL_LIMIT, CHANNEL_WINDOW) == (5, 5.0)
        front = DiscordFront(services, client, budgets=budgets)
        guild, channel = snowflake(), snowflake()
        api.add_channel(channel, guild)
        try:
            await front.login(token)
            rig = Rig(services, llm, api, client, front, guild, channel, snowflake())
            front.on_renderer = rig.renderers.append
            rig.connect()
            yield rig
        finally:
            await front.shutdown()
            await client.close()
            await services.aclose()


# --- discussions --------------------------------------------------------------------------------------


async def test_compare_streams_each_turn_into_a_thread(rig: Rig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="First provider says launch Tuesday.", chunk_chars=3)
    rig.llm.scenarios["two-m"] = Scenario(text="Second provider says launch Thursday.", chunk_chars=3)
    token = ""

    def go() -> None:
        nonlocal token
        token = rig.interaction("compare", {"prompt": "When should we launch?", "providers": "one,two",
                                            "personas": "riley"})

    await rig.run(go)
    # deferred (ephemeral, thinking) at once, then pointed at the thread
    first = rig.api.interaction_responses[0]
    assert first["type"] == 5 and first["data"]["flags"] & 64
    [thread_id] = rig.thread_ids()
    assert rig.api.threads[thread_id]["name"] == "When should we launch?"
    assert rig.api.original_edits[-1]["content"] == f"🧵 Answering in <#{thread_id}>."
    assert all(e["token"] == token for e in rig.api.original_edits)
    # the parent message in the channel says who asked, the mode, the panel and the question
    parent = rig.api.messages[thread_id]
    assert parent.channel_id == rig.channel_id
    assert f"<@{rig.user_id}>" in parent.content and "/compare" in parent.content
    assert "Riley Engstrom" in parent.content and "> When should we launch?" in parent.content
    # each turn is its own message in the thread, labelled, with the exact streamed text
    turns = rig.turn_messages(thread_id)
    by_provider = {m.content.split("\n", 1)[0]: body(m.content) for m in turns}
    assert len(turns) == 2
    labels = list(by_provider)
    assert any("Riley Engstrom" in lb and "`one/one-m`" in lb for lb in labels)
    assert sorted(by_provider.values()) == ["First provider says launch Tuesday.",
                                            "Second provider says launch Thursday."]
    # every turn message was edited as it streamed, and nothing went through the interaction webhook
    for m in turns:
        edits = rig.api.calls_to("PATCH", f"/channels/{thread_id}/messages/{m.id}")
        assert edits and edits[-1].body["content"] == m.content
    assert not rig.api.followups
    # a closing summary with time, tokens and cost
    last = rig.api.channel_messages(thread_id)[-1].content
    assert "**Total**" in last and "$" in last and "tokens" in last
    # nobody is pinged by the bot's messages
    sends = [c for c in rig.api.calls_to("POST", "/messages") if c.path.endswith("/messages")]
    assert sends
    bad = [c.body for c in sends if c.body.get("allowed_mentions", {}).get("parse") != []]
    assert not bad


async def test_long_answer_rolls_over_beyond_2000_chars(rig: Rig) -> None:
    # Just over two messages' worth: three parts, five writes with the summary (one channel window).
    sentences = [f"Sentence number {i} explains one more detail of the plan." for i in range(72)]
    answer = " ".join(sentences[:36]) + "\n\n" + " ".join(sentences[36:])
    assert 2 * CONTENT_LIMIT < len(answer) < 3 * CONTENT_LIMIT
    rig.llm.scenarios["one-m"] = Scenario(text=answer, chunk_chars=40)
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Explain the plan", "provider": "one"}))
    [thread_id] = rig.thread_ids()
    parts = rig.turn_messages(thread_id)
    assert len(parts) >= 3
    assert all(len(m.content) <= CONTENT_LIMIT for m in rig.api.messages.values())
    assert "".join(body(m.content) for m in parts) == answer
    assert "(part 2)" in parts[1].content.split("\n", 1)[0]


async def test_each_failure_in_its_own_message_while_the_rest_continue(rig: Rig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(http_error=ve.openai_insufficient_quota())
    rig.llm.scenarios["two-m"] = Scenario(http_error=ve.openai_invalid_key())
    rig.llm.scenarios["three-m"] = Scenario(text="Partial answer that never ends", chunk_chars=5,
                                            drop_after_chunks=3)
    await rig.run(lambda: rig.interaction("compare", {"prompt": "Price?", "providers": "one,two,three"}))
    assert len(rig.llm.requests_for("two-m")) == 1
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Fine?", "provider": "two"}))  # auth: cooled down
    threads = rig.thread_ids()
    assert len(threads) == 2
    (again,) = [m for m in rig.turn_messages(threads[1]) if m.content.startswith("`two/two-m`")]
    assert "⚠️" in again.content and "paused two" in again.content
    assert len(rig.llm.requests_for("two-m")) == 1  # not sent again while paused
    turns = {m.content.split("\n", 1)[0]: m.content for m in rig.turn_messages(threads[0])}
    one = next(c for lb, c in turns.items() if "one/one-m" in lb)
    two = next(c for lb, c in turns.items() if "two/two-m" in lb)
    three = next(c for lb, c in turns.items() if "three/three-m" in lb)
    assert "⚠️" in one and "quota" in one.lower()
    assert "⚠️" in two and ("key" in two.lower() or "auth" in two.lower())
    assert "⚠️" in three and "Partial" in three and ("truncated" in three.lower() or "ended" in three.lower()
                                                      or "connection" in three.lower())
    assert len(turns) == 3


async def test_timeout_is_shown_in_the_turn_message(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    await rig.services.aclose()
    monkeypatch.setenv("PARLEY_READ_TIMEOUT", "0.3")
    monkeypatch.setenv("PARLEY_RETRY_ATTEMPTS", "1")
    rig.front.services = rig.services = build_services(Settings())
    rig.llm.scenarios["one-m"] = Scenario(text="never", hang=True)
    rig.llm.scenarios["two-m"] = Scenario(text="Quick answer.")
    await rig.run(lambda: rig.interaction("compare", {"prompt": "Slow?", "providers": "one,two"}))
    [thread_id] = rig.thread_ids()
    turns = {m.content.split("\n", 1)[0]: m.content for m in rig.turn_messages(thread_id)}
    one = next(c for lb, c in turns.items() if "one/one-m" in lb)
    two = next(c for lb, c in turns.items() if "two/two-m" in lb)
    assert "⚠️" in one and ("time" in one.lower())
    assert body(two) == "Quick answer."


async def test_consensus_stages_appear_in_the_thread(rig: Rig) -> None:
    rig.llm.default = Scenario(text="Answer. RANKING: A > B\nREVISED ANSWER: revised view")
    await rig.run(lambda: rig.interaction("consensus", {"prompt": "Should we?", "providers": "one,two"}))
    [thread_id] = rig.thread_ids()
    messages = rig.api.channel_messages(thread_id)
    contents = [m.content for m in messages]
    # one compact stage line heads the thread, edited in place as each stage starts, all ✅ at the end
    stages = ["Stage 1 · Independent answers", "Stage 2 · Anonymous review, round 1", "Stage 3 · Moderator synthesis"]
    line = messages[0]
    assert [text for _, text in line.history] == [
        f"⏳ {stages[0]}  ◻ {stages[1]}  ◻ {stages[2]}",
        f"✅ {stages[0]}  ⏳ {stages[1]}  ◻ {stages[2]}",
        f"✅ {stages[0]}  ✅ {stages[1]}  ⏳ {stages[2]}",
        f"✅ {stages[0]}  ✅ {stages[1]}  ✅ {stages[2]}",
    ]

    def labels(msgs: list[str]) -> list[str]:
        return sorted(c.split("\n", 1)[0] for c in msgs)

    # each stage's turns are posted after the earlier stage's, labelled with the stage
    assert labels(contents[1:3]) == ["`one/one-m`", "`two/two-m`"]
    assert labels(contents[3:5]) == ["`one/one-m` · review 1", "`two/two-m` · review 1"]
    assert labels(contents[5:6]) == ["**⚖️ Moderator** · `one/one-m` · synthesis"]
    turns = contents[1:6]
    assert len(contents) == 7
    assert all(body(c) == "Answer. RANKING: A > B\nREVISED ANSWER: revised view" for c in turns)
    summary = contents[-1]
    assert "5 turns (0 failed)" in summary and "Peer ranking" in summary
    for p in ("one", "two"):
        assert f"✅ {p}/{p}-m:" in summary and f"✅ {p}/{p}-m · review 1:" in summary
    assert "✅ ⚖️ Moderator · one/one-m · synthesis:" in summary


# --- mentions -------------------------------------------------------------------------------------------


async def test_mention_starts_a_thread_and_a_mention_in_it_follows_up(rig: Rig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(echo=True)
    rig.llm.scenarios["two-m"] = Scenario(echo=True)
    mid = 0

    def first() -> None:
        nonlocal mid
        mid = rig.mention("compare providers:one,two What is our launch date?")

    await rig.run(first)
    [thread_id] = rig.thread_ids()
    assert thread_id == mid  # a thread from the user's own message
    assert len(rig.turn_messages(thread_id)) == 2
    rig.thread_created(thread_id)
    await rig.run(lambda: rig.mention("ask provider:one And who owns it?", channel_id=thread_id))
    assert rig.thread_ids() == [thread_id]  # no new thread: a follow-up
    msgs = rig.llm.requests_for("one-m")[-1].body["messages"]
    assert any(m["content"] == "What is our launch date?" for m in msgs)
    assert msgs[-1]["content"] == "And who owns it?"
    assert len(rig.turn_messages(thread_id)) == 3


async def test_mention_in_an_uncached_thread_is_still_a_follow_up(rig: Rig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="ok")
    await rig.run(lambda: rig.mention("provider:one First?"))
    [thread_id] = rig.thread_ids()
    await rig.run(lambda: rig.mention("provider:one Second?", channel_id=thread_id))  # no THREAD_CREATE seen
    assert rig.thread_ids() == [thread_id]
    assert len(rig.turn_messages(thread_id)) == 2


async def test_a_mention_keeps_its_line_breaks_and_options_end_at_a_newline(rig: Rig) -> None:
    """Shift-Enter after the options: the option still counts, and the question keeps its lines."""
    rig.llm.scenarios["two-m"] = Scenario(echo=True)
    await rig.run(lambda: rig.mention("provider:two\nFirst line\nSecond line"))
    [request] = rig.llm.requests_for("two-m")
    assert request.body["messages"][-1]["content"] == "First line\nSecond line"


async def test_a_mention_that_is_not_unicode_text_is_answered(rig: Rig) -> None:
    """A lone surrogate used to crash the request task: the person heard nothing."""
    await rig.run(lambda: rig.mention("compare providers:one,two caf\udce9?"))
    reply = rig.api.channel_messages(rig.channel_id)[-1]
    assert reply.author["bot"] and reply.content.startswith("⚠️") and "not valid Unicode text" in reply.content
    assert not rig.thread_ids() and not rig.llm.requests


async def test_bad_input_is_answered_with_the_fix(rig: Rig) -> None:
    await rig.run(lambda: rig.mention("/compair providers:one hi"))
    reply = rig.api.channel_messages(rig.channel_id)[-1]
    assert reply.author["bot"] and "⚠️" in reply.content and "Did you mean" in reply.content
    await rig.run(lambda: rig.mention("provider:nope hi"))
    assert "Unknown provider 'nope'" in rig.api.channel_messages(rig.channel_id)[-1].content
    assert not rig.thread_ids()
    await rig.run(lambda: rig.interaction("ask", {"prompt": "hi", "provider": "nope"}))
    # answered at once (no defer): an ephemeral error naming the problem
    resp = rig.api.interaction_responses[-1]
    assert resp["type"] == 4 and resp["data"]["flags"] & 64 and "Unknown provider 'nope'" in resp["data"]["content"]


# --- permissions and rate limits -------------------------------------------------------------------


async def test_missing_permission_is_named(rig: Rig) -> None:
    # Discord tells us the bot's permissions in the interaction: say what is missing before trying.
    perms = discord.Permissions.all()
    perms.create_public_threads = False
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Hi", "provider": "one"},
                                          app_permissions=str(perms.value)))
    assert "**Create Public Threads**" in rig.api.original_edits[-1]["content"]
    assert not rig.api.calls_to("POST", f"/channels/{rig.channel_id}/messages")
    # A 403 Missing Permissions (50013) from Discord itself is turned into the same kind of sentence.
    rig.api.forbid("POST", rf"^/channels/{rig.channel_id}/messages$")
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Hi", "provider": "one"}))
    assert "**Send Messages**" in rig.api.original_edits[-1]["content"]
    # ... and inside the thread, for the turn messages.
    rig.api.rules.clear()
    rig.api.forbid("POST", r"^/channels/\d+/messages$", times=1_000)
    rig.api.rules[0].pattern = __import__("re").compile(rf"^/channels/(?!{rig.channel_id})\d+/messages$")
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Hi again", "provider": "one"}))
    assert "**Send Messages in Threads**" in rig.api.original_edits[-1]["content"]


async def test_a_429_loses_nothing(rig: Rig) -> None:
    text = "Every word of this answer must arrive. " * 20
    rig.llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=7, chunk_delay=0.002)
    rig.api.rate_limit("PATCH", r"^/channels/\d+/messages/\d+$", times=2, retry_after=0.05)
    rig.api.rate_limit("POST", rf"^/channels/(?!{rig.channel_id})\d+/messages$", times=1, retry_after=0.05)
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Everything?", "provider": "one"}))
    [thread_id] = rig.thread_ids()
    [turn] = rig.turn_messages(thread_id)
    assert body(turn.content) == text
    assert rig.api.limited == 3
    assert sum(r.rate_limited for r in rig.renderers) == 3  # seen by the renderer, not slept on
    assert sum(r.lost_ops for r in rig.renderers) == 0


async def test_a_429_within_a_long_summary_resumes_where_it_stopped(rig: Rig) -> None:
    """A summary in several messages hit by a 429 on its second part: the renderer retries the
    notice, and the sink sends only what had not gone out (no part appears twice)."""
    from bots.discord.format import chunks, doc_to_markdown
    from bots.discord.sink import DiscordSink
    from core.events import DiscussionFinished, Totals, TurnSummary
    from core.present import summary_doc
    from core.render import Renderer

    turns = [TurnSummary(f"t{i}", f"Panelist number {i} with a long label", "answer", 0, "one", "one-m", None,
                         "finished", None, 100.0, 900.0, 1000 + i, 2000, 0.0012, False) for i in range(80)]
    summary = DiscussionFinished("d1", "finished", turns, Totals(80, 0, 80_000, 160_000, 0.1, 9000.0))
    parts = chunks(doc_to_markdown(summary_doc(summary)))
    assert len(parts) >= 3
    thread = snowflake()
    rig.api.add_channel(thread, rig.guild_id)

    def on_store(channel: int, message: int, content: str, t: float) -> None:
        if channel == thread and content == parts[0] and not rig.api.rules:  # the next part meets a 429
            rig.api.rate_limit("POST", rf"^/channels/{thread}/messages$", times=1, retry_after=0.05)

    rig.api.on_store = on_store
    renderer = Renderer(DiscordSink(rig.client, thread, rig.front.budgets))

    async def events() -> AsyncIterator[DiscussionFinished]:
        yield summary

    await renderer.consume(events())
    assert rig.api.limited == 1 and renderer.rate_limited == 1 and renderer.lost_ops == 0
    assert [m.content for m in rig.api.channel_messages(thread)] == parts


async def test_a_refused_write_counts_as_lost_not_delivered(rig: Rig) -> None:
    """A turn message Discord refuses (403 in the thread) is undeliverable: the person is told
    once, nothing more is sent there, the renderer counts it lost, and no stand-in message
    (id 0) is recorded as delivered."""
    rig.llm.scenarios["one-m"] = Scenario(text="An answer Discord will not take.")
    rig.api.forbid("POST", rf"^/channels/(?!{rig.channel_id})\d+/messages$")
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Hi", "provider": "one"}))
    [thread_id] = rig.thread_ids()
    writes = [(c.method, c.status) for c in rig.api.calls if c.path.startswith(f"/channels/{thread_id}/")]
    assert writes == [("POST", 403)]  # refused once; the turn's edits and the summary never tried
    [renderer] = rig.renderers
    assert renderer.ops == 0
    assert renderer.lost_ops == 2  # the turn and the summary
    told = [e["content"] for e in rig.api.original_edits]
    assert told[-1].startswith("⚠️") and "**Send Messages in Threads**" in told[-1]
    assert sum("Send Messages in Threads" in t for t in told) == 1
    refs = [json.loads(row["ref"]) for row in rig.services.store.db.table("posts").rows]
    assert refs == [{"channel": thread_id, "kind": "thread"}]  # no turn message was recorded
    assert rig.services.store.open_posts("discord") == []


@pytest.mark.parametrize("failing", ["turn messages", "every record"])
async def test_a_failed_bookkeeping_write_never_posts_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failing: str
) -> None:
    """The store failing to record a posted message must not make the renderer post it again:
    the ledger records after delivery, outside the platform-retry loop, and logs the failure."""
    import sqlite3

    rig.llm.scenarios["one-m"] = Scenario(text="Posted exactly once.", chunk_chars=4)
    store = rig.services.store
    real = store.record_post
    tried: list[str | None] = []

    def record_post(discussion_id: str, turn_id: str | None, *rest: Any) -> int:
        tried.append(turn_id)
        if turn_id is not None or failing == "every record":
            raise sqlite3.OperationalError("database is locked")
        return real(discussion_id, turn_id, *rest)

    monkeypatch.setattr(store, "record_post", record_post)
    await rig.run(lambda: rig.interaction("ask", {"prompt": "Once?", "provider": "one"}))
    [thread_id] = rig.thread_ids()
    creates = [c for c in rig.api.calls_to("POST", f"/channels/{thread_id}/messages")
               if "`one/one-m`" in c.body["content"]]
    assert [c.status for c in creates] == [200]  # exactly one create for the reply: no duplicate
    [turn] = rig.turn_messages(thread_id)
    assert body(turn.content) == "Posted exactly once."
    assert tried.count(None) == 1 and len(tried) == 2  # the thread, then the turn message: each once
    assert "could not record" in caplog.text
    # ... and the discussion still finished: the summary is posted and the discussion closed.
    assert "**Total**" in rig.api.channel_messages(thread_id)[-1].content
    assert rig.api.original_edits[-1]["content"] == f"🧵 Answering in <#{thread_id}>."
    assert [r.lost_ops for r in rig.renderers] == [0]
    [discussion] = store.db.table("discussions").rows
    assert discussion["status"] == "finished"


async def test_channel_budgets_forget_idle_channels() -> None:
    """A long-running bot writes in ever new threads: a bucket that holds no claim, has no
    waiter, is not paused and spent nothing in the last window is dropped (a new one is the same)."""
    import asyncio

    now = [0.0]
    budgets = ChannelBudgets(clock=lambda: now[0])
    for channel in range(1, 501):
        await budgets.channel(channel).acquire(0.0)
    claimed, paused, busy = budgets.channel(1000), budgets.channel(1001), budgets.channel(1002)
    claimed.claim(1)  # a message still streaming there will need its final edit
    paused.pause(60.0)  # after a 429
    for _ in range(budgets.limit):
        await busy.acquire(0.0)
    waiter = asyncio.ensure_future(busy.acquire(0.0))  # queued for the next slot
    await asyncio.sleep(0)
    recent = budgets.channel(1003)
    now[0] += budgets.window * 2  # every slot above was spent more than a window ago
    await recent.acquire(0.0)
    fresh = budgets.channel(2000)
    assert set(budgets.channels) == {1000, 1001, 1002, 1003, 2000}
    assert (budgets.channel(1000), budgets.channel(1001), budgets.channel(1002)) == (claimed, paused, busy)
    assert not waiter.done() and budgets.channels[2000] is fresh
    waiter.cancel()
    assert busy._timer is not None
    busy._timer.cancel()


async def test_the_front_end_keeps_no_finished_discussion(rig: Rig) -> None:
    """Nothing of a finished discussion stays referenced by the front-end (memory in a long-running bot)."""
    import gc

    from core.render import Renderer

    rig.llm.scenarios["one-m"] = Scenario(text="Done.")
    for i in range(3):
        await rig.run(lambda i=i: rig.interaction("ask", {"prompt": f"Question {i}?", "provider": "one"}))
    assert len(rig.thread_ids()) == 3
    rig.renderers.clear()  # the test's own observer
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Renderer)]


# --- commands ----------------------------------------------------------------------------------------


def test_commands_are_generated_from_the_table() -> None:
    payloads = {p["name"]: p for p in command_payloads()}
    assert set(payloads) == set(COMMANDS)
    for name, cmd in COMMANDS.items():
        opts = payloads[name]["options"]
        names = [o["name"] for o in opts]
        assert (names[0] == "prompt" and opts[0]["required"]) if cmd.takes_prompt else "prompt" not in names
        # A command with actions is one sub-command per action (its NAME or KEY a required first option).
        assert names[:len(cmd.actions)] == [a.name for a in cmd.actions]
        assert all(o["type"] == 1 for o in opts[:len(cmd.actions)])
        groups = [(cmd.options, opts[int(cmd.takes_prompt):len(opts) - len(cmd.actions)])]
        groups += [(a.options, sub["options"][int(a.takes is not None):])
                   for a, sub in zip(cmd.actions, opts, strict=False)]
        assert len(opts) == len(cmd.options) + int(cmd.takes_prompt) + len(cmd.actions)
        for table, given in groups:
            assert len(given) == len(table)
            for o in given:
                canonical = next(k for k in table if o["name"] in (k, *OPTIONS[k].aliases))
                kind = OPTIONS[canonical].kind
                assert o["type"] == {"str": 3, "list": 3, "float": 10, "int": 4}[kind]
                assert o.get("autocomplete", False) == (OPTIONS[canonical].completes is not None)
                assert len(o["description"]) <= 100
    assert "persona" in [o["name"] for o in payloads["ask"]["options"]]  # singular for one expert
    assert "personas" in [o["name"] for o in payloads["compare"]["options"]]


def test_interaction_options_go_through_the_shared_grammar() -> None:
    req = request_from("compare", [{"name": "prompt", "value": "note:this is the question"},
                                   {"name": "providers", "value": "one, two"}, {"name": "temperature", "value": 0.4}])
    assert req.prompt == "note:this is the question" and req.providers == ["one", "two"] and req.temperature == 0.4
    with pytest.raises(UsageError, match="one persona and one provider"):
        request_from("ask", [{"name": "prompt", "value": "q"}, {"name": "provider", "value": "one,two"}])
    with pytest.raises(UsageError, match="PARLEY_MAX_PROMPT_CHARS"):
        request_from("ask", [{"name": "prompt", "value": "x" * 9000}])


def test_an_option_value_is_one_value() -> None:
    """Values are never re-joined into text: a space inside an id is refused, not read as more options."""
    with pytest.raises(UsageError, match="space"):
        request_from("ask", [{"name": "prompt", "value": "Q?"}, {"name": "persona", "value": "riley provider:kimi"}])
    with pytest.raises(UsageError, match="space"):  # was accepted, with "morgan" as the question
        request_from("ask", [{"name": "persona", "value": "riley morgan"}])
    with pytest.raises(UsageError, match="needs a question"):
        request_from("ask", [{"name": "persona", "value": "riley"}])
    req = request_from("compare", [{"name": "prompt", "value": " Line one\nproviders:two "},
                                   {"name": "providers", "value": "one"}, {"name": "model", "value": " m-1 "}])
    assert (req.providers, req.model, req.prompt) == (["one"], "m-1", "Line one\nproviders:two")


async def test_autocomplete_lists_a_provider_from_the_user_config(rig: Rig) -> None:
    await rig.run(lambda: rig.interaction("compare", {"prompt": "", "providers": "one,t"}, kind=4,
                                          focused="providers"))
    resp = rig.api.interaction_responses[-1]
    assert resp["type"] == 8
    values = [c["value"] for c in resp["data"]["choices"]]
    assert values[:2] == ["one,two", "one,three"]  # only in PARLEY_CONFIG; the typed head is kept
    assert "one,one" not in values
    await rig.run(lambda: rig.interaction("ask", {"prompt": "", "persona": "ri"}, kind=4, focused="persona"))
    assert [c["value"] for c in rig.api.interaction_responses[-1]["data"]["choices"]][0] == "riley"
    await rig.run(lambda: rig.interaction("ask", {"prompt": "", "provider": "two/"}, kind=4, focused="provider"))
    assert [c["value"] for c in rig.api.interaction_responses[-1]["data"]["choices"]] == ["two/two-m"]


async def test_commands_sync_only_when_the_table_changes(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await rig.front.start() is True
    assert await rig.front.start() is False  # same table: no call
    assert len(rig.api.calls_to("PUT", "/commands")) == 1
    assert {c["name"] for c in rig.api.commands["global"]} == set(COMMANDS)
    assert await rig.front.start(guild_id=rig.guild_id) is True  # a guild is its own scope
    assert {c["name"] for c in rig.api.commands[str(rig.guild_id)]} == set(COMMANDS)
    from core import commands as core_commands

    changed = dict(COMMANDS)
    changed["ask"] = core_commands.Command("ask", "Ask one expert, now with a new summary.", "single",
                                           COMMANDS["ask"].options, True)
    monkeypatch.setattr("bots.discord.commands.COMMANDS", changed)
    assert await rig.front.start() is True
    assert len(rig.api.calls_to("PUT", "/applications")) == 3


async def test_info_commands_answer_ephemerally(rig: Rig) -> None:
    await rig.run(lambda: rig.interaction("personas"))
    assert rig.api.interaction_responses[-1]["data"]["flags"] & 64
    assert "Riley Engstrom" in rig.api.original_edits[-1]["content"]
    await rig.run(lambda: rig.interaction("providers"))
    text = rig.api.original_edits[-1]["content"] + "".join(f["content"] for f in rig.api.followups)
    assert "**Providers**" in text and "`three`" in text


# --- start-up --------------------------------------------------------------------------------------------


async def test_restart_marks_open_messages_interrupted(rig: Rig, store_target: str) -> None:
    store = rig.services.store
    did = store.start_discussion(mode="single", command="ask", prompt="q", options={}, conversation=None,
                                 front_end="discord")
    thread = snowflake()
    rig.api.add_channel(thread, rig.guild_id)
    saved = rig.api._store(thread, "`one/one-m`\nHalf an answer …")
    unsaved = rig.api._store(thread, "`two/two-m`\nAnother half …")
    p1 = store.record_post(did, "t1", "discord", str(thread),
                           json.dumps({"kind": "message", "channel": thread, "message": saved.id}))
    store.update_post_text(p1, saved.content)
    store.record_post(did, "t2", "discord", str(thread),
                      json.dumps({"kind": "message", "channel": thread, "message": unsaved.id}))
    store.record_post(did, None, "discord", str(thread), json.dumps({"kind": "thread", "channel": thread}))
    store.flush()
    with store.db.conn:  # the process that owned the discussion is gone
        store.db.execute("update discussions set owner = 'a-dead-process' where id = ?", [did])
    assert await rig.front.recover() == 3
    assert saved.content == "`one/one-m`\nHalf an answer\n\n" + INTERRUPTED
    assert unsaved.content == "`two/two-m`\nAnother half\n\n" + INTERRUPTED  # fetched, as nothing was saved
    assert rig.api.calls_to("GET", f"/messages/{unsaved.id}")
    assert rig.api.channel_messages(thread)[-1].content == THREAD_INTERRUPTED
    assert store.open_posts("discord") == []
    assert store.discussion(did)["status"] == "interrupted"
    assert await rig.front.recover() == 0


async def test_missing_and_rejected_tokens_fail_at_start(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert discord_main.configured() is False
    assert discord_main.main([]) == 2
    assert "DISCORD_TOKEN is not set" in capsys.readouterr().err
    async with FakeDiscordAPI(token=bot_token(snowflake())) as api:
        monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
        monkeypatch.setenv("DISCORD_TOKEN", bot_token(snowflake()))  # not the one the fake accepts
        monkeypatch.setenv("DISCORD_API_URL", api.base_url)
        assert discord_main.configured() is True
        settings = DiscordSettings()
        configure_api(settings)
        async with build_services(Settings()) as services:
            client = make_client(settings)
            front = DiscordFront(services, client)
            with pytest.raises(UsageError, match="rejected DISCORD_TOKEN"):
                await front.login(settings.token.get_secret_value())  # type: ignore[union-attr]
            await client.close()
        assert settings.token.get_secret_value() not in capsys.readouterr().err  # type: ignore[union-attr]


async def test_invite_url_names_the_permissions_and_scopes(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    url = invite_url(rig.client.application_id or 0)
    assert f"client_id={rig.api.app_id}" in url and "scope=bot+applications.commands" in url
    perms = discord.Permissions(int(url.split("permissions=")[1].split("&")[0]))
    assert perms.send_messages and perms.create_public_threads and perms.send_messages_in_threads
    assert perms.embed_links and perms.read_message_history and not perms.administrator


def test_shards_setting() -> None:
    assert parse_shards(None) is None
    assert parse_shards("auto") == {}
    assert parse_shards("8") == {"shard_count": 8}
    assert parse_shards("0-3/8") == {"shard_count": 8, "shard_ids": [0, 1, 2, 3]}
    assert parse_shards("0,2,4-5/8") == {"shard_count": 8, "shard_ids": [0, 2, 4, 5]}
    for bad in ("8/8", "x", "3-1/2/4"):
        with pytest.raises(UsageError, match="PARLEY_DISCORD_SHARDS"):
            parse_shards(bad)
    client = make_client(DiscordSettings(PARLEY_DISCORD_SHARDS="0-1/4"))  # type: ignore[call-arg]
    assert isinstance(client, discord.AutoShardedClient) and client.shard_ids == [0, 1]


def test_thread_names_fit() -> None:
    assert len(thread_name("word " * 80)) <= 100
    assert thread_name("  What   should we price?  ") == "What should we price?"


def test_labels_stay_short() -> None:
    from core.events import TurnInfo

    t = TurnInfo("t", "p" * 90, "P", "m" * 90, "x", "N" * 200, "r", "🎯", None)
    assert len(header(t, 3)) <= 150



async def test_no_secret_reaches_logs_messages_or_the_database(
    rig: Rig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, store_target: str
) -> None:
    import logging
    import os

    caplog.set_level(logging.DEBUG)  # discord.py and aiohttp at their most talkative
    rig.llm.scenarios["one-m"] = Scenario(text="Fine answer.", chunk_chars=3)
    rig.llm.scenarios["two-m"] = Scenario(http_error=ve.openai_invalid_key())
    await rig.run(lambda: rig.interaction("compare", {"prompt": "Price?", "providers": "one,two"}))
    rig.services.store.db.conn.commit()
    secrets_ = [os.environ["DISCORD_TOKEN"], *(os.environ[f"K_{p.upper()}"] for p in PROVIDERS)]
    shown = "\n".join(m.content for m in rig.api.messages.values())
    stored = database_bytes(rig.services.store)
    assert b"Price?" in stored  # the discussion is there to be searched
    assert "/messages" in caplog.text  # the client libraries' request logs were captured
    for s in secrets_:
        assert s not in caplog.text and s not in shown and s.encode() not in stored


async def test_discussions_are_capped_per_person_and_the_place_is_given_back(rig: Rig) -> None:
    from core.threads import Admission

    rig.front.admission = Admission(per_workspace=5, per_user=1)
    held = rig.front.admit(rig.guild_id, rig.user_id)  # this person already has one running
    await rig.run(lambda: rig.interaction("ask", {"prompt": "hi", "provider": "one"}))
    resp = rig.api.interaction_responses[-1]
    assert resp["type"] == 4 and resp["data"]["flags"] & 64
    assert "Try again" in resp["data"]["content"] and "PARLEY_MAX_RUNNING_PER_USER" in resp["data"]["content"]
    await rig.run(lambda: rig.mention("ask provider:one hi"))
    assert "PARLEY_MAX_RUNNING_PER_USER" in rig.api.channel_messages(rig.channel_id)[-1].content
    assert not rig.thread_ids()  # refused requests post nothing and start nothing
    held.release()
    await rig.run(lambda: rig.interaction("ask", {"prompt": "hi", "provider": "one"}))
    assert len(rig.thread_ids()) == 1
    assert rig.front.admission.running == 0  # the finished discussion gave its place back


def test_text_parley_did_not_write_never_becomes_discord_markup() -> None:
    from bots.discord.format import doc_to_markdown
    from core.present import code, line, strong

    doc = [line(strong("Total"), ": quota_exhausted — Top up *now* at ~~old~~ page"), line(code("gpt_4_o`x"), " ok")]
    text = doc_to_markdown(doc)
    assert text.splitlines()[0] == r"**Total**: quota\_exhausted — Top up \*now\* at \~\~old\~\~ page"
    assert text.splitlines()[1] == "`gpt_4_oˋx` ok"  # inside code only a backtick is changed

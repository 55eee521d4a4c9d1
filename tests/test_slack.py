"""The Slack front-end end to end: the real bolt ``AsyncApp`` in HTTP mode receives
signed slash commands and events over HTTP; its Web API calls go to a loopback fake
of Slack; the providers are the fake LLM server."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.app import SlackFront
from bots.slack.budgets import WorkspaceBudgets
from bots.slack.config import SlackSettings, check_tokens
from bots.slack.format import to_mrkdwn
from bots.slack.manifest import manifest, slash_commands
from core.commands import COMMANDS
from core.config import Settings
from core.errors import UsageError
from core.services import Services, build_services
from tests.fakes import database_bytes, use_store_target
from tests.fakes import vendor_errors as ve
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.fakes.slack_api import FakeSlackAPI, Message, sign

PROVIDERS = ("one", "two", "three")


def bot_token() -> str:
    return "xoxb-" + "-".join(secrets.token_hex(6) for _ in range(3))


@dataclass
class Rig:
    services: Services
    llm: FakeLLMServer
    slack: FakeSlackAPI
    front: SlackFront
    url: str
    secret: str
    http: aiohttp.ClientSession

    async def slash(
        self,
        command: str,
        text: str,
        *,
        channel: str = "C1",
        user: str = "U1",
        team: str = "T0TEST",
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> tuple[int, str]:
        body = urlencode(
            {
                "token": "legacy",
                "team_id": team,
                "team_domain": "parley-test",
                "channel_id": channel,
                "channel_name": "general",
                "user_id": user,
                "user_name": "ada",
                "command": command,
                "text": text,
                "api_app_id": "A0TEST",
                "response_url": self.slack.response_url,
                "trigger_id": "1.2.3",
            }
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            **sign(secret or self.secret, body, timestamp),
        }
        async with self.http.post(self.url, data=body, headers=headers) as r:
            return r.status, await r.text()

    async def event(
        self, event: dict[str, object], *, event_id: str | None = None, retry: int = 0, team: str = "T0TEST"
    ) -> int:
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": team,
                "api_app_id": "A0TEST",
                "type": "event_callback",
                "event_id": event_id or "Ev" + secrets.token_hex(4),
                "event_time": int(time.time()),
                "authorizations": [{"team_id": team, "user_id": "UBOT", "is_bot": True}],
                "event": event,
            }
        )
        headers = {"Content-Type": "application/json", **sign(self.secret, body)}
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        async with self.http.post(self.url, data=body, headers=headers) as r:
            return r.status

    async def post_raw(self, body: str | bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(self.url, data=body, headers=headers) as r:
            return r.status, await r.text()

    async def discuss(self, command: str, text: str, **kw: object) -> tuple[Message, list[Message]]:
        """Run a slash-command discussion to the end; return the parent and its thread."""
        before = self.front.spawned
        status, body = await self.slash(command, text, **kw)  # type: ignore[arg-type]
        assert status == 200 and body == "", body
        await self.front.idle(before + 1)
        parent = self.slack.parents()[-1]
        return parent, self.slack.thread(parent.channel, parent.ts)


def body_of(m: Message) -> str:
    """A reply's text without its label line (and the streaming ellipsis)."""
    return m.text.split("\n\n", 1)[1] if "\n\n" in m.text else ""


@pytest.fixture
async def rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    use_store_target(request)  # a test that takes store_target runs on SQLite and on PostgreSQL
    async with FakeLLMServer() as llm:
        cfg = tmp_path / "p.toml"
        cfg.write_text(
            "".join(
                f'[providers.{p}]\nlabel = "{p}"\nbase_url = "{llm.base_url}"\nkey_env = "K_{p.upper()}"\n'
                f'default_model = "{p}-m"\n'
                + (
                    'auth_hint = "Keys are bound to a region: use the base URL of your key\'s region."\n'
                    if p == "two"
                    else ""
                )
                + f'[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 2.0\n'
                for p in PROVIDERS
            )
        )
        monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
        for p in PROVIDERS:
            monkeypatch.setenv(f"K_{p.upper()}", "k-" + secrets.token_hex(8))
        token, secret = bot_token(), secrets.token_hex(16)
        async with FakeSlackAPI(bot_token=token) as slack:
            services = build_services(Settings())
            client = AsyncWebClient(token=token, base_url=slack.base_url)
            front = SlackFront(services, client, signing_secret=secret)
            await front.start()
            runner = web.AppRunner(front.web_app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            async with aiohttp.ClientSession() as http:
                try:
                    yield Rig(
                        services, llm, slack, front, f"http://127.0.0.1:{port}/slack/events", secret, http
                    )
                finally:
                    await front.shutdown()
                    await runner.cleanup()
                    await services.aclose()
                    await front.services.aclose()  # a test may have swapped them


def answer(n: int, seed: str) -> str:
    return " ".join(f"{seed}{i}" + ("." if i % 9 == 8 else "") for i in range(n))


# --- the happy path -------------------------------------------------------------------------------
async def test_compare_streams_each_turn_into_the_thread_and_summarises(rig: Rig) -> None:
    texts = {p: answer(60, p) for p in PROVIDERS}
    for p in PROVIDERS:
        rig.llm.scenarios[f"{p}-m"] = Scenario(text=texts[p], chunk_chars=7, chunk_delay=0.002)
    parent, thread = await rig.discuss("/compare", "providers:one,two,three personas:riley Where to launch?")
    assert "<@U1> asked" in parent.text and "compare" in parent.text and "Where to launch?" in parent.text
    replies = [m for m in thread if "`" in m.text.split("\n", 1)[0]]
    assert len(replies) == 3
    for p in PROVIDERS:
        (m,) = [m for m in replies if f"`{p}/{p}-m`" in m.text]
        assert "Riley Engstrom" in m.text.split("\n", 1)[0]
        assert body_of(m) == texts[p]  # the final text in Slack is exactly what the provider streamed
        assert not m.streaming
    summary = thread[-1].text
    assert "Total" in summary and "3 turns (0 failed)" in summary and "$" in summary
    # Light load: every reply used a native stream (one start, appends, one stop).
    assert len(rig.slack.called("chat.startStream")) == 3
    assert len(rig.slack.called("chat.stopStream")) == 3
    assert not rig.slack.called("chat.update")
    starts = rig.slack.called("chat.startStream")
    assert all(
        c.args["recipient_user_id"] == "U1" and c.args["recipient_team_id"] == "T0TEST" for c in starts
    )
    # Nothing is left open for a restart to find.
    assert rig.services.store.open_posts("slack") == []


async def test_replies_fall_back_to_post_and_update_when_the_stream_budget_is_spent(rig: Rig) -> None:
    budgets = rig.front.budgets("T0TEST")
    while budgets["chat.startStream"].available():
        await budgets["chat.startStream"].acquire()
    text = answer(40, "w") + "\n\n**Bold** and [a link](https://example.com/x?a=1&b=2)"
    for p in PROVIDERS:
        rig.llm.scenarios[f"{p}-m"] = Scenario(text=text, chunk_chars=5, chunk_delay=0.002)
    _, thread = await rig.discuss("/compare", "providers:one,two What now?")
    assert not rig.slack.called("chat.startStream")
    replies = [m for m in thread if "`one/" in m.text or "`two/" in m.text]
    assert len(replies) == 2 and all(m.kind == "message" and not m.streaming for m in replies)
    assert rig.slack.called("chat.postMessage") and rig.slack.called("chat.update")
    for m in replies:
        assert body_of(m) == to_mrkdwn(text)  # converted to what Slack renders
        assert "*Bold*" in m.text and "<https://example.com/x?a=1&amp;b=2|a link>" in m.text


async def test_a_rate_limited_update_is_retried_after_retry_after_and_loses_nothing(rig: Rig) -> None:
    rig.front.budgets("T0TEST").streams_enabled = False
    rig.slack.retry_after = 1
    rig.slack.ratelimit_next["chat.update"] = 2
    text = answer(50, "r")
    rig.llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=4, chunk_delay=0.01)
    _, thread = await rig.discuss("/ask", "provider:one Tell me")
    limited = [c for c in rig.slack.called("chat.update") if c.status == 429]
    assert len(limited) == 2
    ok = [c for c in rig.slack.called("chat.update") if c.status == 200]
    assert ok and ok[0].t - limited[-1].t >= 0.9  # Retry-After honoured
    (reply,) = [m for m in thread if "`one/" in m.text]
    assert body_of(reply) == text


async def test_a_channel_archived_mid_discussion_stops_writing_and_the_discussion_ends(rig: Rig) -> None:
    text = answer(150, "a")
    for p in ("one", "two"):
        rig.llm.scenarios[f"{p}-m"] = Scenario(text=text, chunk_chars=5, chunk_delay=0.01)
    before = rig.front.spawned
    await rig.slash("/compare", "providers:one,two Stream for a while")
    await rig.slack.wait_for(
        lambda: bool(rig.slack.parents()) and len(rig.slack.thread("C1", rig.slack.parents()[-1].ts)) >= 2
    )
    rig.slack.archived.add("C1")
    archived_at = len(rig.slack.calls)
    await asyncio.wait_for(rig.front.idle(before + 1), 20)
    refused = [c for c in rig.slack.calls[archived_at:] if c.error == "is_archived"]
    assert 1 <= len(refused) <= 6  # each turn gives up on its first refusal; no retry storm
    turns = rig.services.store.db.execute("select status from turns").fetchall()
    assert sorted(t[0] for t in turns) == ["finished", "finished"]  # the answers are still recorded
    assert rig.services.store.open_posts("slack") == []


async def test_a_reply_deleted_mid_stream_continues_in_a_new_message(rig: Rig) -> None:
    rig.front.budgets("T0TEST").streams_enabled = False
    text = answer(120, "d")
    rig.llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=5, chunk_delay=0.03)
    before = rig.front.spawned
    await rig.slash("/ask", "provider:one Tell me")
    await rig.slack.wait_for(lambda: len(rig.slack.called("chat.update")) >= 1)
    (first,) = [m for m in rig.slack.thread("C1", rig.slack.parents()[-1].ts) if "`one/" in m.text]
    rig.slack.delete(first.ts)
    await asyncio.wait_for(rig.front.idle(before + 1), 20)
    parts = [m for m in rig.slack.thread("C1", rig.slack.parents()[-1].ts) if "`one/" in m.text]
    assert len(parts) == 1 and "(part 2)" in parts[0].text
    rest = body_of(parts[0])
    assert rest and text.endswith(rest)  # what was not yet shown arrives in full
    assert any(c.error == "message_not_found" for c in rig.slack.calls)


async def test_long_replies_roll_over_below_slacks_limit(rig: Rig) -> None:
    text = "\n\n".join(answer(80, f"p{i}_") for i in range(24))  # ~11k characters
    rig.llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=40)
    _, thread = await rig.discuss("/ask", "provider:one Write a lot")
    parts = [m for m in thread if "`one/" in m.text]
    assert len(parts) >= 3
    assert all(len(m.text) <= 4000 for m in parts)
    assert "(part 2)" in parts[1].text
    assert "".join(body_of(m) for m in parts) == text


async def test_an_expired_stream_continues_in_a_new_message_without_losing_text(rig: Rig) -> None:
    text = answer(120, "x")
    rig.llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=6, chunk_delay=0.01)
    before = rig.front.spawned
    await rig.slash("/ask", "provider:one Stream for a while")
    await rig.slack.wait_for(lambda: len(rig.slack.called("chat.appendStream")) >= 1)
    assert rig.slack.expire_streams() == 1  # Slack ends the stream under our feet
    await rig.front.idle(before + 1)
    parent = rig.slack.parents()[-1]
    parts = [m for m in rig.slack.thread(parent.channel, parent.ts) if "`one/" in m.text]
    assert len(parts) == 2 and parts[0].expired
    assert body_of(parts[0]) + body_of(parts[1]) == text
    assert any(c.error == "message_not_in_streaming_state" for c in rig.slack.calls)


async def test_consensus_shows_its_stages_in_the_thread(rig: Rig) -> None:
    for p in PROVIDERS:  # each reply echoes its prompt, so its text says which stage it answered
        rig.llm.scenarios[f"{p}-m"] = Scenario(echo=True)
    _, thread = await rig.discuss("/consensus", "providers:one,two,three moderator:one Decide")
    texts = [m.text for m in thread]
    titles = [i for i, t in enumerate(texts) if t.startswith("*Stage")]
    assert [texts[i] for i in titles] == [
        "*Stage 1 · Independent answers*",
        "*Stage 2 · Anonymous review, round 1*",
        "*Stage 3 · Moderator synthesis*",
    ]
    s1, s2, s3 = titles
    answers, reviews, synthesis = thread[s1 + 1 : s2], thread[s2 + 1 : s3], thread[s3 + 1 : -1]
    # each stage's turns are posted under that stage's title, one per panelist
    assert sorted(m.text.split("\n", 1)[0] for m in answers) == sorted(f"`{p}/{p}-m`" for p in PROVIDERS)
    assert all(body_of(m) == "ECHO: Decide" for m in answers)
    assert sorted(m.text.split("\n", 1)[0] for m in reviews) == sorted(f"`{p}/{p}-m`" for p in PROVIDERS)
    for m in reviews:
        assert body_of(m).startswith("ECHO: The panel was asked:") and "anonymised as A, B." in body_of(m)
    (mod,) = synthesis
    assert mod.text.split("\n", 1)[0] == "**⚖️ Moderator** · `one/one-m`"  # moderator:one
    assert body_of(mod).startswith("ECHO: The panel was asked:") and "Final positions" in body_of(mod)
    assert not any(m.streaming for m in thread)
    summary = texts[-1]
    assert "Total" in summary and "7 turns (0 failed)" in summary
    for p in PROVIDERS:
        assert f"✅ {p}/{p}-m:" in summary and f"✅ {p}/{p}-m · review 1:" in summary
    assert "✅ ⚖️ Moderator · one/one-m · synthesis:" in summary


# --- failures -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (Scenario(http_error=ve.openai_insufficient_quota()), "quota"),
        (Scenario(http_error=ve.moonshot_invalid_auth()), "region"),
        (Scenario(http_error=ve.openai_rate_limited(retry_after_ms=10)), "rate"),
        (
            Scenario(text="partial answer that stops", drop_after_chunks=3, chunk_chars=5),
            "before the answer was complete",
        ),
        (Scenario(text="never ends", no_terminator=True), "before it was complete"),
    ],
    ids=["quota", "auth-region", "rate-limit", "dropped", "truncated"],
)
async def test_a_failed_turn_says_why_in_its_own_message_and_the_rest_continue(
    rig: Rig, scenario: Scenario, expected: str
) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="The healthy answer.")
    rig.llm.scenarios["two-m"] = scenario
    _, thread = await rig.discuss("/compare", "providers:one,two Go")
    (ok,) = [m for m in thread if "`one/" in m.text]
    (bad,) = [m for m in thread if "`two/" in m.text]
    assert body_of(ok) == "The healthy answer."
    assert "⚠️" in bad.text and expected in bad.text.lower(), bad.text
    assert not bad.streaming
    assert "1 failed" in thread[-1].text


async def test_provider_error_text_is_escaped_in_the_reply_and_the_summary(rig: Rig) -> None:
    hostile = "Bad request <!channel> & <@U0ADMIN> <https://evil.example|click>"
    rig.llm.scenarios["one-m"] = Scenario(http_error=(400, {"error": {"message": hostile}}, {}))
    _, thread = await rig.discuss("/ask", "provider:one Go")
    summary = thread[-1].text
    assert "Total" in summary and "1 failed" in summary
    assert "&lt;!channel&gt; &amp; &lt;@U0ADMIN&gt;" in summary, summary  # shown as text, not a ping
    for m in thread:
        assert "<!channel>" not in m.text and "<@U0ADMIN>" not in m.text and "<https://evil" not in m.text


async def test_a_timed_out_turn_says_so(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    await rig.services.aclose()
    monkeypatch.setenv("PARLEY_READ_TIMEOUT", "0.3")
    monkeypatch.setenv("PARLEY_RETRY_ATTEMPTS", "1")
    rig.front.services = build_services(Settings())
    rig.services = rig.front.services
    rig.llm.scenarios["one-m"] = Scenario(hang=True)
    _, thread = await rig.discuss("/ask", "provider:one Hello?")
    (bad,) = [m for m in thread if "`one/" in m.text]
    assert "⚠️" in bad.text and "time" in bad.text.lower(), bad.text


async def test_bad_commands_get_an_ephemeral_fix_and_touch_nothing(rig: Rig) -> None:
    calls = len(rig.slack.calls)
    status, body = await rig.slash("/compare", "providers:one,twoo Price?")
    assert status == 200 and "Unknown provider 'twoo'" in body and "Did you mean 'two'?" in body  # suggestion
    status, body = await rig.slash("/ask", "persona:rilley Hi")
    assert "Unknown persona 'rilley'" in body and "Did you mean 'riley'" in body
    status, body = await rig.slash("/ask", "")
    assert "needs a question" in body
    status, body = await rig.slash("/ask", "x" * 9000)
    assert "9,000" in body and "PARLEY_MAX_PROMPT_CHARS" in body
    assert not [c for c in rig.slack.calls[calls:] if c.method.startswith("chat.")]  # nothing was posted


async def test_info_commands_answer_ephemerally_via_the_response_url(rig: Rig) -> None:
    before = rig.front.spawned
    for cmd, text in (("/personas", ""), ("/parley", "providers"), ("/parley", "")):
        status, _ = await rig.slash(cmd, text)
        assert status == 200
    await rig.front.idle(before + 3)
    out = [r["text"] for r in rig.slack.responses]
    assert all(r["response_type"] == "ephemeral" for r in rig.slack.responses)
    assert len(out) == 3
    assert any("Riley Engstrom" in t for t in out)  # /personas
    # /parley providers: a line per provider of the user's config, each with its status "ok"
    listed = [{ln.split("`")[1]: ln for ln in t.splitlines() if ln.startswith("• `")} for t in out]
    assert any(all("ok" in rows.get(p, "").split(" · ")[0] for p in PROVIDERS) for rows in listed)
    assert any("/compare" in t for t in out)  # /parley (help)


async def test_a_channel_the_bot_is_not_in_gets_a_clear_ephemeral_reply(rig: Rig) -> None:
    rig.slack.fail_next["chat.postMessage"] = "not_in_channel"
    before = rig.front.spawned
    await rig.slash("/ask", "provider:one Hi")
    await rig.front.idle(before + 1)
    assert "/invite @Parley" in rig.slack.responses[-1]["text"]


# --- requests that must be refused ------------------------------------------------------------------------
async def test_bad_signatures_and_stale_timestamps_are_rejected_with_no_api_call(rig: Rig) -> None:
    calls = len(rig.slack.calls)
    status, _ = await rig.slash("/ask", "provider:one Hi", secret="not-the-secret")
    assert status == 401
    status, _ = await rig.slash("/ask", "provider:one Hi", timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    await asyncio.sleep(0.1)
    assert len(rig.slack.calls) == calls and rig.front.spawned == 0


# --- mentions, follow-ups, direct messages -----------------------------------------------------------------
async def test_mention_answers_in_a_thread_and_a_mention_in_the_thread_follows_up(rig: Rig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="Launch on Tuesday.")
    mention = {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> ask provider:one When to launch?",
        "ts": "1800000100.000100",
        "channel": "C2",
        "event_ts": "1800000100.000100",
    }
    await rig.event(mention, event_id="Ev1")
    await rig.event(mention, event_id="Ev1", retry=1)  # Slack's retry of the same event
    await rig.front.idle(1)
    thread = rig.slack.thread("C2", "1800000100.000100")
    assert [body_of(m) for m in thread if "`one/" in m.text] == ["Launch on Tuesday."]
    assert rig.front.spawned == 1  # the retry was deduplicated

    rig.llm.scenarios["one-m"] = Scenario(text="Because Tuesday has the most traffic.", echo=False)
    follow = {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> why then?",
        "ts": "1800000200.000100",
        "thread_ts": "1800000100.000100",
        "channel": "C2",
        "event_ts": "1800000200.000100",
    }
    await rig.event(follow)
    await rig.front.idle(2)
    req = rig.llm.requests_for("one-m")[-1]
    history = json.dumps(req.body)
    assert "Launch on Tuesday." in history and "When to launch?" in history and "why then?" in history
    thread = rig.slack.thread("C2", "1800000100.000100")
    assert body_of([m for m in thread if "`one/" in m.text][-1]) == "Because Tuesday has the most traffic."


async def test_direct_messages_work_and_the_bots_own_messages_and_edits_are_ignored(rig: Rig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="Hello from a DM.")
    dm = {
        "type": "message",
        "channel_type": "im",
        "user": "U1",
        "text": "provider:one hi",
        "ts": "1800000300.000100",
        "channel": "D1",
        "event_ts": "1800000300.000100",
    }
    await rig.event(dm)
    await rig.event({**dm, "ts": "1800000301.0001", "bot_id": "BBOT", "user": "UBOT"})
    await rig.event({**dm, "ts": "1800000302.0001", "subtype": "message_changed"})
    await rig.front.idle(1)
    await asyncio.sleep(0.05)
    assert rig.front.spawned == 1
    thread = rig.slack.thread("D1", "1800000300.000100")
    assert [body_of(m) for m in thread if "`one/" in m.text] == ["Hello from a DM."]


async def test_a_bad_mention_gets_an_ephemeral_reply(rig: Rig) -> None:
    await rig.event(
        {
            "type": "app_mention",
            "user": "U1",
            "text": "<@UBOT> compare providers:nope Hi",
            "ts": "1800000400.000100",
            "channel": "C3",
            "event_ts": "1800000400.000100",
        }
    )
    await rig.front.idle(1)
    (eph,) = rig.slack.ephemeral
    assert eph["user"] == "U1" and "nope" in eph["text"] and eph["thread_ts"] == "1800000400.000100"


# --- restart ----------------------------------------------------------------------------------------------
async def test_a_restart_marks_every_open_message_interrupted(rig: Rig, store_target: str) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text=answer(200, "s"), chunk_chars=5, chunk_delay=0.05)
    rig.llm.scenarios["two-m"] = Scenario(text=answer(200, "t"), chunk_chars=5, chunk_delay=0.05)
    rig.front.budgets("T0TEST").limits  # noqa: B018  (budgets exist before the run)
    await rig.slash("/compare", "providers:one,two Long one")
    await rig.slack.wait_for(
        lambda: sum(1 for m in rig.slack.messages.values() if m.thread_ts and len(m.text) > 200) >= 2
    )
    # The process dies: tasks vanish without cleaning up.
    for t in list(rig.front.tasks):
        t.cancel()
    await asyncio.gather(*rig.front.tasks, return_exceptions=True)
    # (a crash would not even run the cancellation handlers; reopen the posts they closed)
    store = rig.services.store
    store.flush()
    with store.db.conn:  # ... and its process is gone: another instance owned the run
        store.db.execute("update posts set open = 1")
        store.db.execute("update discussions set status = 'running', owner = 'a-dead-process'")
    fresh = SlackFront(rig.services, rig.front.client, signing_secret=rig.secret)
    await fresh.start()
    parent = rig.slack.parents()[-1]
    thread = rig.slack.thread(parent.channel, parent.ts)
    replies = [m for m in thread if "`one/" in m.text or "`two/" in m.text]
    assert len(replies) == 2
    for m in replies:
        assert "Interrupted" in m.text and not m.streaming
        assert len(m.text) > 200  # what the reader saw is kept
    assert any("restarted before this discussion finished" in m.text for m in thread)
    assert store.open_posts("slack") == []
    (did,) = [r[0] for r in store.db.execute("select id from discussions").fetchall()]
    assert store.discussion(did)["status"] == "interrupted"


# --- start-up and configuration -------------------------------------------------------------------------
def test_tokens_are_checked_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def make_settings(**env: str) -> SlackSettings:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return SlackSettings()

    with pytest.raises(UsageError, match="SLACK_BOT_TOKEN is not set"):
        check_tokens(make_settings(), http=True)
    with pytest.raises(UsageError, match="user token"):
        check_tokens(make_settings(SLACK_BOT_TOKEN="xoxp-" + secrets.token_hex(8)), http=True)
    with pytest.raises(UsageError, match="SLACK_SIGNING_SECRET"):
        check_tokens(make_settings(SLACK_BOT_TOKEN=bot_token()), http=True)
    with pytest.raises(UsageError, match="xapp-"):
        check_tokens(make_settings(SLACK_BOT_TOKEN=bot_token(), SLACK_APP_TOKEN="nope"), http=True)


async def test_a_rejected_token_fails_at_start_up(tmp_path: Path) -> None:
    token = bot_token()
    async with FakeSlackAPI(bot_token=token) as slack:
        slack.auth_error = "invalid_auth"
        services = build_services(Settings())
        try:
            front = SlackFront(
                services, AsyncWebClient(token=token, base_url=slack.base_url), signing_secret="s"
            )
            with pytest.raises(UsageError, match="rejected SLACK_BOT_TOKEN") as e:
                await front.start()
            assert token not in str(e.value)
        finally:
            await services.aclose()


def test_manifest_is_generated_from_the_command_table() -> None:
    m = manifest(socket_mode=True)
    names = [c["command"] for c in m["features"]["slash_commands"]]
    assert names == [f"/{n}" for n in slash_commands()]
    assert set(names) >= {f"/{c}" for c in COMMANDS if c != "help"} | {"/parley"}
    assert m["settings"]["socket_mode_enabled"] is True
    assert {"commands", "chat:write", "app_mentions:read"} <= set(m["oauth_config"]["scopes"]["bot"])
    assert "app_mention" in m["settings"]["event_subscriptions"]["bot_events"]
    http = manifest(socket_mode=False, request_url="https://parley.example.com/slack/events")
    assert all(c["url"].endswith("/slack/events") for c in http["features"]["slash_commands"])
    assert all(len(c["description"]) <= 100 for c in http["features"]["slash_commands"])


async def test_socket_mode_connects_and_acks_a_slash_command(rig: Rig) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    app_token = "xapp-" + secrets.token_hex(8)
    rig.slack.app_token = app_token
    rig.llm.scenarios["one-m"] = Scenario(text="Over the socket.")
    handler = AsyncSocketModeHandler(
        rig.front.app, app_token, web_client=AsyncWebClient(base_url=rig.slack.base_url)
    )
    await handler.connect_async()
    try:
        await asyncio.wait_for(rig.slack.socket_connected.wait(), 10)
        payload = {
            "team_id": "T0TEST",
            "channel_id": "C9",
            "user_id": "U1",
            "command": "/ask",
            "text": "provider:one hi",
            "response_url": rig.slack.response_url,
            "trigger_id": "1",
        }
        await rig.slack.socket_outbox.put(
            {
                "envelope_id": "env-1",
                "type": "slash_commands",
                "payload": payload,
                "accepts_response_payload": True,
            }
        )
        await rig.slack.wait_for(lambda: any(a.get("envelope_id") == "env-1" for a in rig.slack.socket_acks))
        await rig.front.idle(1)
    finally:
        await handler.close_async()
    parent = rig.slack.parents("C9")[-1]
    assert [body_of(m) for m in rig.slack.thread("C9", parent.ts) if "`one/" in m.text] == [
        "Over the socket."
    ]


async def test_socket_mode_serves_health_readiness_and_metrics_on_the_ops_port(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Socket Mode has no HTTP port of its own: `parley slack` serves /healthz, /readyz and /metrics
    on PARLEY_OPS_PORT, so a container's health check and a scraper see it like the Discord bot."""
    import socket

    from bots.slack.main import serve

    app_token = "xapp-" + secrets.token_hex(8)
    rig.slack.app_token = app_token
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SLACK_BOT_TOKEN", rig.slack.bot_token)
    monkeypatch.setenv("SLACK_APP_TOKEN", app_token)
    monkeypatch.setenv("SLACK_API_URL", rig.slack.base_url)
    monkeypatch.setenv("PARLEY_OPS_PORT", str(port))
    monkeypatch.setenv("PARLEY_OPS_HOST", "127.0.0.1")
    services = build_services(Settings())
    task = asyncio.create_task(serve(services, SlackSettings()))
    try:
        await asyncio.wait_for(rig.slack.socket_connected.wait(), 10)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with rig.http.get(f"{base}/healthz") as r:
                    health = (r.status, await r.json())
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        assert health == (200, {"ok": True, "running": 0})
        async with rig.http.get(f"{base}/readyz") as r:
            assert (r.status, (await r.json())["checks"]) == (200, {"store": True})
        async with rig.http.get(f"{base}/metrics") as r:
            assert r.status == 200 and "parley_open_streams" in await r.text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await services.aclose()


async def test_workspace_budgets_never_exceed_the_published_limits_in_a_sliding_window() -> None:
    b = WorkspaceBudgets(window=0.5)  # time compressed: "per minute" becomes per half second
    for method, per_minute in b.limits.items():
        bucket = b[method]
        stamps: list[float] = []

        async def call(priority: float, bucket=bucket, stamps=stamps) -> None:  # type: ignore[no-untyped-def]
            await bucket.acquire(priority)
            stamps.append(time.monotonic())

        await asyncio.gather(*(call(0.0 if i % 3 == 0 else 1.0) for i in range(per_minute * 2)))
        worst = max(sum(1 for s in stamps if t <= s < t + 0.5) for t in stamps)
        assert worst <= per_minute - 1, method


def test_cli_prints_the_manifest_and_refuses_to_start_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    from bots.cli import main

    assert main(["slack", "manifest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["settings"]["socket_mode_enabled"] is True
    assert main(["slack"]) == 2
    assert "SLACK_BOT_TOKEN is not set" in capsys.readouterr().err


async def test_no_secret_reaches_logs_messages_or_the_database(
    rig: Rig, caplog: pytest.LogCaptureFixture, store_target: str
) -> None:
    import logging
    import os

    caplog.set_level(logging.DEBUG)  # slack_sdk and bolt at their most talkative
    rig.llm.scenarios["one-m"] = Scenario(text="Fine answer.")
    rig.llm.scenarios["two-m"] = Scenario(http_error=ve.moonshot_invalid_auth())
    await rig.discuss("/compare", "providers:one,two Price?")
    await rig.slash("/ask", "provider:one Hi", secret="not-the-secret")  # a rejected request is logged too
    secrets_ = [rig.slack.bot_token, rig.secret, *(os.environ[f"K_{p.upper()}"] for p in PROVIDERS)]
    shown = "\n".join(m.text for m in rig.slack.messages.values()) + json.dumps(rig.slack.responses)
    stored = database_bytes(rig.services.store)
    assert b"Price?" in stored  # the discussion is there to be searched
    assert "chat.postMessage" in caplog.text  # the client libraries' request logs were captured
    for s in secrets_:
        assert s not in caplog.text and s not in shown and s.encode() not in stored


async def test_a_stream_whose_text_changes_mid_message_becomes_a_replaced_message(rig: Rig) -> None:
    from bots.slack.sink import SlackSink
    from core.events import TurnInfo
    from core.ledger import Ledger
    from core.sink import Frame

    budgets = WorkspaceBudgets()
    sink = SlackSink(rig.front.client, budgets, "C1", "1.0", recipient_user_id="U1", recipient_team_id="T0TEST")
    ledger = Ledger(None, None, sink)  # keeps the claims, in the order the renderer drives it
    turn = TurnInfo("t1", "one", "one", "one-m")
    first = Frame(turn, "Hello wor", "Hello wor", 1, "streaming")
    ref = await sink.post(first) if sink.budget(None, first) else None
    assert ref is not None and ref.kind == "stream" and budgets.live_streams == 1
    entry = ledger.opened("t1", ref, first)
    assert budgets["chat.appendStream"].claims == 1 and budgets["chat.update"].claims == 0
    changed = Frame(turn, "Goodbye, world", "Goodbye, world", 1, "streaming")  # not an extension
    await sink.edit(ref, changed)
    ledger.wrote(entry, ref, changed)
    assert ref.kind == "message" and budgets.live_streams == 0
    assert sink.final_budget(ref) is budgets["chat.update"]
    assert budgets["chat.appendStream"].claims == 0 and budgets["chat.update"].claims == 1
    done = Frame(turn, "Goodbye, world.", "Goodbye, world.", 1, "done")
    ledger.settling(entry)
    await sink.edit(ref, done)
    ledger.wrote(entry, ref, done)
    (m,) = [m for m in rig.slack.messages.values() if m.ts == ref.ts]
    assert not m.streaming and body_of(m) == "Goodbye, world." and budgets["chat.update"].claims == 0


# --- bookkeeping is not delivery ----------------------------------------------------------------------------
@pytest.mark.parametrize("always", [False, True], ids=["first-reply", "every-record"])
async def test_a_store_failure_recording_a_reply_never_posts_it_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, always: bool
) -> None:
    import sqlite3

    text = answer(40, "b")
    rig.llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=5, chunk_delay=0.002)
    store = rig.services.store
    record_post = store.record_post
    refused: list[str | None] = []

    def failing_record_post(discussion_id: str, turn_id: str | None, *args: str) -> int:
        # "first-reply": the reply's own row fails once; "every-record": the thread's row too, every time.
        if always or (turn_id is not None and not refused):
            refused.append(turn_id)
            raise sqlite3.OperationalError("database is locked")
        return record_post(discussion_id, turn_id, *args)

    monkeypatch.setattr(store, "record_post", failing_record_post)
    parent, thread = await rig.discuss("/ask", "provider:one Tell me")
    assert any(t is not None for t in refused)  # the reply's record did fail
    # Exactly one message was created for the reply: the failed bookkeeping did not re-post it.
    created = [
        c
        for c in rig.slack.called("chat.startStream") + rig.slack.called("chat.postMessage")
        if c.args.get("thread_ts") == parent.ts
        and "`one/" in str(c.args.get("markdown_text") or c.args.get("text") or "")
    ]
    assert len(created) == 1, [c.method for c in created]
    (reply,) = [m for m in thread if "`one/" in m.text]
    assert body_of(reply) == text and not reply.streaming
    # ...and the discussion still finished.
    assert "Total" in thread[-1].text and "1 turns (0 failed)" in thread[-1].text
    (did,) = store.db.execute("select id from discussions").fetchone()
    assert store.discussion(did)["status"] == "finished"
    assert store.open_posts("slack") == []


# --- text Parley did not write never pings anyone ---------------------------------------------------------
HOSTILE = "Hi <!channel> <@U123> <!here> <!subteam^S1|devs> <#C999> @everyone &lt;!channel&gt; [x](https://ok.example)"


def pings(text: str, *, markdown: bool) -> list[str]:
    """Mention or broadcast syntax Slack could resolve in a write (entities are literal in mrkdwn,
    and nobody documents whether markdown_text decodes them first, so there they count too)."""
    opener = r"(?:<|&lt;|&#0*60;|&#x0*3c;)" if markdown else "<"
    found = re.findall(opener + r"[!@#][^>\s]*|(?<![\w@])@(?:channel|here|everyone)\b", text, re.IGNORECASE)
    return [f for f in found if f != "<@U1"]  # Parley's own "<@U1> asked" names the asker


def writes(rig: Rig, acks: list[str]) -> dict[str, list[tuple[str, bool]]]:
    """Every text Parley sent to Slack, by method: (text, is markdown_text)."""
    out: dict[str, list[tuple[str, bool]]] = {"ack": [(a, False) for a in acks]}  # a plain-text ack is the reply
    for c in rig.slack.calls:
        for name, markdown in (("text", False), ("markdown_text", True)):
            if c.args.get(name):
                out.setdefault(c.method, []).append((str(c.args[name]), markdown))
    out["response_url"] = [(r["text"], False) for r in rig.slack.responses]
    return out


@pytest.mark.parametrize("streams", [True, False], ids=["native-streams", "post-and-update"])
async def test_model_and_error_text_never_pings_whatever_method_writes_it(rig: Rig, streams: bool) -> None:
    from bots.slack.recovery import mark_interrupted

    rig.front.budgets("T0TEST").streams_enabled = streams
    rig.llm.scenarios["one-m"] = Scenario(text=f"{HOSTILE} then {HOSTILE}", chunk_chars=3, chunk_delay=0.001)
    rig.llm.scenarios["two-m"] = Scenario(http_error=(400, {"error": {"message": HOSTILE}}, {}))
    parent, thread = await rig.discuss("/compare", "providers:one,two Go")  # answers, failure notice, summary
    for m in thread:  # a restart finds them open and says so
        if "`one/" in m.text or "`two/" in m.text:
            ref = {"channel": m.channel, "ts": m.ts, "kind": m.kind}
            await mark_interrupted(rig.front.client, ref, m.text)
    acks = []
    for text in ("providers:<!channel>,<@U123> Hi", "persona:<!here> Hi"):  # refused commands quote them
        status, body = await rig.slash("/compare", text)
        assert status == 200 and body
        acks.append(body)
    before = rig.front.spawned
    await rig.event(  # a refused mention: ephemeral
        {"type": "app_mention", "user": "U1", "text": "<@UBOT> compare providers:<!channel> Hi",
         "ts": "1800000500.000100", "channel": "C5", "event_ts": "1800000500.000100"}
    )
    rig.slack.fail_next["chat.postMessage"] = "<!channel><@U123>"  # Slack's own words: response_url
    await rig.slash("/ask", "provider:one Hi")
    await rig.front.idle(before + 2)

    sent = writes(rig, acks)
    wanted = {"ack", "chat.postEphemeral", "response_url", "chat.postMessage", "chat.update"}
    wanted |= {"chat.startStream", "chat.appendStream"} if streams else set()
    assert wanted <= set(sent), sorted(sent)
    for method in wanted - {"chat.startStream"}:  # the hostile text did reach each of them
        assert any("channel" in text for text, _ in sent[method]), (method, sent[method])
    for method, texts in sent.items():
        for text, markdown in texts:
            assert not pings(text, markdown=markdown), (method, text)
    (reply,) = [m for m in thread if "`one/" in m.text]
    assert "!channel" in reply.text and "@" in reply.text  # shown as written, just never resolved


def test_escaping_a_longer_stream_text_extends_the_escaped_shorter_one() -> None:
    from bots.slack.format import escape

    text = "a <!channel> b <@U1> c &lt;#C1&gt; d List<String> <!subteam^S1> &#60;!here&#62; e"
    full = escape(text, markdown=True)
    assert not pings(full, markdown=True)
    for i in range(len(text) + 1):  # whatever the stream has shown so far, the rest is an append
        assert full.startswith(escape(text[:i], markdown=True)), i


# --- HTTP mode: what reaches bolt -------------------------------------------------------------------------
async def test_refused_requests_log_one_short_line_and_malformed_ones_get_400(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    marker = "BODY-" + secrets.token_hex(4)
    big = json.dumps({"type": "event_callback", "pad": marker * (200_000 // len(marker))})  # ~200 KB, unsigned
    as_json = {"Content-Type": "application/json"}
    results = await asyncio.gather(*(rig.post_raw(big, as_json) for _ in range(20)))
    assert [s for s, _ in results] == [401] * 20
    assert marker not in caplog.text and len(caplog.text) < 20 * 400, len(caplog.text)  # a line each
    caplog.clear()

    status, _ = await rig.post_raw('{"type": "event_callback", ', as_json)  # malformed, unsigned
    assert status == 400
    broken = '{"type": "event_callback", '
    status, _ = await rig.post_raw(broken, {**as_json, **sign(rig.secret, broken)})  # malformed, signed
    assert status == 400
    status, _ = await rig.post_raw(b"\xff\xfe not text", as_json)
    assert status == 400
    status, _ = await rig.post_raw("{}", {**as_json, "X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "x"})
    assert status == 401
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]

    from bots.slack.http import MAX_REQUEST_BYTES

    calls, spawned = len(rig.slack.calls), rig.front.spawned
    huge = urlencode({"command": "/ask", "text": "x" * (MAX_REQUEST_BYTES + 1), "team_id": "T0TEST"})
    status, _ = await rig.post_raw(
        huge, {"Content-Type": "application/x-www-form-urlencoded", **sign(rig.secret, huge)}
    )
    assert status == 413  # refused before bolt, signed or not
    assert rig.front.spawned == spawned and len(rig.slack.calls) == calls
    status, _ = await rig.slash("/ask", "")  # and a normal request still works
    assert status == 200


async def test_http_mode_listens_on_the_configured_host(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from bots.slack import main

    sites: list[web.TCPSite] = []
    listening = asyncio.Event()

    class Site(web.TCPSite):
        async def start(self) -> None:
            await super().start()
            sites.append(self)
            listening.set()

    monkeypatch.setattr(main.web, "TCPSite", Site)
    for k, v in {"SLACK_BOT_TOKEN": rig.slack.bot_token, "SLACK_SIGNING_SECRET": rig.secret,
                 "SLACK_API_URL": rig.slack.base_url, "SLACK_HOST": "127.0.0.1", "PORT": "0"}.items():
        monkeypatch.setenv(k, v)
    server = asyncio.create_task(main.serve(rig.services, SlackSettings()))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        (sock,) = sites[0]._server.sockets  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1"
        async with rig.http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        async with rig.http.get(f"http://127.0.0.1:{port}/readyz") as r:  # operations on the same port
            assert r.status == 200 and (await r.json())["ready"] is True
        async with rig.http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200 and "parley_queued_writes" in await r.text()
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def test_a_burst_of_first_requests_authorises_once_per_workspace(rig: Rig) -> None:
    def ignored(i: int) -> dict[str, object]:  # a channel message without a mention: authorised, then ignored
        ts = f"1800000600.{i:06d}"
        return {"type": "message", "channel_type": "channel", "user": "U1", "text": "hi", "ts": ts, "channel": "C6"}

    start = len(rig.slack.called("auth.test"))  # the start-up check
    rig.slack.delays["auth.test"] = 0.5  # every first request arrives while the first call is out
    statuses = await asyncio.gather(*(rig.event(ignored(i), team="T0NEW") for i in range(200)))
    assert statuses == [200] * 200
    assert len(rig.slack.called("auth.test")) == start + 1
    await asyncio.gather(*(rig.event(ignored(i), team="T0TEST") for i in range(20)))
    assert len(rig.slack.called("auth.test")) == start + 1  # the start-up answer serves its own workspace

    rig.slack.auth_error = "invalid_auth"  # a failure is shared by those waiting for it, and not kept
    await asyncio.gather(*(rig.event(ignored(i), team="T0GONE") for i in range(20)))
    assert len(rig.slack.called("auth.test")) == start + 2
    rig.slack.auth_error = None
    await rig.event(ignored(0), team="T0GONE")
    assert len(rig.slack.called("auth.test")) == start + 3


# --- bounded state ----------------------------------------------------------------------------------------------
async def test_budgets_of_idle_channels_and_workspaces_are_forgotten(rig: Rig) -> None:
    import gc

    rig.front.make_budgets = lambda: WorkspaceBudgets(window=0.2, post_rate=50)  # time compressed
    rig.llm.scenarios["one-m"] = Scenario(text="Short.")

    async def wave(n: int, **where: str) -> None:
        before = rig.front.spawned
        results = await asyncio.gather(
            *(rig.slash("/ask", "provider:one Hi", user=f"U{i}", **{k: f"{v}{i}" for k, v in where.items()})
              for i in range(n))
        )
        assert all(r == (200, "") for r in results), results
        await rig.front.idle(before + n)
        await asyncio.sleep(0.3)  # every budget of this wave is idle again

    for w in range(4):
        await wave(16, channel=f"C{w}x")  # 64 channels of one workspace
    for w in range(4):
        await wave(16, team=f"T{w}x", channel="C")  # 64 workspaces
    gc.collect()
    assert len(rig.slack.parents()) == 128
    assert len(rig.front.budgets("T0TEST").channels) <= 40
    assert len(rig.front.workspaces) <= 40
    assert rig.front.admission.running == 0 and not rig.front.admission.users


# --- admission ----------------------------------------------------------------------------------------------
async def test_discussions_are_capped_per_person_and_per_workspace(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.threads import Admission

    monkeypatch.setenv("PARLEY_MAX_RUNNING_PER_USER", "1")
    monkeypatch.setenv("PARLEY_MAX_RUNNING_PER_WORKSPACE", "2")
    rig.front.admission = Admission.from_settings(Settings())
    rig.llm.scenarios["one-m"] = Scenario(text=answer(40, "s"), chunk_chars=5, chunk_delay=0.05)  # ~2 s
    before = rig.front.spawned
    assert await rig.slash("/ask", "provider:one First", user="U1") == (200, "")
    status, body = await rig.slash("/ask", "provider:one Second", user="U1")
    assert status == 200 and "Try again" in body and "PARLEY_MAX_RUNNING_PER_USER" in body
    assert await rig.slash("/ask", "provider:one Other", user="U2", channel="C2") == (200, "")
    status, body = await rig.slash("/ask", "provider:one Third", user="U3", channel="C3")
    assert "busy" in body and "PARLEY_MAX_RUNNING_PER_WORKSPACE" in body
    status, body = await rig.slash("/personas", "", user="U3")  # information is never refused
    assert (status, body) == (200, "")
    await rig.event(
        {"type": "app_mention", "user": "U1", "text": "<@UBOT> ask provider:one Again?",
         "ts": "1800000700.000100", "channel": "C7", "event_ts": "1800000700.000100"}
    )
    await rig.front.idle(before + 4)
    assert [e["user"] for e in rig.slack.ephemeral if "Try again" in e["text"]] == ["U1"]
    assert sorted(p.channel for p in rig.slack.parents()) == ["C1", "C2"]  # refused ones posted nothing
    assert rig.front.admission.running == 0 and not rig.front.admission.users  # every place was given back
    rig.llm.scenarios["one-m"] = Scenario(text="Now.")
    assert await rig.slash("/ask", "provider:one Now?", user="U1") == (200, "")
    await rig.front.idle(before + 5)

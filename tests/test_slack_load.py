"""Slack under load: the fake's own published limits, and how the sink spends Slack's budgets
when they are short (continuing a posted reply in new messages, finals that never wait behind
progress, no empty placeholders, a cap on live streams, the status without the post budget).

Freshness figures are the benchmark's (bench/slack_bench.py); these tests check behaviour."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.budgets import PostWindow, SlackWindow, WorkspaceBudgets
from bots.slack.sink import SlackSink
from core.budget import TokenBucket
from core.events import DiscussionStarted, TurnInfo
from core.render import Renderer
from core.sink import Frame, RateLimited, Sink
from tests.fakes.slack_api import POST_BURST, PUBLISHED_PER_MINUTE, FakeSlackAPI, Message

TEAM, USER = "T0TEST", "U1"
LABEL = "`one/one-m`"


def token() -> str:
    return "xoxb-" + secrets.token_hex(12)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlackAPI]:
    async with FakeSlackAPI.published(bot_token=token(), latency=0.0) as api:
        yield api


def client(api: FakeSlackAPI) -> AsyncWebClient:
    return AsyncWebClient(token=api.bot_token, base_url=api.base_url)


def body(m: Message | str) -> str:
    text = m if isinstance(m, str) else m.text
    return text.split("\n\n", 1)[1].removesuffix(" …") if "\n\n" in text else ""


# --- the fake's own limits -------------------------------------------------------------------------


async def test_the_fake_enforces_chat_post_messages_channel_rate_with_a_burst_and_says_when_in_slack_seconds(
    fake: FakeSlackAPI,
) -> None:
    c = client(fake)
    for _ in range(POST_BURST):
        await c.chat_postMessage(channel="C1", text="hi")
    with pytest.raises(SlackApiError) as e:
        await c.chat_postMessage(channel="C1", text="one too many")
    assert e.value.response.status_code == 429 and e.value.response.headers["Retry-After"] == "1"
    await c.chat_postMessage(channel="C2", text="another channel has its own rate")


async def test_the_fake_caps_chat_post_message_per_workspace_and_per_method_per_workspace(fake: FakeSlackAPI) -> None:
    c = client(fake)
    cap = PUBLISHED_PER_MINUTE["chat.postMessage"]
    await asyncio.gather(*(c.chat_postMessage(channel=f"C{i}", text="hi") for i in range(cap)))
    with pytest.raises(SlackApiError) as e:
        await c.chat_postMessage(channel="Cnew", text="the workspace's cap, whatever the channel")
    assert e.value.response.status_code == 429
    parent = fake.parents("C0")[0]
    starts = PUBLISHED_PER_MINUTE["chat.startStream"]
    for _ in range(starts):
        await c.chat_startStream(channel="C0", thread_ts=parent.ts, recipient_user_id=USER, recipient_team_id=TEAM)
    with pytest.raises(SlackApiError) as e:
        await c.chat_startStream(channel="C0", thread_ts=parent.ts, recipient_user_id=USER, recipient_team_id=TEAM)
    assert e.value.response.status_code == 429 and int(e.value.response.headers["Retry-After"]) > 30


async def test_with_time_compressed_retry_after_is_given_in_slacks_seconds() -> None:
    async with FakeSlackAPI.published(bot_token=token(), scale=10.0, latency=0.0) as api:
        c = client(api)
        parent = (await c.chat_postMessage(channel="C1", text="parent"))["ts"]
        for _ in range(PUBLISHED_PER_MINUTE["chat.startStream"]):
            await c.chat_startStream(channel="C1", thread_ts=parent, recipient_user_id=USER, recipient_team_id=TEAM)
        with pytest.raises(SlackApiError) as e:
            await c.chat_startStream(channel="C1", thread_ts=parent, recipient_user_id=USER, recipient_team_id=TEAM)
        # the window is 6 s of the fake's time: a minute of Slack's
        assert int(e.value.response.headers["Retry-After"]) > 6


async def test_stream_chunks_as_slack_sdks_chat_stream_sends_them_are_shown(fake: FakeSlackAPI) -> None:
    c = client(fake)
    parent = (await c.chat_postMessage(channel="C1", text="parent"))["ts"]
    streamer = await c.chat_stream(channel="C1", thread_ts=parent, recipient_team_id=TEAM, recipient_user_id=USER,
                                   buffer_size=4)
    for piece in ("Hello ", "wor", "ld", "!"):
        await streamer.append(markdown_text=piece)
    await streamer.stop()
    (m,) = fake.thread("C1", parent)
    assert m.kind == "stream" and m.text == "Hello world!" and not m.streaming


# --- budgets -------------------------------------------------------------------------------------------------


async def test_a_final_is_granted_at_once_while_a_progress_update_waits_for_the_window_to_slide() -> None:
    window = PostWindow(4, 60.0)
    for _ in range(2):
        await window.acquire(0.0)
    window.due.update({(0, "a", 1), (0, "b", 1)})  # two posted replies still owe their finals
    progress = asyncio.create_task(window.acquire(1.0))  # 2 free, 2 held: waits a minute
    await asyncio.sleep(0.05)
    assert not progress.done()
    await asyncio.wait_for(window.acquire(0.0), 10)  # a final: one of the held slots, now
    progress.cancel()


async def test_a_posted_reply_holds_a_slot_of_the_workspaces_post_window_until_its_final() -> None:
    b = WorkspaceBudgets()
    sink = SlackSink(AsyncWebClient(token="xoxb-x"), b, "C1", "1.0")
    b.streams_enabled = False
    turn = TurnInfo("t1", "one", "one", "one-m")
    sink.budget(None, Frame(turn, "", "", 1, "streaming"))
    assert b.post_window.claims == 1 and b.post_window.reserve == 1
    await sink.aclose()  # however the discussion ends
    assert b.post_window.claims == 0


def test_a_post_takes_the_channels_rate_and_the_workspaces_window_and_a_429_pauses_both() -> None:
    b = WorkspaceBudgets()
    posts = b.post("C1")
    assert posts.workspace is b.post_window and not posts.try_acquire()  # two budgets: acquire only
    posts.pause(5.0)
    assert not posts.available() and not b.post_window.available() and not b.post("C2").ready()


def test_only_so_many_replies_stream_at_once_and_then_one_per_discussion() -> None:
    b = WorkspaceBudgets(max_streams=4)
    b.live_streams = 2
    assert b.can_stream(here=2)  # the only discussion streaming: every reply may
    b.live_streams = 3
    assert b.can_stream(here=0) and not b.can_stream(here=1)  # others stream too: one at a time
    b.live_streams = 4
    assert not b.can_stream(here=0) and not b.can_stream(here=4)
    assert WorkspaceBudgets().can_stream() and WorkspaceBudgets(max_streams=0).can_stream() is False


# --- the sink under load -------------------------------------------------------------------------------------


def answer(n: int) -> str:
    return " ".join(f"w{i:03d}" + ("." if i % 9 == 8 else "") for i in range(n))


async def render(sink: Sink, turn: TurnInfo, pieces: Sequence[str], every: float = 0.01) -> None:
    """Stream ``pieces`` as one turn through the renderer onto ``sink`` (finished at the end)."""
    from core.events import TextDelta, TurnFinished, TurnStarted, TurnUsage

    async def events() -> AsyncIterator[Any]:
        yield TurnStarted(turn)
        for p in pieces:
            await asyncio.sleep(every)
            yield TextDelta(turn.turn_id, p)
        yield TurnFinished(turn, "".join(pieces), TurnUsage(), 0.0, 0.0)

    await Renderer(sink).consume(events())
    await sink.aclose()


def spent(bucket: TokenBucket) -> None:
    """Use up a window: progress waits for it to slide (a minute)."""
    while bucket.try_acquire(0.0):
        pass


async def test_when_chat_update_is_short_a_posted_reply_continues_in_new_messages_and_loses_nothing(
    fake: FakeSlackAPI,
) -> None:
    b = WorkspaceBudgets(post_rate=50.0)  # a channel's posts at 50/s (time compressed), the rest as Slack's
    b.streams_enabled = False
    spent(b["chat.update"])
    c = client(fake)
    parent = (await c.chat_postMessage(channel="C1", text="parent"))["ts"]
    sink = SlackSink(c, b, "C1", parent, recipient_user_id=USER, recipient_team_id=TEAM)
    sink.min_interval = 0.02
    text = answer(120)
    pieces = [text[i : i + 12] for i in range(0, len(text), 12)]
    await asyncio.wait_for(render(sink, TurnInfo("t1", "one", "one", "one-m"), pieces), 60)
    parts = [m for m in fake.thread("C1", parent) if m.text.startswith(LABEL)]
    assert len(parts) >= 3  # continued in new messages, each under the reply's label
    assert not fake.called("chat.update")  # none to spend: nothing waited a minute for one
    assert "".join(body(m) for m in parts) == text  # every character once, in order
    assert all(body(m).endswith(" ") for m in parts[:-1])  # each ends at a word boundary
    assert not parts[-1].text.endswith(" …") and all(m.history[0][1] != f"{LABEL}\n\n …" for m in parts)
    assert b.post_window.claims == 0


async def test_a_posted_reply_does_not_continue_inside_a_code_block(fake: FakeSlackAPI) -> None:
    b = WorkspaceBudgets(post_rate=50.0)
    b.streams_enabled = False
    spent(b["chat.update"])
    c = client(fake)
    parent = (await c.chat_postMessage(channel="C1", text="parent"))["ts"]
    sink = SlackSink(c, b, "C1", parent, recipient_user_id=USER, recipient_team_id=TEAM)
    sink.min_interval = 0.02
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(60)) + "\n```\n"
    text = answer(30) + "\n\n" + code + answer(30)
    pieces = [text[i : i + 10] for i in range(0, len(text), 10)]
    await asyncio.wait_for(render(sink, TurnInfo("t1", "one", "one", "one-m"), pieces), 60)
    parts = [m for m in fake.thread("C1", parent) if m.text.startswith(LABEL)]
    assert "".join(body(m) for m in parts) == text.replace("```python", "```")  # mrkdwn drops the info string
    assert all(body(m).count("```") % 2 == 0 for m in parts)  # no message opens a block another closes


async def test_a_progress_update_waiting_for_budget_gives_way_to_the_final_when_the_turn_ends() -> None:
    class Starved(Sink):
        """Progress draws on a budget that never grants; finals on one that always does."""

        limit, min_interval = 4000, 0.0

        def __init__(self) -> None:
            self.never = TokenBucket(0.0, 1)
            self.never.try_acquire()
            self.post_budget = self.edit_budget = TokenBucket(math.inf, 1)
            self.shown: list[tuple[str, str]] = []

        def budget(self, ref: Any, frame: Frame) -> TokenBucket:
            return self.never if ref is not None and frame.state == "streaming" else self.edit_budget

        async def post(self, frame: Frame) -> Any:
            self.shown.append((frame.state, frame.text))
            return object()

        async def edit(self, ref: Any, frame: Frame) -> None:
            self.shown.append((frame.state, frame.text))

    sink = Starved()
    await asyncio.wait_for(render(sink, TurnInfo("t1", "one", "one", "one-m"), ["Hello ", "world"]), 10)
    assert sink.shown[-1] == ("done", "Hello world")


async def test_under_load_no_empty_placeholder_is_posted_and_a_reply_is_posted_with_its_text(
    fake: FakeSlackAPI,
) -> None:
    b = WorkspaceBudgets(post_rate=50.0)
    b.streams_enabled = False
    spent(b["chat.update"])
    c = client(fake)
    parent = (await c.chat_postMessage(channel="C1", text="parent"))["ts"]
    sink = SlackSink(c, b, "C1", parent, recipient_user_id=USER, recipient_team_id=TEAM)
    await asyncio.wait_for(render(sink, TurnInfo("t1", "one", "one", "one-m"), ["Short ", "answer."], every=0.05), 30)
    parts = [m for m in fake.thread("C1", parent) if m.text.startswith(LABEL)]
    assert all(body(m.history[0][1]) for m in parts)  # each message came with its text
    assert "".join(body(m) for m in parts) == "Short answer."


async def test_the_status_is_set_without_waiting_for_the_channels_post_budget(fake: FakeSlackAPI) -> None:
    fake.scopes += ",assistant:write"
    b = WorkspaceBudgets(post_rate=0.001)  # the parent just spent the channel's one post for a long while
    await b.post("C1").acquire(0.0)
    c = client(fake)
    sink = SlackSink(c, b, "C1", "1800000000.000001", recipient_user_id=USER, recipient_team_id=TEAM)
    started = DiscussionStarted("d1", "compare", "Why?", ["One", "Two"])
    assert not sink.shows(started)  # the renderer spends no post budget on it
    await asyncio.wait_for(sink.aclose(), 10)
    (status,) = fake.statuses
    assert status["status"] and status["loading_messages"] == ["One is writing…", "Two is writing…"]


async def test_retry_after_in_slacks_seconds_becomes_the_budgets_time(fake: FakeSlackAPI) -> None:
    b = WorkspaceBudgets(window=6.0, time_scale=10.0)
    c = client(fake)
    sink = SlackSink(c, b, "C1", "1800000000.000001")
    fake.ratelimit_next["chat.postMessage"] = 1
    fake.retry_after = 3
    turn = TurnInfo("t1", "one", "one", "one-m")
    with pytest.raises(RateLimited) as e:
        await sink.post(Frame(turn, "Hi", "Hi", 1, "streaming"))
    assert e.value.retry_after == pytest.approx(0.3)


def test_slack_windows_are_the_budgets_of_every_tiered_method() -> None:
    b = WorkspaceBudgets()
    assert all(isinstance(x, SlackWindow) for x in b.buckets.values())
    assert isinstance(b["chat.postMessage"], PostWindow)

"""In the thread, in Slack end to end: progress (status, a consensus's task list), the
buttons under answers and summaries, the menus they open, follow-ups, the Messages tab
and the App Home leaderboard. The real bolt app in HTTP mode gets ``block_actions``
payloads form-encoded and signed as Slack signs interactivity requests; its Web API
calls go to the loopback fake of Slack, which refuses Block Kit over Slack's limits; the
providers are the fake LLM server."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack import blocks as kit
from bots.slack.app import SlackFront
from bots.slack.main import main as slack_main
from bots.slack.manifest import bot_events, bot_scopes, manifest
from core.actions import CONTINUE_PROMPT, Action
from core.config import Settings
from core.services import build_services
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.fakes.slack_api import FakeSlackAPI, Message, block_errors
from tests.test_slack import PROVIDERS, body_of, bot_token
from tests.test_slack_governance import ADMIN, GovRig

SCOPES = "commands,chat:write,chat:write.customize,app_mentions:read,im:history,users:read,assistant:write"


@dataclass
class ActRig(GovRig):
    runner: web.AppRunner | None = None

    async def serve(self) -> None:
        self.runner = web.AppRunner(self.front.web_app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/slack/events"  # type: ignore[union-attr]

    async def stop(self) -> None:
        await self.front.shutdown()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.services.aclose()

    async def restart(self) -> None:
        """A new process: new services and front-end on the same database and Slack."""
        await self.stop()
        self.services = build_services(Settings())
        self.front = SlackFront(
            self.services, AsyncWebClient(token=self.slack.bot_token, base_url=self.slack.base_url),
            signing_secret=self.secret,
        )
        await self.front.start()
        await self.serve()

    async def press(
        self,
        message: Message,
        kind: str,
        *,
        user: str = "U1",
        choice: str | None = None,
        positive: bool = True,
    ) -> list[dict[str, Any]]:
        """Click the ``kind`` button under ``message`` (a vote for ``choice``) as ``user``; the
        ephemeral answers it got (via response_url)."""
        element = find(message, kind, choice)
        if element["type"] == "feedback_buttons":
            side = element["positive_button" if positive else "negative_button"]
            clicked = {"type": "feedback_buttons", "action_id": element["action_id"], "value": side["value"],
                       "text": side["text"]}
        else:
            clicked = {"type": "button", "action_id": element["action_id"], "value": element["value"],
                       "text": element["text"]}
        return await self.act(clicked, user=user, message=message)

    async def pick(self, menu: dict[str, Any], choice: str, *, user: str = "U1", channel: str = "C1") -> list[Any]:
        """Choose ``choice`` in an ephemeral menu Parley answered with."""
        (select,) = [e for b in menu["blocks"] if b["type"] == "actions" for e in b["elements"]]
        (option,) = [o for o in select["options"] if Action.decode(o["value"]).choice == choice]  # type: ignore[union-attr]
        clicked = {"type": "static_select", "action_id": select["action_id"], "selected_option": option}
        return await self.act(clicked, user=user, channel=channel)

    async def act(
        self, clicked: dict[str, Any], *, user: str, message: Message | None = None, channel: str = "C1"
    ) -> list[dict[str, Any]]:
        before, answered = self.front.spawned, len(self.slack.responses)
        status, body = await self.interact(payload(self.slack, clicked, user=user, message=message, channel=channel))
        assert (status, body) == (200, ""), body  # acknowledged at once, empty
        await self.front.idle(before + 1)
        return self.slack.responses[answered:]

    def discussions(self) -> list[dict[str, Any]]:
        return self.rows("discussions")


def payload(
    slack: FakeSlackAPI, clicked: dict[str, Any], *, user: str, message: Message | None, channel: str = "C1"
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack posts it for a click in a message (or an ephemeral one)."""
    clicked = {**clicked, "block_id": "b" + secrets.token_hex(3), "action_ts": str(time.time())}
    out: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": "T0TEST", "domain": "parley-test"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEST"},
        "api_app_id": "A0TEST",
        "token": "legacy",
        "trigger_id": "1.2.3",
        "response_url": slack.response_url,
        "channel": {"id": channel, "name": "general"},
        "actions": [clicked],
    }
    if message is None:  # an ephemeral message: Slack sends no message, only its container
        out["container"] = {"type": "message", "message_ts": "1.1", "channel_id": channel, "is_ephemeral": True}
    else:
        out["container"] = {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                            "is_ephemeral": False, "thread_ts": message.thread_ts}
        out["message"] = {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts, "text": message.text,
                          "blocks": message.blocks, "user": "UBOT"}
    return out


def elements(message: Message) -> list[dict[str, Any]]:
    return [e for b in message.blocks if b["type"] in ("actions", "context_actions") for e in b["elements"]]


def kinds(message: Message) -> list[str]:
    out = []
    for e in elements(message):
        if e["type"] == "feedback_buttons":
            out += [Action.decode(e[s]["value"]).kind for s in ("positive_button", "negative_button")]  # type: ignore[union-attr]
        else:
            out.append(Action.decode(e["action_id"]).kind)  # type: ignore[union-attr]
    return out


def find(message: Message, kind: str, choice: str | None = None) -> dict[str, Any]:
    for e in elements(message):
        if e["type"] == "feedback_buttons" and kind in ("up", "down"):
            return e
        a = Action.decode(e["action_id"])
        if a is not None and a.kind == kind and (choice is None or a.choice == choice):
            return e
    raise AssertionError(f"no {kind} button under {message.text[:60]!r}: {kinds(message)}")


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ActRig]:
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
        async with FakeSlackAPI(bot_token=token, scopes=SCOPES) as slack:
            slack.admins.add(ADMIN)
            services = build_services(Settings())
            front = SlackFront(services, AsyncWebClient(token=token, base_url=slack.base_url), signing_secret=secret)
            await front.start()
            async with aiohttp.ClientSession() as http:
                r = ActRig(services, llm, slack, front, "", secret, http)
                await r.serve()
                try:
                    yield r
                finally:
                    await r.stop()
                    assert not slack.invalid, slack.invalid  # nothing Parley sent broke Block Kit's limits


def replies(thread: list[Message], provider: str) -> list[Message]:
    return [m for m in thread if m.text.split("\n", 1)[0].endswith(f"`{provider}/{provider}-m`")]


# --- what goes under answers and summaries --------------------------------------------------------------
@pytest.mark.parametrize("streams", [True, False], ids=["native-stream", "post-and-update"])
async def test_answers_carry_feedback_and_ask_again_and_a_compare_summary_carries_votes(
    rig: ActRig, streams: bool
) -> None:
    rig.front.budgets("T0TEST").streams_enabled = streams
    rig.llm.scenarios["one-m"] = Scenario(text="One says Lisbon.")
    rig.llm.scenarios["two-m"] = Scenario(text="Two says Berlin.")
    _, thread = await rig.discuss("/compare", "providers:one,two Where to launch?")
    for p, said in (("one", "One says Lisbon."), ("two", "Two says Berlin.")):
        (m,) = replies(thread, p)
        assert body_of(m) == said
        assert kinds(m) == ["up", "down", "again"]  # no Continue: the answer was not cut
        ctx = [b for b in m.blocks if b["type"] == "context_actions"]
        assert len(ctx) == 1 and ctx[0]["elements"][0]["type"] == "feedback_buttons"
        if streams:  # the actions come with chat.stopStream, under the streamed text
            assert m.kind == "stream" and m.blocks[0]["type"] == "context_actions"
        else:  # a posted message shows its blocks instead of its text: the text is the first block
            assert m.blocks[0] == {"type": "markdown", "text": m.blocks[0]["text"]} and said in m.blocks[0]["text"]
        assert block_errors(m.blocks) == []
    summary = thread[-1]
    assert "Total" in summary.text
    assert kinds(summary) == ["vote", "vote", "consensus", "compare"]
    votes = [e for e in elements(summary) if Action.decode(e["action_id"]).kind == "vote"]  # type: ignore[union-attr]
    assert {e["text"]["text"] for e in votes} == {"🏆 one/one-m", "🏆 two/two-m"}
    turn_ids = {r["id"] for r in rig.rows("turns")}
    assert {Action.decode(e["value"]).choice for e in votes} == turn_ids  # type: ignore[union-attr]
    assert block_errors(summary.blocks) == []


async def test_a_cut_answer_offers_continue_and_it_goes_on_in_the_same_thread(rig: ActRig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="The plan has three parts: first", finish_reason="length")
    parent, thread = await rig.discuss("/ask", "provider:one max_tokens:8 Plan?")
    (m,) = replies(thread, "one")
    assert kinds(m) == ["up", "down", "again", "continue"]
    rig.llm.scenarios["one-m"] = Scenario(text=", second, third.")
    rig.llm.requests.clear()
    assert await rig.press(m, "continue") == []  # nothing to say privately: the thread shows it
    thread = rig.slack.thread(parent.channel, parent.ts)
    assert [body_of(r) for r in replies(thread, "one")] == ["The plan has three parts: first", ", second, third."]
    sent = rig.llm.requests[-1].body["messages"]
    assert sent[-1] == {"role": "user", "content": CONTINUE_PROMPT}
    assert {"role": "assistant", "content": "The plan has three parts: first"} in sent
    (d1, d2) = rig.discussions()
    assert d1["conversation"] == d2["conversation"] == f"slack:T0TEST:C1:{parent.ts}"


# --- feedback and votes ---------------------------------------------------------------------------------------
async def test_feedback_and_votes_answer_privately_are_changeable_and_a_double_click_acts_once(rig: ActRig) -> None:
    _, thread = await rig.discuss("/compare", "providers:one,two Where?")
    one, two, summary = replies(thread, "one")[0], replies(thread, "two")[0], thread[-1]
    (said,) = await rig.press(one, "up")
    assert said["response_type"] == "ephemeral" and not said["replace_original"] and "👍" in said["text"]
    assert await rig.press(one, "up") == []  # a double click (or a redelivery): the first one answered
    await rig.press(one, "down", positive=False)  # changed
    assert [(f["user"], f["value"]) for f in rig.rows("feedback")] == [("U1", -1)]
    t1, t2 = (r["id"] for r in rig.rows("turns"))
    (said,) = await rig.press(summary, "vote", choice=t1)
    assert said["response_type"] == "ephemeral" and "Your vote" in said["text"] and "one/one-m" in said["text"]
    await rig.press(summary, "vote", choice=t2)  # changed
    await rig.press(summary, "vote", choice=t2, user="U2")
    assert sorted((v["user"], v["turn_id"]) for v in rig.rows("votes")) == [("U1", t2), ("U2", t2)]
    assert two.ts and len(rig.discussions()) == 1  # a vote starts nothing


# --- menus: ask again with…, compare with… ----------------------------------------------------------------
async def test_ask_again_lists_only_what_policy_allows_the_clicker_and_runs_once_in_the_thread(rig: ActRig) -> None:
    await rig.answer("/policy", "deny providers:three users:U2", user=ADMIN)
    rig.llm.scenarios["one-m"] = Scenario(text="One says Tuesday.")
    parent, thread = await rig.discuss("/ask", "provider:one When?", user="U2")
    (m,) = replies(thread, "one")
    (menu,) = await rig.press(m, "again", user="U2")
    assert menu["response_type"] == "ephemeral" and not menu["replace_original"]
    assert block_errors(menu["blocks"]) == []
    (select,) = [e for b in menu["blocks"] if b["type"] == "actions" for e in b["elements"]]
    offered = [Action.decode(o["value"]).choice for o in select["options"]]  # type: ignore[union-attr]
    assert "provider:two" in offered and any(c.startswith("persona:") for c in offered)
    assert "provider:three" not in offered and "provider:one" not in offered  # denied to U2; already asked
    (other,) = await rig.press(m, "again", user="U1")  # the menu is built for whoever clicks
    assert "provider:three" in json.dumps(other["blocks"])
    rig.llm.scenarios["two-m"] = Scenario(text="Two says Thursday.")
    (note,) = await rig.pick(menu, "provider:two", user="U2")
    assert note["replace_original"] and "two" in note["text"]  # the menu is replaced by what happens
    assert await rig.pick(menu, "provider:two", user="U2") == []  # a double pick runs once
    thread = rig.slack.thread(parent.channel, parent.ts)
    assert [body_of(r) for r in replies(thread, "two")] == ["Two says Thursday."]
    assert len(rig.discussions()) == 2
    assert "One says Tuesday." not in json.dumps(rig.llm.requests[-1].body)  # a second opinion, fresh


async def test_a_click_policy_does_not_allow_is_refused_privately_and_changes_nothing(rig: ActRig) -> None:
    _, thread = await rig.discuss("/compare", "providers:one,two Where?")
    summary = thread[-1]
    t1 = rig.rows("turns")[0]["id"]
    await rig.answer("/policy", "deny commands:compare users:U2", user=ADMIN)
    sent = len(rig.llm.requests)
    (said,) = await rig.press(summary, "vote", choice=t1, user="U2")
    assert said["response_type"] == "ephemeral" and said["text"].startswith("⛔") and "compare" in said["text"]
    # a forged (or stale) menu choice is refused at admission just the same
    forged = Action("compare", rig.discussions()[0]["id"], "provider:three").encode()
    (said,) = await rig.act({"type": "static_select", "action_id": forged, "selected_option": {"value": forged}},
                            user="U2")
    assert said["text"].startswith("⛔")
    assert rig.rows("votes") == [] and len(rig.discussions()) == 1 and len(rig.llm.requests) == sent


async def test_consensus_on_these_and_compare_with_run_in_the_same_thread(rig: ActRig) -> None:
    parent, thread = await rig.discuss("/compare", "providers:one,two Where?")
    summary = thread[-1]
    await rig.press(summary, "consensus")
    thread = rig.slack.thread(parent.channel, parent.ts)
    assert any(m.text.startswith("*Stage 3 · Moderator synthesis*") for m in thread)
    consensus_summary = thread[-1]
    assert kinds(consensus_summary) == ["compare"]
    (menu,) = await rig.press(consensus_summary, "compare")
    assert "provider:three" in json.dumps(menu["blocks"]) and "provider:one" not in json.dumps(menu["blocks"])
    await rig.pick(menu, "provider:three")
    thread = rig.slack.thread(parent.channel, parent.ts)
    assert replies(thread, "three")  # the third provider joined the comparison, in the same thread
    modes = [d["mode"] for d in rig.discussions()]
    assert modes == ["parallel", "consensus", "parallel"]
    assert {d["conversation"] for d in rig.discussions()} == {f"slack:T0TEST:C1:{parent.ts}"}


# --- durability and refusals ----------------------------------------------------------------------------------
async def test_old_buttons_keep_working_after_a_restart(rig: ActRig) -> None:
    parent, thread = await rig.discuss("/compare", "providers:one,two Where?")
    summary, one = thread[-1], replies(thread, "one")[0]
    t1 = rig.rows("turns")[0]["id"]
    await rig.restart()  # nothing of the first process survives but the database
    (said,) = await rig.press(summary, "vote", choice=t1)
    assert "Your vote" in said["text"]
    (said,) = await rig.press(one, "up")
    assert "👍" in said["text"]
    await rig.press(summary, "consensus")
    assert [d["mode"] for d in rig.discussions()] == ["parallel", "consensus"]
    assert any(m.text.startswith("*Stage 1") for m in rig.slack.thread(parent.channel, parent.ts))
    assert [v["turn_id"] for v in rig.rows("votes")] == [t1]


async def test_an_action_on_a_paused_provider_or_over_budget_says_so_and_runs_nothing(rig: ActRig) -> None:
    _, thread = await rig.discuss("/compare", "providers:one,two Where?")
    summary = thread[-1]
    reg, store = rig.services.registry, rig.services.store
    store.set_health("one", "auth_failed", "one rejected the key (401).", 4e9,
                     reg.fingerprint(reg.endpoint(reg.get("one"))))
    reg._marks = (0.0, {})
    sent = len(rig.llm.requests)
    (said,) = await rig.press(summary, "consensus")
    assert said["response_type"] == "ephemeral" and "401" in said["text"]
    store.clear_health("one")
    reg._marks = (0.0, {})
    await rig.answer("/budget", "set scope:workspace daily:0.0000001", user=ADMIN)
    (said,) = await rig.press(summary, "consensus")
    assert said["text"].startswith("⛔ Over budget")
    assert len(rig.discussions()) == 1 and len(rig.llm.requests) == sent


# --- progress -------------------------------------------------------------------------------------------------
async def test_the_status_is_set_while_a_discussion_runs_and_cleared_when_it_ends(rig: ActRig) -> None:
    parent, _ = await rig.discuss("/compare", "providers:one,two personas:riley Where?")
    first, last = rig.slack.statuses[0], rig.slack.statuses[-1]
    assert (first["channel_id"], first["thread_ts"], first["status"]) == ("C1", parent.ts, "is thinking…")
    assert len(first["loading_messages"]) == 2 and all(
        m.startswith("Riley Engstrom") and m.endswith("is writing…") for m in first["loading_messages"]
    )
    assert (last["thread_ts"], last["status"]) == (parent.ts, "")


async def test_the_status_is_cleared_when_every_turn_fails_and_a_status_failure_breaks_nothing(rig: ActRig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(http_error=(500, {"error": {"message": "boom"}}, {}))
    await rig.discuss("/ask", "provider:one Where?")
    assert rig.slack.statuses[-1]["status"] == ""
    rig.slack.statuses.clear()
    rig.slack.fail_next["assistant.threads.setStatus"] = "channel_not_found"
    rig.llm.scenarios["one-m"] = Scenario(text="Still answered.")
    parent, thread = await rig.discuss("/ask", "provider:one Where?")
    assert [body_of(m) for m in replies(thread, "one")] == ["Still answered."]
    assert rig.slack.statuses == []  # the first call failed; nothing was set, so nothing needed clearing


async def test_an_interrupted_discussion_clears_its_status_and_marks_its_stage(rig: ActRig) -> None:
    for p in PROVIDERS:
        rig.llm.scenarios[f"{p}-m"] = Scenario(text="slow " * 200, chunk_chars=5, chunk_delay=0.05)
    await rig.slash("/consensus", "providers:one,two moderator:one Decide")
    await rig.slack.wait_for(lambda: rig.slack.called("chat.startStream"))
    await rig.front.shutdown()
    assert rig.slack.statuses[-1]["status"] == ""
    (tasks,) = [m for m in rig.slack.messages.values() if m.blocks and m.blocks[0]["type"] == "plan"]
    assert [t["status"] for t in tasks.blocks[0]["tasks"]] == ["error", "pending", "pending"]


async def test_a_consensus_shows_a_task_list_that_follows_its_stages(rig: ActRig) -> None:
    parent, thread = await rig.discuss("/consensus", "providers:one,two moderator:one Decide")
    tasks = thread[0]
    assert tasks.blocks[0]["type"] == "plan" and block_errors(tasks.blocks) == []
    assert [t["title"] for t in tasks.blocks[0]["tasks"]] == [
        "Stage 1 · Independent answers", "Stage 2 · Anonymous review, round 1", "Stage 3 · Moderator synthesis"
    ]
    assert [t["status"] for t in tasks.blocks[0]["tasks"]] == ["complete"] * 3
    shown = [text for _, text in tasks.history]  # the fallback text, as each edit left it
    assert shown[0].splitlines()[1:] == [
        "◻️ Stage 1 · Independent answers", "◻️ Stage 2 · Anonymous review, round 1",
        "◻️ Stage 3 · Moderator synthesis",
    ]
    assert [ln.split(" ", 1)[0] for ln in shown[2].splitlines()[1:]] == ["✅", "⏳", "◻️"]
    assert shown[-1].startswith("*Consensus complete*") and shown[-1].count("✅") == 3
    assert len(shown) == 5  # posted, three stages started, completed: edited in place, never reposted
    assert kinds(thread[-1]) == ["compare"]
    assert not [m for m in rig.slack.messages.values() if m.blocks and m.blocks[0]["type"] == "plan"
                and m is not tasks]


# --- Block Kit limits --------------------------------------------------------------------------------------------
def test_the_validator_refuses_what_slack_refuses() -> None:
    button = {"type": "button", "text": {"type": "plain_text", "text": "x"}, "action_id": "a", "value": "v"}
    fb = {"type": "feedback_buttons", "action_id": "f",
          "positive_button": {"text": {"type": "plain_text", "text": "👍"}, "value": "p"},
          "negative_button": {"text": {"type": "plain_text", "text": "👎"}, "value": "n"}}
    assert block_errors([{"type": "actions", "elements": [button]}]) == []
    assert block_errors([{"type": "actions", "elements": [{**button, "action_id": f"a{i}"} for i in range(26)]}])
    assert block_errors([{"type": "context_actions", "elements": [fb] * 5}]) == []
    assert block_errors([{"type": "context_actions", "elements": [fb] * 6}])
    assert block_errors([{"type": "context_actions", "elements": [button]}])  # buttons do not go there
    assert block_errors([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])
    assert block_errors([{"type": "markdown", "text": "x" * 12_001}])
    assert block_errors([{"type": "divider"}] * 51) and not block_errors([{"type": "divider"}] * 50)
    assert block_errors([{"type": "actions", "elements": [{**button, "text": {"type": "plain_text", "text": "x" * 76}}]}])


def test_parleys_largest_messages_stay_within_block_kit_limits() -> None:
    votes = [Action("vote", "d" * 12, f"{i:012d}") for i in range(30)]
    labels = {a.choice: "⚖️ A persona with a long name · provider/model-" + "x" * 80 for a in votes}
    out = kit.summary_blocks("a line of summary\n" * 20_000, [*votes, Action("consensus", "d"), Action("compare", "d")],
                             labels)
    assert block_errors(out) == [] and len(out) == 50
    assert sum(len(b["elements"]) for b in out if b["type"] == "actions") == 32  # no action dropped
    menu = kit.menu_blocks(Action("again", "t" * 12), [(f"persona:p{i}", "A label " * 30) for i in range(25)])
    assert block_errors(menu) == []
    answer = kit.answer_blocks("y" * 20_000, [Action("up", "t"), Action("down", "t"), Action("again", "t"),
                                              Action("continue", "t")])
    assert block_errors(answer) == []
    _, plan = kit.task_list([f"Stage {i}" for i in range(12)], ["complete"] * 3 + ["in_progress"] + ["pending"] * 8)
    assert block_errors(plan) == []


# --- follow-ups, DMs and the Messages tab ------------------------------------------------------------------------
async def reply_in_thread(rig: ActRig, thread_ts: str, text: str, *, channel: str = "C1", wait: bool = True) -> None:
    before = rig.front.spawned
    ts = f"{int(time.time())}.{secrets.randbelow(10**6):06d}"
    await rig.event({"type": "message", "channel_type": "channel", "user": "U1", "text": text, "ts": ts,
                     "thread_ts": thread_ts, "channel": channel, "event_ts": ts})
    if wait:
        await rig.front.idle(before + 1)


async def test_follow_ups_without_a_mention_only_when_an_admin_turns_them_on(rig: ActRig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="Launch in Lisbon.")
    ts = await rig.mention("ask provider:one Where to launch?")
    await reply_in_thread(rig, ts, "and the second city?")
    assert len(rig.discussions()) == 1  # off by default: a reply in the thread is the people's, not Parley's
    done = await rig.answer("/policy", "followups on", user=ADMIN)
    assert "on" in done
    await reply_in_thread(rig, ts, "and the second city?")
    assert len(rig.discussions()) == 2
    assert "Launch in Lisbon." in json.dumps(rig.llm.requests[-1].body)  # it follows up on the thread
    await reply_in_thread(rig, "1700000000.000001", "a thread Parley never answered")
    assert len(rig.discussions()) == 2
    # a reply that mentions Parley is answered once, by app_mention
    await reply_in_thread(rig, ts, "<@UBOT> and the third?", wait=False)  # Slack sends both events
    await rig.mention("and the third?", thread_ts=ts)
    assert len(rig.discussions()) == 3


async def test_a_direct_message_thread_continues_without_a_mention(rig: ActRig) -> None:
    rig.llm.scenarios["one-m"] = Scenario(text="Start with pricing.")
    ts = await rig.dm("ask provider:one What first?")
    before = rig.front.spawned
    await rig.event({"type": "message", "channel_type": "im", "user": "U1", "text": "and then?", "ts": f"{ts}1",
                     "thread_ts": ts, "channel": "D1", "event_ts": f"{ts}1"})
    await rig.front.idle(before + 1)
    assert len(rig.discussions()) == 2
    assert "Start with pricing." in json.dumps(rig.llm.requests[-1].body)


async def test_the_messages_tab_suggests_the_saved_panels_this_person_may_run(rig: ActRig) -> None:
    for name, providers in (("pair", ["one", "two"]), ("wide", ["one", "two", "three"])):
        await rig.services.governance.db.save_panel("slack:T0TEST", ADMIN, name, {"providers": providers})
    await rig.answer("/policy", "deny providers:three users:U2", user=ADMIN)
    for user, channel in (("U1", "D1"), ("U2", "D2")):
        before = rig.front.spawned
        await rig.event({"type": "app_home_opened", "user": user, "channel": channel, "tab": "messages",
                         "event_ts": str(time.time())})
        await rig.front.idle(before + 1)
    u1, u2 = rig.slack.suggested
    assert u1["channel_id"] == "D1" and "thread_ts" not in u1  # an agent app's DM: no thread_ts
    assert [p["message"].split(" ", 2)[:2] for p in u1["prompts"]] == [["compare", "panel:pair"],
                                                                        ["compare", "panel:wide"]]
    assert [p["message"].split(" ", 2)[1] for p in u2["prompts"]] == ["panel:pair"]  # wide needs three
    assert rig.slack.homes == {}  # the Messages tab publishes no Home


async def test_app_home_shows_the_leaderboard(rig: ActRig) -> None:
    _, thread = await rig.discuss("/compare", "providers:one,two Where?")
    t1 = rig.rows("turns")[0]["id"]
    await rig.press(thread[-1], "vote", choice=t1)
    for user in ("U1", ADMIN):
        view = await rig.open_home(user)
        headers = [b["text"]["text"] for b in view["blocks"] if b["type"] == "header"]
        assert "Leaderboard" in headers
        text = json.dumps(view)
        assert "one" in text and "100% wins" in text and "1 votes" in text


# --- the app Slack knows ------------------------------------------------------------------------------------------
#: The scope each Web API method Parley calls needs (https://docs.slack.dev/reference/methods).
METHOD_SCOPES = {
    "auth.test": None, "chat.postMessage": "chat:write", "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write", "chat.startStream": "chat:write", "chat.appendStream": "chat:write",
    "chat.stopStream": "chat:write", "assistant.threads.setStatus": "chat:write",
    "assistant.threads.setSuggestedPrompts": "assistant:write", "users.info": "users:read",
    "views.publish": None, "views.open": None,
}


async def test_the_manifest_enables_exactly_what_the_app_uses(
    rig: ActRig, capsys: pytest.CaptureFixture[str]
) -> None:
    await rig.discuss("/consensus", "providers:one,two moderator:one Decide")
    await rig.open_home(ADMIN)
    before = rig.front.spawned
    await rig.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "messages",
                     "event_ts": str(time.time())})
    await rig.front.idle(before + 1)
    m = manifest(socket_mode=True)
    scopes = m["oauth_config"]["scopes"]["bot"]
    used = {METHOD_SCOPES[c.method] for c in rig.slack.calls} - {None}
    assert used <= set(scopes)
    assert set(scopes) == used | {"commands", "chat:write.customize", "app_mentions:read", "im:history",
                                  "im:read", "im:write"}  # each of the rest is for an event or a command
    assert m["settings"]["event_subscriptions"]["bot_events"] == ["app_mention", "message.im", "app_home_opened"]
    assert m["settings"]["interactivity"]["is_enabled"]
    assert 0 < len(m["features"]["agent_view"]["agent_description"]) <= 300
    assert m["features"]["app_home"]["messages_tab_enabled"] is True
    assert "channels:history" not in scopes and "groups:history" not in scopes  # follow-ups are opt-in
    with_followups = manifest(socket_mode=True, followups=True)
    assert with_followups["settings"]["event_subscriptions"]["bot_events"] == bot_events(followups=True) == [
        "app_mention", "message.im", "app_home_opened", "message.channels", "message.groups"]
    assert set(with_followups["oauth_config"]["scopes"]["bot"]) - set(scopes) == {"channels:history",
                                                                                 "groups:history"}
    assert bot_scopes(followups=True) == with_followups["oauth_config"]["scopes"]["bot"]
    assert slack_main(["manifest", "--followups"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "message.groups" in printed["settings"]["event_subscriptions"]["bot_events"]

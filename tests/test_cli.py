"""End to end through the real `parley` command (a subprocess) against the fake LLM server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import vendor_errors as ve
from tests.fakes.llm_server import FakeLLMServer, Scenario, running_in_thread

MODELS = ["ok", "auth", "kimi-auth", "quota", "rate", "overload", "bad", "context", "hang", "drop",
          "nodone", "anth-ok", "anth-overload"]
SECRET = "sk-live-SECRET-abcdef1234567890"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with running_in_thread() as s:
        yield s


@pytest.fixture
def env(server: FakeLLMServer, tmp_path: Path) -> dict[str, str]:
    server.reset()
    models = "\n".join(f'[providers.acme.models."{m}"]\ninput = 2.0\noutput = 4.0\n' for m in MODELS)
    (tmp_path / "parley.toml").write_text(
        f'[providers.acme]\nlabel = "Acme"\nbase_url = "{server.base_url}"\nkey_env = "ACME_API_KEY"\n'
        f'default_model = "ok"\n{models}\n'
        f'[providers.anth]\nlabel = "Anth"\nwire = "anthropic_messages"\nbase_url = "{server.base_url}"\n'
        f'key_env = "ANTH_KEY"\ndefault_model = "anth-ok"\n'
        f'[providers.anth.models."anth-ok"]\ninput = 1.0\noutput = 1.0\n'
        f'[providers.anth.models."anth-overload"]\ninput = 1.0\noutput = 1.0\n'
        f'[providers.kimi]\nbase_url = "{server.base_url}"\n'
        f'[providers.kimi.models."kimi-auth"]\ninput = 1.0\noutput = 1.0\n'
    )
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    return {
        **keep,
        "PARLEY_CONFIG": str(tmp_path / "parley.toml"),
        "PARLEY_DB": str(tmp_path / "cli.db"),
        "ACME_API_KEY": SECRET,
        "ANTH_KEY": SECRET,
        "MOONSHOT_API_KEY": SECRET,
        "PARLEY_RETRY_BASE_DELAY": "0.01",
        "PARLEY_READ_TIMEOUT": "1",
    }


def parley_text(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run the command; its exit code, stdout and stderr."""
    p = subprocess.run([sys.executable, "-m", "bots.cli", *args], env=env, capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert SECRET not in p.stdout and SECRET not in p.stderr  # secrets never printed
    return p.returncode, p.stdout, p.stderr


def parley(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[int, list[dict], str]:
    rc, out, err = parley_text(env, *args)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rc, events, err


def failure(events: list[dict]) -> dict:
    failed = [e for e in events if e["type"] == "turn_failed"]
    assert failed, events
    return failed[-1]["error"]


def test_ask_json_success_events(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.scenarios["ok"] = Scenario(text="Announce v2 with a changelog thread.", usage="top",
                                      prompt_tokens=1000, completion_tokens=100)
    rc, events, _ = parley(env, "ask", "--json", "provider:acme", "How", "should", "we", "announce?")
    assert rc == 0
    types = [e["type"] for e in events]
    assert types[0] == "discussion_started" and types[1] == "turn_started" and types[-1] == "discussion_finished"
    assert "text" in types and types[-2] == "turn_finished"
    text = "".join(e["text"] for e in events if e["type"] == "text")
    fin = events[-2]
    assert text == fin["text"] == "Announce v2 with a changelog thread."
    assert fin["usage"]["input_tokens"] == 1000 and fin["usage"]["output_tokens"] == 100
    assert fin["usage"]["cost_usd"] == pytest.approx((1000 * 2 + 100 * 4) / 1e6)
    assert fin["ttft_ms"] > 0 and fin["latency_ms"] >= fin["ttft_ms"]
    assert server.requests_for("ok")[0].body["messages"][-1]["content"] == "How should we announce?"


def test_plain_output_streams_answer(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.scenarios["ok"] = Scenario(text="Plain answer.")
    rc, out, err = parley_text(env, "ask", "provider:acme", "hi")
    assert rc == 0
    assert out == "Plain answer.\n"  # the answer itself on stdout, nothing else
    assert "acme/ok" in err and "1 turns (0 failed)" in err  # label and summary on stderr


@pytest.mark.parametrize(
    "model, scenario, kind, fragment, requests",
    [
        ("auth", Scenario(http_error=ve.openai_invalid_key()), "auth", "ACME_API_KEY", 1),
        ("quota", Scenario(http_error=ve.openai_insufficient_quota()), "quota_exhausted", "quota", 1),
        ("rate", Scenario(http_error=ve.openai_rate_limited(5)), "rate_limited", "rate limiting", 3),
        ("overload", Scenario(http_error=ve.openai_server_error()), "overloaded", "overloaded", 3),
        ("bad", Scenario(http_error=ve.openai_model_not_found()), "bad_request", "model", 1),
        ("context", Scenario(http_error=ve.openai_context_length()), "context_too_long", "too long", 1),
        ("hang", Scenario(hang=True), "timeout", "in time", 3),
        ("drop", Scenario(text="partial text here", chunk_chars=3, drop_after_chunks=2), "truncated", "dropped", 1),
        ("nodone", Scenario(text="no terminator", no_terminator=True), "truncated", "before it was complete", 1),
    ],
)
def test_each_failure_kind(server: FakeLLMServer, env: dict[str, str], model, scenario, kind, fragment,
                           requests) -> None:
    server.scenarios[model] = scenario
    rc, events, err = parley(env, "ask", "--json", f"provider:acme/{model}", "hi")
    assert rc == 1
    error = failure(events)
    assert error["kind"] == kind
    assert fragment.lower() in error["message"].lower()
    assert len(server.requests_for(model)) == requests
    if kind == "truncated" and model == "drop":
        failed = [e for e in events if e["type"] == "turn_failed"][0]
        assert failed["text"] == "partia"  # the two chunks shown are kept


def test_kimi_wrong_region_401(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.scenarios["kimi-auth"] = Scenario(http_error=ve.moonshot_invalid_auth())
    rc, events, _ = parley(env, "ask", "--json", "provider:kimi/kimi-auth", "hi")
    err = failure(events)
    assert rc == 1 and err["kind"] == "auth"
    assert "MOONSHOT_BASE_URL" in err["message"] and "api.moonshot.cn" in err["message"]


def test_anthropic_error_after_200(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.scenarios["anth-overload"] = Scenario(text="abcdef", chunk_chars=2, error_after_chunks=1)
    rc, events, _ = parley(env, "ask", "--json", "provider:anth/anth-overload", "hi")
    assert rc == 1 and failure(events)["kind"] == "overloaded"


def test_unreachable_and_not_configured(server: FakeLLMServer, env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, events, _ = parley({**env, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": SECRET},
                           "ask", "--json", "provider:openai", "hi")
    assert rc == 1 and failure(events)["kind"] == "unreachable"
    rc, events, _ = parley(env, "ask", "--json", "provider:deepseek", "hi")
    err = failure(events)
    assert rc == 1 and err["kind"] == "not_configured" and "DEEPSEEK_API_KEY" in err["message"]


def test_usage_errors_exit_2_with_suggestions(env: dict[str, str]) -> None:
    rc, _, err = parley(env, "ask", "provider:acmee", "hi")
    assert rc == 2 and "Did you mean 'acme'" in err
    rc, _, err = parley(env, "ask", "provider:acme/gpt-9", "hi")
    assert rc == 2 and "model" in err
    rc, _, err = parley(env, "ask", "colour:blue", "hi")
    assert rc == 2 and "Unknown option" in err


def test_providers_and_usage_commands(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.scenarios["ok"] = Scenario(text="x", prompt_tokens=10, completion_tokens=5)
    parley(env, "ask", "provider:acme", "hi")
    server.scenarios["quota"] = Scenario(http_error=ve.openai_insufficient_quota())
    parley(env, "ask", "provider:acme/quota", "hi")
    rc, rows, _ = parley(env, "providers", "--json")
    by_id = {r["id"]: r for r in rows}
    assert rc == 0 and by_id["acme"]["status"] == "quota_exhausted"  # seen on a real call
    assert by_id["anth"]["status"] == "ok" and by_id["openai"]["status"] == "not_configured"
    rc, usage, _ = parley(env, "usage", "--json")
    ok = next(u for u in usage if u.get("model") == "ok")
    assert ok["input_tokens"] == 10 and ok["cost_usd"] == pytest.approx((10 * 2 + 5 * 4) / 1e6)
    db = Path(env["PARLEY_DB"]).read_bytes()
    assert SECRET.encode() not in db


def test_compare_and_consensus_json(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.default = Scenario(text="An answer. RANKING: A\nREVISED ANSWER: better")
    rc, events, _ = parley(env, "compare", "--json", "providers:acme,anth", "Q?")
    assert rc == 0 and sum(e["type"] == "turn_finished" for e in events) == 2
    rc, events, _ = parley(env, "consensus", "--json", "providers:acme,anth", "Q?")
    assert rc == 0
    assert [e["stage"] for e in events if e["type"] == "stage_started"] == ["answer", "review", "synthesis"]
    # every turn runs inside the stage announced before it, labelled with that stage
    current, ran = None, []
    for e in events:
        if e["type"] == "stage_started":
            current = (e["stage"], e["round"])
        elif e["type"] in ("turn_started", "turn_finished", "turn_failed"):
            assert (e["stage"], e["round"]) == current, e
            if e["type"] != "turn_started":
                ran.append((e["stage"], e["provider"], e["type"], e["text"]))
    text = "An answer. RANKING: A\nREVISED ANSWER: better"
    assert len(ran) == 5
    assert sorted(ran[:2]) == [("answer", p, "turn_finished", text) for p in ("acme", "anth")]
    assert sorted(ran[2:4]) == [("review", p, "turn_finished", text) for p in ("acme", "anth")]
    assert ran[4] == ("synthesis", "acme", "turn_finished", text)  # moderator on the first panelist's provider
    assert events[-1]["ranking"]


def test_plain_output_carries_no_chat_markup(server: FakeLLMServer, env: dict[str, str]) -> None:
    server.default = Scenario(text="An answer. RANKING: A\nREVISED ANSWER: better")
    rc, _, err = parley(env, "consensus", "providers:acme,anth", "Q?")
    assert rc == 0
    assert "\nTotal: 5 turns (0 failed)" in err and "Peer ranking (Borda, 2 of 2 reviewers voted): 1." in err
    assert "*" not in err  # core hands structure to the CLI, which prints it plain
    p = subprocess.run([sys.executable, "-m", "bots.cli", "personas"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0 and "Personas — use persona:ID" in p.stdout and "riley Riley Engstrom" in p.stdout
    assert "*" not in p.stdout and "`" not in p.stdout


def test_governance_commands_and_a_refusal_exits_3(server: FakeLLMServer, env: dict[str, str]) -> None:
    """The CLI's operator administers the terminal scope: policy, budgets, keys and panels,
    each with --json; a request policy or a budget refuses exits 3 and calls no provider."""
    env = {**env, "PARLEY_SECRET_KEY": "cli-test-operator-secret-0123456789"}
    rc, rows, _ = parley(env, "policy", "deny", "providers:anth", "--json")
    assert rc == 0 and rows[0]["effect"] == "deny" and rows[0]["pattern"] == "anth"
    rc, _, err = parley(env, "ask", "provider:anth", "hi")
    assert rc == 3 and "rule #1" in err and server.requests == []
    rc, rows, _ = parley(env, "panel", "save", "launch", "providers:acme,kimi/kimi-auth", "--json")
    assert rc == 0 and rows[0]["options"] == {"providers": ["acme", "kimi/kimi-auth"]}
    rc, rows, _ = parley(env, "panel", "list", "--json")
    assert [r["name"] for r in rows] == ["launch"]
    rc, rows, _ = parley(env, "budget", "set", "scope:workspace", "daily:0.0000001", "--json")
    assert rc == 0 and rows[0]["cap_usd"] == pytest.approx(1e-7)
    rc, _, err = parley(env, "compare", "panel:launch", "Launch on Friday?")
    assert rc == 3 and "could cost up to $" in err and "resets at" in err and server.requests == []
    parley(env, "budget", "set", "scope:workspace", "daily:100")
    own = "sk-cli-own-key-abcdefghijklmnop-4242"
    rc, rows, _ = parley(env, "keys", "set", "provider:acme", own, "--json")
    assert rc == 0 and rows == [{"provider": "acme", "for": "you", "last4": "4242"}]
    server.scenarios["ok"] = Scenario(text="Friday is fine.")
    rc, events, _ = parley(env, "ask", "provider:acme", "--json", "Launch?")
    assert rc == 0 and server.requests[-1].headers["Authorization"] == f"Bearer {own}"
    db = Path(env["PARLEY_DB"])
    assert all(own.encode() not in f.read_bytes() for f in db.parent.glob(db.name + "*"))
    rc, rows, _ = parley(env, "usage", "--json")
    assert rows[0]["kind"] == "you" and rows[0]["today_usd"] > 0

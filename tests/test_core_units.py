"""Pure unit tests: grammar, catalog, errors, SSE, cost, store."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core import commands
from core.errors import ErrorKind, UsageError, classify, redact, register_secret, retry_after_seconds
from core.providers.catalog import load_catalog
from core.providers.sse import parse_sse
from core.store import Store
from core.usage import cost_usd, turn_usage

ROOT = Path(__file__).resolve().parent.parent


# --- grammar -------------------------------------------------------------------------------
def test_grammar_options_then_question() -> None:
    r = commands.parse("ask", "provider:kimi temperature:0.3 How should we announce our v2 launch?")
    assert r.providers == ["kimi"] and r.temperature == 0.3
    assert r.prompt == "How should we announce our v2 launch?"
    assert r.mode == "single"


def test_grammar_lists_and_models() -> None:
    r = commands.parse("compare", "personas:riley,morgan providers:openai,anthropic/claude-haiku-4-5 Q?")
    assert r.personas == ["riley", "morgan"]
    assert r.providers == ["openai", "anthropic/claude-haiku-4-5"]


def test_grammar_question_may_contain_colons_and_urls() -> None:
    r = commands.parse("ask", "Note: see https://example.com/x and decide")
    assert r.prompt == "Note: see https://example.com/x and decide"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("provder:kimi hi", "Did you mean 'provider'"),
        ("temperature:hot hi", "not a number"),
        ("temperature:7 hi", "out of range"),
        ("provider:kimi", "needs a question"),
        ("providers:a,b hi", "/ask takes one persona and one provider"),
        ("rounds:2 hi", "does not take rounds"),
    ],
)
def test_grammar_errors_say_how_to_fix(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=re.escape(fragment)):
        commands.parse("ask", text)


def test_prompt_too_long() -> None:
    with pytest.raises(UsageError, match="limit is 100"):
        commands.parse("ask", "x" * 101, max_prompt_chars=100)


def test_parse_line_umbrella_and_default() -> None:
    assert commands.parse_line("/parley compare providers:a,b Q").command == "compare"
    assert commands.parse_line("just a question").command == "ask"
    with pytest.raises(UsageError, match="Did you mean '/?compare'|Did you mean 'compare'"):
        commands.parse_line("/compair Q")


@pytest.mark.parametrize("space", ["\n", "\t", "\u00a0", "\r\n", " \n "])
def test_options_end_at_any_whitespace(space: str) -> None:
    """Shift-Enter in Slack (a newline), a tab or a non-breaking space ends an option like a space."""
    r = commands.parse("ask", f"provider:kimi{space}temperature:0.3{space}First line\nSecond line")
    assert r.providers == ["kimi"] and r.temperature == 0.3
    assert r.prompt == "First line\nSecond line"  # the question keeps its own line breaks
    r = commands.parse_line(f"/compare{space}providers:a,b{space}Q?\n\nMore")
    assert (r.command, r.providers, r.prompt) == ("compare", ["a", "b"], "Q?\n\nMore")


def test_lists_are_deduplicated_and_bounded_by_max_turns() -> None:
    r = commands.parse("compare", "personas:riley,riley,morgan persona:riley providers:one,one Q")
    assert r.personas == ["riley", "morgan"] and r.providers == ["one"]
    assert commands.parse("ask", "provider:one,one Q").providers == ["one"]
    many = ",".join(f"p{i}" for i in range(13))
    with pytest.raises(UsageError, match=r"limit is 12 \(PARLEY_MAX_TURNS\)"):
        commands.parse("compare", f"personas:{many} Q")
    with pytest.raises(UsageError, match=r"limit is 12 \(PARLEY_MAX_TURNS\)"):
        commands.parse("compare", "persona:a " * 13 + "Q")  # repeated options count together
    assert len(commands.parse("compare", f"personas:{many} Q", max_turns=13).personas) == 13
    # a consensus runs each panelist at least twice within three times the limit
    assert len(commands.parse("consensus", f"personas:{many} Q").personas) == 13
    with pytest.raises(UsageError, match="PARLEY_MAX_TURNS"):
        commands.parse("consensus", "personas:" + ",".join(f"p{i}" for i in range(18)) + " Q")


def test_text_that_is_not_unicode_is_refused_saying_where() -> None:
    # What Python makes of a non-UTF-8 argv or a broken paste: a lone surrogate.
    with pytest.raises(UsageError, match=r"not valid Unicode text.*character 14.*caf\\udce9") as e:
        commands.parse_line("ask hello caf\udce9 ok")
    e.value.message.encode("utf-8")  # the message itself can be printed and posted
    with pytest.raises(UsageError, match="not valid Unicode"):
        commands.parse("compare", "providers:one\ud800 Q")
    with pytest.raises(UsageError, match="question is not valid Unicode"):
        commands.build("ask", [], "Q \udfff")


def test_values_are_checked_once_for_every_front_end() -> None:
    r = commands.build("compare", [("providers", "one, two"), ("persona", "riley"), ("temperature", 0.5)], "Q")
    assert (r.providers, r.personas, r.temperature, r.prompt) == (["one", "two"], ["riley"], 0.5, "Q")
    with pytest.raises(UsageError, match="space"):
        commands.build("compare", [("personas", "riley morgan")], "Q")
    with pytest.raises(UsageError, match="space"):
        commands.build("ask", [("model", "gpt 4")], "Q")
    with pytest.raises(UsageError, match="at most 100 characters"):
        commands.parse("ask", "persona:" + "x" * 5000 + " Q")
    with pytest.raises(UsageError, match="not a whole number"):
        commands.build("consensus", [("rounds", 1.5)], "Q")
    with pytest.raises(UsageError, match="not a number"):
        commands.build("ask", [("temperature", True)], "Q")


# --- catalog ----------------------------------------------------------------------------------
def test_catalog_ships_required_providers() -> None:
    cat = load_catalog()
    for pid in ("openai", "anthropic", "kimi", "deepseek", "gemini", "groq", "mistral",
                "openrouter", "xai", "ollama", "local"):
        assert pid in cat.providers
    kimi = cat.providers["kimi"]
    assert kimi.key_env == "MOONSHOT_API_KEY" and kimi.base_url_env == "MOONSHOT_BASE_URL"
    assert kimi.base_url == "https://api.moonshot.ai/v1"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cat.checked)


def test_user_config_adds_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "parley.toml"
    cfg.write_text(
        """
[providers.acme]
label = "Acme LLM"
base_url = "http://127.0.0.1:1/v1"
key_env = "ACME_API_KEY"
default_model = "acme-1"
[providers.acme.models."acme-1"]
input = 1.0
output = 2.0

[providers.kimi]
base_url = "https://api.moonshot.cn/v1"
[providers.kimi.models."kimi-k2-0905-preview"]
input = 0.5
"""
    )
    cat = load_catalog(cfg)
    assert cat.providers["acme"].models["acme-1"].output == 2.0
    assert cat.providers["acme"].wire == "openai_chat"
    assert cat.providers["kimi"].base_url == "https://api.moonshot.cn/v1"
    assert cat.providers["kimi"].models["kimi-k2-0905-preview"].input == 0.5
    # the rest of the shipped row survives the merge
    assert cat.providers["kimi"].models["kimi-k2-0905-preview"].output == 2.50


def test_user_config_errors_name_file_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[providers.acme]\nlabel = "A"\ndefault_model = "x"\n[providers.acme.models.y]\n')
    with pytest.raises(UsageError, match=r"bad.toml.*providers.acme"):
        load_catalog(cfg)


def test_no_provider_id_outside_the_catalog() -> None:
    """The 'hidden enum' bug: a provider id hard-coded anywhere but the catalog.

    Scans product code (core/, bots/) for any catalog provider id used as a
    string literal. The catalog, vendor docs links and comments are exempt.
    """
    ids = [p for p in load_catalog().providers]
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "core", "bots"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    offenders = []
    for f in files:
        if not f.endswith(".py"):
            continue
        for lineno, line in enumerate((ROOT / f).read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pid in ids:
                if re.search(rf"""["']{re.escape(pid)}(/[^"']*)?["']""", code):
                    offenders.append(f"{f}:{lineno}: {line.strip()}")
    assert not offenders, "provider ids outside the catalog:\n" + "\n".join(offenders)


def test_env_example_lists_every_catalog_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    for name in load_catalog().env_vars():
        assert re.search(rf"^#?\s*{name}=", text, re.M), f"{name} missing from .env.example"


# --- errors --------------------------------------------------------------------------------------
def _classify(status: int | None, body: object, pid: str = "openai", headers: dict | None = None):
    spec = load_catalog().providers[pid]
    return classify(provider=pid, label=spec.label, key_env=spec.key_env, auth_hint=spec.auth_hint,
                    status=status, body=body, headers=headers or {})


def test_kimi_401_names_region_and_base_url_env() -> None:
    e = _classify(401, {"error": {"message": "Invalid Authentication", "type": "invalid_authentication_error"}}, "kimi")
    assert e.kind == ErrorKind.AUTH
    assert "MOONSHOT_API_KEY" in e.message and "MOONSHOT_BASE_URL" in e.message
    assert "api.moonshot.cn" in e.message and "api.moonshot.ai" in e.message


@pytest.mark.parametrize(
    "status, body, kind",
    [
        (429, {"error": {"type": "exceeded_current_quota_error", "message": "suspended"}}, ErrorKind.QUOTA_EXHAUSTED),
        (429, {"error": {"type": "rate_limit_reached_error", "message": "slow"}}, ErrorKind.RATE_LIMITED),
        (429, {"error": {"type": "engine_overloaded_error", "message": "busy"}}, ErrorKind.OVERLOADED),
        (429, {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}, ErrorKind.QUOTA_EXHAUSTED),
        (429, {"error": {"type": "requests", "code": "rate_limit_exceeded"}}, ErrorKind.RATE_LIMITED),
        (402, {"error": {"message": "Insufficient Balance"}}, ErrorKind.QUOTA_EXHAUSTED),
        (400, {"error": {"code": "context_length_exceeded", "message": "too long"}}, ErrorKind.CONTEXT_TOO_LONG),
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}}, ErrorKind.CONTEXT_TOO_LONG),
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, ErrorKind.OVERLOADED),
        (None, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, ErrorKind.OVERLOADED),
        (404, {"error": {"code": "model_not_found"}}, ErrorKind.BAD_REQUEST),
        (500, "upstream exploded", ErrorKind.OVERLOADED),
    ],
)
def test_classification(status, body, kind) -> None:
    assert _classify(status, body).kind == kind


def test_retry_after_headers() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({}) is None


def test_secrets_are_redacted() -> None:
    register_secret("my-very-secret-value-123")
    assert "my-very-secret" not in redact("key my-very-secret-value-123 leaked")
    fake_key = "sk-" + "abcdefghij" * 2  # built at run time so no key-shaped literal is committed
    assert fake_key not in redact(f"Incorrect API key provided: {fake_key}")
    e = _classify(401, {"error": {"message": f"Incorrect API key provided: {fake_key}"}})
    assert fake_key[:12] not in e.message


# --- SSE ---------------------------------------------------------------------------------------
async def _aiter(lines):
    for line in lines:
        yield line


async def test_sse_comments_multiline_and_events() -> None:
    lines = [": keep-alive", "", "event: ping", "data: {}", "", "data: a", "data: b", "",
             ": OPENROUTER PROCESSING", "data: [DONE]", ""]
    got = [(e.event, e.data) async for e in parse_sse(_aiter(lines))]
    assert got == [("ping", "{}"), ("message", "a\nb"), ("message", "[DONE]")]


# --- cost --------------------------------------------------------------------------------------
def test_cost_arithmetic_uses_cached_price() -> None:
    m = load_catalog().providers["openai"].models["gpt-4.1-mini"]  # 0.40 / 0.10 / 1.60
    assert cost_usd(m, 1_000_000, 0, 0) == pytest.approx(0.40)
    assert cost_usd(m, 1_000_000, 1_000_000, 500_000) == pytest.approx(0.20 + 0.05 + 1.60)
    from core.providers.base import Usage

    u = turn_usage(m, Usage(1000, 500, 0), "p", "a")
    assert not u.estimated and u.cost_usd == pytest.approx((1000 * 0.4 + 500 * 1.6) / 1e6)
    est = turn_usage(m, None, "x" * 400, "y" * 40)
    assert est.estimated and est.input_tokens == 100 and est.output_tokens == 10


# --- store ----------------------------------------------------------------------------------------
def test_migrations_from_empty_database(store_target: str) -> None:
    from core.migrations import MIGRATIONS

    s = Store(store_target)
    names = {r["name"] for r in s.db["_migrations"].rows}
    assert names == {fn.__name__ for fn in MIGRATIONS}
    assert {"discussions", "turns", "posts", "spend", "votes"} <= set(s.db.table_names())
    s.close()
    again = Store(store_target)
    assert again.migrate() == []  # idempotent
    again.close()


# SQLite only: the journal mode is SQLite's (other processes read while one writes).
def test_the_sqlite_store_runs_in_wal_mode(tmp_path: Path) -> None:
    s = Store(tmp_path / "new.db")
    assert s.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    s.close()


def test_an_unknown_wire_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    from core.providers.wires import WIRES

    cfg = tmp_path / "wire.toml"
    cfg.write_text(
        '[providers.acme]\nlabel = "A"\nwire = "openai_chats"\ndefault_model = "m"\n[providers.acme.models.m]\n'
    )
    with pytest.raises(UsageError) as e:
        load_catalog(cfg)
    assert "wire.toml" in e.value.message and "[providers.acme]" in e.value.message
    assert "Did you mean 'openai_chat'" in e.value.message
    assert all(name in e.value.message for name in WIRES)


def test_every_catalog_wire_builds_from_the_table() -> None:
    from core.providers.wires import WIRES

    assert {p.wire for p in load_catalog().providers.values()} <= set(WIRES)


def test_every_informational_command_is_answered_by_the_one_dispatch() -> None:
    from core.info import INFO

    assert set(INFO) == {c.name for c in commands.COMMANDS.values() if c.mode is None}


def test_core_text_is_structure_and_plain_text_has_no_markup() -> None:
    from core.events import DiscussionFinished, ErrorInfo, RankEntry, Totals, TurnSummary
    from core.present import help_doc, plain, render, summary_doc

    failed = TurnSummary("t2", "kimi/k2", "review", 1, "kimi", "k2", None, "failed",
                         ErrorInfo("quota_exhausted", "Top up <!channel> *now*"), None, 1.0, 0, 0, 0.0, False)
    ok = TurnSummary("t1", "openai/gpt", "answer", 0, "openai", "gpt", None, "finished", None,
                     120.0, 900.0, 10, 20, 0.0012, True)
    ev = DiscussionFinished("d", "partial", [ok, failed], Totals(2, 1, 10, 20, 0.0012, 950.0), "note",
                            [RankEntry("k", "Riley", 5, 2, 1.0)], "consensus", 3, 2)
    text = plain(summary_doc(ev))
    assert text.splitlines() == [
        "✅ openai/gpt: 0.1s to first token, 0.9s, 10+20 tokens (est.), $0.0012",
        "⚠️ kimi/k2 · review 1: quota_exhausted — Top up <!channel> *now*",
        "Total: 2 turns (1 failed), 10+20 tokens, $0.0012, 0.9s",
        "Peer ranking (Borda, 2 of 3 reviewers voted): 1. Riley (5)",
        "note",
    ]
    # a front-end's markup and escaping apply to every span; provider text cannot pose as markup
    marked = render(summary_doc(ev), styles={"strong": lambda s: f"<b>{s}</b>"}, escape=lambda s: s.replace("<", "&lt;"))
    assert "<b>Total</b>: 2 turns" in marked and "&lt;!channel>" in marked and "<!channel>" not in marked
    help_plain = plain(help_doc())
    assert "/compare" in help_plain and "*" not in help_plain and "`" not in help_plain



def test_env_example_documents_every_setting() -> None:
    """One list per concept: every setting of core and of each front-end appears in .env.example."""
    from pydantic import AliasChoices

    from bots.discord.config import DiscordSettings
    from bots.slack.config import SlackSettings
    from core.config import Settings

    text = (ROOT / ".env.example").read_text()
    missing = []
    for cls in (Settings, SlackSettings, DiscordSettings):
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if not isinstance(alias, AliasChoices):
                continue
            for env in alias.choices:
                if not re.search(rf"^#?\s*{env}=", text, re.M):
                    missing.append(f"{cls.__name__}.{name}: {env}")
    assert not missing, "settings missing from .env.example:\n" + "\n".join(missing)

"""Governance in core: policy, budgets (estimate, reserve, settle), own keys, saved panels,
retention — against the loopback fake LLM server, on a real SQLite file and a real
PostgreSQL database (``store_target``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core import info
from core.commands import parse, parse_line
from core.config import Settings
from core.errors import UsageError
from core.events import DiscussionFinished, Event
from core.governance import Grant, Refused
from core.governance.policy import Rule, RuleSet
from core.governance.scope import Caller, Periods
from core.services import Services, build_services
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.test_engine import PROVIDERS, user_config

WS = "slack:T1"
ADMIN = Caller(WS, "UADMIN", "C1", admin=True, private=True, front_end="slack")
ALICE = Caller(WS, "UALICE", "C1", private=True, front_end="slack")
SECRET = "operator-secret-for-tests-0123456789"


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def svc(llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              store_target: str) -> AsyncIterator[Services]:
    monkeypatch.setenv("PARLEY_CONFIG", str(user_config(tmp_path, llm.base_url)))
    monkeypatch.setenv("PARLEY_SECRET_KEY", SECRET)
    for pid in PROVIDERS:
        monkeypatch.setenv(f"{pid.upper()}_API_KEY", f"env-key-{pid}-0123456789")
    services = build_services(Settings())
    try:
        yield services
    finally:
        await services.aclose()


async def admin(svc: Services, line: str, caller: Caller = ADMIN) -> info.InfoAnswer:
    name, _, rest = line.partition(" ")
    return await info.answer(svc, parse(name, rest), caller=caller)


def files(tmp_path: Path) -> bytes:
    """Every byte of the database, its WAL and shared memory."""
    return b"".join(f.read_bytes() for f in sorted(tmp_path.glob("parley.db*")))


def stored(svc: Services, tmp_path: Path) -> bytes:
    """What the store holds. On SQLite every byte of its files, so text left in free pages
    counts too (the store overwrites what it deletes); on PostgreSQL, whose files belong to
    the server, every row of every table."""
    if svc.store.dialect == "sqlite":
        return files(tmp_path)
    db = svc.store.db
    return "\n".join(str(r) for t in db.table_names() for r in db.query(f'select * from "{t}"')).encode()


async def run(svc: Services, grant: Grant) -> list[Event]:
    return [ev async for ev in svc.engine.run(grant.request, grant=grant, front_end="slack")]


# --- policy ---------------------------------------------------------------------------------------
def rule(i: int, effect: str, dim: str, pattern: str, channel: str = "", subjects: tuple[str, ...] = ()) -> Rule:
    return Rule(i, WS, channel, effect, dim, pattern, subjects, "UADMIN", "2026-12-01")


def test_policy_levels_allow_lists_and_personal_grants() -> None:
    rules = RuleSet([
        rule(1, "deny", "providers", "alpha"),
        rule(2, "allow", "providers", "alpha", channel="C9"),  # the channel is more specific
        rule(3, "deny", "commands", "consensus"),
        rule(4, "allow", "commands", "consensus", subjects=("role:leads",)),  # only leads
        rule(5, "allow", "models", "beta/*", channel="C2"),  # an allow-list in C2
        rule(6, "deny", "models", "gamma/gamma-*"),
    ])
    anyone = Caller(WS, "U1", "C1")
    lead = Caller(WS, "U2", "C1", roles=frozenset({"leads"}))
    assert not rules.check(anyone, "providers", "alpha").allowed
    assert rules.check(anyone, "providers", "alpha").rules[0].id == 1
    assert rules.check(Caller(WS, "U1", "C9"), "providers", "alpha").allowed
    assert rules.check(anyone, "providers", "beta").allowed
    assert not rules.check(anyone, "commands", "consensus").allowed
    assert rules.check(lead, "commands", "consensus").allowed
    assert rules.check(lead, "commands", "ask").allowed  # a personal grant restricts nobody
    in_c2 = Caller(WS, "U1", "C2")
    assert rules.check(in_c2, "models", "beta/beta-1").allowed
    refused = rules.check(in_c2, "models", "alpha/alpha-1")
    assert not refused.allowed and "only beta/*" in refused.reason()
    assert not rules.check(anyone, "models", "gamma/gamma-1").allowed
    assert rules.check(anyone, "models", "GAMMA/other").allowed
    # at one level a matching deny wins over a matching allow, patterns or not; many patterns compile to one
    wild = RuleSet([rule(1, "allow", "models", "alpha/*"), rule(2, "deny", "models", "alpha/alpha-?")]
                   + [rule(10 + i, "deny", "models", f"zeta{i}/*") for i in range(500)])
    assert wild.check(anyone, "models", "alpha/alpha-1").rules[0].id == 2
    assert wild.check(anyone, "models", "alpha/alpha-10").allowed
    assert wild.check(anyone, "models", "zeta321/x").rules[0].id == 331
    assert not wild.check(anyone, "models", "beta/x").allowed  # the allow-list
    personal = RuleSet([rule(1, "deny", "providers", "al*", subjects=("user:U1",))])
    assert not personal.check(anyone, "providers", "alpha").allowed
    assert personal.check(lead, "providers", "alpha").allowed


async def test_a_denied_provider_is_refused_with_its_rule_and_nothing_is_sent(svc: Services, llm: FakeLLMServer) -> None:
    await admin(svc, "policy deny providers:alpha")
    with pytest.raises(Refused) as e:
        await svc.governance.admit(parse("compare", "providers:beta,alpha Price?"), ALICE)
    assert e.value.why == "policy" and "alpha" in e.value.message and "rule #1" in e.value.message
    assert "/policy" in e.value.message
    assert llm.requests == []
    # the moderator is on the panel too
    with pytest.raises(Refused):
        await svc.governance.admit(parse("consensus", "providers:beta,gamma moderator:alpha Q?"), ALICE)


async def test_channel_defaults_fill_in_and_a_default_mode_applies_to_plain_questions(svc: Services) -> None:
    await admin(svc, "policy default providers:beta,gamma mode:parallel")  # this channel (C1)
    grant = await svc.governance.admit(parse_line("What now?"), ALICE)
    assert grant.request.command == "compare"
    assert [p.provider.id for p in grant.panel] == ["beta", "gamma"]
    typed = await svc.governance.admit(parse("ask", "provider:alpha What now?"), ALICE)
    assert [p.provider.id for p in typed.panel] == ["alpha"]  # what was typed wins
    elsewhere = await svc.governance.admit(parse_line("What now?"), Caller(WS, "UALICE", "C7"))
    assert elsewhere.request.command == "ask"  # another channel has no defaults
    single = await svc.governance.admit(parse("ask", "What now?"), ALICE)
    assert [p.provider.id for p in single.panel] == ["beta"]  # /ask takes the first of the defaults
    for g in (grant, typed, elsewhere, single):
        g.release()


async def test_admin_actions_are_refused_to_others_and_audited(svc: Services) -> None:
    with pytest.raises(Refused) as e:
        await admin(svc, "budget set scope:workspace daily:1", ALICE)
    assert "admins" in e.value.message
    assert svc.governance.view(WS).caps == []
    await admin(svc, "budget set scope:workspace daily:1")
    log = (await admin(svc, "policy log")).rows
    assert log[0]["actor"] == "UADMIN" and log[0]["action"] == "budget.set"
    assert '"daily_usd": 1.0' in log[0]["after"]
    with pytest.raises(Refused):  # the log says who set which keys: admins only
        await admin(svc, "policy log", ALICE)
    await admin(svc, "budget set user:<@UALICE|alice> daily:0.5")  # user: means scope:user
    assert {(c.scope, c.target) for c in svc.governance.view(WS).caps} == {("workspace", ""), ("user", "UALICE")}
    with pytest.raises(UsageError, match="scope:user"):
        await admin(svc, "budget set scope:channel user:UALICE daily:0.5")


# --- budgets ------------------------------------------------------------------------------------
async def test_consensus_estimate_grows_with_the_square_of_the_panel(svc: Services) -> None:
    gov = svc.governance

    async def worst(options: str) -> float:
        g = await gov.admit(parse("consensus", f"{options} max_tokens:1000 Q?"), ADMIN)
        g.release()
        # answers, reviews and a format reminder for each, the synthesis and its one retry
        assert g.estimate.turns == len(g.panel) * 3 + 2
        return g.estimate.usd

    two = await worst("providers:alpha,beta")
    four = await worst("providers:alpha,beta,gamma,delta")
    eight = await worst("personas:riley,morgan providers:alpha,beta,gamma,delta")
    # stage 1 and the synthesis grow linearly; the reviews (N reviewers × N answers) quadratically:
    # each doubling of the panel costs a larger factor than the one before
    assert eight / four > four / two > 2
    g = await gov.admit(parse("consensus", "providers:alpha,beta depth:answers max_tokens:1000 Q?"), ADMIN)
    g.release()
    assert g.estimate.turns == 2
    g = await gov.admit(parse("consensus", "providers:alpha,beta depth:ranked max_tokens:1000 Q?"), ADMIN)
    g.release()
    assert g.estimate.turns == 6
    g = await gov.admit(parse("consensus", "providers:alpha,beta method:debate max_tokens:1000 Q?"), ADMIN)
    g.release()
    assert g.estimate.turns == 9


async def test_a_hard_stop_shows_the_estimate_and_sends_nothing(svc: Services, llm: FakeLLMServer) -> None:
    await admin(svc, "budget set scope:channel daily:0.000001")
    with pytest.raises(Refused) as e:
        await svc.governance.admit(parse("compare", "providers:alpha,beta Price?"), ALICE)
    msg = e.value.message
    assert e.value.why == "budget"
    assert "could cost up to $" in msg and "left" in msg and "resets at 00:00 UTC" in msg
    assert "channel C1" in msg and "Nothing was sent" in msg
    assert llm.requests == []


async def test_a_discussion_settles_at_its_reported_cost(svc: Services, llm: FakeLLMServer) -> None:
    llm.scenarios["alpha-1"] = Scenario(text="Tuesday.", usage="top", prompt_tokens=100, completion_tokens=10)
    await admin(svc, "budget set scope:user daily:1")
    grant = await svc.governance.admit(parse("ask", "provider:alpha When?"), ALICE)
    reserved = svc.governance.db.totals(WS, "user", "UALICE", Periods.at())
    assert reserved["daily"] == pytest.approx(grant.estimate.usd)
    events = await run(svc, grant)
    assert isinstance(events[-1], DiscussionFinished)
    svc.store.flush()
    row = svc.store.db.execute("select status, actual_usd, discussion_id from spend").fetchone()
    assert row[0] == "settled" and row[1] == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert row[2] == events[0].discussion_id
    spent = (await admin(svc, "usage", ALICE)).rows[0]
    assert spent["today_usd"] == pytest.approx(row[1]) and spent["estimated"] is False
    llm.scenarios["alpha-1"] = Scenario(text="No usage sent.", usage="none")
    grant = await svc.governance.admit(parse("ask", "provider:alpha When?"), ALICE)
    await run(svc, grant)
    svc.store.flush()
    assert (await admin(svc, "usage", ALICE)).rows[0]["estimated"] is True  # estimates stay flagged
    assert svc.store.discussion(row[2])["workspace"] == WS


async def test_twenty_concurrent_requests_overshoot_a_cap_by_at_most_one_estimate(
    svc: Services, llm: FakeLLMServer
) -> None:
    llm.default = Scenario(text="ok " * 20, usage="top", prompt_tokens=90, completion_tokens=60, chunk_delay=0.01)
    probe = await svc.governance.admit(parse("compare", "providers:alpha,beta max_tokens:64 Go?"), ADMIN)
    probe.release()
    one = probe.estimate.usd
    cap = one * 4.5
    await admin(svc, f"budget set scope:workspace daily:{cap:.10f}")

    async def attempt(i: int) -> str:
        who = Caller(WS, f"U{i}", "C1", private=True)
        try:
            grant = await svc.governance.admit(parse("compare", "providers:alpha,beta max_tokens:64 Go?"), who)
        except Refused:
            return "refused"
        await run(svc, grant)
        return "ran"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(20)))
    svc.store.flush()
    spent = svc.store.db.execute("select coalesce(sum(actual_usd), 0), count(*) from spend "
                                 "where status = 'settled' and discussion_id is not null").fetchone()
    ran = outcomes.count("ran")
    assert ran == spent[1] and 4 <= ran < 20  # four worst cases fit in 4.5 at once; settled ones free room
    assert spent[0] <= cap + one


async def test_a_soft_alert_is_raised_once_per_period(svc: Services, llm: FakeLLMServer) -> None:
    probe = await svc.governance.admit(parse("ask", "provider:alpha max_tokens:50 Hi"), ADMIN)
    probe.release()
    await admin(svc, f"budget set scope:workspace daily:{probe.estimate.usd * 10:.10f} soft:15")
    first = await svc.governance.admit(parse("ask", "provider:alpha max_tokens:50 Hi"), ALICE)
    assert first.alerts == []  # 10% of the cap
    second = await svc.governance.admit(parse("ask", "provider:alpha max_tokens:50 Hi"), ALICE)
    third = await svc.governance.admit(parse("ask", "provider:alpha max_tokens:50 Hi"), ALICE)
    assert len(second.alerts) == 1 and "soft threshold 15%" in second.alerts[0]
    assert third.alerts == []
    assert svc.governance.admins(WS) == ["UADMIN"]  # who gets it: whoever set budgets here
    for g in (first, second, third):
        g.release()


async def test_orphaned_reservations_are_settled_and_live_ones_left_alone(svc: Services, tmp_path: Path) -> None:
    grant = await svc.governance.admit(parse("ask", "provider:alpha Hi"), ALICE)
    svc.store.flush()
    other = build_services(Settings())  # a second process on the same database
    try:
        assert other.governance.db.settle_orphans() == 0  # the first process is alive
    finally:
        await other.aclose()
    svc.store.writer.call(lambda db: db.execute("update spend set owner = 'gone'"))
    assert svc.governance.db.settle_orphans() == 1
    assert svc.store.db.execute("select status, actual_usd from spend").fetchone() == ("settled", 0.0)
    grant.settled = True


# --- own keys ------------------------------------------------------------------------------------
async def test_an_own_key_is_used_encrypted_and_never_shown(
    svc: Services, llm: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mine = "sk-alice-own-key-abcdefghijklmnop-9876"
    answer = await admin(svc, f"keys set provider:alpha {mine}", ALICE)
    assert mine not in str(answer.rows) + str(answer.doc) and "9876" in str(answer.doc)
    grant = await svc.governance.admit(parse("ask", "provider:alpha Hi"), ALICE)
    await run(svc, grant)
    assert llm.requests[-1].headers["Authorization"] == f"Bearer {mine}"
    others = await svc.governance.admit(parse("ask", "provider:alpha Hi"), ADMIN)
    await run(svc, others)
    assert llm.requests[-1].headers["Authorization"] == "Bearer env-key-alpha-0123456789"
    listed = await admin(svc, "keys list", ALICE)
    assert listed.rows[0]["last4"] == "9876" and mine not in str(listed.rows)
    svc.store.flush()
    assert mine.encode() not in stored(svc, tmp_path)
    assert mine not in caplog.text


async def test_a_key_typed_in_public_is_refused_and_not_stored(svc: Services) -> None:
    leaked = "sk-public-leak-abcdefghijklmnop-1111"
    with pytest.raises(Refused) as e:
        await admin(svc, f"keys set provider:alpha {leaked}", Caller(WS, "UALICE", "C1", private=False))
    assert "rotate" in e.value.message and leaked not in e.value.message
    assert svc.store.db.execute("select count(*) from provider_keys").fetchone()[0] == 0


async def test_own_keys_are_off_without_the_secret(llm: FakeLLMServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_CONFIG", str(user_config(tmp_path, llm.base_url)))
    async with build_services(Settings()) as services:
        with pytest.raises(UsageError) as e:
            await info.answer(services, parse("keys", "set provider:alpha sk-abcdefghijklmnop"), caller=ALICE)
    assert "PARLEY_SECRET_KEY" in e.value.message


# --- saved panels ------------------------------------------------------------------------------
async def test_a_saved_panel_round_trip_and_policy_at_run_time(svc: Services) -> None:
    await admin(svc, "panel save launch-review providers:alpha,beta rounds:2 max_tokens:200", ALICE)
    shown = await admin(svc, "panel show launch-review", ALICE)
    assert shown.rows[0]["options"] == {"providers": ["alpha", "beta"], "rounds": 2, "max_tokens": 200}
    grant = await svc.governance.admit(parse("consensus", "panel:launch-review max_tokens:50 Friday?"), ALICE)
    assert [p.provider.id for p in grant.panel] == ["alpha", "beta"]
    assert grant.request.rounds == 2 and grant.request.max_tokens == 50  # typed options win
    grant.release()
    with pytest.raises(UsageError, match="launch-review"):
        await svc.governance.admit(parse("compare", "panel:launch-reveiw Q"), ALICE)
    await admin(svc, "policy deny providers:beta")
    with pytest.raises(Refused):  # checked when it runs, not only when saved
        await svc.governance.admit(parse("compare", "panel:launch-review Q"), ALICE)
    with pytest.raises(Refused):  # someone else's panel
        await admin(svc, "panel delete launch-review", Caller(WS, "UBOB", "C1"))
    await admin(svc, "panel delete launch-review")  # an admin may
    assert (await admin(svc, "panel list", ALICE)).rows == []


# --- retention and /forget ------------------------------------------------------------------------
async def test_retention_and_forget_erase_texts_from_the_store(
    svc: Services, llm: FakeLLMServer, tmp_path: Path
) -> None:
    llm.default = Scenario(text="The answer is ZEBRA-OLD-ANSWER.", usage="top", prompt_tokens=10, completion_tokens=5)
    old = await svc.governance.admit(parse("ask", "provider:alpha QUESTION-OLD-MARKER?"), ALICE)
    old_events = await run(svc, old)
    llm.default = Scenario(text="The answer is NEW-ANSWER.", usage="top", prompt_tokens=10, completion_tokens=5)
    new = await svc.governance.admit(parse("ask", "provider:alpha QUESTION-NEW-MARKER?"), ALICE)
    await run(svc, new)
    did = old_events[0].discussion_id
    svc.store.writer.call(lambda db: db.execute(
        "update discussions set created_at = '2026-01-01T00:00:00.000+00:00' where id = ?", [did]))
    await admin(svc, "policy retention days:30")
    svc.store.flush()
    data = stored(svc, tmp_path)
    assert b"QUESTION-OLD-MARKER" not in data and b"ZEBRA-OLD-ANSWER" not in data
    assert b"QUESTION-NEW-MARKER" in data  # newer than the retention period
    assert svc.store.turns(did)[0]["cost_usd"] > 0  # costs and tokens stay
    await admin(svc, "forget", ALICE)
    data = stored(svc, tmp_path)
    assert b"QUESTION-NEW-MARKER" not in data and b"NEW-ANSWER" not in data


# --- policy as code ------------------------------------------------------------------------------
async def test_a_policy_file_seeds_rules_budgets_and_defaults(
    llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_CONFIG", str(user_config(tmp_path, llm.base_url)))
    for pid in PROVIDERS:
        monkeypatch.setenv(f"{pid.upper()}_API_KEY", f"env-key-{pid}-0123456789")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[workspaces."{WS}"]\ndeny = {{ providers = ["delta"] }}\n'
        f'defaults = {{ providers = ["beta"] }}\n'
        f'[[workspaces."{WS}".budgets]]\nscope = "workspace"\ndaily = 2.5\n'
    )
    monkeypatch.setenv("PARLEY_POLICY", str(policy))
    async with build_services(Settings()) as services:
        with pytest.raises(Refused):
            await services.governance.admit(parse("ask", "provider:delta Hi"), ALICE)
        grant = await services.governance.admit(parse("ask", "Hi"), ALICE)
        assert grant.panel[0].provider.id == "beta"
        grant.release()
        assert services.governance.view(WS).caps[0].daily == 2.5
    policy.write_text(f'[workspaces."{WS}"]\ndeny = {{ providers = ["nosuch"] }}\n')
    with pytest.raises(UsageError, match=r"PARLEY_POLICY \(.*policy.toml\): workspaces.slack:T1: Unknown provider"):
        build_services(Settings())
    policy.write_text('[workspaces.terminal]\nretention_days = 7\n')  # the workspace's table is gone
    async with build_services(Settings()) as services:
        assert services.governance.view(WS).rules.rules == []
        grant = await services.governance.admit(parse("ask", "provider:delta Hi"), ALICE)
        grant.release()


def test_parley_admins_name_people_everywhere_per_platform_or_per_workspace(svc: Services) -> None:
    gov = svc.governance
    gov.env_admins = {"U1", "slack:U2", "slack:T9:U3"}
    assert gov.is_admin(Caller(WS, "U1")) and gov.is_admin(Caller(WS, "U2"))
    assert not gov.is_admin(Caller("discord:5", "U2"))
    assert gov.is_admin(Caller("slack:T9", "U3")) and not gov.is_admin(Caller(WS, "U3"))


async def test_spend_on_own_keys_can_be_left_out_of_budgets(svc: Services, llm: FakeLLMServer) -> None:
    llm.default = Scenario(text="ok", usage="top", prompt_tokens=10, completion_tokens=5)
    await admin(svc, "keys set provider:alpha sk-alice-own-key-abcdefghijklmnop-7777", ALICE)
    await admin(svc, "budget set scope:workspace daily:0.0000001 own_keys:free")
    grant = await svc.governance.admit(parse("ask", "provider:alpha Hi"), ALICE)  # her key: free
    assert grant.free == {"alpha"}
    await run(svc, grant)
    with pytest.raises(Refused) as e:  # the operator's key counts
        await svc.governance.admit(parse("ask", "provider:beta Hi"), ALICE)
    assert "admins (UADMIN)" in e.value.message
    await admin(svc, "budget set own_keys:count")
    with pytest.raises(Refused):
        await svc.governance.admit(parse("ask", "provider:alpha Hi"), ALICE)


async def test_a_change_and_its_audit_row_are_one_transaction(svc: Services) -> None:
    from core.governance.storage import upsert

    def half(db: object) -> None:
        upsert(db, "panels", {"workspace": WS, "name": "x", "options": "{}"}, ("workspace", "name"))  # type: ignore[arg-type]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        await svc.governance.db.change(WS, "UADMIN", "panel.save", "x", half)
    db = svc.store.db
    assert db.execute("select count(*) from panels").fetchone()[0] == 0
    assert db.execute("select count(*) from audit").fetchone()[0] == 0


async def test_two_processes_reserving_at_once_share_one_cap(svc: Services) -> None:
    """Two stores on one file (two writer connections, as two processes have) reserve against
    the same cap: the check and the reservation are one transaction, so exactly as many fit."""
    probe = await svc.governance.admit(parse("ask", "provider:alpha max_tokens:64 Hi"), ADMIN)
    probe.release()
    await admin(svc, f"budget set scope:workspace daily:{probe.estimate.usd * 5.5:.10f}")
    other = build_services(Settings())
    try:
        async def one(s: Services, i: int) -> bool:
            try:
                await s.governance.admit(parse("ask", "provider:alpha max_tokens:64 Hi"), Caller(WS, f"U{i}", "C1"))
            except Refused:
                return False
            return True

        got = await asyncio.gather(*(one(svc if i % 2 else other, i) for i in range(16)))
    finally:
        await other.aclose()
    assert sum(got) == 5
    assert svc.store.db.execute("select count(*) from spend where status = 'reserved'").fetchone()[0] == 5


async def test_a_malformed_key_in_public_still_says_rotate_and_scopes_are_narrowed(svc: Services) -> None:
    public = Caller(WS, "UALICE", "C1", private=False)
    with pytest.raises(Refused, match="rotate"):  # a space in it: still a leaked key
        await admin(svc, "keys set provider:alpha sk-abc def-ghijklmnopqrstu", public)
    with pytest.raises(UsageError, match="one word"):
        await admin(svc, "keys set provider:alpha sk-abc def-ghijklmnopqrstu", ALICE)
    with pytest.raises(UsageError, match="scope:user|workspace"):
        parse("keys", "set provider:alpha scope:channel sk-abcdefghijklmnop")
    with pytest.raises(UsageError, match="one provider"):
        parse("keys", "set providers:alpha,beta sk-abcdefghijklmnop")
    assert svc.store.db.execute("select count(*) from provider_keys").fetchone()[0] == 0


async def test_platform_admins_receive_alerts(svc: Services) -> None:
    assert svc.governance.admins(WS) == []
    await admin(svc, "budget show", Caller(WS, "UOWNER", "C1", admin=True))
    svc.store.flush()
    assert svc.governance.admins(WS) == ["UOWNER"]


async def test_an_admins_usage_adds_up_by_provider_and_person_and_rules_and_keys_can_be_removed(
    svc: Services, llm: FakeLLMServer
) -> None:
    llm.default = Scenario(text="ok", usage="top", prompt_tokens=100, completion_tokens=10)
    for who in (ALICE, ALICE, Caller(WS, "UBOB", "C2", private=True, front_end="slack")):
        await run(svc, await svc.governance.admit(parse("ask", "provider:alpha Hi"), who))
    svc.store.flush()
    one = (100 * 1.0 + 10 * 2.0) / 1e6  # alpha-1's prices per million tokens
    rows = (await admin(svc, "usage")).rows
    [alpha] = [r for r in rows if r["kind"] == "provider"]
    assert (alpha["provider"], alpha["model"], alpha["turns"], alpha["estimated_turns"]) == ("alpha", "alpha-1", 3, 0)
    assert alpha["cost_usd"] == pytest.approx(3 * one)
    people = {r["id"]: r["month_usd"] for r in rows if r["kind"] == "user"}
    assert people == {"UALICE": pytest.approx(2 * one), "UBOB": pytest.approx(one)}
    channels = {r["id"]: r["month_usd"] for r in rows if r["kind"] == "channel"}
    assert channels == {"C1": pytest.approx(2 * one), "C2": pytest.approx(one)}
    await admin(svc, "policy deny providers:beta")
    [rule] = svc.governance.view(WS).rules.rules
    await admin(svc, f"policy remove {rule.id}")
    assert svc.governance.view(WS).rules.rules == []
    with pytest.raises(UsageError, match=f"no rule #{rule.id}"):
        await admin(svc, f"policy remove {rule.id}")
    await admin(svc, "keys set provider:alpha sk-alice-own-key-abcdefghijklmnop-4242", ALICE)
    assert (await admin(svc, "keys delete provider:alpha", ALICE)).rows == [{"provider": "alpha", "deleted": True}]
    assert (await admin(svc, "keys delete provider:alpha", ALICE)).rows == [{"provider": "alpha", "deleted": False}]
    assert [r["action"] for r in (await admin(svc, "policy log")).rows][:4] == [
        "keys.delete", "keys.delete", "keys.set", "policy.remove"]

"""Fault injection: every turn ends in bounded time with the truth.

One parametrised case per observed fault, on both HTTP wires where it applies
(OpenAI Chat Completions and Anthropic Messages, against the loopback fake
server). Each case asserts the error kind, how many requests were sent
(retries), that the turn ended well within a generous bound of its deadline,
the text that was kept, and what the store recorded for the turn.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.commands import parse
from core.config import Settings
from core.events import DiscussionFinished, Event, TextDelta, TurnFailed, TurnFinished, TurnStarted
from core.services import Services, build_services
from tests.fakes import database_bytes
from tests.fakes import vendor_errors as ve
from tests.fakes.llm_server import FakeLLMServer, Scenario, huge_text_event

#: wire -> (provider, model) in the config file below.
WIRES = {"openai_chat": ("oa", "oa-1"), "anthropic_messages": ("an", "an-1")}
KEY = "fault-test-key-0123456789"
#: Small deadlines for every case (a case can override them).
DEADLINES = {
    "PARLEY_FIRST_TOKEN_TIMEOUT": "0.5",
    "PARLEY_IDLE_TIMEOUT": "0.5",
    "PARLEY_TURN_TIMEOUT": "4",
    "PARLEY_READ_TIMEOUT": "30",
}


def write_config(tmp_path: Path, base_url: str) -> Path:
    """``oa`` takes its base URL from OA_BASE_URL; ``an`` from this file (AN_BASE_URL unset);
    ``fb`` is the fallback; ``llamas`` is a keyless local server (no key_env at all)."""
    rows = [
        ("oa", "openai_chat", "oa-1", 'base_url_env = "OA_BASE_URL"\nkey_env = "OA_API_KEY"\n'),
        ("an", "anthropic_messages", "an-1",
         f'base_url = "{base_url}"\nbase_url_env = "AN_BASE_URL"\nkey_env = "AN_API_KEY"\nquirks = "unit_range"\n'),
        ("fb", "openai_chat", "fb-1", f'base_url = "{base_url}"\nkey_env = "FB_API_KEY"\n'),
        ("llamas", "openai_chat", "llamas-1", f'base_url = "{base_url}"\n'),
    ]
    cfg = tmp_path / "faults.toml"
    cfg.write_text("\n".join(
        f'[providers.{pid}]\nlabel = "{pid.title()} AI"\nwire = "{wire}"\n{extra}default_model = "{model}"\n'
        f'[providers.{pid}.models."{model}"]\ninput = 1.0\noutput = 2.0\ncontext = 8000\n'
        for pid, wire, model, extra in rows
    ))
    return cfg


@dataclass
class Rig:
    """The fake server, the config file, and ``rig.services(**env)``: services on the fake
    server with keys for oa, an and fb and small deadlines (``keys=False``: no keys at all)."""

    llm: FakeLLMServer
    config: Path
    monkeypatch: pytest.MonkeyPatch

    @asynccontextmanager
    async def services(self, keys: bool = True, **env: str) -> AsyncIterator[Services]:
        base = {"PARLEY_CONFIG": str(self.config), "OA_BASE_URL": self.llm.base_url, **DEADLINES}
        if keys:
            base.update(OA_API_KEY=KEY, AN_API_KEY=KEY, FB_API_KEY=KEY)
        for k, v in {**base, **env}.items():
            self.monkeypatch.setenv(k, v)
        services = build_services(Settings())
        try:
            yield services
        finally:
            await services.aclose()


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    async with FakeLLMServer() as server:
        yield Rig(server, write_config(tmp_path, server.base_url), monkeypatch)


async def ask(svc: Services, text: str, command: str = "ask") -> list[Event]:
    return [ev async for ev in svc.engine.run(parse(command, text))]


def results(events: list[Event]) -> list[TurnFinished | TurnFailed]:
    return [e for e in events if isinstance(e, (TurnFinished, TurnFailed))]


@contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


# --- the fault table ---------------------------------------------------------------------------------
def stream_error(which: str) -> Callable[[str], Scenario]:
    return lambda wire: Scenario(error_after_chunks=0, stream_error=ve.STREAM_ERRORS[wire][which])


def inject(raw: Callable[[str], bytes]) -> Callable[[str], Scenario]:
    return lambda wire: Scenario(text="abcdefgh", chunk_chars=2, inject=raw(wire), inject_at=2)


def event(wire: str, data: str) -> bytes:
    """One raw SSE event as ``wire`` frames its text deltas."""
    head = "event: content_block_delta\n" if wire == "anthropic_messages" else ""
    return f"{head}data: {data}\n\n".encode()


def first_fails(error: Callable[[], ve.Err], anthropic: Callable[[], ve.Err], n: int, **kw) -> Callable[[str], Scenario]:
    return lambda wire: Scenario(http_error=(anthropic if wire == "anthropic_messages" else error)(),
                                 fail_first=n, **kw)


@dataclass
class Fault:
    id: str
    scenario: Callable[[str], Scenario]
    kind: str
    requests: int
    #: The text kept (exactly), or a test of it.
    text: str | Callable[[str], bool] = ""
    #: Fragments the message must contain; ``{url}`` is what names the provider's base URL.
    says: tuple[str, ...] = ()
    never: tuple[str, ...] = ("HTTP None", "None in the environment")
    env: dict[str, str] = field(default_factory=dict)
    #: Generous: the deadlines in play are a tenth of this or less.
    within: float = 5.0
    wires: tuple[str, ...] = tuple(WIRES)


FAULTS = [
    # 1. deadlines: keep-alives are not progress, retries share one deadline, the error says what was tried
    Fault("1-keepalives-forever", lambda w: Scenario(keepalive_forever=True), "timeout", 1,
          says=("no text", "PARLEY_FIRST_TOKEN_TIMEOUT")),
    Fault("1-accepts-never-answers", lambda w: Scenario(no_response=True), "timeout", 1,
          says=("PARLEY_FIRST_TOKEN_TIMEOUT",)),
    Fault("1-silent-after-text", lambda w: Scenario(text="abcdefgh", chunk_chars=2, stall_after_chunks=2),
          "timeout", 1, text="abcd", says=("PARLEY_IDLE_TIMEOUT",)),
    Fault("1-turn-cap", lambda w: Scenario(text="z" * 3000, chunk_chars=1, chunk_delay=0.01), "timeout", 1,
          text=lambda t: 0 < len(t) < 3000 and set(t) == {"z"}, says=("PARLEY_TURN_TIMEOUT",),
          env={"PARLEY_TURN_TIMEOUT": "1", "PARLEY_IDLE_TIMEOUT": "5"}),
    Fault("1-retries-share-one-deadline",
          first_fails(ve.openai_server_error, ve.anthropic_overloaded, 2, keepalive_forever=True), "timeout", 3,
          says=("after 3 attempts: overloaded, overloaded, timeout", "PARLEY_FIRST_TOKEN_TIMEOUT"),
          env={"PARLEY_FIRST_TOKEN_TIMEOUT": "1"}),
    Fault("1-read-timeouts-retried-then-said", lambda w: Scenario(no_response=True), "timeout", 3,
          says=("after 3 attempts: timeout, timeout, timeout",),
          env={"PARLEY_READ_TIMEOUT": "0.2", "PARLEY_FIRST_TOKEN_TIMEOUT": "20"}),
    # 2. error objects inside a 200 stream, classified by their type
    Fault("2-server-error-in-200", stream_error("server"), "overloaded", 3,
          says=("after 3 attempts: overloaded, overloaded, overloaded", "in the stream"),
          never=("HTTP None", "temperature")),
    Fault("2-rate-limit-in-200", stream_error("rate"), "rate_limited", 3, says=("after 3 attempts",)),
    Fault("2-quota-in-200", stream_error("quota"), "quota_exhausted", 1, says=("balance",)),
    # 3. malformed data fails the turn (one policy for both wires), keeping what was shown
    Fault("3-malformed-json", inject(lambda w: event(w, "{not json")), "truncated", 1, text="abcd",
          says=("malformed",)),
    Fault("3-data-42", inject(lambda w: event(w, "42")), "truncated", 1, text="abcd", says=("malformed",)),
    # 4. a web page instead of an event stream
    Fault("4-html-200", lambda w: Scenario(html=True), "unreachable", 3, says=("not an event stream", "{url}")),
    # 5. vendor bodies that the status alone gets wrong
    Fault("5-credit-balance-400", lambda w: Scenario(http_error=ve.anthropic_credit_balance()), "quota_exhausted", 1,
          says=("balance",), wires=("anthropic_messages",)),
    Fault("5-403-region", lambda w: Scenario(http_error=ve.openai_unsupported_region()), "auth", 1,
          says=("HTTP 403", "region"), never=("rejected the API key", "HTTP None")),
    Fault("5-403-permission", lambda w: Scenario(http_error=ve.anthropic_permission()), "auth", 1,
          says=("HTTP 403", "permission"), never=("rejected the API key", "HTTP None")),
    # 6. bounds on a line and on an answer
    Fault("6-huge-line", lambda w: Scenario(text="abcdefgh", chunk_chars=2, inject=huge_text_event(w, 5_000_000),
                                            inject_at=1), "truncated", 1, text="ab", says=("1 MB",)),
    Fault("6-answer-bound", lambda w: Scenario(text="y" * 300, chunk_chars=7), "truncated", 1, text="y" * 100,
          says=("PARLEY_MAX_ANSWER_CHARS",), env={"PARLEY_MAX_ANSWER_CHARS": "100"}),
    # 7. an answer without text is not a success
    Fault("7-done-without-content", lambda w: Scenario(text=""), "empty", 1, says=("no text",)),
    Fault("7-all-tokens-on-reasoning", lambda w: Scenario(text="", reasoning="Let me think. " * 5,
                                                          finish_reason="length"), "empty", 1,
          says=("reasoning", "max_tokens")),
]

CASES = [pytest.param(f, w, id=f"{f.id}-{w}") for f in FAULTS for w in f.wires]


@pytest.mark.parametrize("fault, wire", CASES)
async def test_fault(fault: Fault, wire: str, rig: Rig) -> None:
    pid, model = WIRES[wire]
    rig.llm.scenarios[model] = fault.scenario(wire)
    async with rig.services(**fault.env) as svc:
        t0 = time.monotonic()
        events = await ask(svc, f"provider:{pid} What now?")
        took = time.monotonic() - t0
        [failed] = results(events)
        assert isinstance(failed, TurnFailed), failed
        err = failed.error
        assert err.kind == fault.kind, err.message
        assert len(rig.llm.requests_for(model)) == fault.requests, err.message
        assert took < fault.within, f"took {took:.1f}s: {err.message}"
        shown = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert shown == failed.text  # what was shown is what is kept
        assert fault.text(failed.text) if callable(fault.text) else failed.text == fault.text, failed.text
        url = "OA_BASE_URL" if pid == "oa" else f"[providers.an] table of {rig.config}"
        for fragment in fault.says:
            assert fragment.format(url=url) in err.message, err.message
        for fragment in fault.never:
            assert fragment not in err.message, err.message
        assert KEY not in err.message
        row = svc.store.turns(events[0].discussion_id)[0]
        assert (row["status"], row["error_kind"], row["text"]) == ("failed", fault.kind, failed.text)
        assert isinstance(events[-1], DiscussionFinished) and events[-1].total.failed == 1


# --- 7. an empty answer in a consensus ----------------------------------------------------------------
async def test_an_empty_answer_fails_its_turn_in_consensus(rig: Rig) -> None:
    rig.llm.scenarios["oa-1"] = Scenario(text="", prompt_tokens=379, completion_tokens=0)
    rig.llm.scenarios["an-1"] = Scenario(text="A real answer.")
    async with rig.services() as svc:
        events = await ask(svc, "providers:oa,an Ship it?", command="consensus")
    fin = events[-1]
    assert isinstance(fin, DiscussionFinished) and fin.status == "failed"
    assert (fin.total.turns, fin.total.failed) == (2, 1)
    assert "1 arrived" in (fin.message or "") and "no text" in (fin.message or "")
    empty = next(r for r in results(events) if r.turn.provider == "oa")
    assert isinstance(empty, TurnFailed) and empty.error.kind == "empty"
    assert empty.usage.input_tokens == 379  # the tokens were spent and are counted


# --- 8. a pause is keyed by provider, base URL and key --------------------------------------------------
@pytest.mark.parametrize("wire", WIRES)
async def test_a_fixed_configuration_is_tried_at_once_and_the_pause_is_noted_once(
    wire: str, rig: Rig, monkeypatch: pytest.MonkeyPatch, store_target: str
) -> None:
    pid, model = WIRES[wire]
    url_env = f"{pid.upper()}_BASE_URL"
    invalid = ve.anthropic_invalid_key() if wire == "anthropic_messages" else ve.openai_invalid_key()
    rig.llm.scenarios[model] = Scenario(http_error=invalid)
    async with FakeLLMServer() as right, rig.services() as svc:
        right.scenarios[model] = Scenario(text="Right region.")
        first = results(await ask(svc, f"provider:{pid} hi"))[0]
        assert isinstance(first, TurnFailed) and first.error.kind == "auth"
        for _ in range(3):  # refused from the pause, without a request, and noted once
            again = results(await ask(svc, f"provider:{pid} hi"))[0]
            assert isinstance(again, TurnFailed) and again.error.message.count("paused") == 1, again.error.message
        assert len(rig.llm.requests_for(model)) == 1
        stored = database_bytes(svc.store)
        (mark,) = svc.store.health_marks().values()
        assert mark.fingerprint and mark.fingerprint.encode() in stored  # the pause is there to be searched
        assert KEY.encode() not in stored  # the pause keeps a fingerprint, never the key

        monkeypatch.setenv(f"{pid.upper()}_API_KEY", KEY + "-new")  # a new key is tried at once (read per turn)
        renewed = results(await ask(svc, f"provider:{pid} hi"))[0]
        assert isinstance(renewed, TurnFailed) and "paused" not in renewed.error.message
        assert len(rig.llm.requests_for(model)) == 2

        monkeypatch.setenv(url_env, right.base_url)  # the user follows the advice: so is a new base URL
        fixed = results(await ask(svc, f"provider:{pid} hi"))[0]
        assert isinstance(fixed, TurnFinished) and fixed.text == "Right region."
        assert len(right.requests_for(model)) == 1
        assert svc.store.health_marks() == {}  # a success lifts the pause


# --- 9. the fallback covers unreachable and timed-out providers -------------------------------------------
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("failure, says", [("timeout", "did not answer in time"), ("unreachable", "could not be reached")])
async def test_fallback_covers_unreachable_and_timed_out(
    wire: str, failure: str, says: str, rig: Rig
) -> None:
    pid, model = WIRES[wire]
    rig.llm.scenarios[model] = Scenario(no_response=True)
    rig.llm.scenarios["fb-1"] = Scenario(text="The fallback answers.")
    with dead_port() as port:
        env = {"PARLEY_FALLBACK_PROVIDER": "fb"}
        if failure == "unreachable":
            env[f"{pid.upper()}_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
        async with rig.services(**env) as svc:
            t0 = time.monotonic()
            events = await ask(svc, f"provider:{pid} hi")
            assert time.monotonic() - t0 < 5
    first, second = results(events)
    assert isinstance(first, TurnFailed) and first.error.kind == failure
    assert isinstance(second, TurnFinished) and second.turn.provider == "fb"
    assert second.text == "The fallback answers."
    note = [e for e in events if isinstance(e, TurnStarted)][1].note or ""
    assert f"Falling back to fb because {pid} {says}" in note, note
    assert events[-1].status == "partial"  # type: ignore[union-attr]


# --- 10. a keyless provider from the user's config ---------------------------------------------------------
async def test_a_keyless_config_provider_needs_no_key_and_can_be_the_default(rig: Rig) -> None:
    rig.llm.scenarios["llamas-1"] = Scenario(text="From the local server.")
    async with rig.services(keys=False) as svc:
        assert svc.registry.default_provider() == "llamas"  # preferred over the offline `local`
        done = results(await ask(svc, "provider:llamas hi"))[0]
        assert isinstance(done, TurnFinished) and done.text == "From the local server."
        assert "authorization" not in {k.lower() for k in rig.llm.requests_for("llamas-1")[0].headers}
        rig.llm.scenarios["llamas-1"] = Scenario(http_error=ve.openai_invalid_key())
        failed = results(await ask(svc, "hi"))[0]  # the default provider
        assert isinstance(failed, TurnFailed) and failed.turn.provider == "llamas"
        msg = failed.error.message
        assert f"[providers.llamas] table of {rig.config}" in msg and "key_env" in msg, msg
        assert "None" not in msg
    async with rig.services(PARLEY_DEFAULT_PROVIDER="llamas") as svc:  # keys set: still the chosen default
        assert svc.registry.default_provider() == "llamas"


async def test_a_config_provider_without_its_key_names_the_file_and_table(rig: Rig) -> None:
    async with rig.services(keys=False) as svc:
        failed = results(await ask(svc, "provider:fb hi"))[0]
    assert isinstance(failed, TurnFailed) and failed.error.kind == "not_configured"
    assert "FB_API_KEY" in failed.error.message
    assert f"[providers.fb] table of {rig.config}" in failed.error.message

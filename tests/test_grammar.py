"""The grammar and the Discord option mapping, for any input.

Property tests (Hypothesis): ``parse``, ``parse_line`` and Discord's ``request_from``
turn anything into a Request or a UsageError and never raise anything else; a value
changes its own option and nothing else; options end at any whitespace. Then the
bounded-work checks: whatever arrives, parsing and planning it before the platform's
acknowledgement is quick (pathological inputs are refused with a UsageError).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from bots import cli
from bots.discord.commands import request_from
from core import commands
from core.commands import COMMANDS, OPTIONS, Request, UsageError
from core.services import Services

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "parley-hypothesis")  # its caches stay out of the tree
FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
#: Every character Python (str.split, regex \s) counts as whitespace: 29 of them.
WHITESPACE = [chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace()]
FIELDS = ("command", "prompt", "personas", "providers", "model", "temperature", "rounds", "moderator", "max_tokens")
KEYS = sorted({k for o in OPTIONS.values() for k in (o.name, *o.aliases)})

chars = st.one_of(
    st.characters(),
    st.sampled_from(WHITESPACE),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates (argv, broken pastes)
    st.sampled_from(":,/"),
)
any_text = st.text(chars, max_size=60)
spaces = st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=3)
# Text shaped like the grammar: command words, key:value options, whitespace, words.
tokens = st.one_of(
    st.builds(lambda k, v: f"{k}:{v}", st.sampled_from(KEYS), any_text),
    st.sampled_from([*COMMANDS, *(f"/{c}" for c in COMMANDS), "/parley", "parley"]),
    any_text,
)
grammar_text = st.builds(lambda parts, seps: "".join(p + s for p, s in zip(parts, seps, strict=False)),
                         st.lists(tokens, max_size=8), st.lists(spaces, min_size=8, max_size=8))
lines = st.one_of(any_text, grammar_text)
values = st.one_of(
    st.none(), any_text, st.integers(), st.floats(), st.booleans(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
option_names = st.one_of(st.sampled_from([*KEYS, "prompt"]), any_text, st.integers(), st.none())
discord_option = st.one_of(
    st.fixed_dictionaries({"name": option_names, "value": values},
                          optional={"type": st.integers(), "focused": st.booleans()}),
    st.dictionaries(st.text(max_size=5), values, max_size=2),
    values,  # not even a dict
)


def request_or_usage_error(fn: Callable[[], Request]) -> Request | None:
    """Call ``fn``: a UsageError is an answer; any other exception fails the test."""
    try:
        req = fn()
    except UsageError as e:
        assert e.message and e.message.encode("utf-8")  # sayable on every platform
        return None
    assert isinstance(req, Request) and req.command in COMMANDS
    req.prompt.encode("utf-8")
    return req


# --- any input: a Request or a UsageError ------------------------------------------------------------


@FAST
@given(lines)
def test_parse_line_answers_anything_with_a_request_or_a_usage_error(line: str) -> None:
    request_or_usage_error(lambda: commands.parse_line(line))


@FAST
@given(st.sampled_from(sorted(COMMANDS)), lines)
def test_parse_answers_anything_with_a_request_or_a_usage_error(name: str, text: str) -> None:
    request_or_usage_error(lambda: commands.parse(name, text))


@FAST
@given(st.sampled_from(sorted(COMMANDS)), st.lists(discord_option, max_size=5))
def test_discord_options_answer_anything_with_a_request_or_a_usage_error(name: str, options: list[Any]) -> None:
    request_or_usage_error(lambda: request_from(name, options))


# --- a value is a value -------------------------------------------------------------------------------

BASE = {"personas": "riley", "providers": "one", "model": "m-1", "temperature": 0.5, "rounds": 2,
        "moderator": "two", "max_tokens": 300}


def _fields(req: Request) -> dict[str, Any]:
    return {f: getattr(req, f) for f in FIELDS}


@FAST
@given(st.sampled_from(["compare", "consensus"]), st.data())
def test_a_discord_value_changes_only_its_own_option(name: str, data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(COMMANDS[name].options))
    value = data.draw(values)
    rest = [{"name": k, "value": v} for k, v in BASE.items() if k in COMMANDS[name].options and k != option]
    base = _fields(request_from(name, [{"name": "prompt", "value": "Q?"}, *rest]))
    req = request_or_usage_error(
        lambda: request_from(name, [{"name": "prompt", "value": "Q?"}, {"name": option, "value": value}, *rest])
    )
    if req is not None:
        changed = {f for f, v in _fields(req).items() if v != base[f]}
        assert changed <= {option}, (option, value, changed)


@FAST
@given(st.sampled_from(["compare", "consensus"]), st.data())
def test_a_typed_value_changes_only_its_own_option(name: str, data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(COMMANDS[name].options))
    # One word (a value ends at whitespace), not a URL (``x://`` is text, not an option).
    value = data.draw(st.text(st.characters(exclude_categories=("Zs", "Zl", "Zp", "Cc")), min_size=1,
                              max_size=30).filter(lambda v: not v.startswith("//") and not any(
                                  c.isspace() for c in v)))
    rest = " ".join(f"{k}:{v}" for k, v in BASE.items() if k in COMMANDS[name].options and k != option)
    base = _fields(commands.parse(name, f"{rest} Q?"))
    req = request_or_usage_error(lambda: commands.parse(name, f"{rest} {option}:{value} Q?"))
    if req is not None:
        changed = {f for f, v in _fields(req).items() if v != base[f]}
        assert changed <= {option}, (option, value, changed)


@FAST
@given(spaces, spaces, spaces)
def test_options_are_recognised_after_any_whitespace(a: str, b: str, c: str) -> None:
    req = commands.parse_line(f"{a}compare{b}providers:one,two{c}temperature:0.5{a}First\nSecond{b}")
    assert (req.command, req.providers, req.temperature) == ("compare", ["one", "two"], 0.5)
    assert req.prompt == "First\nSecond"


# --- bounded work before the acknowledgement --------------------------------------------------------

N = 5000
PATHOLOGICAL = {
    "duplicates in both lists": "compare personas:" + ",".join(["riley"] * N) + " providers:"
                                + ",".join(["openai"] * N) + " Q",
    "an unknown persona repeated": "compare personas:" + ",".join(["nobody"] * 8000) + " Q",
    "a list option repeated": "consensus " + "persona:riley " * 4000 + "Q",
    "distinct unknown models": "compare providers:" + ",".join(f"openai/m{i}" for i in range(N)) + " Q",
    "one huge persona id": "compare personas:" + "x" * 50_000 + " Q",
    "one huge command word": "/" + "x" * 50_000 + " Q",
    "one huge option key": "ask " + "k" * 50_000 + ":v Q",
    "one huge number": "ask temperature:" + "1" * 50_000 + " Q",
    "a huge question": "ask " + "Q " * 25_000,
    "lone surrogates": "ask " + "caf\udce9 " * 10_000,
    "commas only": "compare personas:" + "," * 50_000 + " providers:" + ",".join(["kimi"] * 100) + " Q",
}


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
async def test_pathological_input_is_refused_quickly(services: Services, case: str) -> None:
    text = PATHOLOGICAL[case]
    assert len(text) >= 40_000
    started = time.perf_counter()
    with pytest.raises(UsageError):
        req = commands.parse_line(text, max_prompt_chars=services.settings.max_prompt_chars)
        services.engine.panel(req)
    assert time.perf_counter() - started < 0.5


async def test_pathological_discord_options_are_refused_quickly(services: Services) -> None:
    for name, options in [
        ("compare", [{"name": "personas", "value": ",".join(["riley"] * N)},
                     {"name": "providers", "value": ",".join(["openai"] * N)}]),
        ("ask", [{"name": "persona", "value": "riley " * 8000}]),
        ("consensus", [{"name": "moderator", "value": "m" * 50_000}]),
    ]:
        started = time.perf_counter()
        with pytest.raises(UsageError):
            req = request_from(name, [{"name": "prompt", "value": "Q"}, *options])
            services.engine.panel(req)
        assert time.perf_counter() - started < 0.5


async def test_the_planner_counts_before_it_expands(services: Services) -> None:
    """A Request built by code (not the grammar) with long lists is planned from its distinct
    names: the cross product is never built before the limit is checked."""
    ids = [p.id for p in services.personas.all()]
    providers = services.registry.names()
    started = time.perf_counter()
    [one] = services.engine.panel(Request("compare", "Q", personas=["riley", "Riley"] * 1500,
                                          providers=["openai"] * 100))
    assert one.persona.id == "riley" and one.provider.id == "openai"
    with pytest.raises(UsageError, match=r"limit is 12 \(PARLEY_MAX_TURNS\)"):
        services.engine.panel(Request("compare", "Q", personas=ids * 300, providers=providers * 30))
    assert time.perf_counter() - started < 0.5


def test_a_non_utf8_cli_argument_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Python decodes a non-UTF-8 argv with surrogateescape: b'caf\\xe9' arrives as 'caf\\udce9'."""
    monkeypatch.setenv("PARLEY_DEFAULT_PROVIDER", "openai")  # not configured: never reached
    assert cli.main(["ask", "caf\udce9", "?"]) == 2
    err = capsys.readouterr().err
    assert "not valid Unicode text" in err and "UTF-8" in err and "Traceback" not in err

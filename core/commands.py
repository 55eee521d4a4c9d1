"""THE command table and the text grammar shared by every front-end.

The grammar is what a person types after a slash command (or after a mention):
``key:value`` options first, then the question::

    provider:kimi How should we announce our v2 launch?
    personas:riley,morgan providers:openai,anthropic/claude-haiku-4-5 Pricing page copy?

Slack's manifest, Discord's app commands, the CLI's sub-commands and ``help``
(:func:`core.present.help_doc`) are all generated from :data:`COMMANDS` and :data:`OPTIONS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from core.errors import UsageError, suggest

Mode = Literal["single", "parallel", "consensus"]


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    kind: Literal["str", "list", "float", "int"]
    help: str
    aliases: tuple[str, ...] = ()
    #: What the value names, for autocomplete: "persona", "provider", "model" or None.
    completes: str | None = None


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    mode: Mode | None = None
    options: tuple[str, ...] = ()
    takes_prompt: bool = False
    example: str = ""

    @property
    def usage(self) -> str:
        opts = " ".join(f"[{o}:…]" for o in self.options)
        return f"/{self.name} {opts}{' QUESTION' if self.takes_prompt else ''}".replace("  ", " ")


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("personas", "list", "Persona id(s), comma separated", ("persona",), "persona"),
        Option(
            "providers",
            "list",
            "Provider(s), comma separated, each optionally provider/model",
            ("provider",),
            "provider",
        ),
        Option("model", "str", "Model id for the provider(s)", (), "model"),
        Option("temperature", "float", "Sampling temperature (0–2; clamped to the model's range)"),
        Option("rounds", "int", "Consensus review rounds (stage 2 repeats)"),
        Option("moderator", "str", "Consensus moderator: a provider[/model] or a persona id", (), None),
        Option("max_tokens", "int", "Cap on each answer's length in tokens", ("max",)),
    )
}
_ALIASES = {alias: o.name for o in OPTIONS.values() for alias in (o.name, *o.aliases)}

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "ask",
            "Ask one expert (one persona on one provider).",
            "single",
            ("personas", "providers", "model", "temperature", "max_tokens"),
            True,
            "/ask persona:riley provider:kimi How should we announce our v2 launch?",
        ),
        Command(
            "compare",
            "Same question to several providers and/or personas, side by side.",
            "parallel",
            ("personas", "providers", "model", "temperature", "max_tokens"),
            True,
            "/compare providers:openai,anthropic,kimi What should we price the team plan at?",
        ),
        Command(
            "consensus",
            "A panel answers, reviews each other anonymously, and a moderator synthesises.",
            "consensus",
            ("personas", "providers", "model", "temperature", "rounds", "moderator", "max_tokens"),
            True,
            "/consensus personas:riley,morgan,devon Should we launch on a Friday?",
        ),
        Command("personas", "List the experts you can ask."),
        Command("providers", "List providers, their status, default model and prices."),
        Command("usage", "Tokens and cost so far, by provider and model."),
        Command("help", "How to use Parley."),
    )
}

#: Names a person may type for the umbrella command (``/parley ask ...``).
UMBRELLA = "parley"

_OPTION_TOKEN = re.compile(r"([A-Za-z_]+):(?!//)(\S+)")
#: A word ends at any whitespace (the same characters as ``str.split``: newline, tab, U+00A0...).
_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s")
#: The longest name a value may give (persona, provider/model, model, number): Discord's choice limit.
MAX_VALUE_CHARS = 100
#: Settings the grammar applies, with the defaults of :class:`core.config.Settings`.
DEFAULT_MAX_PROMPT_CHARS = 8000
DEFAULT_MAX_TURNS = 12


@dataclass(slots=True)
class Request:
    command: str
    prompt: str = ""
    personas: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    model: str | None = None
    temperature: float | None = None
    rounds: int | None = None
    moderator: str | None = None
    max_tokens: int | None = None

    @property
    def spec(self) -> Command:
        return COMMANDS[self.command]

    @property
    def mode(self) -> Mode | None:
        return self.spec.mode

    def options(self) -> dict[str, object]:
        return {
            k: v
            for k, v in (
                ("personas", self.personas),
                ("providers", self.providers),
                ("model", self.model),
                ("temperature", self.temperature),
                ("rounds", self.rounds),
                ("moderator", self.moderator),
                ("max_tokens", self.max_tokens),
            )
            if v not in (None, [])
        }


def command(name: str) -> Command:
    key = name.strip().lstrip("/").lower()
    if key not in COMMANDS:
        raise UsageError(suggest(_shown(name), COMMANDS, "command") + " Try /help.")
    return COMMANDS[key]


def parse(
    command_name: str,
    text: str,
    *,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_turns: int = DEFAULT_MAX_TURNS,
) -> Request:
    """Parse what follows ``/command``: ``key:value`` words, then the question.
    Raises UsageError with a fix on bad input."""
    cmd = command(command_name)
    _check_unicode(text, "The text")
    options: list[tuple[str, object]] = []
    rest = len(text)
    for word in _WORD.finditer(text):
        m = _OPTION_TOKEN.fullmatch(word.group())
        if m is None:
            rest = word.start()
            break
        options.append((m.group(1), m.group(2)))
    return build(cmd, options, text[rest:], max_prompt_chars=max_prompt_chars, max_turns=max_turns)


def build(
    command_name: str | Command,
    options: Iterable[tuple[str, object]],
    prompt: object = "",
    *,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_turns: int = DEFAULT_MAX_TURNS,
) -> Request:
    """A validated :class:`Request` from ``(option, value)`` pairs and the question.

    Every front-end comes here: :func:`parse` with the words a person typed, Discord with
    an interaction's structured options (a value is one value, whatever it contains).
    A list option given twice adds to itself; any other option keeps its last value.
    """
    cmd = command_name if isinstance(command_name, Command) else command(command_name)
    req = Request(cmd.name)
    named: dict[str, int] = {}  # items a list option was given, duplicates included
    for key, raw in options:
        if raw is None or raw == "":
            continue
        key = str(key)
        name = _ALIASES.get(key.lower())
        if name is None:
            raise UsageError(
                suggest(_shown(key), _ALIASES, "option")
                + f" Options go first as key:value, then the question. Usage: {cmd.usage}"
            )
        if name not in cmd.options:
            allowed = ", ".join(cmd.options) or "none"
            raise UsageError(f"/{cmd.name} does not take {_shown(key)}:. It takes: {allowed}.")
        value = _value(OPTIONS[name], key, raw)
        if not isinstance(value, list):
            if value != "":
                setattr(req, name, value)
            continue
        named[name] = named.get(name, 0) + len(value)
        limit = _max_items(cmd, max_turns)
        if named[name] > limit:
            why = "" if limit == max_turns else ": a consensus runs each panelist twice or more"
            raise UsageError(
                f"{key}: names {named[name]:,} items; the limit is {limit} (PARLEY_MAX_TURNS{why}). "
                f"Name fewer, or raise PARLEY_MAX_TURNS."
            )
        have: list[str] = getattr(req, name)
        have += [v for v in dict.fromkeys(value) if v not in have]
    req.prompt = _text(prompt, "The question").strip()
    if cmd.takes_prompt and not req.prompt:
        raise UsageError(f"/{cmd.name} needs a question after the options. Example: {cmd.example}")
    if not cmd.takes_prompt and req.prompt:
        raise UsageError(f"/{cmd.name} takes no question. Did you mean /ask {_shown(req.prompt)}?")
    if len(req.prompt) > max_prompt_chars:
        raise UsageError(
            f"The question is {len(req.prompt):,} characters; the limit is {max_prompt_chars:,} "
            f"(PARLEY_MAX_PROMPT_CHARS). Shorten it or attach the essentials only."
        )
    if cmd.mode == "single" and (len(req.personas) > 1 or len(req.providers) > 1):
        raise UsageError(
            "/ask takes one persona and one provider. Use /compare for several side by side, "
            "or /consensus to have them converge."
        )
    return req


def _max_items(cmd: Command, max_turns: int) -> int:
    """How many names a list option may hold: as many panelists as the command could run
    (a consensus runs each at least twice, plus a synthesis, within three times the limit)."""
    return max(2, (3 * max_turns - 1) // 2) if cmd.mode == "consensus" else max(1, max_turns)


_EXAMPLE = {"persona": "riley,morgan", "provider": "NAME,NAME/MODEL"}


def _value(opt: Option, key: str, raw: object) -> str | list[str] | float | int:
    """One option's value, checked: a list of names, a name, or a number in range."""
    if opt.kind in ("list", "str"):
        text = _text(raw, f"{key}:")
        if opt.kind == "str":
            return _word(text.strip(), key, f"{opt.name}:NAME")
        example = f"{key}:{_EXAMPLE.get(opt.completes or '', 'a,b')}"
        return [_word(v, key, example) for v in (v.strip() for v in text.split(",")) if v]
    what, example = ("a number", "0.7") if opt.kind == "float" else ("a whole number", "2")
    not_a_number = UsageError(f"{opt.name}:{_shown(str(raw))} is not {what}. Example: {opt.name}:{example}")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise not_a_number
    value = _word(_text(raw, f"{key}:").strip(), key, f"{opt.name}:{example}") if isinstance(raw, str) else raw
    try:
        if opt.kind == "float":
            number: float = float(value)
        elif isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        else:
            number = int(value)
    except (ValueError, OverflowError):
        raise not_a_number from None
    if opt.kind == "float" and not 0 <= number <= 2:
        raise UsageError(f"{opt.name}:{_shown(str(raw))} is out of range; use a value from 0 to 2.")
    if opt.kind == "int" and number < 1:
        raise UsageError(f"{opt.name}:{_shown(str(raw))} must be at least 1.")
    return number


def _text(raw: object, what: str) -> str:
    """A value as text: a string (valid Unicode) or a number."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise UsageError(f"{what} takes text, not {type(raw).__name__}.")
    text = raw if isinstance(raw, str) else str(raw)
    _check_unicode(text, what)
    return text


def _word(value: str, key: str, example: str) -> str:
    """One word of at most MAX_VALUE_CHARS characters (a name, an id, a number)."""
    if _SPACE.search(value):
        raise UsageError(
            f"{key}: '{_shown(value)}' has a space in it, and a value is one word. "
            f"Separate several with commas and no spaces: {example}."
        )
    if len(value) > MAX_VALUE_CHARS:
        raise UsageError(
            f"{key}: '{_shown(value)}' is {len(value):,} characters; a value is at most "
            f"{MAX_VALUE_CHARS} characters."
        )
    return value


def _check_unicode(text: str, what: str) -> None:
    """Refuse a lone surrogate (a non-UTF-8 terminal's argv, a broken paste): no platform can show it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        near = text[max(0, e.start - 12) : e.start + 12].encode("utf-8", "backslashreplace").decode("utf-8")
        raise UsageError(
            f"{what} is not valid Unicode text: character {e.start + 1:,} (near '{near}') is a lone "
            f"surrogate, as a terminal not set to UTF-8 or a broken copy-paste produces. Retype that part, "
            f"or set the terminal to UTF-8 (e.g. LANG=C.UTF-8)."
        ) from None


def _shown(text: str, limit: int = 40) -> str:
    """At most ``limit`` characters of what someone typed, for an error message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_line(
    line: str,
    *,
    default: str = "ask",
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_turns: int = DEFAULT_MAX_TURNS,
) -> Request:
    """A whole line as typed in the console or a mention: ``/compare providers:a,b Q``.

    A leading ``/parley`` (the umbrella) is skipped; without a known command word
    the line is a question for ``default``.
    """
    _check_unicode(line, "The message")
    text = line.strip()
    first, rest = _first_word(text)
    if first.lstrip("/").lower() == UMBRELLA:
        text = rest
        first, rest = _first_word(text)
    name = first.lstrip("/").lower()
    limits = {"max_prompt_chars": max_prompt_chars, "max_turns": max_turns}
    if name in COMMANDS:
        return parse(name, rest, **limits)
    if first.startswith("/"):
        command(first)  # raises with suggestions
    return parse(default, text, **limits)


def _first_word(text: str) -> tuple[str, str]:
    word = _WORD.match(text)
    return ("", "") if word is None else (word.group(), text[word.end() :].strip())

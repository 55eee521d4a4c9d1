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
    #: What the value names, for autocomplete: "persona", "provider", "model", "panel" or None.
    completes: str | None = None
    #: The range of a number (inclusive); ``None``: unbounded on that side.
    lo: float | None = None
    hi: float | None = None
    #: The only values a ``str`` option takes (offered as choices in Discord).
    choices: tuple[str, ...] = ()


#: What an action takes after its options: a NAME (a saved panel), a SECRET (a provider
#: key: never echoed, never stored in clear) or nothing.
Takes = Literal["name", "secret"] | None


@dataclass(frozen=True, slots=True)
class Action:
    """One sub-command of an administrative command (``/budget set``, ``/panel save``)."""

    name: str
    summary: str
    options: tuple[str, ...] = ()
    takes: Takes = None
    #: Only workspace admins may run it (some actions decide by their options: ``/keys set scope:workspace``).
    admin: bool = False
    example: str = ""
    #: Options whose choices are fewer here than in OPTIONS (``/keys set scope:`` is user or workspace).
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: List options that name exactly one thing here (``/keys set provider:``).
    single: tuple[str, ...] = ()

    def choices_for(self, option: str) -> tuple[str, ...]:
        return dict(self.choices).get(option) or OPTIONS[option].choices


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    mode: Mode | None = None
    options: tuple[str, ...] = ()
    takes_prompt: bool = False
    example: str = ""
    #: Sub-commands, the first being what the bare command does (``/budget`` = ``/budget show``).
    actions: tuple[Action, ...] = ()
    #: Mostly for administrators: Discord shows it only to members with Manage Server
    #: (a server can grant it to others under Server Settings → Integrations).
    admin: bool = False

    @property
    def usage(self) -> str:
        if self.actions:
            return f"/{self.name} {'|'.join(a.name for a in self.actions)} …"
        opts = " ".join(f"[{o}:…]" for o in self.options)
        return f"/{self.name} {opts}{' QUESTION' if self.takes_prompt else ''}".replace("  ", " ")

    def action(self, name: str) -> Action:
        for a in self.actions:
            if a.name == name:
                return a
        raise UsageError(suggest(name, [a.name for a in self.actions], f"/{self.name} action") + f" Usage: {self.usage}")

    def action_usage(self, action: Action) -> str:
        opts = " ".join(f"[{o}:…]" for o in action.options)
        tail = {"name": " NAME", "secret": " KEY"}.get(action.takes or "", "")
        return f"/{self.name} {action.name} {opts}{tail}".replace("  ", " ").strip()


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
        Option("temperature", "float", "Sampling temperature (0–2; clamped to the model's range)", lo=0, hi=2),
        Option("rounds", "int", "Consensus review rounds (stage 2 repeats)", lo=1),
        Option("moderator", "str", "Consensus moderator: a provider[/model] or a persona id", (), None),
        Option("depth", "str", "How far a consensus goes: answers (stage 1 only), ranked (answers and the "
               "anonymous ranking) or full (and the moderator's synthesis; the default)", (),
               choices=("answers", "ranked", "full")),
        Option("method", "str", "Consensus protocol: panel (the default) or debate (a devil's advocate argues "
               "against the leading answer before the synthesis)", (), choices=("panel", "debate")),
        Option("max_tokens", "int", "Cap on each answer's length in tokens", ("max",), lo=1),
        Option("panel", "str", "A saved panel (/panel save): its options, yours override", (), "panel"),
        # Administration (/budget, /policy, /keys, /panel).
        Option("scope", "str", "Where it applies: workspace, channel or user", (),
               choices=("workspace", "channel", "user")),
        Option("user", "str", "A person: their id or @mention", ()),
        Option("daily", "float", "USD cap per UTC day (0: nothing may be spent)", (), lo=0, hi=1_000_000),
        Option("monthly", "float", "USD cap per UTC month (0: nothing may be spent)", (), lo=0, hi=1_000_000),
        Option("soft", "int", "Percent of a cap at which admins are told once (default 80)", (), lo=1, hi=100),
        Option("own_keys", "str", "Whether spend on people's own keys counts against budgets", (),
               choices=("count", "free")),
        Option("models", "list", "Model pattern(s) as provider/model, a star matching any rest, comma separated", ("model_pattern",)),
        Option("commands", "list", "Command name(s), comma separated", ("command",)),
        Option("users", "list", "Only for these people (ids or @mentions), comma separated", ()),
        Option("roles", "list", "Only for these roles (Discord role ids or names), comma separated", ("role",)),
        Option("mode", "str", "Default mode of a mention: single, parallel or consensus", (),
               choices=("single", "parallel", "consensus")),
        Option("days", "int", "Keep discussion texts this many days (0: keep them)", (), lo=0, hi=36_500),
    )
}
_ALIASES = {alias: o.name for o in OPTIONS.values() for alias in (o.name, *o.aliases)}

#: Where a policy rule or default applies; whose a key is.
_PLACES = (("scope", ("workspace", "channel")),)
_WHOSE = (("scope", ("user", "workspace")),)

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "ask",
            "Ask one expert (one persona on one provider).",
            "single",
            ("personas", "providers", "model", "temperature", "max_tokens", "panel"),
            True,
            "/ask persona:riley provider:kimi How should we announce our v2 launch?",
        ),
        Command(
            "compare",
            "Same question to several providers and/or personas, side by side.",
            "parallel",
            ("personas", "providers", "model", "temperature", "max_tokens", "panel"),
            True,
            "/compare providers:openai,anthropic,kimi What should we price the team plan at?",
        ),
        Command(
            "consensus",
            "A panel answers, reviews each other anonymously, and a moderator synthesises.",
            "consensus",
            ("personas", "providers", "model", "temperature", "rounds", "moderator", "depth", "method", "max_tokens",
             "panel"),
            True,
            "/consensus personas:riley,morgan,devon Should we launch on a Friday?",
        ),
        Command("personas", "List the experts you can ask."),
        Command("providers", "List providers, their status, default model and prices."),
        Command("usage", "Your spend and what your budgets leave (admins: the workspace's), by provider and model."),
        Command(
            "budget",
            "USD caps per workspace, channel and person, per day and month.",
            actions=(
                Action("show", "Caps, spend and what remains for you here."),
                Action(
                    "set",
                    "Set a cap (admins).",
                    ("scope", "user", "daily", "monthly", "soft", "own_keys"),
                    admin=True,
                    example="/budget set scope:workspace daily:5 monthly:100 soft:80",
                ),
            ),
            admin=True,
        ),
        Command(
            "policy",
            "Which providers, models, personas and commands may be used here.",
            actions=(
                Action("show", "The rules in force here."),
                Action("allow", "Allow (an allow-list: only what is named) (admins).",
                       ("providers", "models", "personas", "commands", "scope", "users", "roles"), admin=True,
                       example="/policy allow providers:kimi,anthropic scope:channel", choices=_PLACES),
                Action("deny", "Deny what is named (admins).",
                       ("providers", "models", "personas", "commands", "scope", "users", "roles"), admin=True,
                       example="/policy deny models:openai/gpt-5*", choices=_PLACES),
                Action("default", "Defaults for requests here, inherited by threads (admins).",
                       ("providers", "personas", "mode", "scope"), admin=True,
                       example="/policy default provider:kimi personas:riley,morgan mode:parallel", choices=_PLACES),
                Action("remove", "Remove rule number NAME (admins).", (), "name", admin=True,
                       example="/policy remove 3"),
                Action("retention", "Keep discussion texts N days (admins).", ("days",), admin=True,
                       example="/policy retention days:30"),
                Action("followups", "Answer follow-ups in Parley's threads without a mention: NAME is on or off "
                       "(admins).", (), "name", admin=True, example="/policy followups on"),
                Action("log", "Who changed what, when."),
            ),
            admin=True,
        ),
        Command(
            "keys",
            "Your own provider keys (and, for admins, the workspace's): encrypted, never shown back.",
            actions=(
                Action("list", "The keys set for you and this workspace (masked)."),
                Action("set", "Set a key, in a DM or privately only.", ("providers", "scope"), "secret",
                       example="/keys set provider:kimi sk-…", choices=_WHOSE, single=("providers",)),
                Action("delete", "Delete a key.", ("providers", "scope"), example="/keys delete provider:kimi",
                       choices=_WHOSE, single=("providers",)),
            ),
        ),
        Command(
            "panel",
            "Saved panels: a named set of personas, providers and settings for any discussion.",
            actions=(
                Action("list", "The saved panels here."),
                Action("save", "Save a panel.",
                       ("personas", "providers", "model", "rounds", "moderator", "depth", "method", "temperature",
                        "max_tokens"),
                       "name", example="/panel save launch-review personas:riley,morgan providers:kimi,openai"),
                Action("show", "What a panel runs.", (), "name", example="/panel show launch-review"),
                Action("delete", "Delete a panel (its author or an admin).", (), "name",
                       example="/panel delete launch-review"),
            ),
        ),
        Command("stop", "Stop your discussions running in this channel and its threads (admins: anyone's)."),
        Command("forget", "Delete your stored questions and answers (costs and token counts stay)."),
        Command("leaderboard", "Which provider × persona wins the votes here: win rate, 👍 share, cost per win."),
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
    #: How far a consensus goes (answers, ranked, full) and its protocol (panel, debate); None: the default.
    depth: str | None = None
    method: str | None = None
    max_tokens: int | None = None
    panel: str | None = None
    #: The sub-command of an administrative command, its NAME and its SECRET (never in repr).
    action: str | None = None
    name: str | None = None
    secret: str | None = field(default=None, repr=False)
    #: Administrative options (scope, user, daily, …) by name.
    params: dict[str, object] = field(default_factory=dict)
    #: No command word was typed (a mention's plain question): a channel's default mode may apply.
    implicit: bool = False
    #: Set by actions under answers (core.actions), never typed: answer without the thread's
    #: history ("Ask again with…"), or continue the kept text of this turn ("Continue").
    fresh: bool = False
    continues: str | None = None

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
                ("depth", self.depth),
                ("method", self.method),
                ("max_tokens", self.max_tokens),
            )
            if v not in (None, [])
        }

    def param(self, name: str, default: object = None) -> object:
        return self.params.get(name, default)



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
    An administrative command takes its action word first (``/budget set daily:5``),
    then options and its NAME or KEY in any order.
    Raises UsageError with a fix on bad input."""
    cmd = command(command_name)
    if cmd.actions:
        return _parse_action(cmd, text)
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


def _parse_action(cmd: Command, text: str) -> Request:
    words = text.split()
    first = words[0].lower() if words else ""
    names = [a.name for a in cmd.actions]
    if first in names:
        action, words = cmd.action(first), words[1:]
    elif not words or _OPTION_TOKEN.fullmatch(words[0]):
        action = cmd.actions[0]
    elif any(a.takes == "secret" for a in cmd.actions):  # the word may be a key: never quote it
        raise UsageError(f"/{cmd.name} takes an action first: {', '.join(names)}. Usage: {cmd.usage}")
    else:
        raise UsageError(suggest(_shown(words[0], 20), names, f"/{cmd.name} action") + f" Usage: {cmd.usage}")
    secret = action.takes == "secret"
    if secret:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("That key is not valid text; paste it again.") from None
    else:
        _check_unicode(text, "The text")
    options: list[tuple[str, object]] = []
    positional: list[str] = []
    for word in words:
        m = _OPTION_TOKEN.fullmatch(word)
        # A key may hold a colon: only a known option name makes a word an option there.
        if m is not None and (not secret or m.group(1).lower() in _ALIASES):
            options.append((m.group(1), m.group(2)))
        else:
            positional.append(word)
    return build(cmd, options, " ".join(positional), action=action.name)


def build(
    command_name: str | Command,
    options: Iterable[tuple[str, object]],
    prompt: object = "",
    *,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_turns: int = DEFAULT_MAX_TURNS,
    action: str | None = None,
) -> Request:
    """A validated :class:`Request` from ``(option, value)`` pairs and the question.

    Every front-end comes here: :func:`parse` with the words a person typed, Discord with
    an interaction's structured options (a value is one value, whatever it contains).
    A list option given twice adds to itself; any other option keeps its last value.
    For an administrative command ``action`` names the sub-command (default: the first)
    and ``prompt`` is its NAME or KEY.
    """
    cmd = command_name if isinstance(command_name, Command) else command(command_name)
    if cmd.actions:
        return _build_action(cmd, cmd.action(action) if action else cmd.actions[0], options, prompt)
    req = Request(cmd.name)
    named: dict[str, int] = {}  # items a list option was given, duplicates included
    for key, raw in _given(options):
        name, value = _option(
            key, raw, cmd.options, f"/{cmd.name}",
            f"Options go first as key:value, then the question. Usage: {cmd.usage}",
        )
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


#: Options that fill a discussion's own fields; every other option is a ``param``.
_FIELDS = ("personas", "providers", "model", "temperature", "rounds", "moderator", "depth", "method", "max_tokens",
           "panel")
#: How many names an administrative list option may hold.
MAX_ADMIN_ITEMS = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def _given(options: Iterable[tuple[str, object]]) -> Iterable[tuple[str, object]]:
    """The options that were given a value, their names as text."""
    return ((str(k), v) for k, v in options if v is not None and v != "")


def _option(key: str, raw: object, allowed: tuple[str, ...], where: str, usage: str) -> tuple[str, object]:
    """One ``key:value``: its canonical name (refused with suggestions if unknown or not
    taken by ``where``) and its checked value."""
    name = _ALIASES.get(key.lower())
    if name is None:
        raise UsageError(suggest(_shown(key), _ALIASES, "option") + f" {usage}")
    if name not in allowed:
        raise UsageError(f"{where} does not take {_shown(key)}:. It takes: {', '.join(allowed) or 'none'}.")
    return name, _value(OPTIONS[name], key, raw)


def _build_action(cmd: Command, action: Action, options: Iterable[tuple[str, object]], positional: object) -> Request:
    req = Request(cmd.name, action=action.name)
    where = cmd.action_usage(action)
    for key, raw in _given(options):
        name, value = _option(key, raw, action.options, f"/{cmd.name} {action.name}", f"Usage: {where}")
        narrowed = action.choices_for(name)
        if narrowed and value not in narrowed:
            raise UsageError(f"/{cmd.name} {action.name} takes {name}:{'|'.join(narrowed)}, not {name}:{value}.")
        if isinstance(value, list):
            have = req.params.setdefault(name, []) if name not in _FIELDS else getattr(req, name)
            assert isinstance(have, list)
            have += [v for v in dict.fromkeys(value) if v not in have]
            if len(have) > MAX_ADMIN_ITEMS:
                raise UsageError(f"{key}: names more than {MAX_ADMIN_ITEMS} items; split it into several commands.")
            if name in action.single and len(have) > 1:
                raise UsageError(f"/{cmd.name} {action.name} takes one {OPTIONS[name].aliases[0]}:, not several.")
        elif name in _FIELDS:
            setattr(req, name, value)
        else:
            req.params[name] = value
    if action.takes == "secret":
        if not isinstance(positional, str):
            raise UsageError("The key must be text.")
        # Kept as typed: whoever answers checks first whether it was typed in private (a key
        # typed in public must be rotated, well formed or not), then its shape.
        req.secret = positional.strip()
        if not req.secret:
            raise UsageError(f"/{cmd.name} {action.name} needs the key after the options. Usage: {where}")
        return req
    text = _text(positional, "The text").strip()
    if action.takes == "name":
        name = text.lower()
        if not name:
            raise UsageError(f"/{cmd.name} {action.name} needs a name. Example: {action.example or where}")
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"'{_shown(text)}' is not a name Parley takes: use 1–40 lowercase letters, digits, - or _, "
                f"starting with a letter or digit (e.g. launch-review)."
            )
        req.name = name
    elif text:
        raise UsageError(f"/{cmd.name} {action.name} takes no text after its options ('{_shown(text)}'). "
                         f"Usage: {where}")
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
            word = _word(text.strip(), key, f"{opt.name}:NAME")
            if opt.choices and word.lower() not in opt.choices:
                raise UsageError(suggest(_shown(word), opt.choices, f"{opt.name} value"))
            return word.lower() if opt.choices else word
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
    if number != number or number in (float("inf"), float("-inf")):
        raise not_a_number
    lo, hi = opt.lo, opt.hi
    if lo is not None and hi is not None and not lo <= number <= hi:
        raise UsageError(f"{opt.name}:{_shown(str(raw))} is out of range; use a value from {lo:g} to {hi:g}.")
    if lo is not None and number < lo:
        raise UsageError(f"{opt.name}:{_shown(str(raw))} must be at least {lo:g}.")
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
    req = parse(default, text, **limits)
    req.implicit = True
    return req


def _first_word(text: str) -> tuple[str, str]:
    word = _WORD.match(text)
    return ("", "") if word is None else (word.group(), text[word.end() :].strip())

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

_OPTION_TOKEN = re.compile(r"^([A-Za-z_]+):(?!//)(\S+)$")


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
        raise UsageError(suggest(name, COMMANDS, "command") + " Try /help.")
    return COMMANDS[key]


def parse(command_name: str, text: str, *, max_prompt_chars: int = 8000) -> Request:
    """Parse what follows ``/command``. Raises UsageError with a fix on bad input."""
    cmd = command(command_name)
    req = Request(cmd.name)
    words = text.strip().split(" ") if text.strip() else []
    i = 0
    while i < len(words):
        w = words[i]
        if not w:
            i += 1
            continue
        m = _OPTION_TOKEN.match(w)
        if not m:
            break
        key, value = m.group(1).lower(), m.group(2)
        name = _ALIASES.get(key)
        if name is None:
            raise UsageError(
                suggest(key, _ALIASES, "option")
                + f" Options go first as key:value, then the question. Usage: {cmd.usage}"
            )
        if name not in cmd.options:
            allowed = ", ".join(cmd.options) or "none"
            raise UsageError(f"/{cmd.name} does not take {key}:. It takes: {allowed}.")
        _set(req, OPTIONS[name], value)
        i += 1
    req.prompt = " ".join(words[i:]).strip()
    if cmd.takes_prompt and not req.prompt:
        raise UsageError(f"/{cmd.name} needs a question after the options. Example: {cmd.example}")
    if not cmd.takes_prompt and req.prompt:
        raise UsageError(f"/{cmd.name} takes no question. Did you mean /ask {req.prompt[:40]}?")
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


def _set(req: Request, opt: Option, value: str) -> None:
    if opt.kind == "list":
        items = [v.strip() for v in value.split(",") if v.strip()]
        getattr(req, opt.name).extend(items)
        return
    if opt.kind == "float":
        try:
            f = float(value)
        except ValueError:
            raise UsageError(f"{opt.name}:{value} is not a number. Example: {opt.name}:0.7") from None
        if not 0 <= f <= 2:
            raise UsageError(f"{opt.name}:{value} is out of range; use a value from 0 to 2.")
        setattr(req, opt.name, f)
        return
    if opt.kind == "int":
        try:
            n = int(value)
        except ValueError:
            raise UsageError(f"{opt.name}:{value} is not a whole number. Example: {opt.name}:2") from None
        if n < 1:
            raise UsageError(f"{opt.name}:{value} must be at least 1.")
        setattr(req, opt.name, n)
        return
    setattr(req, opt.name, value)


def parse_line(line: str, *, default: str = "ask", max_prompt_chars: int = 8000) -> Request:
    """A whole line as typed in the console or a mention: ``/compare providers:a,b Q``.

    A leading ``/parley`` (the umbrella) is skipped; without a known command word
    the line is a question for ``default``.
    """
    text = line.strip()
    first, _, rest = text.partition(" ")
    if first.lstrip("/").lower() == UMBRELLA:
        text = rest.strip()
        first, _, rest = text.partition(" ")
    name = first.lstrip("/").lower()
    if name in COMMANDS:
        return parse(name, rest, max_prompt_chars=max_prompt_chars)
    if first.startswith("/"):
        command(first)  # raises with suggestions
    return parse(default, text, max_prompt_chars=max_prompt_chars)


"""Discord application commands, generated from the one command table.

:func:`command_payloads` turns :data:`core.commands.COMMANDS` and
:data:`core.commands.OPTIONS` into the JSON Discord's bulk-overwrite endpoint
takes; :func:`request_from` hands an interaction's structured options to
:func:`core.commands.build`, the validation the text grammar uses too;
:func:`complete` answers autocomplete from the live registry and persona book
(a provider added in the user's PARLEY_CONFIG appears with no code and no
re-sync: autocomplete is asked at typing time).

We build payloads rather than ``app_commands`` decorators: discord.py derives
those from Python signatures, which would mean writing each command by hand.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.commands import (
    COMMANDS,
    DEFAULT_MAX_PROMPT_CHARS,
    DEFAULT_MAX_TURNS,
    OPTIONS,
    Command,
    Option,
    Request,
    build,
)
from core.errors import UsageError
from core.services import Services

# https://discord.com/developers/docs/interactions/application-commands#application-command-object
CHAT_INPUT = 1
STRING, INTEGER, NUMBER = 3, 4, 10
KIND = {"str": STRING, "list": STRING, "float": NUMBER, "int": INTEGER}
PROMPT = "prompt"
#: A string option's value is at most 6,000 characters.
MAX_STRING = 6000
MAX_CHOICES = 25


def option_name(command: Command, option: Option) -> str:
    """The name shown in Discord: singular for a one-expert command (``/ask persona:``)."""
    if command.mode == "single" and option.kind == "list" and option.aliases:
        return option.aliases[0]
    return option.name


def _describe(text: str) -> str:
    return text if len(text) <= 100 else text[:99] + "…"


def option_payload(command: Command, option: Option) -> dict[str, Any]:
    help_text = option.help
    if command.mode == "single" and option.kind == "list":
        help_text = help_text.replace("(s), comma separated", "")
    out: dict[str, Any] = {
        "type": KIND[option.kind],
        "name": option_name(command, option),
        "description": _describe(help_text),
        "required": False,
    }
    if option.completes in ("persona", "provider", "model"):
        out["autocomplete"] = True
    if option.kind == "float":
        out["min_value"], out["max_value"] = 0, 2
    elif option.kind == "int":
        out["min_value"] = 1
    return out


def command_payloads(max_prompt_chars: int = 8000) -> list[dict[str, Any]]:
    """Every command of the table as a Discord slash command (required options first)."""
    out = []
    for c in COMMANDS.values():
        options: list[dict[str, Any]] = []
        if c.takes_prompt:
            options.append({
                "type": STRING,
                "name": PROMPT,
                "description": "Your question",
                "required": True,
                "max_length": min(MAX_STRING, max_prompt_chars),
            })
        options += [option_payload(c, OPTIONS[o]) for o in c.options]
        out.append({
            "type": CHAT_INPUT,
            "name": c.name,
            "description": _describe(c.summary),
            "options": options,
            "contexts": [0, 1],  # guild channels and the bot's DMs
            "integration_types": [0],  # installed to a server
        })
    return out


def payload_hash(payloads: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(payloads, sort_keys=True).encode()).hexdigest()


def _canonical(command: Command) -> dict[str, str]:
    return {option_name(command, OPTIONS[o]): o for o in command.options}


def request_from(
    name: str,
    options: list[Any],
    *,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_turns: int = DEFAULT_MAX_TURNS,
) -> Request:
    """An interaction's options as a :class:`Request`, validated by :func:`core.commands.build`.

    Each option is one value, never re-joined into text: a value with a space inside
    (``persona:"riley provider:kimi"``) is refused, not read as more options, and a
    question that starts with ``word:word`` stays the question.
    """
    pairs: list[tuple[str, object]] = []
    prompt: object = ""
    for opt in options:
        if not isinstance(opt, dict):
            raise UsageError("Discord sent an option I cannot read; please run the command again.")
        if opt.get("name") == PROMPT:
            prompt = opt.get("value")
        else:
            pairs.append((str(opt.get("name")), opt.get("value")))
    return build(name, pairs, "" if prompt is None else prompt, max_prompt_chars=max_prompt_chars,
                 max_turns=max_turns)


def _choice(name: str, value: str) -> dict[str, str]:
    return {"name": _describe(name), "value": value[:100]}


def complete(services: Services, command: str, options: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Autocomplete choices for the focused option (for lists, the last comma-separated item)."""
    cmd = COMMANDS.get(command)
    if cmd is None:
        return []
    names = _canonical(cmd)
    focused = next((o for o in options if o.get("focused")), None)
    if focused is None:
        return []
    opt = OPTIONS.get(names.get(str(focused.get("name")), ""))
    if opt is None or opt.completes is None:
        return []
    typed = str(focused.get("value") or "")
    head, _, last = typed.rpartition(",") if opt.kind == "list" else ("", "", typed)
    prefix = (head + ",") if head else ""
    last = last.strip().lower()
    reg = services.registry
    candidates: list[tuple[str, str]] = []  # (value, label)
    if opt.completes == "persona":
        for p in services.personas.all():
            candidates.append((p.id, f"{p.emoji + ' ' if p.emoji else ''}{p.name}, {p.role}"))
    elif opt.completes == "provider":
        if "/" in last:  # provider/model: complete the model
            pid = last.split("/", 1)[0]
            if pid in reg.names():
                spec = reg.get(pid)
                candidates = [(f"{pid}/{m}", f"{spec.label} · {m}") for m in spec.models]
        else:
            for pid in reg.names():
                spec = reg.get(pid)
                candidates.append((pid, f"{spec.label} · {spec.default_model}"))
    elif opt.completes == "model":
        chosen = _chosen_providers(options, names)
        for pid in chosen or reg.names():
            if pid not in reg.names():
                continue
            spec = reg.get(pid)
            candidates += [(m, f"{m} ({spec.label})") for m in spec.models]
    seen: set[str] = set()
    out = []
    already = {v.strip().lower() for v in head.split(",")} if head else set()
    # What starts with the typed text first, then what merely contains it.
    ranked = [c for c in candidates if c[0].lower().startswith(last)]
    ranked += [c for c in candidates if last and last in c[1].lower() and c not in ranked]
    for value, label in ranked:
        if value in seen or value in already:
            continue
        seen.add(value)
        full = prefix + value
        if len(full) > 100:
            continue
        out.append(_choice(f"{prefix}{label}" if prefix else label, full))
        if len(out) >= MAX_CHOICES:
            break
    return out


def _chosen_providers(options: list[dict[str, Any]], names: dict[str, str]) -> list[str]:
    for o in options:
        if names.get(str(o.get("name"))) == "providers" and o.get("value"):
            return [v.split("/", 1)[0].strip().lower() for v in str(o["value"]).split(",") if v.strip()]
    return []

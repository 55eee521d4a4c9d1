"""Discord application commands, generated from the one command table.

:func:`command_payloads` turns :data:`core.commands.COMMANDS` and
:data:`core.commands.OPTIONS` into the JSON Discord's bulk-overwrite endpoint
takes; :func:`request_from` hands an interaction's structured options to
:func:`core.commands.build`, the validation the text grammar uses too;
:func:`complete` answers autocomplete from the live registry and persona book
(a provider added in the user's PARLEY_CONFIG appears with no code and no
re-sync: autocomplete is asked at typing time) and the server's saved panels.

A command with actions (``/budget``, ``/policy``, ``/keys``, ``/panel``) becomes one
Discord sub-command per action, each with its own options; an action's NAME is a
required ``name`` option and its KEY a required ``key`` option. An administrative
command is shown only to members with Manage Server (``default_member_permissions``);
the core still checks every request, whoever sends it.

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
    Action,
    Command,
    Option,
    Request,
    build,
)
from core.errors import UsageError
from core.services import Services

# https://discord.com/developers/docs/interactions/application-commands#application-command-object
CHAT_INPUT = 1
SUB_COMMAND, STRING, INTEGER, NUMBER = 1, 3, 4, 10
KIND = {"str": STRING, "list": STRING, "float": NUMBER, "int": INTEGER}
PROMPT = "prompt"
#: The options that carry an action's NAME and KEY (what the text grammar reads after the options).
NAME, KEY = "name", "key"
#: A string option's value is at most 6,000 characters.
MAX_STRING = 6000
MAX_CHOICES = 25
#: The longest key the core takes (:func:`core.commands.build`).
MAX_KEY_CHARS = 500
#: The longest panel name the core takes.
MAX_NAME_CHARS = 40
#: Where the commands may be used: server channels (0), the bot's DMs (1), group DMs and DMs
#: between other people (2, only through a user install). Installed to a server (0) and to a
#: person (1). https://discord.com/developers/docs/interactions/application-commands#interaction-contexts
CONTEXTS = (0, 1, 2)
INTEGRATION_TYPES = (0, 1)
#: Manage Server, as Discord's ``default_member_permissions`` bit set (a string).
MANAGE_GUILD = str(1 << 5)
#: What the ``name`` option of an action holds, by command.
NAME_HELP = {
    "panel": "The panel's name: 1–40 lowercase letters, digits, - or _",
    "policy": "The rule's number, as /policy show lists it",
}
#: ``name`` options that name an existing saved panel (autocompleted from the server's panels).
NAMES_A_PANEL = {("panel", "show"), ("panel", "delete")}


def _singular(command: Command, option: Option, action: Action | None) -> bool:
    if option.kind != "list" or not option.aliases:
        return False
    if action is not None:
        return option.name in action.single
    return command.mode == "single"


def option_name(command: Command, option: Option, action: Action | None = None) -> str:
    """The name shown in Discord: singular for a one-expert command (``/ask persona:``)
    and where one provider is named (``/keys set provider:``)."""
    return option.aliases[0] if _singular(command, option, action) else option.name


def _describe(text: str) -> str:
    return text if len(text) <= 100 else text[:99] + "…"


def option_payload(command: Command, option: Option, action: Action | None = None) -> dict[str, Any]:
    help_text = option.help
    if action is not None and option.name in action.single:
        help_text = help_text.split("(s)")[0]
    elif _singular(command, option, action):
        help_text = help_text.replace("(s), comma separated", "")
    out: dict[str, Any] = {
        "type": KIND[option.kind],
        "name": option_name(command, option, action),
        "description": _describe(help_text),
        "required": False,
    }
    choices = action.choices_for(option.name) if action is not None else option.choices
    if choices:  # Discord allows choices or autocomplete, not both
        out["choices"] = [{"name": c, "value": c} for c in choices[:MAX_CHOICES]]
    elif option.completes is not None:
        out["autocomplete"] = True
    if option.kind in ("float", "int"):
        if option.lo is not None:
            out["min_value"] = option.lo
        if option.hi is not None:
            out["max_value"] = option.hi
    return out


def action_payload(command: Command, action: Action) -> dict[str, Any]:
    """One action as a Discord sub-command: its NAME or KEY first (required), then its options."""
    options: list[dict[str, Any]] = []
    if action.takes == "name":
        name: dict[str, Any] = {
            "type": STRING, "name": NAME, "required": True, "min_length": 1, "max_length": MAX_NAME_CHARS,
            "description": _describe(NAME_HELP.get(command.name, "Its name")),
        }
        if (command.name, action.name) in NAMES_A_PANEL:
            name["autocomplete"] = True
        options.append(name)
    elif action.takes == "secret":
        options.append({
            "type": STRING, "name": KEY, "required": True, "min_length": 1, "max_length": MAX_KEY_CHARS,
            "description": "The provider key: only you see this command; it is stored encrypted, never shown",
        })
    options += [option_payload(command, OPTIONS[o], action) for o in action.options]
    return {"type": SUB_COMMAND, "name": action.name, "description": _describe(action.summary), "options": options}


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
        options += [action_payload(c, a) for a in c.actions]
        payload: dict[str, Any] = {
            "type": CHAT_INPUT,
            "name": c.name,
            "description": _describe(c.summary),
            "options": options,
            "contexts": list(CONTEXTS),
            "integration_types": list(INTEGRATION_TYPES),
        }
        if c.admin:
            # Shown only to members with Manage Server (a server can grant it to others under
            # Server Settings → Integrations); the core refuses non-admins whatever the client shows.
            payload["default_member_permissions"] = MANAGE_GUILD
        out.append(payload)
    return out


def payload_hash(payloads: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(payloads, sort_keys=True).encode()).hexdigest()


def _canonical(command: Command, action: Action | None = None) -> dict[str, str]:
    """Discord option name → the table's option name, for a command or one of its actions."""
    names = action.options if action is not None else command.options
    return {option_name(command, OPTIONS[o], action): o for o in names}


def _subcommand(command: Command, options: list[Any]) -> tuple[Action | None, list[Any]]:
    """The action an interaction names (its SUB_COMMAND option) and that action's own options."""
    if not command.actions:
        return None, options
    for opt in options:
        if isinstance(opt, dict) and opt.get("type") == SUB_COMMAND:
            return command.action(str(opt.get("name"))), list(opt.get("options") or [])
    return command.actions[0], options


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
    cmd = COMMANDS.get(name)
    action, options = _subcommand(cmd, options) if cmd is not None else (None, options)
    # What the text grammar reads after the options: the question, or an action's NAME or KEY.
    positional = {None: PROMPT, "name": NAME, "secret": KEY}[action.takes] if action is not None else PROMPT
    pairs: list[tuple[str, object]] = []
    prompt: object = ""
    for opt in options:
        if not isinstance(opt, dict):
            raise UsageError("Discord sent an option I cannot read; please run the command again.")
        if opt.get("name") == positional:
            prompt = opt.get("value")
        else:
            pairs.append((str(opt.get("name")), opt.get("value")))
    return build(name, pairs, "" if prompt is None else prompt, max_prompt_chars=max_prompt_chars,
                 max_turns=max_turns, action=action.name if action is not None else None)


def _choice(name: str, value: str) -> dict[str, str]:
    return {"name": _describe(name), "value": value[:100]}


def complete(
    services: Services, command: str, options: list[dict[str, Any]], *, workspace: str = ""
) -> list[dict[str, str]]:
    """Autocomplete choices for the focused option (for lists, the last comma-separated item).
    ``workspace`` (``discord:<guild_id>`` or ``discord:dm:<user_id>``) is whose saved panels are offered."""
    cmd = COMMANDS.get(command)
    if cmd is None:
        return []
    try:
        action, options = _subcommand(cmd, options)
    except UsageError:
        return []
    names = _canonical(cmd, action)
    focused = next((o for o in options if isinstance(o, dict) and o.get("focused")), None)
    if focused is None:
        return []
    focused_name = str(focused.get("name"))
    if action is not None and focused_name == NAME and (cmd.name, action.name) in NAMES_A_PANEL:
        kind, is_list = "panel", False
    else:
        opt = OPTIONS.get(names.get(focused_name, ""))
        if opt is None or opt.completes is None:
            return []
        kind, is_list = opt.completes, opt.kind == "list"
    typed = str(focused.get("value") or "")
    head, _, last = typed.rpartition(",") if is_list else ("", "", typed)
    prefix = (head + ",") if head else ""
    last = last.strip().lower()
    reg = services.registry
    candidates: list[tuple[str, str]] = []  # (value, label)
    if kind == "persona":
        for p in services.personas.all():
            candidates.append((p.id, f"{p.emoji + ' ' if p.emoji else ''}{p.name}, {p.role}"))
    elif kind == "provider":
        if "/" in last:  # provider/model: complete the model
            pid = last.split("/", 1)[0]
            if pid in reg.names():
                spec = reg.get(pid)
                candidates = [(f"{pid}/{m}", f"{spec.label} · {m}") for m in spec.models]
        else:
            for pid in reg.names():
                spec = reg.get(pid)
                candidates.append((pid, f"{spec.label} · {spec.default_model}"))
    elif kind == "panel":
        for saved in services.governance.db.panels(workspace) if workspace else []:
            opts = " ".join(f"{k}:{','.join(map(str, v)) if isinstance(v, list) else v}"
                            for k, v in saved["options"].items())
            candidates.append((saved["name"], f"{saved['name']} · {opts}" if opts else saved["name"]))
    elif kind == "model":
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

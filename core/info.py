"""The informational commands (providers, personas, usage, help), dispatched once.

:func:`answer` returns rows (for ``--json``) and a :data:`core.present.Doc`
that every front-end renders in its own markup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from core import present
from core.commands import Request, parse
from core.governance import admin
from core.governance.scope import Caller, local_caller
from core.present import Answer
from core.services import Services

InfoAnswer = Answer


async def providers_rows(services: Services, *, check: bool = False) -> list[dict[str, Any]]:
    reg = services.registry
    default = reg.default_provider()
    health = {h.provider: h for h in await reg.health_all(force=check)}
    rows = []
    for spec in services.catalog.providers.values():
        m = spec.models[spec.default_model]
        h = health[spec.id]
        rows.append(
            {
                "id": spec.id,
                "label": spec.label,
                "status": h.status,
                "message": h.message,
                "default": spec.id == default,
                "default_model": spec.default_model,
                "models": list(spec.models),
                "key_env": spec.key_env,
                "base_url_env": spec.base_url_env,
                "price_input": m.input,
                "price_cached_input": m.cached_input,
                "price_output": m.output,
            }
        )
    return rows


def personas_rows(services: Services) -> list[dict[str, Any]]:
    return [
        {
            "id": p.id,
            "name": p.name,
            "role": p.role,
            "expertise": p.expertise,
            "emoji": p.emoji,
            "provider": p.provider,
        }
        for p in services.personas.all()
    ]


async def _providers(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    rows = await providers_rows(services, check=check)
    return InfoAnswer("providers", rows, present.providers_doc(rows, services.catalog.checked))


async def _personas(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    rows = personas_rows(services)
    return InfoAnswer("personas", rows, present.personas_doc(rows))


async def _usage(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return admin.usage(services.governance, caller, services)


async def _help(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return InfoAnswer("help", present.help_rows(), present.help_doc())


async def _budget(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return await admin.budget(services.governance, req, caller)


async def _policy(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return await admin.policy(services.governance, req, caller, services)


async def _keys(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return await admin.keys(services.governance, req, caller)


async def _panel(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return await admin.panel(services.governance, req, caller)


async def _forget(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    return await admin.forget(services.governance, caller)


async def _stop(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    n = await services.stops.request(caller)
    whose = "" if caller.admin else " of yours"
    text = (f"⏹ Stopping {n} discussion(s){whose} running here: each answer keeps what it showed."
            if n else f"Nothing{whose} is running here.")
    return InfoAnswer("stop", [{"stopped": n}], [present.line(text)])


async def _leaderboard(services: Services, req: Request, caller: Caller, check: bool) -> InfoAnswer:
    from core.actions import Actions, leaderboard_doc

    rows = Actions(services).leaderboard(caller.workspace)
    return InfoAnswer("leaderboard", rows, leaderboard_doc(rows))


#: Every command of :data:`core.commands.COMMANDS` that is not a discussion (those without a mode).
INFO: dict[str, Callable[[Services, Request, Caller, bool], Awaitable[InfoAnswer]]] = {
    "providers": _providers,
    "personas": _personas,
    "usage": _usage,
    "budget": _budget,
    "policy": _policy,
    "keys": _keys,
    "panel": _panel,
    "forget": _forget,
    "stop": _stop,
    "leaderboard": _leaderboard,
    "help": _help,
}


async def answer(
    services: Services,
    command: str | Request,
    *,
    check: bool = False,
    caller: Caller | None = None,
) -> InfoAnswer:
    """The answer to a command that is not a discussion, for any front-end: policy is
    checked first (a Refused says which rule), then the command runs for ``caller``
    (the terminal's operator when None)."""
    req = parse(command, "") if isinstance(command, str) else command
    caller = caller or local_caller()
    services.governance.check_command(req, caller)
    return await INFO[req.command](services, req, caller, check)

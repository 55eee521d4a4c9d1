"""The informational commands (providers, personas, usage, help), dispatched once.

:func:`answer` returns rows (for ``--json``) and a :data:`core.present.Doc`
that every front-end renders in its own markup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core import present
from core.present import Doc
from core.services import Services


@dataclass(slots=True)
class InfoAnswer:
    command: str
    rows: list[dict[str, Any]]
    doc: Doc


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


async def _providers(services: Services, check: bool) -> InfoAnswer:
    rows = await providers_rows(services, check=check)
    return InfoAnswer("providers", rows, present.providers_doc(rows, services.catalog.checked))


async def _personas(services: Services, check: bool) -> InfoAnswer:
    rows = personas_rows(services)
    return InfoAnswer("personas", rows, present.personas_doc(rows))


async def _usage(services: Services, check: bool) -> InfoAnswer:
    rows = services.store.usage_summary()
    return InfoAnswer("usage", rows, present.usage_doc(rows))


async def _help(services: Services, check: bool) -> InfoAnswer:
    return InfoAnswer("help", present.help_rows(), present.help_doc())


#: Every informational command of :data:`core.commands.COMMANDS` (those without a mode).
INFO: dict[str, Callable[[Services, bool], Awaitable[InfoAnswer]]] = {
    "providers": _providers,
    "personas": _personas,
    "usage": _usage,
    "help": _help,
}


async def answer(services: Services, command: str, *, check: bool = False) -> InfoAnswer:
    """The answer to an informational command, for any front-end."""
    return await INFO[command](services, check)

"""The informational commands (providers, personas, usage, help) as data and text.

Every front-end shows the same facts: rows for ``--json`` and the text form
(markdown-ish; each front-end's renderer adapts it) for chat.
"""

from __future__ import annotations

from typing import Any

from core.commands import help_text
from core.services import Services


def _price(x: float | None) -> str:
    return "—" if x is None else f"${x:g}"


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


def providers_text(rows: list[dict[str, Any]], checked: str) -> str:
    lines = [f"*Providers* (prices USD per 1M tokens in/cached/out, as of {checked})"]
    for r in rows:
        star = " ★ default" if r["default"] else ""
        price = f"{_price(r['price_input'])}/{_price(r['price_cached_input'])}/{_price(r['price_output'])}"
        lines.append(f"• `{r['id']}` {r['label']} — *{r['status']}*{star} · {r['default_model']} · {price}")
        if r["status"] == "not_configured" and r["key_env"]:
            lines.append(f"    set {r['key_env']} to enable")
        elif r["status"] not in ("ok", "not_configured") and r["message"]:
            lines.append(f"    {r['message']}")
    return "\n".join(lines)


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


def personas_text(rows: list[dict[str, Any]]) -> str:
    lines = ["*Personas* — use persona:ID (or personas:a,b,c)"]
    for r in rows:
        exp = f" — {', '.join(r['expertise'])}" if r["expertise"] else ""
        lines.append(f"• {r['emoji'] or '•'} `{r['id']}` *{r['name']}*, {r['role']}{exp}")
    return "\n".join(lines)


def usage_rows(services: Services) -> list[dict[str, Any]]:
    return services.store.usage_summary()


def usage_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "*Usage*: nothing recorded yet."
    lines = ["*Usage* by provider and model"]
    total = 0.0
    for r in rows:
        est = f" ({r['estimated_turns']} estimated)" if r["estimated_turns"] else ""
        lines.append(
            f"• `{r['provider']}/{r['model']}` — {r['turns']} turns ({r['failed']} failed), "
            f"{r['input_tokens']:,} in / {r['output_tokens']:,} out tokens{est}, ${r['cost_usd']:.4f}"
        )
        total += r["cost_usd"]
    lines.append(f"Total: ${total:.4f}")
    return "\n".join(lines)


async def info_text(services: Services, command: str) -> str:
    """The chat answer for an informational command."""
    if command == "providers":
        return providers_text(await providers_rows(services), services.catalog.checked)
    if command == "personas":
        return personas_text(personas_rows(services))
    if command == "usage":
        return usage_text(usage_rows(services))
    return help_text()

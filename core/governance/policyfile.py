"""Policy as code: seed rules, defaults, settings and budgets from the TOML file named by PARLEY_POLICY.

::

    [workspaces."slack:T0123"]             # or "discord:<guild id>", or terminal (the CLI and console)
    retention_days = 30                    # 0 keeps texts
    own_keys = "free"                      # spend on own keys: "count" (default) or "free"
    deny = { providers = ["PROVIDER"], models = ["PROVIDER/MODEL-PREFIX*"] }
    allow = { commands = ["ask", "compare", "consensus", "usage", "help"] }
    defaults = { providers = ["PROVIDER"], personas = ["riley", "morgan"], mode = "parallel" }

    [[workspaces."slack:T0123".grants]]    # for some people or roles only
    effect = "allow"                       # or "deny"
    commands = ["consensus"]
    roles = ["leads"]                      # and/or users = ["U0456"]

    [[workspaces."slack:T0123".budgets]]
    scope = "workspace"                    # workspace | channel | user
    target = ""                            # the channel id, the user id, or "*" for every user
    daily = 5.0
    monthly = 100.0
    soft = 80

    [workspaces."slack:T0123".channels.C0789]
    allow = { providers = ["PROVIDER"] }
    defaults = { mode = "consensus" }

(docs/admin.md has a worked example.) The file is applied at start-up when its content changed since it was last applied.
What it sets is owned by the file (``policy-file`` in the audit log): re-applying
replaces the file's rules and leaves the ones admins added by command alone; its
budgets, defaults and settings overwrite the same scopes.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.commands import COMMANDS
from core.errors import UsageError, suggest
from core.governance.policy import DIMENSIONS
from core.governance.storage import Cap, upsert
from core.records import now_iso

if TYPE_CHECKING:
    from core.governance import Governance
    from core.personas import PersonaBook

OWNER = "policy-file"


def _fail(path: Path, where: str, why: str) -> UsageError:
    return UsageError(f"PARLEY_POLICY ({path}): {where}: {why}")


def _known(path: Path, where: str, check: Any) -> None:
    """Run a lookup that raises UsageError for an unknown name; say where in the file it was."""
    try:
        check()
    except UsageError as e:
        raise _fail(path, where, e.message) from None


def _rules(path: Path, where: str, table: dict[str, Any], channel: str, gov: Governance,
           personas: PersonaBook) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    blocks: list[tuple[str, dict[str, Any], list[str]]] = []
    for effect in ("allow", "deny"):
        if effect in table:
            blocks.append((effect, table[effect], []))
    for i, grant in enumerate(table.get("grants", [])):
        subjects = [f"user:{u}" for u in grant.get("users", [])] + [f"role:{r}" for r in grant.get("roles", [])]
        if not subjects:
            raise _fail(path, f"{where}.grants[{i}]", "a grant names users = [...] and/or roles = [...]")
        blocks.append((str(grant.get("effect", "allow")), grant, subjects))
    for effect, block, subjects in blocks:
        if effect not in ("allow", "deny"):
            raise _fail(path, where, f"effect '{effect}' is neither allow nor deny")
        for dim in DIMENSIONS:
            for value in block.get(dim, []):
                value = str(value).lower()
                wild = any(c in value for c in "*?[")
                if dim == "providers" and not wild:
                    _known(path, where, lambda v=value: gov.registry.get(v))
                elif dim == "commands" and not wild and value not in COMMANDS:
                    raise _fail(path, where, suggest(value, COMMANDS, "command"))
                elif dim == "personas" and not wild and value not in personas.personas:
                    raise _fail(path, where, suggest(value, personas.personas, "persona"))
                elif dim == "models" and "/" not in value:
                    raise _fail(path, where, f"models entry '{value}' must be provider/model (e.g. openai/gpt-5*)")
                out.append({"channel": channel, "effect": effect, "dimension": dim, "pattern": value,
                            "subjects": subjects})
    return out


def seed(gov: Governance, path: Path, personas: PersonaBook) -> bool:
    """Apply the policy file if it changed since it was last applied. Returns whether it did."""
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise UsageError(f"PARLEY_POLICY names {path}, which cannot be read ({e.strerror}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"PARLEY_POLICY ({path}) is not valid TOML: {e}") from None
    digest = hashlib.sha256(raw).hexdigest()
    key = f"policy_file:{path.resolve()}"
    store = gov.store
    if store.get_meta(key) == digest:
        return False
    plan: list[tuple[str, list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any], list[Cap]]] = []
    for ws, table in (data.get("workspaces") or {}).items():
        where = f"workspaces.{ws}"
        rules = _rules(path, where, table, "", gov, personas)
        defaults: dict[str, dict[str, Any]] = {}
        if "defaults" in table:
            defaults[""] = table["defaults"]
        for ch, ctable in (table.get("channels") or {}).items():
            rules += _rules(path, f"{where}.channels.{ch}", ctable, str(ch), gov, personas)
            if "defaults" in ctable:
                defaults[str(ch)] = ctable["defaults"]
        for d in defaults.values():
            for p in d.get("providers", []):
                _known(path, f"{where} defaults", lambda p=p: gov.registry.resolve(p))
            for p in d.get("personas", []):
                _known(path, f"{where} defaults", lambda p=p: personas.get(p))
            if d.get("mode") not in (None, "single", "parallel", "consensus"):
                raise _fail(path, where, f"defaults mode '{d['mode']}' is not single, parallel or consensus")
        settings: dict[str, Any] = {}
        if "retention_days" in table:
            settings["retention_days"] = int(table["retention_days"])
        if "own_keys" in table:
            if table["own_keys"] not in ("count", "free"):
                raise _fail(path, where, "own_keys is \"count\" or \"free\"")
            settings["own_keys_count"] = int(table["own_keys"] == "count")
        caps = []
        for i, b in enumerate(table.get("budgets", [])):
            scope = b.get("scope", "workspace")
            if scope not in ("workspace", "channel", "user"):
                raise _fail(path, f"{where}.budgets[{i}]", "scope is workspace, channel or user")
            target = "" if scope == "workspace" else str(b.get("target", "*" if scope == "user" else ""))
            if scope == "channel" and not target:
                raise _fail(path, f"{where}.budgets[{i}]", "a channel budget names its target channel id")
            caps.append(Cap(scope, target, b.get("daily"), b.get("monthly"), int(b.get("soft", 80)), OWNER))
        plan.append((str(ws), rules, defaults, settings, caps))

    def apply(db: Any) -> None:
        now = now_iso()
        # The file owns its rules everywhere: a workspace taken out of it loses them too.
        gone = [r[0] for r in db.conn.execute("select distinct workspace from policy_rules where created_by = ?",
                                              [OWNER])]
        db.conn.execute("delete from policy_rules where created_by = ?", [OWNER])
        for ws in gone:
            gov.db._bump(db, ws)
        for ws, rules, defaults, settings, caps in plan:
            for r in rules:
                db.conn.execute(
                    "insert into policy_rules (workspace, channel, effect, dimension, pattern, subjects, created_by, "
                    "created_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
                    [ws, r["channel"], r["effect"], r["dimension"], r["pattern"], ",".join(r["subjects"]), OWNER, now],
                )
            for ch, d in defaults.items():
                upsert(db, "channel_defaults", 
                    {"workspace": ws, "channel": ch, "providers": json.dumps(d.get("providers", [])),
                     "personas": json.dumps(d.get("personas", [])), "mode": d.get("mode"), "updated_by": OWNER,
                     "updated_at": now}, ("workspace", "channel"))
            if settings:
                upsert(db, "workspace_settings", {"workspace": ws, **settings, "updated_by": OWNER,
                                                       "updated_at": now}, "workspace")
            for c in caps:
                upsert(db, "budgets", 
                    {"workspace": ws, "scope": c.scope, "target": c.target, "daily_usd": c.daily,
                     "monthly_usd": c.monthly, "soft_pct": c.soft_pct, "updated_by": OWNER, "updated_at": now}, ("workspace", "scope", "target"))
            gov.db._audit(db, ws, OWNER, "policy.file", str(path), None,
                          {"rules": len(rules), "defaults": list(defaults), "settings": settings, "budgets": len(caps)})
            gov.db._bump(db, ws)
        upsert(db, "meta", {"key": key, "value": digest, "updated_at": now}, "key")

    store.writer.call(apply)
    return True

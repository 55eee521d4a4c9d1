"""The administrative commands' answers: /budget, /policy, /keys, /panel, /usage, /forget.

Each takes the parsed :class:`core.commands.Request` and the :class:`Caller`,
changes what it must (through :mod:`core.governance.storage`, audited), and
returns rows (for ``--json``) and a :data:`core.present.Doc` that every
front-end renders in its own markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.commands import COMMANDS, Request, UsageError
from core.errors import register_secret, suggest
from core.governance import PANEL_FIELDS, Governance, Refused
from core.governance.keys import OFF, last4
from core.governance.policy import DIMENSIONS
from core.governance.scope import Caller, Periods, person_id
from core.governance.storage import Cap
from core.present import Answer, Doc, code, line, strong

if TYPE_CHECKING:
    from core.services import Services

#: A key typed where others can read it: refused, not stored, and the person is told to rotate it.
PASTED = (
    "⛔ That key was typed where others can read it, so Parley did not store it. Treat it as leaked: "
    "delete the message and rotate the key in the provider's console. Then set the new one in a direct "
    "message with me, or with /keys set (only you see the command and the answer)."
)


def _names(req: Request, name: str) -> list[str]:
    value = req.param(name)
    return [str(v) for v in value] if isinstance(value, list) else []


def _money(x: float | None) -> str:
    return "no cap" if x is None else f"${x:,.2f}"


def _scope_of(req: Request, caller: Caller, default: str = "workspace") -> tuple[str, str]:
    if req.param("user") and req.param("scope") not in (None, "user"):
        raise UsageError(f"user: names a person, so it goes with scope:user, not scope:{req.param('scope')}.")
    scope = str(req.param("scope") or ("user" if req.param("user") else default))
    if scope == "workspace":
        return "workspace", ""
    if scope == "channel":
        if not caller.channel:
            raise UsageError("scope:channel needs a channel: run it in the channel it is for.")
        return "channel", caller.channel
    raw = req.param("user")
    return "user", person_id(str(raw)) if raw else "*"


# --- /budget ------------------------------------------------------------------------------------
def _remaining(gov: Governance, caller: Caller, *, everything: bool = False) -> list[dict[str, Any]]:
    """The caps that apply to the caller with what they leave; with ``everything``, every cap
    of the workspace (a default per-person cap as the caller's)."""
    view = gov.view(caller.workspace)
    periods = Periods.at()
    rows = []
    caps = gov._caps(view, caller)
    if everything:
        caps += [c for c in view.caps if c not in caps]
    for cap in caps:
        target = caller.user if cap.scope == "user" and cap.target == "*" else cap.target
        spent = gov.db.totals(caller.workspace, cap.scope, target, periods)
        for period in ("daily", "monthly"):
            limit = cap.limit(period)
            if limit is None:
                continue
            rows.append({
                "scope": cap.scope, "target": target, "cap_for": cap.target, "period": period, "cap_usd": limit,
                "spent_usd": round(spent[period], 6), "remaining_usd": round(max(0.0, limit - spent[period]), 6),
                "soft_pct": cap.soft_pct, "resets": periods.resets(period).isoformat(),
            })
    return rows


def _budget_doc(gov: Governance, rows: list[dict[str, Any]], title: str) -> Doc:
    if not rows:
        return [line(strong(title), ": no caps apply here. Admins set them with ",
                     code("/budget set scope:workspace daily:5 monthly:100"), ".")]
    doc = [line(strong(title))]
    for r in rows:
        cap = Cap(r["scope"], r["cap_for"], None, None, r["soft_pct"])
        name = gov.scope_name(cap)
        used = r["spent_usd"] / r["cap_usd"] if r["cap_usd"] else 1.0
        doc.append(line(f"{name[0].upper()}{name[1:]} {r['period']} cap: ", strong(_money(r["cap_usd"])),
                        f" — spent {_money(r['spent_usd'])}, ", strong(f"{_money(r['remaining_usd'])} left"),
                        f" {_bar(used)} (resets {r['resets'][:10]})", bullet=True))
    return doc


def _bar(fraction: float, width: int = 10) -> str:
    full = max(0, min(width, round(fraction * width)))
    return "▰" * full + "▱" * (width - full)


async def budget(gov: Governance, req: Request, caller: Caller) -> Answer:
    if req.action == "show":
        admin = gov.is_admin(caller)
        rows = _remaining(gov, caller, everything=admin)
        return Answer("budget", rows, _budget_doc(gov, rows, "Budgets here" if admin else "Budgets for you here"))
    gov.require_admin(caller, "/budget set")
    daily, monthly, soft = req.param("daily"), req.param("monthly"), req.param("soft")
    own = req.param("own_keys")
    if daily is None and monthly is None and own is None:
        raise UsageError("Give daily:USD and/or monthly:USD (or own_keys:count|free). Example: "
                         + COMMANDS["budget"].action("set").example)
    scope, target = _scope_of(req, caller)
    if own is not None:
        await gov.db.set_setting(caller.workspace, caller.user, "budget.own_keys", own_keys_count=int(own == "count"))
    if daily is not None or monthly is not None:
        old = next((c for c in gov.view(caller.workspace).caps if c.scope == scope and c.target == target), None)
        cap = Cap(scope, target,
                  float(daily) if daily is not None else (old.daily if old else None),  # type: ignore[arg-type]
                  float(monthly) if monthly is not None else (old.monthly if old else None),  # type: ignore[arg-type]
                  int(soft) if soft is not None else (old.soft_pct if old else 80))  # type: ignore[call-overload]
        await gov.db.set_cap(caller.workspace, caller.user, cap)
    rows = _remaining(gov, caller)
    who = {"workspace": "the workspace", "channel": f"channel {target}", "user":
           "everyone without their own cap" if target == "*" else f"user {target}"}[scope]
    doc = [line("✅ Budget set for ", strong(who), ".")]
    if own is not None:
        doc.append(line("Spend on own keys ", strong("counts" if own == "count" else "does not count"),
                        " against budgets."))
    return Answer("budget", rows, doc + [line()] + _budget_doc(gov, rows, "Budgets for you here"))


# --- /policy ------------------------------------------------------------------------------------
def _rule_rows(gov: Governance, caller: Caller) -> list[dict[str, Any]]:
    """The rules in force where the caller is; an admin sees every channel's too."""
    view = gov.view(caller.workspace)
    everything = gov.is_admin(caller)
    return [
        {"id": r.id, "effect": r.effect, "dimension": r.dimension, "pattern": r.pattern,
         "channel": r.channel or None, "subjects": list(r.subjects), "created_by": r.created_by,
         "created_at": r.created_at}
        for r in view.rules.rules if everything or not r.channel or r.channel == caller.channel
    ]


def _policy_doc(gov: Governance, caller: Caller, rows: list[dict[str, Any]]) -> Doc:
    view = gov.view(caller.workspace)
    doc = [line(strong("Policy here"))]
    if not rows:
        doc.append(line("No rules: every provider, model, persona and command may be used.", bullet=True))
    for r in rows:
        where = f"channel {r['channel']}" if r["channel"] else "workspace"
        who = f" for {', '.join(r['subjects'])}" if r["subjects"] else ""
        doc.append(line(code(f"#{r['id']}"), f" {r['effect']} ", code(f"{r['dimension']}:{r['pattern']}"),
                        f" — {where}{who}", bullet=True))
    for channel in ([caller.channel] if caller.channel else []) + [""]:
        d = view.defaults.get(channel)
        if d:
            parts = [f"{k}:{','.join(v) if isinstance(v, list) else v}" for k, v in d.items() if v]
            doc.append(line(f"Defaults ({'this channel' if channel else 'workspace'}): ", code(" ".join(parts)),
                            bullet=True))
    days = view.settings["retention_days"]
    doc.append(line("Retention: ", strong(f"{days} days" if days else "texts are kept"), bullet=True))
    doc.append(line("Follow-ups without a mention in Parley's threads: ",
                    strong("on" if view.settings["followups"] else "off"), bullet=True))
    return doc


def _check_names(gov: Governance, dimension: str, values: list[str], services: Services) -> None:
    if dimension == "providers":
        for v in values:
            if not any(ch in v for ch in "*?["):
                gov.registry.get(v)
    elif dimension == "personas":
        for v in values:
            if not any(ch in v for ch in "*?[") and v.lower() not in services.personas.personas:
                raise UsageError(suggest(v, services.personas.personas, "persona"))
    elif dimension == "commands":
        for v in values:
            if not any(ch in v for ch in "*?[") and v.lower() not in COMMANDS:
                raise UsageError(suggest(v, COMMANDS, "command"))
    elif dimension == "models":
        for v in values:
            if "/" not in v:
                raise UsageError(f"models:{v} — a model pattern is provider/model, e.g. openai/gpt-5* or kimi/*.")
            gov.registry.get(v.split("/", 1)[0]) if not any(ch in v.split("/", 1)[0] for ch in "*?[") else None


async def policy(gov: Governance, req: Request, caller: Caller, services: Services) -> Answer:
    ws = caller.workspace
    if req.action == "show":
        rows = _rule_rows(gov, caller)
        return Answer("policy", rows, _policy_doc(gov, caller, rows))
    if req.action == "log":
        gov.require_admin(caller, "/policy log")  # it says who set which keys
        rows = gov.db.audit_log(ws)
        doc = [line(strong("Policy, budget, key and panel changes"), " (newest first)")]
        doc += [line(code(r["at"][:19].replace("T", " ")), f" {r['actor']} {r['action']} {r['target']}: "
                     f"{r['before']} → {r['after']}", bullet=True) for r in rows]
        return Answer("policy", rows, doc if rows else [line("No changes recorded yet.")])
    gov.require_admin(caller, f"/policy {req.action}")
    if req.action in ("allow", "deny"):
        scope, target = _scope_of(req, caller)
        if scope == "user":
            raise UsageError("Policy rules apply to the workspace or a channel; name people with users: or roles:.")
        subjects = [f"user:{person_id(u)}" for u in _names(req, "users")]
        subjects += [f"role:{r.lstrip('@')}" for r in _names(req, "roles")]
        named = {"providers": req.providers, "personas": req.personas,
                 "models": _names(req, "models"), "commands": _names(req, "commands")}
        rules = []
        for dim in DIMENSIONS:
            _check_names(gov, dim, named[dim], services)
            rules += [{"channel": target, "effect": req.action, "dimension": dim, "pattern": v.lower(),
                       "subjects": subjects} for v in named[dim]]
        if not rules:
            raise UsageError(f"Name what to {req.action}: providers:, models:, personas: or commands:. "
                             f"Example: {COMMANDS['policy'].action(req.action).example}")
        ids = await gov.db.add_rules(ws, caller.user, rules)
        rows = _rule_rows(gov, caller)
        return Answer("policy", rows, [line(f"✅ Added rule(s) {', '.join(f'#{i}' for i in ids)}.")]
                      + _policy_doc(gov, caller, rows))
    if req.action == "remove":
        try:
            rid = int(str(req.name).lstrip("#"))
        except ValueError:
            raise UsageError("/policy remove takes a rule number, as /policy show lists them: /policy remove 3") from None
        removed = await gov.db.remove_rule(ws, caller.user, rid)
        if removed is None:
            raise UsageError(f"There is no rule #{rid} here. /policy show lists them.")
        rows = _rule_rows(gov, caller)
        return Answer("policy", rows, [line(f"✅ Removed rule #{rid}.")] + _policy_doc(gov, caller, rows))
    if req.action == "default":
        scope, target = _scope_of(req, caller, "channel" if caller.channel else "workspace")
        if scope == "user":
            raise UsageError("Defaults apply to the workspace or a channel.")
        values = {"providers": req.providers, "personas": req.personas, "mode": req.param("mode")}
        for p in req.providers:
            gov.registry.resolve(p)
        for p in req.personas:
            services.personas.get(p)
        await gov.db.set_defaults(ws, caller.user, target, values)
        rows = _rule_rows(gov, caller)
        return Answer("policy", rows, [line("✅ Defaults set for ", strong("this channel" if target else "the workspace"),
                                            ".")] + _policy_doc(gov, caller, rows))
    if req.action == "followups":
        if req.name not in ("on", "off"):
            raise UsageError("/policy followups takes on or off: /policy followups on")
        await gov.db.set_setting(ws, caller.user, "policy.followups", followups=int(req.name == "on"))
        rows = _rule_rows(gov, caller)
        state = ("on: Parley answers every message in its own threads here, without a mention"
                 if req.name == "on" else "off: in threads, Parley answers when mentioned")
        return Answer("policy", rows, [line(f"✅ Follow-ups without a mention are {state}.")]
                      + _policy_doc(gov, caller, rows))
    # retention
    days = req.param("days")
    if days is None:
        raise UsageError("Give days:N (0 keeps texts). Example: /policy retention days:30")
    await gov.db.set_setting(ws, caller.user, "policy.retention", retention_days=int(days))  # type: ignore[call-overload]
    erased = 0
    if days:
        gov._swept = 0.0
        erased = await gov.sweep()
    rows = _rule_rows(gov, caller)
    what = f"kept {days} days" if days else "kept"
    return Answer("policy", rows, [line(f"✅ Discussion texts are now {what}; erased {erased} older discussion(s).")]
                  + _policy_doc(gov, caller, rows))


# --- /keys --------------------------------------------------------------------------------------
async def keys(gov: Governance, req: Request, caller: Caller) -> Answer:
    ws = caller.workspace
    if req.action == "set" and req.secret:
        register_secret(req.secret)  # from now on, never in a log or a message
    if req.action == "set" and not caller.private:
        raise Refused(PASTED, "admin")
    if req.action == "set" and (any(c.isspace() for c in req.secret or "") or len(req.secret or "") > 500):
        raise UsageError("That is not one key: a provider key is one word of at most 500 characters.")
    if not gov.box.enabled:
        raise UsageError(OFF)
    if req.action == "list":
        rows = [
            {"provider": r["provider"], "for": "workspace" if not r["user"] else "you", "last4": r["last4"],
             "set_by": r["set_by"], "set_at": r["set_at"]}
            for r in gov.db.key_rows(ws, [caller.user, ""])
        ]
        doc = [line(strong("Own keys"), " (the most specific wins: yours, then the workspace's, then the operator's)")]
        doc += [line(code(r["provider"]), f" — {r['for']}, …{r['last4']}, set by {r['set_by']} on {r['set_at'][:10]}",
                     bullet=True) for r in rows]
        return Answer("keys", rows, doc if rows else [line("No own keys here. Set one with ",
                                                            code("/keys set provider:NAME KEY"), " in a DM.")])
    if len(req.providers) != 1:
        raise UsageError(f"Name one provider: /keys {req.action} provider:NAME" + (" KEY" if req.action == "set" else ""))
    spec = gov.registry.get(req.providers[0].split("/", 1)[0])
    scope = str(req.param("scope") or "user")
    if scope not in ("user", "workspace"):
        raise UsageError("A key is yours (scope:user, the default) or the workspace's (scope:workspace).")
    if scope == "workspace":
        gov.require_admin(caller, "A workspace key")
    user = caller.user if scope == "user" else ""
    whose = "your" if user else "the workspace's"
    if req.action == "delete":
        gone = await gov.db.delete_key(ws, caller.user, user, spec.id)
        msg = f"✅ Deleted {whose} {spec.id} key." if gone else f"There was no {whose} {spec.id} key."
        return Answer("keys", [{"provider": spec.id, "deleted": gone}], [line(msg)])
    secret = req.secret or ""
    if not spec.key_required:
        raise UsageError(f"{spec.where} takes no key.")
    sealed = gov.box.seal(secret, ws, user, spec.id)
    await gov.db.set_key(ws, caller.user, user, spec.id, sealed, gov.box.key_id, last4(secret))
    return Answer("keys", [{"provider": spec.id, "for": "workspace" if not user else "you", "last4": last4(secret)}],
                  [line(f"✅ Saved {whose} {spec.id} key ending …{last4(secret)}, encrypted. It is used instead of "
                        f"{'the workspace’s and ' if user else ''}the operator's from now on.")])


# --- /panel -------------------------------------------------------------------------------------
def _panel_line(p: dict[str, Any]) -> Any:
    opts = " ".join(f"{k}:{','.join(v) if isinstance(v, list) else v}" for k, v in p["options"].items())
    return line(code(p["name"]), " — ", code(opts or "(defaults)"), f" (by {p['created_by']})", bullet=True)


async def panel(gov: Governance, req: Request, caller: Caller) -> Answer:
    ws = caller.workspace
    if req.action == "list":
        rows = [{**p, "allowed": gov.may_run(caller, p["name"])} for p in gov.db.panels(ws)]
        doc = [line(strong("Saved panels"), " — run one with ", code("/consensus panel:NAME Question"))]
        return Answer("panel", rows, doc + [_panel_line(p) for p in rows] if rows else
                      [line("No saved panels yet. ", code(COMMANDS["panel"].action("save").example))])
    name = str(req.name)
    saved = gov.db.panel(ws, name)
    if req.action == "show":
        if saved is None:
            raise UsageError(suggest(name, [p["name"] for p in gov.db.panels(ws)], "panel"))
        return Answer("panel", [saved], [_panel_line(saved)])
    if saved is not None and saved["created_by"] != caller.user and not gov.is_admin(caller):
        raise Refused(f"⛔ The panel {name} is {saved['created_by']}'s; only they or a workspace admin may "
                      f"{'change' if req.action == 'save' else 'delete'} it.", "admin")
    if req.action == "delete":
        if saved is None:
            raise UsageError(suggest(name, [p["name"] for p in gov.db.panels(ws)], "panel"))
        await gov.db.delete_panel(ws, caller.user, name)
        return Answer("panel", [{"name": name, "deleted": True}], [line(f"✅ Deleted panel {name}.")])
    options = {k: v for k, v in req.options().items() if k in PANEL_FIELDS}
    if not options:
        raise UsageError("A panel needs at least one of personas:, providers:, model:, rounds:, moderator:, "
                         "temperature:, max_tokens:. Example: " + COMMANDS["panel"].action("save").example)
    probe = Request("compare", "check", personas=list(req.personas), providers=list(req.providers), model=req.model)
    first = gov.planner.panel(probe)[0]  # unknown persona, provider or model: say so now
    if options.get("moderator"):
        gov.planner.moderator(str(options["moderator"]), first)
    await gov.db.save_panel(ws, caller.user, name, options)
    row = gov.db.panel(ws, name) or {"name": name, "options": options, "created_by": caller.user}
    return Answer("panel", [row], [line(f"✅ Saved panel {name}. Run it with ", code(f"/compare panel:{name} …"),
                                        " or ", code(f"/consensus panel:{name} …"), "."), _panel_line(row)])


# --- /usage and /forget -------------------------------------------------------------------------
def usage(gov: Governance, caller: Caller, services: Services) -> Answer:
    from core.present import usage_doc

    periods = Periods.at()
    remaining = _remaining(gov, caller)
    mine = {p: round(v, 6) for p, v in gov.db.totals(caller.workspace, "user", caller.user, periods).items()}
    month_rows = gov.db.spend_rows(caller.workspace, periods.month)
    estimated = any(r["estimated"] for r in month_rows if r["user"] == caller.user)
    rows: list[dict[str, Any]] = [{"kind": "you", "today_usd": mine["daily"], "month_usd": mine["monthly"],
                                   "estimated": estimated}]
    rows += [{"kind": "budget", **r} for r in remaining]
    flag = " (part of it estimated: a provider sent no usage)" if estimated else ""
    doc = [line(strong("Your spend"), f": {_money(mine['daily'])} today, {_money(mine['monthly'])} this month{flag}")]
    doc += _budget_doc(gov, remaining, "What your budgets leave")[1:] if remaining else []
    if gov.is_admin(caller):
        if caller.workspace == "terminal":
            table = services.store.usage_summary()
        else:
            table = gov.db.provider_spend(caller.workspace, periods.month)
            for r in table:
                r.setdefault("failed", 0)
                r.setdefault("input_tokens", 0)
                r.setdefault("output_tokens", 0)
                r["estimated_turns"] = r.pop("estimated", 0)
        rows += [{"kind": "provider", **r} for r in table]
        doc += [line()] + usage_doc(table)
        by: dict[str, dict[str, float]] = {"user": {}, "channel": {}}
        for r in month_rows:
            for k in by:
                if r[k]:
                    by[k][r[k]] = by[k].get(r[k], 0.0) + (r["usd"] or 0.0)
        for k, spent in by.items():
            if not spent:
                continue
            top = max(spent.values()) or 1.0
            doc.append(line(strong(f"This month by {k}")))
            for who, usd in sorted(spent.items(), key=lambda kv: -kv[1])[:15]:
                doc.append(line(code(who), f" {_bar(usd / top)} {_money(usd)}", bullet=True))
                rows.append({"kind": k, "id": who, "month_usd": round(usd, 6)})
    return Answer("usage", rows, doc)


async def forget(gov: Governance, caller: Caller) -> Answer:
    n = await gov.db.forget(caller.workspace, caller.user)
    return Answer("forget", [{"discussions": n}], [
        line(f"✅ Deleted the questions and answers of your {n} stored discussion(s) here. Their costs and token "
             f"counts stay, for budgets and usage.")])

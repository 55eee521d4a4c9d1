"""App Home and the administrative modals, over core.

Every figure on the Home tab is an answer of :func:`core.info.answer` (``usage``,
``budget``, ``policy``, ``providers``, ``panel``, ``keys``, ``leaderboard``) for the person looking,
rendered by :mod:`bots.slack.views`. A submitted modal becomes a
:class:`core.commands.Request` through :func:`core.commands.build`, exactly as if
the command had been typed, and is answered by :func:`core.info.answer`: the same
validation, policy, admin checks and audit as ``/budget set``, ``/policy deny`` or
``/keys set``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bots.slack import views
from bots.slack.format import doc_to_mrkdwn
from core import info
from core.commands import Request, build
from core.errors import ParleyError, UsageError
from core.governance import Refused
from core.governance.scope import Caller
from core.present import code, line
from core.services import Services

STATUS_ICON = {"ok": "🟢", "not_configured": "⚪", "unreachable": "🔴", "error": "🔴"}


def warning(e: UsageError | ParleyError) -> str:
    """What to show for a refusal: its sentence, marked once (policy and budget refusals carry ⛔ already)."""
    message = e.message
    return message if message.startswith(("⛔", "⚠️")) else f"⚠️ {message}"


async def _section(services: Services, command: str | Request, caller: Caller) -> str:
    try:
        return doc_to_mrkdwn((await info.answer(services, command, caller=caller)).doc)
    except (UsageError, ParleyError) as e:
        return doc_to_mrkdwn([line(warning(e))])


async def _providers(services: Services, caller: Caller) -> str:
    try:
        rows = (await info.answer(services, "providers", caller=caller)).rows
    except (UsageError, ParleyError) as e:
        return doc_to_mrkdwn([line(warning(e))])
    doc = []
    for r in rows:
        if r["status"] == "not_configured":  # the sentence is long and the same for each: name the setting
            why: list[Any] = [" · set ", code(r["key_env"])] if r.get("key_env") else []
        else:
            why = [f" · {r['message']}"] if r["message"] and r["status"] != "ok" else []
        doc.append(
            line(
                f"{STATUS_ICON.get(r['status'], '🟡')} ",
                code(r["id"]),
                f" {r['label']} — {r['status'].replace('_', ' ')}",
                *why,
                " · default" if r["default"] else "",
            )
        )
    return doc_to_mrkdwn(doc)


async def _runnable_panels(services: Services, caller: Caller) -> str:
    try:
        rows = (await info.answer(services, "panel", caller=caller)).rows
    except (UsageError, ParleyError) as e:
        return doc_to_mrkdwn([line(warning(e))])
    mine = [r for r in rows if r["allowed"]]
    if not mine:
        return doc_to_mrkdwn([line("No saved panels you can run here yet.")])
    doc = [line("Run one with ", code("/compare panel:NAME …"), " or ", code("/consensus panel:NAME …"), ".")]
    for r in mine[:50]:
        opts = " ".join(f"{k}:{','.join(v) if isinstance(v, list) else v}" for k, v in r["options"].items())
        doc.append(line(code(r["name"]), " — ", code(opts or "(defaults)"), bullet=True))
    return doc_to_mrkdwn(doc)


async def home_view(services: Services, caller: Caller) -> dict[str, Any]:
    """The Home tab for ``caller``: the workspace's spend and controls for an admin, one's own otherwise."""
    if services.governance.is_admin(caller):
        parts = [
            ("This month's spend", await _section(services, "usage", caller)),
            ("Budgets", await _section(services, "budget", caller)),
            ("Policy", await _section(services, "policy", caller)),
            ("Providers", await _providers(services, caller)),
            ("Saved panels", await _section(services, "panel", caller)),
            ("Own keys", await _section(services, "keys", caller)),
            ("Leaderboard", await _section(services, "leaderboard", caller)),
        ]
        actions = [
            ("Edit a budget", views.OPEN_BUDGET),
            ("Add a policy rule", views.OPEN_POLICY),
            ("Set a key", views.OPEN_KEY),
        ]
        return views.home(parts, actions)
    parts = [
        ("Your usage", await _section(services, "usage", caller)),
        ("Panels you can run", await _runnable_panels(services, caller)),
        ("Leaderboard", await _section(services, "leaderboard", caller)),
    ]
    return views.home(parts)


#: Suggested prompts in the Messages tab: at most four, each a title and the message it sends
#: (https://docs.slack.dev/reference/methods/assistant.threads.setSuggestedPrompts).
MAX_PROMPTS = 4
PANEL_QUESTION = "What would each of you recommend here, and why?"
#: When no saved panel may be run: what Parley can do.
DEFAULT_PROMPTS = [
    {"title": "What can Parley do?", "message": "help"},
    {"title": "Which experts are on the panel?", "message": "personas"},
    {"title": "Which providers can answer?", "message": "providers"},
]


async def suggested_prompts(services: Services, caller: Caller) -> tuple[str, list[dict[str, str]]]:
    """``(title, prompts)`` for the Messages tab: the saved panels ``caller`` may run, each as a
    ready-to-send compare (a message the DM grammar reads), or what Parley can do."""
    try:
        rows = (await info.answer(services, "panel", caller=caller)).rows
    except (UsageError, ParleyError):
        rows = []
    mine = [r for r in rows if r.get("allowed")][:MAX_PROMPTS]
    if not mine:
        return "Try Parley", DEFAULT_PROMPTS[:MAX_PROMPTS]
    return "Run a saved panel", [
        {"title": f"Compare: the {r['name']} panel", "message": f"compare panel:{r['name']} {PANEL_QUESTION}"}
        for r in mine
    ]


def key_providers(services: Services) -> list[tuple[str, str]]:
    """The providers a key can be set for (those that take one), as ``(id, label)``."""
    return [(s.id, s.label) for s in services.catalog.providers.values() if s.key_required]


def opened(services: Services, action_id: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The modal an App Home button opens."""
    if action_id == views.OPEN_BUDGET:
        return views.budget_modal(metadata)
    if action_id == views.OPEN_POLICY:
        return views.policy_modal(metadata)
    if action_id == views.OPEN_KEY:
        return views.key_modal(key_providers(services), metadata=metadata)
    return None


@dataclass(frozen=True, slots=True)
class Form:
    """What a modal's submission means: the request, and where to show a refusal."""

    request: Request
    #: Block ids a refusal may point at (a sentence naming ``daily:`` goes to the ``daily`` block).
    fields: list[str]
    default: str
    #: The block for an admin-only refusal (⛔ … is for workspace admins).
    admin_field: str
    title: str


def form(callback_id: str, values: dict[str, Any]) -> Form:
    """A submitted modal as the request it stands for; raises UsageError (shown on ``Form.default``)."""

    def given(*names: str) -> list[tuple[str, object]]:
        return [(n, values[n]) for n in names if values.get(n) not in (None, "", [])]

    if callback_id == views.KEYS_SET:
        req = build(
            "keys",
            [("providers", values.get("provider") or ""), ("scope", values.get("scope") or "user")],
            values.get("key") or "",
            action="set",
        )
        return Form(req, ["scope", "provider", "key"], "key", "scope", "Key saved")
    if callback_id == views.BUDGET_SET:
        req = build("budget", given("scope", "user", "daily", "monthly", "soft"), "", action="set")
        return Form(
            req, ["channel", "user", "daily", "monthly", "soft", "scope"], "daily", "scope", "Budget saved"
        )
    if callback_id == views.POLICY_ADD:
        dimension = str(values.get("dimension") or "providers")
        pairs: list[tuple[str, object]] = [(dimension, values.get("values") or "")]
        pairs += given("scope")
        if values.get("users"):
            pairs.append(("users", ",".join(values["users"])))
        req = build("policy", pairs, "", action=str(values.get("effect") or "deny"))
        return Form(req, ["channel", "users", "scope", "values"], "values", "effect", "Rule added")
    raise UsageError("This form is not Parley's any more; close it and open it again.")


def errors(e: UsageError | ParleyError, f: Form | None, callback_id: str) -> dict[str, str]:
    """``response_action: errors`` for a refused submission, on the field it is about."""
    if f is None:  # the request could not even be built: find the field from the sentence
        fields = {
            views.KEYS_SET: (["scope", "provider", "key"], "key"),
            views.BUDGET_SET: (["channel", "user", "daily", "monthly", "soft", "scope"], "daily"),
            views.POLICY_ADD: (["channel", "users", "scope", "values"], "values"),
        }
        names, default = fields.get(callback_id, ([], "key"))
        return views.errors(e.message, names, default)
    if isinstance(e, Refused) and e.why == "admin":
        return {f.admin_field: e.message}
    return views.errors(e.message, f.fields, f.default)

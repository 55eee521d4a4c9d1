"""Block Kit for App Home and the administrative modals: layout only.

What the views say comes from core (:func:`core.info.answer` docs, rendered with
:func:`bots.slack.format.doc_to_mrkdwn`); what a submitted modal means goes back
through core too (:func:`core.commands.build`). This module only lays text out
within Slack's limits (https://docs.slack.dev/reference/block-kit/blocks,
https://docs.slack.dev/surfaces/modals):

- a Home tab or a modal holds at most 100 blocks;
- a section's text is at most 3,000 characters, a header's 150;
- a modal's title, submit and close labels at most 24 characters;
- a static select offers at most 100 options; ``private_metadata`` is at most 3,000 characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_BLOCKS = 100
SECTION_CHARS = 3000
HEADER_CHARS = 150
TITLE_CHARS = 24
MAX_OPTIONS = 100
METADATA_CHARS = 3000

#: callback_id of each modal, and action_id of each App Home button.
KEYS_SET = "parley_keys_set"
BUDGET_SET = "parley_budget_set"
POLICY_ADD = "parley_policy_add"
NOTICE = "parley_notice"
OPEN_BUDGET = "parley_open_budget"
OPEN_POLICY = "parley_open_policy"
OPEN_KEY = "parley_open_key"
#: The action_id of every input element (a block is named by its block_id).
VALUE = "value"

Block = dict[str, Any]


def _plain(text: str, limit: int = 3000) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit), "emoji": True}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sections(mrkdwn: str, limit: int = SECTION_CHARS) -> list[Block]:
    """mrkdwn as section blocks of at most ``limit`` characters, split between lines."""
    chunks: list[str] = []
    current = ""
    for ln in mrkdwn.split("\n"):
        ln = _cut(ln, limit)
        if current and len(current) + 1 + len(ln) > limit:
            chunks.append(current)
            current = ln
        else:
            current = f"{current}\n{ln}" if current else ln
    if current.strip():
        chunks.append(current)
    return [{"type": "section", "text": {"type": "mrkdwn", "text": c}} for c in chunks if c.strip()]


def header(text: str) -> Block:
    return {"type": "header", "text": _plain(text, HEADER_CHARS)}


def divider() -> Block:
    return {"type": "divider"}


def context(mrkdwn: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(mrkdwn, SECTION_CHARS)}]}


def buttons(*items: tuple[str, str]) -> Block:
    """An actions block of ``(label, action_id)`` buttons."""
    return {
        "type": "actions",
        "block_id": "parley_home_actions",
        "elements": [
            {"type": "button", "text": _plain(label, 75), "action_id": action_id, "value": action_id}
            for label, action_id in items
        ],
    }


def fit(blocks: list[Block], limit: int = MAX_BLOCKS) -> list[Block]:
    """At most ``limit`` blocks; what does not fit is replaced by a note saying where to see it all."""
    if len(blocks) <= limit:
        return blocks
    return blocks[: limit - 1] + [
        context("More than fits here: see /usage, /budget, /policy show and /panel list.")
    ]


def home(parts: list[tuple[str, str]], actions: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The App Home: a header, then ``(title, mrkdwn)`` parts, then the buttons (kept within the limit)."""
    top: list[Block] = [header("Parley")]
    if actions:
        top.append(buttons(*actions))
    blocks: list[Block] = []
    for title, text in parts:
        blocks += [divider(), header(title), *sections(text)]
    return {"type": "home", "blocks": fit(top + blocks)}


# --- modals ---------------------------------------------------------------------------------------
def _option(value: str, label: str) -> dict[str, Any]:
    return {"text": _plain(label, 75), "value": value}


def _select(options: list[tuple[str, str]], initial: str | None = None) -> dict[str, Any]:
    opts = [_option(v, label) for v, label in options[:MAX_OPTIONS]]
    el: dict[str, Any] = {"type": "static_select", "action_id": VALUE, "options": opts}
    chosen = [o for o in opts if o["value"] == initial]
    if chosen:
        el["initial_option"] = chosen[0]
    return el


def _radio(options: list[tuple[str, str]], initial: str) -> dict[str, Any]:
    opts = [_option(v, label) for v, label in options]
    return {
        "type": "radio_buttons",
        "action_id": VALUE,
        "options": opts,
        "initial_option": next(o for o in opts if o["value"] == initial),
    }


def _input(
    block_id: str, label: str, element: dict[str, Any], *, optional: bool = False, hint: str | None = None
) -> Block:
    block: Block = {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label, 2000),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _plain(hint, 2000)
    return block


def _number(*, decimal: bool, lo: str | None = None, hi: str | None = None) -> dict[str, Any]:
    el: dict[str, Any] = {"type": "number_input", "action_id": VALUE, "is_decimal_allowed": decimal}
    if lo is not None:
        el["min_value"] = lo
    if hi is not None:
        el["max_value"] = hi
    return el


def _text_input(placeholder: str = "", *, max_length: int | None = None) -> dict[str, Any]:
    el: dict[str, Any] = {"type": "plain_text_input", "action_id": VALUE}
    if placeholder:
        el["placeholder"] = _plain(placeholder, 150)
    if max_length:
        el["max_length"] = max_length
    return el


def modal(
    callback_id: str,
    title: str,
    blocks: list[Block],
    *,
    submit: str | None = "Save",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": callback_id,
        "title": _plain(title, TITLE_CHARS),
        "close": _plain("Close" if submit else "Done", TITLE_CHARS),
        "blocks": fit(blocks),
        "private_metadata": _cut(json.dumps(metadata or {}), METADATA_CHARS),
    }
    if submit:
        view["submit"] = _plain(submit, TITLE_CHARS)
    return view


def key_modal(
    providers: list[tuple[str, str]],
    *,
    provider: str | None = None,
    scope: str = "user",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Set an own provider key: which provider, the key (typed here, seen by nobody else), for whom."""
    return modal(
        KEYS_SET,
        "Set a provider key",
        [
            _input("provider", "Provider", _select(providers, provider)),
            _input(
                "key",
                "Key",
                _text_input("Paste the key", max_length=500),
                hint="Stored encrypted; only its last four characters are ever shown.",
            ),
            _input(
                "scope",
                "For",
                _radio(
                    [("user", "Only me"), ("workspace", "The whole workspace (admins)")],
                    "workspace" if scope == "workspace" else "user",
                ),
            ),
        ],
        metadata=metadata,
    )


def budget_modal(metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set a USD cap for the workspace, a channel or a person (empty fields keep their value)."""
    return modal(
        BUDGET_SET,
        "Edit a budget",
        [
            _input(
                "scope",
                "Applies to",
                _select(
                    [
                        ("workspace", "The workspace"),
                        ("channel", "A channel"),
                        ("user", "A person (or everyone)"),
                    ],
                    "workspace",
                ),
            ),
            _input(
                "channel",
                "Channel (for a channel cap)",
                {
                    "type": "conversations_select",
                    "action_id": VALUE,
                    "filter": {"include": ["public", "private"], "exclude_bot_users": True},
                },
                optional=True,
            ),
            _input(
                "user",
                "Person (for a personal cap; empty: everyone without their own)",
                {"type": "users_select", "action_id": VALUE},
                optional=True,
            ),
            _input("daily", "Daily cap, USD", _number(decimal=True, lo="0"), optional=True),
            _input("monthly", "Monthly cap, USD", _number(decimal=True, lo="0"), optional=True),
            _input(
                "soft",
                "Alert admins at (% of a cap)",
                _number(decimal=False, lo="1", hi="100"),
                optional=True,
            ),
        ],
        metadata=metadata,
    )


POLICY_DIMENSIONS = [
    ("providers", "Providers"),
    ("models", "Models (provider/model patterns)"),
    ("personas", "Personas"),
    ("commands", "Commands"),
]


def policy_modal(metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add an allow or deny rule for one dimension, in the workspace or a channel, for everyone or some people."""
    return modal(
        POLICY_ADD,
        "Add a policy rule",
        [
            _input(
                "effect",
                "Rule",
                _radio([("deny", "Deny what is named"), ("allow", "Allow only what is named")], "deny"),
            ),
            _input("dimension", "What", _select(POLICY_DIMENSIONS, "providers")),
            _input(
                "values",
                "Names",
                _text_input("kimi,openai  ·  openai/gpt-5*  ·  riley"),
                hint="Comma separated; * and ? match patterns.",
            ),
            _input(
                "scope",
                "Where",
                _select([("workspace", "The workspace"), ("channel", "A channel")], "workspace"),
            ),
            _input(
                "channel",
                "Channel (for a channel rule)",
                {
                    "type": "conversations_select",
                    "action_id": VALUE,
                    "filter": {"include": ["public", "private"], "exclude_bot_users": True},
                },
                optional=True,
            ),
            _input(
                "users",
                "Only for these people (empty: everyone)",
                {"type": "multi_users_select", "action_id": VALUE},
                optional=True,
            ),
        ],
        metadata=metadata,
    )


def notice(title: str, mrkdwn: str) -> dict[str, Any]:
    """A modal that only shows text (what a submission did)."""
    return modal(NOTICE, title, sections(mrkdwn), submit=None)


# --- what a submission holds ------------------------------------------------------------------------
def values(view: dict[str, Any]) -> dict[str, Any]:
    """A submitted view's inputs by block_id: text, a selected value, a person, a channel or a list of people."""
    out: dict[str, Any] = {}
    for block_id, actions in ((view.get("state") or {}).get("values") or {}).items():
        state = (actions or {}).get(VALUE) or {}
        if "selected_option" in state:
            out[block_id] = (state["selected_option"] or {}).get("value")
        elif "selected_users" in state:
            out[block_id] = list(state["selected_users"] or [])
        elif "selected_user" in state:
            out[block_id] = state["selected_user"]
        elif "selected_conversation" in state:
            out[block_id] = state["selected_conversation"]
        elif "selected_channel" in state:
            out[block_id] = state["selected_channel"]
        else:
            out[block_id] = state.get("value")
    return out


def metadata(view: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def errors(message: str, blocks: list[str], default: str) -> dict[str, str]:
    """``response_action: errors`` for a refusal: on the field the sentence names (``daily:…``), else ``default``."""
    lowered = message.lower()
    # An example or a usage line names every option: the fault is in the sentence before it.
    for tail in (" usage:", " example:"):
        lowered = lowered.split(tail, 1)[0]
    block = next((b for b in blocks if re.search(rf"(?<![\w\[]){b}:", lowered)), default)
    return {block: message}

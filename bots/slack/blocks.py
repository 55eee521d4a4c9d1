"""Block Kit for what Parley posts in a thread besides the answers' text: the actions under
an answer or a summary, the menus they open, and a consensus's task list. Layout only:
which actions exist, what they carry and what a click does is core's (:mod:`core.actions`).

Every button's ``action_id`` (and ``value``) is :meth:`core.actions.Action.encode`, so a
click carries all Parley needs and works after a restart or on another replica. Slack's
limits this module keeps (https://docs.slack.dev/block-kit,
https://docs.slack.dev/reference/block-kit/blocks):

- a message holds at most 50 blocks;
- an ``actions`` block at most 25 elements
  (https://docs.slack.dev/reference/block-kit/blocks/actions-block);
- a ``context_actions`` block at most 5 elements, feedback and icon buttons only
  (https://docs.slack.dev/reference/block-kit/blocks/context-actions-block);
- a button's text at most 75 characters
  (https://docs.slack.dev/reference/block-kit/block-elements/button-element);
- a static select at most 100 options, an option's text 75 characters and its value 150
  (https://docs.slack.dev/reference/block-kit/composition-objects/option-object);
- a section's text at most 3,000 characters, a ``markdown`` block's 12,000
  (https://docs.slack.dev/reference/block-kit/blocks/markdown-block).

A consensus's stages are a ``plan`` block of ``task_card`` tasks, each ``pending``,
``in_progress``, ``complete`` or ``error``
(https://docs.slack.dev/reference/block-kit/blocks/plan-block,
https://docs.slack.dev/reference/block-kit/blocks/task-card-block); the message's
``text`` is the same list as ⏳/✅ lines for notifications and clients that do not show plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bots.slack import views
from core.actions import Action

Block = dict[str, Any]

MAX_BLOCKS = 50
ACTIONS_ELEMENTS = 25
CONTEXT_ACTIONS_ELEMENTS = 5
BUTTON_CHARS = 75
OPTION_CHARS = 75
MAX_OPTIONS = 100
MARKDOWN_CHARS = 12_000
PLAN_TITLE_CHARS = 150

#: What a task of the list shows for each state, in the message's fallback text.
TASK_ICONS = {"pending": "◻️", "in_progress": "⏳", "complete": "✅", "error": "⚠️"}


def _plain(text: str, limit: int = BUTTON_CHARS) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit), "emoji": True}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _button(action: Action, label: str | None = None) -> dict[str, Any]:
    value = action.encode()
    return {"type": "button", "text": _plain(label or action.label), "action_id": value, "value": value}


def action_blocks(actions: Sequence[Action], labels: dict[str, str] | None = None) -> list[Block]:
    """The blocks under an answer or a summary: 👍/👎 as ``feedback_buttons`` in a
    ``context_actions`` block, every other action a button (votes named by ``labels``,
    turn id -> who answered), at most 25 to an ``actions`` block."""
    by_kind = {a.kind: a for a in actions}
    out: list[Block] = []
    up, down = by_kind.get("up"), by_kind.get("down")
    if up is not None and down is not None:
        out.append(
            {
                "type": "context_actions",
                "elements": [
                    {
                        "type": "feedback_buttons",
                        "action_id": up.encode(),
                        "positive_button": {
                            "text": _plain(up.label),
                            "value": up.encode(),
                            "accessibility_label": "Good answer",
                        },
                        "negative_button": {
                            "text": _plain(down.label),
                            "value": down.encode(),
                            "accessibility_label": "Bad answer",
                        },
                    }
                ],
            }
        )
    buttons = []
    for a in actions:
        if a.kind in ("up", "down"):
            continue
        label = f"🏆 {(labels or {}).get(a.choice, a.choice)}" if a.kind == "vote" else None
        buttons.append(_button(a, label))
    for i in range(0, len(buttons), ACTIONS_ELEMENTS):
        out.append({"type": "actions", "elements": buttons[i : i + ACTIONS_ELEMENTS]})
    return out


def answer_blocks(markdown: str, actions: Sequence[Action]) -> list[Block]:
    """A posted answer with its actions: the text as a ``markdown`` block (blocks replace a
    message's ``text``, which stays as the notification fallback), then the actions."""
    return [{"type": "markdown", "text": _cut(markdown, MARKDOWN_CHARS)}, *action_blocks(actions)]


def summary_blocks(mrkdwn: str, actions: Sequence[Action], labels: dict[str, str]) -> list[Block]:
    """A discussion's summary (sections) and the actions under it, within 50 blocks."""
    below = action_blocks(actions, labels)
    text = views.sections(mrkdwn)
    room = MAX_BLOCKS - len(below)
    if len(text) > room:
        text = text[: room - 1] + [views.context("The summary goes on in the thread above.")]
    return [*text, *below]


def menu_blocks(action: Action, choices: Sequence[tuple[str, str]]) -> list[Block]:
    """An ephemeral menu for an action that needs a choice; each option's value is the
    action with that choice, so the pick comes back as a complete action."""
    prompt = "Ask again with another provider or persona:" if action.kind == "again" else "Compare with:"
    options = [
        {"text": _plain(label, OPTION_CHARS), "value": action.with_choice(choice).encode()}
        for choice, label in list(choices)[:MAX_OPTIONS]
    ]
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": prompt}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "static_select",
                    "action_id": action.encode(),
                    "placeholder": _plain("Choose…"),
                    "options": options,
                }
            ],
        },
    ]


def task_list(stages: Sequence[str], states: Sequence[str]) -> tuple[str, list[Block]]:
    """A consensus's stages as ``(fallback text, [plan block])``; ``states[i]`` is stage i's."""
    done = sum(1 for s in states if s == "complete")
    if all(s == "complete" for s in states):
        title = "Consensus complete"
    elif any(s == "error" for s in states):
        title = "Consensus stopped"
    else:
        title = f"Consensus · {done} of {len(stages)} stages done"
    tasks = [
        {"task_id": f"stage_{i + 1}", "title": _cut(stage, PLAN_TITLE_CHARS), "status": state}
        for i, (stage, state) in enumerate(zip(stages, states, strict=True))
    ]
    text = "\n".join([f"*{title}*", *(f"{TASK_ICONS[s]} {t}" for t, s in zip(stages, states, strict=True))])
    return text, [{"type": "plan", "title": _cut(title, PLAN_TITLE_CHARS), "tasks": tasks[:MAX_BLOCKS]}]

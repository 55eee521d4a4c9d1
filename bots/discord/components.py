"""What Parley puts under its Discord messages: buttons, select menus, polls and the stage line.

Everything here is built from :mod:`core.actions` (the one list of what a person can do
under an answer or a summary) and checked against Discord's published limits
(:func:`validate`); a button carries only ``Action.encode()`` as its ``custom_id``, so a
click is understood from the store alone, after a restart or on another replica.

discord.py wants a ``View`` for components; :class:`Components` is one that only carries
the JSON and is never kept in discord.py's view store (a click is dispatched by Parley,
not by a callback held in memory, so nothing grows with the number of messages).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

import discord

from core.actions import MENUS, Action
from core.events import DiscussionFinished, TurnSummary

# Limits, from https://discord.com/developers/docs/components/reference (action rows,
# buttons, string selects) and https://discord.com/developers/docs/resources/poll.
#: Action rows per message (legacy components), and buttons per action row.
MAX_ROWS, MAX_BUTTONS = 5, 5
#: custom_id, a button's label, a select's placeholder, an option's label/value.
MAX_CUSTOM_ID, MAX_LABEL, MAX_PLACEHOLDER, MAX_OPTION_TEXT = 100, 80, 150, 100
#: Options of a string select.
MAX_OPTIONS = 25
#: A poll: answers, answer text, question text; its duration in hours (at most 32 days).
MAX_POLL_ANSWERS, MAX_POLL_ANSWER, MAX_POLL_QUESTION, MAX_POLL_HOURS = 10, 55, 300, 32 * 24
POLL_HOURS = 24

ACTION_ROW, BUTTON, STRING_SELECT = 1, 2, 3
PRIMARY, SECONDARY = 1, 2
#: Buttons whose label is an emoji get it as the button's emoji (it renders larger, and reads
#: the same to screen readers).
EMOJI_LABELS = {"up": "👍", "down": "👎"}
PRIMARY_KINDS = {"continue", "consensus"}


class Components(discord.ui.View):
    """Component JSON as discord.py's ``view=`` argument, never stored in its view store."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(timeout=None)
        self.rows = rows
        self.stop()  # finished: discord.py does not keep it for dispatch

    def to_components(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.rows

    def is_dispatchable(self) -> bool:
        return False


def view(rows: list[dict[str, Any]]) -> Components:
    """The view for ``rows``, checked against Discord's limits; an empty list clears the components."""
    validate(rows)
    return Components(rows)


# --- buttons --------------------------------------------------------------------------------------------


def button(action: Action) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": BUTTON,
        "style": PRIMARY if action.kind in PRIMARY_KINDS else SECONDARY,
        "custom_id": action.encode(),
    }
    if action.kind in EMOJI_LABELS:
        out["emoji"] = {"name": EMOJI_LABELS[action.kind]}
    else:
        out["label"] = action.label[:MAX_LABEL]
    return out


def button_rows(actions: Iterable[Action]) -> list[dict[str, Any]]:
    """Buttons in action rows of at most 5 (at most 5 rows: what does not fit is left off)."""
    buttons = [button(a) for a in actions if a.kind != "vote"]
    rows = [{"type": ACTION_ROW, "components": buttons[i : i + MAX_BUTTONS]}
            for i in range(0, len(buttons), MAX_BUTTONS)]
    return rows[:MAX_ROWS]


# --- menus ----------------------------------------------------------------------------------------------


def select(action: Action, choices: Sequence[tuple[str, str]], placeholder: str) -> dict[str, Any]:
    """One action row with a string select: its ``custom_id`` is the action without a choice,
    the chosen option's value comes back in the interaction's ``values``."""
    options = [{"label": label[:MAX_OPTION_TEXT], "value": value[:MAX_OPTION_TEXT]}
               for value, label in choices[:MAX_OPTIONS]]
    return {"type": ACTION_ROW, "components": [{
        "type": STRING_SELECT, "custom_id": Action(action.kind, action.target).encode(),
        "placeholder": placeholder[:MAX_PLACEHOLDER], "min_values": 1, "max_values": 1, "options": options,
    }]}


MENU_PLACEHOLDER = {"again": "Ask again with… (a provider or a persona)", "compare": "Compare with… (a provider)",
                    "vote": "Vote for the best answer"}


def menu(action: Action, choices: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    assert action.kind in (*MENUS, "vote")
    return [select(action, choices, MENU_PLACEHOLDER[action.kind])]


def choice_of(action: Action, data: dict[str, Any]) -> Action:
    """A component interaction's action: a select's value is its choice."""
    values = data.get("values") or []
    return action.with_choice(str(values[0])) if values else action


# --- the summary's poll -----------------------------------------------------------------------------------


def answer_label(turn: TurnSummary) -> str:
    who = f"{turn.persona} on {turn.provider}/{turn.model}" if turn.persona else f"{turn.provider}/{turn.model}"
    return who if len(who) <= MAX_POLL_ANSWER else who[: MAX_POLL_ANSWER - 1] + "…"


def poll_for(summary: DiscussionFinished, votes: Sequence[Action], prompt: str = "") -> tuple[discord.Poll, list[str]]:
    """A native poll for the best answer (the first 10 of the compared answers) and, in answer order,
    the turn id behind each answer (Discord numbers answers from 1 in the order given)."""
    turns = {t.turn_id: t for t in summary.turns}
    chosen = [v.choice for v in votes if v.choice in turns][:MAX_POLL_ANSWERS]
    question = "Which answer is best?" + (f" — {' '.join(prompt.split())}" if prompt else "")
    if len(question) > MAX_POLL_QUESTION:
        question = question[: MAX_POLL_QUESTION - 1] + "…"
    poll = discord.Poll(question=question, duration=datetime.timedelta(hours=POLL_HOURS))
    for tid in chosen:
        poll.add_answer(text=answer_label(turns[tid]))
    return poll, chosen


def poll_answers(message: discord.Message | None, turn_ids: Sequence[str]) -> dict[int, str]:
    """answer id → turn id, from the poll Discord sent back (ids by position if it did not)."""
    ids = [a.id for a in message.poll.answers] if message is not None and message.poll is not None else []
    if len(ids) != len(turn_ids):
        ids = list(range(1, len(turn_ids) + 1))
    return dict(zip(ids, turn_ids, strict=True))


# --- the stage line -------------------------------------------------------------------------------------


def stage_line(stages: Sequence[str], current: int, *, ended: str | None = None) -> str:
    """``⏳ Stage 1 · … ◻ Stage 2 · …``: done ✅, running ⏳, to come ◻. ``ended`` is the
    discussion's status once it finished: every stage ✅, or ✗ from the one it failed in."""
    marks = []
    for i, title in enumerate(stages):
        if ended is None:
            mark = "✅" if i < current else "⏳" if i == current else "◻"
        elif ended == "failed":
            mark = "✅" if i < current else "✗" if i == current else "◻"
        else:
            mark = "✅"
        marks.append(f"{mark} {title}")
    return "  ".join(marks)


# --- limits ---------------------------------------------------------------------------------------------


def validate(rows: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError where ``rows`` break one of Discord's component limits."""
    if len(rows) > MAX_ROWS:
        raise ValueError(f"{len(rows)} action rows (at most {MAX_ROWS})")
    for row in rows:
        if row.get("type") != ACTION_ROW:
            raise ValueError("a top-level component must be an action row")
        items = row.get("components") or []
        if not items:
            raise ValueError("an empty action row")
        selects = [c for c in items if c.get("type") == STRING_SELECT]
        if selects and len(items) != 1:
            raise ValueError("a select menu fills its action row alone")
        if len(items) > MAX_BUTTONS:
            raise ValueError(f"{len(items)} buttons in a row (at most {MAX_BUTTONS})")
        for c in items:
            cid = c.get("custom_id", "")
            if not 1 <= len(cid) <= MAX_CUSTOM_ID:
                raise ValueError(f"custom_id of {len(cid)} characters (1–{MAX_CUSTOM_ID})")
            if c.get("type") == BUTTON:
                if not c.get("label") and not c.get("emoji"):
                    raise ValueError("a button needs a label or an emoji")
                if len(c.get("label", "")) > MAX_LABEL:
                    raise ValueError(f"a button label over {MAX_LABEL} characters")
            elif c.get("type") == STRING_SELECT:
                options = c.get("options") or []
                if not 1 <= len(options) <= MAX_OPTIONS:
                    raise ValueError(f"{len(options)} select options (1–{MAX_OPTIONS})")
                if len(c.get("placeholder", "")) > MAX_PLACEHOLDER:
                    raise ValueError(f"a placeholder over {MAX_PLACEHOLDER} characters")
                for o in options:
                    if not 1 <= len(o["label"]) <= MAX_OPTION_TEXT or not 1 <= len(o["value"]) <= MAX_OPTION_TEXT:
                        raise ValueError(f"a select option's label and value take 1–{MAX_OPTION_TEXT} characters")
            else:
                raise ValueError(f"component type {c.get('type')} is not one Parley sends")
    ids = [c.get("custom_id") for r in rows for c in r.get("components") or []]
    if len(ids) != len(set(ids)):
        raise ValueError("custom_ids must be unique within a message")


def validate_poll(poll: dict[str, Any]) -> None:
    """Raise ValueError where a poll create request breaks Discord's limits."""
    question = poll["question"]["text"]
    if not 1 <= len(question) <= MAX_POLL_QUESTION:
        raise ValueError(f"a poll question of {len(question)} characters (1–{MAX_POLL_QUESTION})")
    answers = poll["answers"]
    if not 1 <= len(answers) <= MAX_POLL_ANSWERS:
        raise ValueError(f"{len(answers)} poll answers (1–{MAX_POLL_ANSWERS})")
    for a in answers:
        if not 1 <= len(a["poll_media"]["text"]) <= MAX_POLL_ANSWER:
            raise ValueError(f"a poll answer over {MAX_POLL_ANSWER} characters")
    if not 1 <= poll["duration"] <= MAX_POLL_HOURS:
        raise ValueError(f"a poll open for {poll['duration']} hours (1–{MAX_POLL_HOURS})")

"""What a person can do under an answer or a summary, for every front-end.

Under a finished answer: 👍/👎 feedback, "Ask again with…" (another provider or
persona, from a menu that lists only what policy allows here) and "Continue" (for
an answer cut by max_tokens or a failure: it goes on from the kept text). Under a
compare's summary: a vote for the best answer, "Consensus on these" and "Compare
with…"; under a consensus's: "Compare with…".

An :class:`Action` is all a button carries (``parley:KIND:TARGET[:CHOICE]``, at most
100 characters, Discord's ``custom_id`` limit): everything else is read from the
store when it is clicked, so buttons keep working after a restart and on another
replica. A click is claimed once (:meth:`Actions.claim`): a double click, a
redelivered payload or a second replica acts once. Discussions an action starts go
through :meth:`core.governance.Governance.admit` like any other request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.commands import Request
from core.errors import ParleyError, UsageError
from core.events import DiscussionFinished, TurnFailed, TurnFinished
from core.governance import Refused
from core.governance.scope import Caller
from core.present import Answer, Doc, code, line, strong
from core.records import now_iso

if TYPE_CHECKING:
    from core.services import Services

PREFIX = "parley"
#: Every kind of action, and what its button says.
LABELS = {
    "up": "👍",
    "down": "👎",
    "again": "Ask again with…",
    "continue": "Continue",
    "vote": "Best answer",
    "consensus": "Consensus on these",
    "compare": "Compare with…",
}
#: Actions whose click starts a discussion (the others record something).
STARTS = ("again", "continue", "consensus", "compare")
#: Actions that need a choice from a menu.
MENUS = ("again", "compare")
#: How long a click is remembered against double clicks and redeliveries.
CLAIM_SECONDS = 30.0
CONTINUE_PROMPT = (
    "Continue your previous answer exactly where it stopped. Do not repeat what you already "
    "wrote and do not start over."
)
#: The most choices a menu offers (Discord's select menus take 25).
MAX_CHOICES = 25


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    target: str  # a turn id (answers), a discussion id (summaries)
    choice: str = ""  # "provider:ID", "persona:ID", a turn id (a vote)

    def encode(self) -> str:
        value = f"{PREFIX}:{self.kind}:{self.target}" + (f":{self.choice}" if self.choice else "")
        if len(value) > 100:
            raise ValueError(f"an action id is at most 100 characters: {value[:40]}…")
        return value

    @staticmethod
    def decode(value: str) -> Action | None:
        parts = value.split(":", 3)
        if len(parts) < 3 or parts[0] != PREFIX or parts[1] not in LABELS:
            return None
        return Action(parts[1], parts[2], parts[3] if len(parts) > 3 else "")

    def with_choice(self, choice: str) -> Action:
        return Action(self.kind, self.target, choice)

    @property
    def label(self) -> str:
        return LABELS[self.kind]


def under_answer(result: TurnFinished | TurnFailed, mode: str) -> list[Action]:
    """The actions under one finished (or failed) answer."""
    tid = result.turn.turn_id
    if result.turn.stage != "answer" and result.turn.stage != "synthesis":
        return []  # reviews are material, not answers to act on
    out: list[Action] = []
    if isinstance(result, TurnFinished):
        out += [Action("up", tid), Action("down", tid)]
    if result.turn.stage == "answer":
        out.append(Action("again", tid))
    if (isinstance(result, TurnFinished) and result.cut) or (isinstance(result, TurnFailed) and result.text):
        out.append(Action("continue", tid))
    return out


def under_summary(summary: DiscussionFinished, mode: str | None = None) -> list[Action]:
    """The actions under a discussion's summary (compare and consensus); ``mode`` defaults to its own."""
    mode = mode or summary.mode
    did = summary.discussion_id
    answered = [t for t in summary.turns if t.stage == "answer" and t.status == "finished"]
    if mode == "parallel":
        out = [Action("vote", did, t.turn_id) for t in answered] if len(answered) >= 2 else []
        if len(answered) >= 2:
            out.append(Action("consensus", did))
        return [*out, Action("compare", did)]
    if mode == "consensus":
        return [Action("compare", did)]
    return []


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a win rate (``wins`` out of ``n``)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    return (max(0.0, (centre - spread) / den), min(1.0, (centre + spread) / den))


class Actions:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.governance = services.governance

    # --- reading what a button points at -------------------------------------------------------
    def _turn(self, turn_id: str) -> dict[str, Any]:
        turn = self.store.turn(turn_id)
        if turn is None:
            raise UsageError("That answer is no longer stored here, so this button cannot act on it.")
        return turn

    def _discussion(self, discussion_id: str) -> dict[str, Any]:
        rows = list(self.store.db.table("discussions").rows_where("id = ?", [discussion_id]))
        if not rows:
            raise UsageError("That discussion is no longer stored here, so this button cannot act on it.")
        return rows[0]

    def _mine(self, caller: Caller, discussion: dict[str, Any]) -> None:
        """A button acts only in the workspace its discussion belongs to, for someone policy lets
        use that discussion's command here (who may not /compare may not vote on one either)."""
        if discussion.get("workspace") and discussion["workspace"] != caller.workspace:
            raise Refused("⛔ That discussion belongs to another workspace.", "policy")
        if discussion.get("command"):
            self.governance.check_command(Request(discussion["command"]), caller)

    # --- claims ------------------------------------------------------------------------------
    @staticmethod
    def _slot(action: Action, caller: Caller) -> tuple[str, str]:
        """(claim key, choice): 👍/👎 on an answer share one slot, so do the votes on a compare;
        choosing again the same thing within CLAIM_SECONDS is a double click, choosing another is
        a change."""
        who = f"{caller.workspace}|{caller.user}"
        if action.kind in ("up", "down"):
            return f"{who}|feedback:{action.target}", action.kind
        if action.kind == "vote":
            return f"{who}|vote:{action.target}", action.choice
        return f"{who}|{action.encode()}", ""

    async def claim(self, action: Action, caller: Caller) -> bool:
        """True unless ``caller`` made this same choice within CLAIM_SECONDS (a double click, a
        redelivery, another replica). Claim after the checks that may refuse (admission), just
        before acting: a refused click tried again is not "already done"."""
        key, choice = self._slot(action, caller)
        now = time.time()

        def fn(db: Any) -> bool:
            db.conn.execute("BEGIN IMMEDIATE")
            row = db.conn.execute("select at, choice from action_claims where key = ?", [key]).fetchone()
            if row is not None and now - row[0] < CLAIM_SECONDS and (row[1] or "") == choice:
                return False
            db.conn.execute(
                "insert into action_claims (key, choice, at) values (?, ?, ?) on conflict(key) do update set "
                "choice = excluded.choice, at = excluded.at",
                [key, choice, now],
            )
            db.conn.execute("delete from action_claims where at < ?", [now - 24 * 3600])
            return True

        return bool(await self.store.writer.acall(fn, urgent=True))

    async def release(self, action: Action, caller: Caller) -> None:
        """Forget a claim whose action was then refused: trying again is not "already done"."""
        key, choice = self._slot(action, caller)
        await self.store.writer.acall(
            lambda db: db.conn.execute("delete from action_claims where key = ? and coalesce(choice, '') = ?",
                                       [key, choice]), urgent=True)

    # --- menus ---------------------------------------------------------------------------------
    def choices(self, caller: Caller, action: Action) -> list[tuple[str, str]]:
        """``(choice, label)`` for an action's menu: only providers and personas policy allows here."""
        gov = self.governance
        reg = self.services.registry
        current_providers: set[str] = set()
        current_personas: set[str] = set()
        if action.kind == "again":
            turn = self._turn(action.target)
            current_providers.add(turn["provider"])
            if turn["persona"]:
                current_personas.add(turn["persona"])
        else:
            for t in self.store.turns(action.target):
                current_providers.add(t["provider"])
        out: list[tuple[str, str]] = []
        for pid in reg.names():
            spec = reg.get(pid)
            if pid in current_providers or not reg.configured(spec) and not gov.own_keys(caller, [pid]):
                continue
            if not (gov.allows(caller, "providers", pid) and gov.allows(caller, "models", f"{pid}/{spec.default_model}")):
                continue
            out.append((f"provider:{pid}", f"{spec.label} · {spec.default_model}"))
        if action.kind == "again":
            for p in self.services.personas.all():
                if p.id in current_personas or not gov.allows(caller, "personas", p.id):
                    continue
                out.append((f"persona:{p.id}", f"{p.emoji + ' ' if p.emoji else ''}{p.name}, {p.role}"))
        return out[:MAX_CHOICES]

    # --- recording -----------------------------------------------------------------------------
    async def feedback(self, caller: Caller, turn_id: str, value: int) -> Answer:
        turn = self._turn(turn_id)
        self._mine(caller, self._discussion(turn["discussion_id"]))
        row = {"turn_id": turn_id, "user": caller.user, "workspace": caller.workspace, "value": value, "at": now_iso()}

        def fn(db: Any) -> None:
            db.conn.execute(
                "insert into feedback (turn_id, user, workspace, value, at) values (:turn_id, :user, :workspace, "
                ":value, :at) on conflict(turn_id, user) do update set value = excluded.value, at = excluded.at",
                row,
            )

        await self.store.writer.acall(fn, urgent=True)
        return Answer("feedback", [row], [line("Thanks: noted ", "👍" if value > 0 else "👎", ".")])

    async def vote(self, caller: Caller, discussion_id: str, turn_id: str) -> Answer:
        d = self._discussion(discussion_id)
        self._mine(caller, d)
        turns = {t["id"]: t for t in self.store.turns(discussion_id) if t["stage"] == "answer"}
        if turn_id not in turns:
            raise UsageError("That answer is not part of this comparison.")
        row = {"discussion_id": discussion_id, "user": caller.user, "workspace": caller.workspace,
               "turn_id": turn_id, "at": now_iso()}

        def fn(db: Any) -> None:
            db.conn.execute(
                "insert into votes (discussion_id, user, workspace, turn_id, at) values (:discussion_id, :user, "
                ":workspace, :turn_id, :at) on conflict(discussion_id, user) do update set "
                "turn_id = excluded.turn_id, at = excluded.at",
                row,
            )

        await self.store.writer.acall(fn, urgent=True)
        tally = self.tally(discussion_id)
        t = turns[turn_id]
        who = f"{t['persona'] + ' on ' if t['persona'] else ''}{t['provider']}/{t['model']}"
        return Answer("vote", tally, [line("Your vote: ", strong(who), ". You can change it until the thread closes.")])

    def tally(self, discussion_id: str) -> list[dict[str, Any]]:
        return self.store.peek(
            "select turn_id, count(*) as votes from votes where discussion_id = ? group by turn_id "
            "order by votes desc", [discussion_id])

    # --- actions that start a discussion ---------------------------------------------------
    def request(self, caller: Caller, action: Action) -> tuple[Request, str | None]:
        """The request an action starts, and the conversation (thread) it continues."""
        if action.kind in ("again", "continue"):
            turn = self._turn(action.target)
            d = self._discussion(turn["discussion_id"])
        else:
            d = self._discussion(action.target)
            turn = None
        self._mine(caller, d)
        if not d.get("prompt"):
            raise UsageError("The question of that discussion was erased (retention or /forget), so it cannot be "
                             "asked again.")
        options = _options(d)
        if turn is not None:
            req = Request("ask", d["prompt"], personas=[turn["persona"]] if turn["persona"] else [],
                          providers=[f"{turn['provider']}/{turn['model']}"], temperature=options.get("temperature"),
                          max_tokens=options.get("max_tokens"))
            if action.kind == "again":
                kind, _, value = action.choice.partition(":")
                if kind == "provider":
                    req.providers = [value]
                elif kind == "persona":
                    req.personas = [value]
                else:
                    raise UsageError("Choose a provider or a persona to ask again with.")
                req.fresh = True  # a second opinion, not a follow-up on the first
            else:
                if not turn.get("text"):
                    raise UsageError("That answer kept no text to continue from; ask again instead.")
                req.prompt = CONTINUE_PROMPT
                req.continues = turn["id"]
        else:
            panel = {"personas": list(options.get("personas") or []), "providers": list(options.get("providers") or [])}
            answered = [t for t in self.store.turns(d["id"]) if t["stage"] == "answer"]
            if not panel["providers"] and not panel["personas"]:
                panel["providers"] = list(dict.fromkeys(f"{t['provider']}/{t['model']}" for t in answered))
            if action.kind == "consensus":
                req = Request("consensus", d["prompt"], personas=panel["personas"], providers=panel["providers"],
                              model=options.get("model"))
            else:
                kind, _, value = action.choice.partition(":")
                if kind != "provider":
                    raise UsageError("Choose a provider to compare with.")
                providers = panel["providers"] or list(dict.fromkeys(t["provider"] for t in answered))
                req = Request("compare", d["prompt"], personas=panel["personas"], providers=[*providers, value])
            req.fresh = True
        self._available(req)
        return req, d.get("conversation")

    def _available(self, req: Request) -> None:
        """A provider paused after an auth or quota failure says so now, not in the thread."""
        for p in self.services.engine.panel(req):
            blocked = self.services.registry.unavailable(p.provider)
            if blocked is not None:
                raise ParleyError(blocked.kind, blocked.message, provider=p.provider.id)

    # --- the leaderboard ------------------------------------------------------------------------
    def leaderboard(self, workspace: str) -> list[dict[str, Any]]:
        """Per provider × persona: wins and losses from votes (the voted answer wins, the other
        answers of that compare lose), the Wilson interval of the win rate, 👍 share and cost per win."""
        db = self.store.db
        stats: dict[tuple[str, str], dict[str, Any]] = {}

        def entry(provider: str, persona: str | None) -> dict[str, Any]:
            key = (provider, persona or "")
            if key not in stats:
                stats[key] = {"provider": provider, "persona": persona, "wins": 0, "losses": 0, "votes": 0,
                              "up": 0, "down": 0, "cost_usd": 0.0}
            return stats[key]

        rows = db.execute(
            "select v.discussion_id, v.turn_id, t.id, t.provider, t.persona, t.cost_usd from votes v "
            "join turns t on t.discussion_id = v.discussion_id and t.stage = 'answer' and t.status = 'finished' "
            "where v.workspace = ?", [workspace]).fetchall()
        costs: dict[str, tuple[str, str | None, float]] = {}
        for _did, voted, tid, provider, persona, cost in rows:
            e = entry(provider, persona)
            if tid == voted:
                e["wins"] += 1
                e["votes"] += 1
            else:
                e["losses"] += 1
            costs[tid] = (provider, persona, cost or 0.0)
        for provider, persona, cost in costs.values():
            entry(provider, persona)["cost_usd"] += cost
        for provider, persona, value in db.execute(
            "select t.provider, t.persona, f.value from feedback f join turns t on t.id = f.turn_id "
            "where f.workspace = ?", [workspace]).fetchall():
            entry(provider, persona)["up" if value > 0 else "down"] += 1
        out = []
        for e in stats.values():
            n = e["wins"] + e["losses"]
            lo, hi = wilson(e["wins"], n)
            rated = e["up"] + e["down"]
            out.append({
                **e,
                "win_rate": round(e["wins"] / n, 4) if n else None,
                "wilson_low": round(lo, 4), "wilson_high": round(hi, 4),
                "thumbs_up_share": round(e["up"] / rated, 4) if rated else None,
                "cost_per_win_usd": round(e["cost_usd"] / e["wins"], 6) if e["wins"] else None,
                "cost_usd": round(e["cost_usd"], 6),
            })
        out.sort(key=lambda r: (-(r["wilson_low"] if r["win_rate"] is not None else -1), -r["votes"], r["provider"]))
        return out


def _options(discussion: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        return dict(json.loads(discussion.get("options") or "{}"))
    except ValueError:
        return {}


def leaderboard_doc(rows: list[dict[str, Any]]) -> Doc:
    if not rows:
        return [line(strong("Leaderboard"), ": no votes or feedback yet. Vote for the best answer under a /compare.")]
    doc = [line(strong("Leaderboard"), " (provider × persona; win rate from votes, 95% Wilson interval)")]
    for i, r in enumerate(rows[:20], 1):
        who = f"{r['persona']} on {r['provider']}" if r["persona"] else r["provider"]
        rate = (f"{100 * r['win_rate']:.0f}% wins [{100 * r['wilson_low']:.0f}–{100 * r['wilson_high']:.0f}%]"
                if r["win_rate"] is not None else "no votes yet")
        thumbs = f", 👍 {100 * r['thumbs_up_share']:.0f}% of {r['up'] + r['down']}" if r["thumbs_up_share"] is not None \
            else ""
        per_win = f", ${r['cost_per_win_usd']:.4f} per win" if r["cost_per_win_usd"] is not None else ""
        doc.append(line(f"{i}. ", code(who), f" — {rate}, {r['votes']} votes{thumbs}{per_win}", bullet=False))
    return doc


class Polls:
    """A platform poll for the best answer (Discord): which answer is which turn, and its votes."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.store = actions.store

    def record(self, message_id: str, discussion_id: str, answers: dict[int, str]) -> None:
        import json

        row = {"message_id": message_id, "discussion_id": discussion_id, "answers": json.dumps(answers),
               "at": now_iso()}
        self.store.writer.submit(lambda db: db.conn.execute(
            "insert into polls (message_id, discussion_id, answers, at) values "
            "(:message_id, :discussion_id, :answers, :at) on conflict(message_id) do update set "
            "discussion_id = excluded.discussion_id, answers = excluded.answers, at = excluded.at", row), urgent=True)

    async def vote(self, caller: Caller, message_id: str, answer_id: int, *, added: bool) -> Answer | None:
        """A poll vote added (or removed) on platform ``message_id``; None for a poll that is not Parley's."""
        import json

        await self.store.settled()
        rows = self.store.peek("select * from polls where message_id = ?", [message_id])
        if not rows:
            return None
        answers = {int(k): v for k, v in json.loads(rows[0]["answers"]).items()}
        did = rows[0]["discussion_id"]
        if added:
            if answer_id not in answers:
                return None
            return await self.actions.vote(caller, did, answers[answer_id])

        def fn(db: Any) -> None:
            db.conn.execute("delete from votes where discussion_id = ? and user = ? and turn_id = ?",
                            [did, caller.user, answers.get(answer_id, "")])

        await self.store.writer.acall(fn, urgent=True)
        return Answer("vote", self.actions.tally(did), [line("Your vote was removed.")])

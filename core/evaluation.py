"""``parley eval``: is the panel worth its cost? Run a question set through modes and compare.

A question set is JSONL, one object per line: ``question``, ``answer`` and ``match``
(``exact``, ``contains``, ``regex`` or ``numeric``, with ``tolerance`` for numeric).
Every item runs once per mode (``ask``, ``compare``, ``consensus``) through the same
admission as any request (policy and budgets apply; a refused item is counted, not
fatal), a few at a time. ``ask`` is the panel's first persona on its first provider.

What is graded: ``ask``, the answer; ``compare``, each panelist's answer on its own;
``consensus``, the synthesis (its **Answer** section when it has one), else the
top-ranked panelist's final answer (``depth:ranked``, or a moderator that failed), else
the first answer. Accuracy comes with a 95% Wilson score interval; cost, mean time and,
for consensus, the ballot rate (usable ballots over reviews asked) are reported too.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.commands import Request, parse
from core.consensus import parse_revision
from core.errors import UsageError
from core.events import DiscussionFinished, TurnFinished
from core.personas import NEUTRAL

if TYPE_CHECKING:
    from core.governance.scope import Caller
    from core.services import Services

MATCHES = ("exact", "contains", "regex", "numeric")
MODES = {"ask": "ask", "compare": "compare", "consensus": "consensus"}
SHIPPED = "basic"


@dataclass(slots=True)
class Item:
    line: int
    question: str
    answer: str
    match: str
    tolerance: float = 0.0


def shipped(name: str = SHIPPED) -> Path:
    return Path(str(resources.files("core") / "eval_sets" / f"{name}.jsonl"))


def load(path: Path) -> list[Item]:
    """The items of a JSONL question set; a bad line is a UsageError naming it and the fix."""
    if not path.exists():
        raise UsageError(f"{path}: no such file. Give a JSONL question set, or no file for the shipped set.")
    items: list[Item] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not JSON ({e.msg}). Each line is one object like "
                             '{"question": "...", "answer": "...", "match": "contains"}.') from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: a line must be a JSON object.")
        for key in ("question", "answer"):
            if not isinstance(obj.get(key), (str, int, float)) or not str(obj[key]).strip():
                raise UsageError(f"{where}: missing \"{key}\".")
        match = obj.get("match", "contains")
        if match not in MATCHES:
            raise UsageError(f"{where}: unknown match \"{match}\"; use one of {', '.join(MATCHES)}.")
        answer = str(obj["answer"])
        tol = obj.get("tolerance", 0.0)
        if match == "regex":
            try:
                re.compile(answer)
            except re.error as e:
                raise UsageError(f"{where}: the answer is not a valid regular expression ({e}).") from None
        if match == "numeric":
            if _number(answer) is None:
                raise UsageError(f"{where}: a numeric answer must be a number, not {answer!r}.")
            if not isinstance(tol, (int, float)) or tol < 0:
                raise UsageError(f"{where}: tolerance must be a number ≥ 0.")
        items.append(Item(n, str(obj["question"]), answer, match, float(tol)))
    if not items:
        raise UsageError(f"{path}: no questions in it.")
    return items


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MARKUP = re.compile(r"[*_`~#>]+")


def _number(text: str) -> float | None:
    found = _NUM.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", _MARKUP.sub("", text)).strip().strip(".!?,;:'\"").strip().lower()


def correct(item: Item, text: str) -> bool:
    plain = _MARKUP.sub("", text)
    if item.match == "exact":
        lines = [ln for ln in plain.strip().splitlines() if ln.strip()]
        want = _norm(item.answer)
        return _norm(plain) == want or bool(lines and _norm(lines[-1]) == want)
    if item.match == "contains":
        return item.answer.lower() in plain.lower()
    if item.match == "regex":
        return re.search(item.answer, plain, re.IGNORECASE) is not None
    value, target = _number(plain), _number(item.answer)
    return value is not None and target is not None and abs(value - target) <= item.tolerance + 1e-9


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def graded_text(mode: str, finals: list[TurnFinished], fin: DiscussionFinished | None) -> list[str]:
    answers = [f for f in finals if f.turn.stage == "answer"]
    if mode != "consensus":
        return [f.text for f in answers]
    synth = [f for f in finals if f.turn.stage == "synthesis"]
    if synth:
        text = synth[-1].text
        m = re.search(r"(?is)\*\*Answer\*\*\s*[—:-]?\s*(.+?)(?=\n\s*\*\*[A-Z]|\Z)", text)
        return [m.group(1) if m else text]
    if fin is not None and fin.ranking:
        top = fin.ranking[0].panelist
        for f in reversed([f for f in finals if f.turn.stage == "review" and _key(f) == top]):
            revised = parse_revision(f.text)
            if revised:
                return [revised]
        first = [f for f in answers if _key(f) == top]
        if first:
            return [first[0].text]
    return [answers[0].text] if answers else []


def _key(f: TurnFinished) -> str:
    return f"{f.turn.persona_id or NEUTRAL.id}@{f.turn.provider}/{f.turn.model}"


@dataclass(slots=True)
class Stat:
    mode: str
    n: int = 0
    correct: int = 0
    cost_usd: float = 0.0
    seconds: list[float] = field(default_factory=list)
    refused: int = 0
    failed: int = 0
    reviews: int = 0
    votes: int = 0

    def row(self) -> dict[str, Any]:
        ci = wilson(self.correct, self.n)
        return {
            "mode": self.mode, "n": self.n, "correct": self.correct,
            "accuracy": round(self.correct / self.n, 4) if self.n else None,
            "ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
            "cost_usd": round(self.cost_usd, 6),
            "mean_seconds": round(sum(self.seconds) / len(self.seconds), 2) if self.seconds else None,
            "ballot_rate": round(self.votes / self.reviews, 4) if self.reviews else None,
            "reviews": self.reviews, "votes": self.votes, "refused": self.refused, "failed": self.failed,
        }


async def run(services: Services, caller: Caller, items: list[Item], modes: list[str], options: str = "",
              concurrency: int = 2) -> dict[str, Any]:
    from core.governance import Refused

    for m in modes:
        if m not in MODES:
            raise UsageError(f"Unknown mode '{m}' for --modes; use {', '.join(MODES)}.")
    for m in modes:  # bad options fail before anything runs
        _request(services, m, options, "check")
    stats = {m: Stat(m) for m in modes}
    results: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(mode: str, item: Item) -> None:
        st = stats[mode]
        async with gate:
            request = _request(services, mode, options, item.question)
            try:
                grant = await services.governance.admit(request, caller, conversation=None)
            except Refused as e:
                st.refused += 1
                results.append({"mode": mode, "line": item.line, "refused": e.message})
                return
            finals: list[TurnFinished] = []
            fin: DiscussionFinished | None = None
            t0 = time.perf_counter()
            async for ev in services.engine.run(grant.request, conversation=None, front_end="cli", grant=grant):
                if isinstance(ev, TurnFinished):
                    finals.append(ev)
                elif isinstance(ev, DiscussionFinished):
                    fin = ev
            took = time.perf_counter() - t0
        texts = graded_text(mode, finals, fin)
        if not texts:
            st.failed += 1
            texts = [""]
        for text in texts:
            ok = correct(item, text)
            st.n += 1
            st.correct += ok
            results.append({"mode": mode, "line": item.line, "correct": ok, "text": text[:500]})
        st.seconds.append(took)
        if fin is not None:
            st.cost_usd += fin.total.cost_usd
            st.reviews += fin.reviewers
            st.votes += fin.votes

    await asyncio.gather(*(one(m, it) for m in modes for it in items))
    results.sort(key=lambda r: (modes.index(r["mode"]), r["line"]))
    return {"modes": [stats[m].row() for m in modes], "items": results, "questions": len(items)}


def _request(services: Services, mode: str, options: str, question: str) -> Request:
    """The request for one item; ``ask`` takes the panel's first persona and provider, so that
    one expert and the panel it belongs to answer the same set."""
    limit = services.settings.max_prompt_chars
    if mode != "ask":
        return parse(MODES[mode], f"{options} {question}", max_prompt_chars=limit)
    req = parse("compare", f"{options} {question}", max_prompt_chars=limit)
    req.command, req.personas, req.providers = "ask", req.personas[:1], req.providers[:1]
    req.rounds = req.moderator = req.depth = req.method = None
    return req


def table(report: dict[str, Any]) -> str:
    head = f"{'mode':<10} {'n':>4} {'right':>5} {'accuracy':>8} {'95% CI':>15} {'cost $':>9} {'time s':>7} {'ballots':>8}"
    rows = [head]
    for r in report["modes"]:
        ci = f"{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}" if r["ci95"] else "—"
        acc = f"{r['accuracy']:.0%}" if r["accuracy"] is not None else "—"
        ballots = f"{r['ballot_rate']:.0%}" if r["ballot_rate"] is not None else "—"
        t = f"{r['mean_seconds']:.1f}" if r["mean_seconds"] is not None else "—"
        rows.append(f"{r['mode']:<10} {r['n']:>4} {r['correct']:>5} {acc:>8} {ci:>15} {r['cost_usd']:>9.4f} "
                    f"{t:>7} {ballots:>8}" + (f"  ({r['refused']} refused)" if r["refused"] else ""))
    return "\n".join(rows)


def chart(report: dict[str, Any], path: Path) -> None:
    """Accuracy per mode with its Wilson interval, as a PNG (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--chart needs matplotlib: pip install matplotlib (it is in the dev extra).") from None
    rows = [r for r in report["modes"] if r["n"]]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci95"][0] for a, r in zip(acc, rows, strict=True)],
           [r["ci95"][1] - a for a, r in zip(acc, rows, strict=True)]]
    ax.bar([r["mode"] for r in rows], acc, yerr=err, capsize=6, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(f"parley eval: {report['questions']} questions")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, default=lambda o: asdict(o))

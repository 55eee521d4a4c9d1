"""Ballot rate of consensus reviews with the local model (SmolLM2-135M, llama.cpp).

Ten consensus runs of three panelists (riley, morgan, devon on the local provider), in
two arms in the same run:

- **text**: the local quirk profile says ``structured = "none"`` (as every profile did
  before structured ballots): reviewers are asked for ``RANKING: A > B`` lines. Their
  reviews are read twice: with the strict one-line parser Parley had before
  (``RANKING:`` followed by letters, the last such line), and with today's tolerant
  reader plus the one format reminder.
- **grammar**: the shipped profile: the ballot is a JSON object under a llama.cpp grammar.

The ballot rate is usable ballots over reviews asked, in the last review round.

    python -m bench.ballot_bench        # writes bench/results/ballots.json
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = int(os.environ.get("BALLOT_RUNS", "10"))
QUESTIONS = [
    "Should a small team ship a new feature on a Friday?",
    "Is it better to price a product monthly or yearly?",
    "Should a startup write tests before its first customer?",
    "Is remote work better than office work for a five-person team?",
    "Should we announce a product before it is ready?",
]
_OLD = re.compile(r"(?i)\bRANKING\b[*_\s]*:[*_\s]*([^\n]+)")


def old_parse(text: str, letters: list[str]) -> list[str]:
    """The one-line parser consensus used before structured ballots."""
    found = _OLD.findall(text)
    seen: list[str] = []
    for tok in re.findall(r"\b([A-Z])\b", found[-1]) if found else []:
        if tok in letters and tok not in seen:
            seen.append(tok)
    return seen


async def arm(structured: str) -> dict[str, Any]:
    from core.commands import parse
    from core.config import Settings
    from core.events import DiscussionFinished, TurnFinished, TurnStarted
    from core.services import build_services

    cfg = Path(tempfile.mkdtemp()) / "parley.toml"
    cfg.write_text(f'[quirks.local]\ntemperature_range = [0.0, 2.0]\ndefault_temperature = 0.3\n'
                   f'structured = "{structured}"\n')
    os.environ["PARLEY_CONFIG"] = str(cfg)
    os.environ["PARLEY_DB"] = str(cfg.parent / "parley.db")
    votes = reviewers = old_votes = 0
    seconds: list[float] = []
    async with build_services(Settings()) as svc:
        for i in range(RUNS):
            q = QUESTIONS[i % len(QUESTIONS)]
            req = parse("consensus", f"personas:riley,morgan,devon providers:local max_tokens:160 {q}")
            t0 = time.perf_counter()
            first_reviews: list[str] = []
            reminders: set[str] = set()
            async for ev in svc.engine.run(req):
                if isinstance(ev, TurnStarted) and ev.note and "asked once more" in ev.note:
                    reminders.add(ev.turn.turn_id)
                if isinstance(ev, TurnFinished) and ev.turn.stage == "review" and ev.turn.turn_id not in reminders:
                    first_reviews.append(ev.text)
                if isinstance(ev, DiscussionFinished):
                    votes += ev.votes
                    reviewers += ev.reviewers
            seconds.append(time.perf_counter() - t0)
            old_votes += sum(1 for t in first_reviews if old_parse(t, ["A", "B"]))
            print(f"  {structured} run {i + 1}: {votes}/{reviewers} so far", file=sys.stderr)
    return {
        "structured": structured,
        "runs": RUNS,
        "reviews": reviewers,
        "votes": votes,
        "rate": round(votes / reviewers, 3) if reviewers else None,
        "old_parser_votes": old_votes if structured == "none" else None,
        "old_parser_rate": round(old_votes / reviewers, 3) if reviewers and structured == "none" else None,
        "seconds_per_run_median": round(statistics.median(seconds), 1),
    }


def main() -> dict[str, Any]:
    text = asyncio.run(arm("none"))
    grammar = asyncio.run(arm("grammar"))
    summary = [
        f"Consensus ballots with the local model (SmolLM2-135M), {RUNS} runs of three panelists, "
        f"{text['reviews']} reviews per arm:",
        "",
        "| reviews asked as | read by | usable ballots |",
        "|---|---|---|",
        f"| text (`RANKING: A > B`) | the earlier one-line parser | {text['old_parser_votes']}/{text['reviews']} "
        f"({(text['old_parser_rate'] or 0):.0%}) |",
        f"| text | the tolerant reader + one reminder | {text['votes']}/{text['reviews']} ({(text['rate'] or 0):.0%}) |",
        f"| JSON under a llama.cpp grammar (shipped) | JSON | {grammar['votes']}/{grammar['reviews']} "
        f"({(grammar['rate'] or 0):.0%}) |",
    ]
    out = {"date": time.strftime("%Y-%m-%d"), "arms": [text, grammar], "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ballots.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(summary))
    return out


if __name__ == "__main__":
    main()

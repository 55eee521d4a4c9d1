"""``parley eval`` on the shipped question set with the local model: one expert (ask) against
a consensus of three, same personas, same model.

    python -m bench.eval_bench      # writes bench/results/eval.json and eval.png

EVAL_LIMIT (default 10) questions of the shipped set; time is real time on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LIMIT = os.environ.get("EVAL_LIMIT", "10")
OPTIONS = "providers:local personas:riley,morgan,devon max_tokens:160"


def main() -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PARLEY_DB": str(Path(tempfile.mkdtemp()) / "eval.db")}
    p = subprocess.run(
        [sys.executable, "-m", "bots.cli", "eval", "--limit", LIMIT, "--modes", "ask,consensus", "--concurrency", "1",
         "--options", OPTIONS, "--json", "--chart", str(RESULTS / "eval.png")],
        env=env, capture_output=True, text=True, cwd=ROOT, check=True,
    )
    report = json.loads(p.stdout)
    lines = [f"`parley eval` on {report['questions']} questions of the shipped set, local model (SmolLM2-135M), "
             f"`{OPTIONS}` (ask: the first persona alone):", "",
             "| mode | right / n | accuracy | 95% Wilson CI | mean time s | ballot rate |", "|---|---|---|---|---|---|"]
    for r in report["modes"]:
        ci = f"{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}" if r["ci95"] else "—"
        rate = f"{r['ballot_rate']:.0%}" if r["ballot_rate"] is not None else "—"
        lines.append(f"| {r['mode']} | {r['correct']}/{r['n']} | {r['accuracy']:.0%} | {ci} | {r['mean_seconds']} | {rate} |")
    out = {"date": time.strftime("%Y-%m-%d"), "report": report, "summary": lines}
    (RESULTS / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

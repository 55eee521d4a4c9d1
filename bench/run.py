"""Run every benchmark, then refresh the summary in README.md.

    python -m bench.run            # all
    python -m bench.run core       # one (core, slack, discord, governance, replicas, ack, ballots, eval)

Each benchmark module has ``main() -> dict`` that writes
``bench/results/<name>.json`` (+ a PNG chart for most) and returns a ``summary`` list of
Markdown lines.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHES = {
    "core": "bench.core_bench",
    "slack": "bench.slack_bench",
    "discord": "bench.discord_bench",
    "governance": "bench.governance_bench",
    "replicas": "bench.replica_bench",
    "ack": "bench.ack_bench",
    "ballots": "bench.ballot_bench",
    "eval": "bench.eval_bench",
}
MARK = "<!-- bench-summary -->"


def refresh_readme() -> None:
    parts = []
    for name in BENCHES:
        path = RESULTS / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            parts.append(f"**{name}** ({data.get('date', '')}):\n\n" + "\n".join(data.get("summary", [])))
    readme = ROOT / "README.md"
    text = readme.read_text()
    head = text.split(MARK)[0]
    readme.write_text(head + MARK + "\n\n" + "\n\n".join(parts) + "\n")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    for name in names:
        try:
            mod = importlib.import_module(BENCHES[name])
        except ModuleNotFoundError as e:
            print(f"skip {name}: {e}")
            continue
        print(f"== {name}")
        mod.main()
    refresh_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


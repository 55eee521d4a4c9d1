"""parley eval: question sets, match rules, the Wilson interval, and runs through the fake
server and the local model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import evaluation
from core.errors import UsageError
from tests.fakes.llm_server import FakeLLMServer, Scenario, running_in_thread

ROOT = Path(__file__).resolve().parent.parent


def item(answer: str, match: str, tol: float = 0.0) -> evaluation.Item:
    return evaluation.Item(1, "q", answer, match, tol)


@pytest.mark.parametrize(("answer", "match", "text", "ok"), [
    ("42", "numeric", "The answer is **42**.", True),
    ("42", "numeric", "I think 41", False),
    ("1000", "numeric", "It is 1,000", True),
    ("3.75", "numeric", "3.7501", False),
    ("Paris", "contains", "The capital is paris.", True),
    ("Paris", "contains", "Lyon", False),
    (r"\bAu\b", "regex", "Gold is Au.", True),
    (r"\bAu\b", "regex", "Australia", False),
    ("cold", "exact", "**Cold.**", True),
    ("cold", "exact", "Reasoning...\nCold", True),
    ("cold", "exact", "not cold", False),
])
def test_match_rules(answer: str, match: str, text: str, ok: bool) -> None:
    assert evaluation.correct(item(answer, match), text) is ok


def test_numeric_tolerance() -> None:
    assert evaluation.correct(item("3.75", "numeric", 0.01), "3.751")
    assert not evaluation.correct(item("3.75", "numeric", 0.0001), "3.751")


def test_wilson_interval() -> None:
    lo, hi = evaluation.wilson(8, 10)  # type: ignore[misc]
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)
    assert evaluation.wilson(0, 0) is None
    lo, hi = evaluation.wilson(0, 5)  # type: ignore[misc]
    assert lo == 0.0 and 0.4 < hi < 0.5


@pytest.mark.parametrize(("line", "says"), [
    ("not json", "line 2: not JSON"),
    ('{"answer": "1", "match": "exact"}', 'line 2: missing "question"'),
    ('{"question": "q", "answer": "(", "match": "regex"}', "not a valid regular expression"),
    ('{"question": "q", "answer": "1", "match": "fuzzy"}', 'unknown match "fuzzy"'),
    ('{"question": "q", "answer": "many", "match": "numeric"}', "must be a number"),
])
def test_loader_errors_name_the_line(tmp_path: Path, line: str, says: str) -> None:
    f = tmp_path / "set.jsonl"
    f.write_text('{"question": "ok?", "answer": "1", "match": "numeric"}\n' + line + "\n")
    with pytest.raises(UsageError) as e:
        evaluation.load(f)
    assert says in e.value.message


def test_shipped_set_loads_and_is_answerable() -> None:
    items = evaluation.load(evaluation.shipped())
    assert len(items) == 20
    assert {i.match for i in items} == set(evaluation.MATCHES)


@pytest.fixture
def server() -> FakeLLMServer:
    with running_in_thread() as s:
        yield s  # type: ignore[misc]


def parley(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bots.cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_eval_through_the_fake_server(server: FakeLLMServer, tmp_path: Path) -> None:
    cfg = tmp_path / "parley.toml"
    rows = []
    for pid in ("acme", "beta"):
        rows.append(f'[providers.{pid}]\nlabel = "{pid}"\nwire = "openai_chat"\nbase_url = "{server.base_url}"\n'
                    f'key_env = "{pid.upper()}_KEY"\ndefault_model = "{pid}-1"\n'
                    f'[providers.{pid}.models."{pid}-1"]\ninput = 1.0\noutput = 2.0\n')
    cfg.write_text("\n".join(rows))
    # Every model answers "42 RANKING: A\n**Answer** 42": right for the first question, wrong for the second.
    server.default = Scenario(text="**Answer** 42. RANKING: A\nREVISED ANSWER: 42")
    qs = tmp_path / "qs.jsonl"
    qs.write_text('{"question": "6 times 7?", "answer": "42", "match": "numeric"}\n'
                  '{"question": "Capital of Peru?", "answer": "Lima", "match": "contains"}\n')
    env = {"PATH": "/usr/bin:/bin", "PARLEY_CONFIG": str(cfg), "PARLEY_DB": str(tmp_path / "p.db"),
           "ACME_KEY": "k-acme-0123456789", "BETA_KEY": "k-beta-0123456789", "HOME": str(tmp_path)}
    chart = tmp_path / "eval.png"
    p = parley(env, "eval", str(qs), "--modes", "ask,compare,consensus", "--options", "providers:acme,beta",
               "--json", "--chart", str(chart))
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    rows = {r["mode"]: r for r in report["modes"]}
    assert (rows["ask"]["n"], rows["ask"]["correct"]) == (2, 1)  # the panel's first member
    assert {r["mode"] for r in report["items"]} == {"ask", "compare", "consensus"}
    assert (rows["compare"]["n"], rows["compare"]["correct"]) == (4, 2)  # two answers per question
    assert (rows["consensus"]["n"], rows["consensus"]["correct"]) == (2, 1)
    assert rows["consensus"]["reviews"] == 4 and rows["consensus"]["ballot_rate"] == 1.0
    assert rows["compare"]["ci95"] == [round(x, 4) for x in evaluation.wilson(2, 4)]  # type: ignore[union-attr]
    assert rows["consensus"]["cost_usd"] > 0
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    p = parley(env, "eval", str(qs), "--modes", "consensus", "--options", "providers:acme,beta")
    assert p.returncode == 0 and "consensus" in p.stdout and "50%" in p.stdout


def test_eval_with_the_local_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the local model (llama-cpp-python) is not installed")
    env = {"PATH": "/usr/bin:/bin", "PARLEY_DB": str(tmp_path / "p.db"), "HOME": str(tmp_path)}
    p = parley(env, "eval", "--limit", "2", "--modes", "ask,consensus", "--json",
               "--options", "providers:local personas:riley,morgan max_tokens:120")
    assert p.returncode == 0, p.stderr
    rows = {r["mode"]: r for r in json.loads(p.stdout)["modes"]}
    assert rows["ask"]["n"] == 2 and rows["consensus"]["n"] == 2
    assert rows["consensus"]["reviews"] == 4 and rows["consensus"]["votes"] == 4  # grammar ballots


def test_consensus_grading_without_a_synthesis_takes_the_top_ranked_revision() -> None:
    from core.events import RankEntry, TurnInfo, TurnUsage

    def fin(stage: str, provider: str, text: str) -> evaluation.TurnFinished:
        info = TurnInfo("t", provider, provider, f"{provider}-1", stage=stage)
        return evaluation.TurnFinished(info, text, TurnUsage(), None, 0.0)

    finals = [fin("answer", "a", "7"), fin("answer", "b", "40"),
              fin("review", "b", "Critique: 7 is off by 35.\nRANKING: A\nREVISED ANSWER: It is 42")]
    done = evaluation.DiscussionFinished("d", "finished", [], None, ranking=[  # type: ignore[arg-type]
        RankEntry("assistant@b/b-1", "b", 2, 1, 1.0), RankEntry("assistant@a/a-1", "a", 1, 1, 2.0)])
    assert evaluation.graded_text("consensus", finals, done) == ["It is 42"]  # the revision, not the critique
    synth = [*finals, fin("synthesis", "a", "**Answer** 12\n**Agreement** 99")]
    assert evaluation.graded_text("consensus", synth, done)[0].strip() == "12"

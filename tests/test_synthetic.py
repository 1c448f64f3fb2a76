"""Tests of the synthetic arithmetic task and of problem loading (docs/design.md section 10, "Data")."""

from __future__ import annotations

import ast
import json
import operator
from pathlib import Path

import pytest

from dynamo_async.config.schema import SyntheticConfig
from dynamo_async.data import Problem, generate, load_problems, train_eval_split
from dynamo_async.rewards import MathVerifyScorer

AIME24 = Path("/work/shared/data/aime24.jsonl")
ALL_LEVELS = (1, 2, 3, 4, 5)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _value(node: ast.AST) -> int:
    """Independent evaluation of a problem's integer expression."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    assert isinstance(node, ast.BinOp) and type(node.op) in _OPS, ast.dump(node)
    return _OPS[type(node.op)](_value(node.left), _value(node.right))


def _expression(problem: Problem) -> str:
    assert problem.problem.startswith("What is ") and problem.problem.endswith("?")
    return problem.problem[len("What is ") : -1]


@pytest.fixture(scope="module")
def scorer():
    with MathVerifyScorer(num_workers=2) as s:
        yield s


def test_deterministic_for_a_seed():
    assert generate(60, ALL_LEVELS, 7) == generate(60, ALL_LEVELS, 7)
    assert generate(60, ALL_LEVELS, 7) != generate(60, ALL_LEVELS, 8)


def test_every_level_and_answers_exact():
    problems = generate(200, ALL_LEVELS, 0)
    assert len({p.id for p in problems}) == 200
    for level in ALL_LEVELS:
        of_level = [p for p in problems if p.level == level]
        assert len(of_level) == 40
        assert all(p.id.startswith(f"syn-L{level}-") for p in of_level)
    for p in problems:
        assert p.answer == str(_value(ast.parse(_expression(p), mode="eval").body))
        assert p.source == "synthetic"
    assert any(int(p.answer) < 0 for p in problems)
    assert generate(3, (2,), 0)[0].id == "syn-L2-000000"


def test_generate_user_errors():
    with pytest.raises(ValueError, match="expected one of"):
        generate(4, (6,), 0)
    with pytest.raises(ValueError, match="at least one"):
        generate(4, (), 0)
    with pytest.raises(ValueError, match=">= 0"):
        generate(-1, (1,), 0)


def test_gold_answers_verified_by_scorer(scorer):
    problems = [p for level in ALL_LEVELS for p in generate(4, (level,), level)]
    golds = [p.answer for p in problems]
    right = scorer.score([rf"so \boxed{{{a}}}" for a in golds], golds)
    off_by_one = scorer.score([rf"so \boxed{{{int(a) + 1}}}" for a in golds], golds)
    assert [r.acc for r in right] == [1] * len(problems)
    assert [r.acc for r in off_by_one] == [0] * len(problems)
    assert all(r.status == "ok" for r in right + off_by_one)


def test_train_eval_split_disjoint():
    cfg = SyntheticConfig(levels=(1, 2, 3), num_train=300, num_eval=40, seed=3)
    train, held_out = train_eval_split(cfg)
    assert len(train) == 300 and len(held_out) == 40
    assert not {p.problem for p in train} & {p.problem for p in held_out}
    assert not {p.id for p in train} & {p.id for p in held_out}
    assert {p.level for p in held_out} == {1, 2, 3}
    bigger = SyntheticConfig(levels=(1, 2, 3), num_train=500, num_eval=40, seed=3)
    assert train_eval_split(bigger)[1] == held_out  # the held-out set ignores num_train


def test_load_aime24_in_place():
    problems = load_problems(AIME24)
    assert len(problems) == 30
    first = problems[0]
    assert (first.id, first.answer, first.source, first.level) == ("60", "204", "aime24", 0)
    assert first.problem.startswith("Every morning Aya")


def _aime_rows(n: int) -> list[dict]:
    with AIME24.open() as f:
        return [json.loads(next(f)) for _ in range(n)]


def test_load_defaults_and_parquet(tmp_path):
    rows = [{"problem": r["problem"], "answer": r["answer"]} for r in _aime_rows(3)]
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = load_problems(path)
    assert [p.id for p in problems] == ["0", "1", "2"]
    assert {p.source for p in problems} == {"mini"}

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_aime_rows(3)), tmp_path / "mini.parquet")
    from_parquet = load_problems(tmp_path / "mini.parquet")
    assert [(p.id, p.answer, p.source) for p in from_parquet] == [
        (r["id"], r["answer"], "aime24") for r in _aime_rows(3)
    ]


def test_load_missing_answer(tmp_path):
    rows = _aime_rows(2)
    del rows[1]["answer"]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: missing field 'answer'"):
        load_problems(path)


def test_load_user_errors(tmp_path):
    with pytest.raises(ValueError, match="expected an existing file"):
        load_problems(tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.csv"
    bad.write_text("problem,answer\n")
    with pytest.raises(ValueError, match="expected '.jsonl' or '.parquet'"):
        load_problems(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "a", "problem": "q", "answer": "2"}\n')
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        load_problems(dup)

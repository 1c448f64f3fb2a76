"""User reward functions (``rewards.functions``, ``rewards.by_source``; docs/rewards.md): the
combination rule, the scorer processes running them with math-verify's limits, their failures
reported and counted, the config's checks, and the example for a non-math task."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import msgspec
import pytest

from dynamo_async.config import load_config
from dynamo_async.errors import UsageError
from dynamo_async.rewards import MathVerifyScorer
from dynamo_async.rewards.spec import RewardSpec, spec_from_config

ROOT = Path(__file__).resolve().parents[1]
FIX = str(ROOT / "tests" / "reward_fixtures.py")
EXAMPLE = ROOT / "examples" / "rewards"
WAIT_S = 30


def _fn(name: str) -> str:
    return f"{FIX}:{name}"


def _scorer(**spec) -> MathVerifyScorer:
    return MathVerifyScorer(num_workers=1, timeout_s=1.0, hard_timeout_s=10.0, spec=RewardSpec(**spec))


def _row(**fields) -> bytes:
    return msgspec.msgpack.encode(fields)


def _example():
    spec = importlib.util.spec_from_file_location("string_rewards", EXAMPLE / "string_rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_checks_strings_and_the_rows_aliases():
    ex = _example()
    row = {"aliases": ["Kiev"]}
    assert ex.exact_match("q", "I think so.\nAnswer: Kyiv", "Kyiv", row) == {"reward": 1.0, "acc": 1}
    assert ex.exact_match("q", "answer: KIEV.", "Kyiv", row)["acc"] == 1  # an alias; case and full stop
    assert ex.exact_match("q", "Answer: Brasília", "Brasilia", {})["acc"] == 1  # accents do not count
    assert ex.exact_match("q", "Answer: Lviv", "Kyiv", row) == {"reward": 0.0, "acc": 0}
    assert ex.exact_match("q", "Kyiv", "Kyiv", row)["acc"] == 0  # no Answer: line
    assert ex.answer_line_format("q", "Paris is it.\nAnswer: Paris", "", {}) == 1.0
    assert ex.answer_line_format("q", "Answer: Paris\nAnswer: Lyon", "", {}) == 0.0  # two answer lines
    assert ex.answer_line_format("q", "Answer: Paris\nmore text", "", {}) == 0.0  # not the last line


def test_a_function_gets_problem_response_answer_and_row_and_its_values_are_summed():
    with _scorer(
        functions=("math_verify", _fn("length_and_yes")),
        weights={_fn("length_and_yes"): 2.0},
        correctness="pm1",
    ) as s:
        right = s.submit(r"yes \boxed{4}", "4").result(WAIT_S)
        wrong = s.submit(r"no \boxed{5}", "4").result(WAIT_S)
        no_yes = s.submit(r"\boxed{4}", "4").result(WAIT_S)
    assert right.reward == pytest.approx(1.0 + 2.0 * len(r"yes \boxed{4}") / 10)
    assert (right.acc, right.status) == (1, "ok")
    assert wrong.reward == pytest.approx(-1.0 + 2.0 * len(r"no \boxed{5}") / 10) and wrong.acc == 0
    assert no_yes.acc == 0 and no_yes.status == "ok"  # math-verify says 1, the function's acc 0: all must be 1


def test_rows_of_a_listed_source_use_its_functions():
    with _scorer(functions=("math_verify",), by_source={"bonus": (_fn("row_bonus"),)}, success="reward") as s:
        row = _row(problem="What is 2 + 2?", answer="4", bonus=0.75)
        listed = s.submit("no answer here", "4", "What is 2 + 2?", "bonus", row).result(WAIT_S)
        other = s.submit(r"\boxed{4}", "4", "What is 2 + 2?", "sums", row).result(WAIT_S)
    assert (listed.reward, listed.acc, listed.status) == (0.75, 1, "ok")  # 0.75 >= success_threshold 0.5
    assert (other.reward, other.acc) == (1.0, 1)  # math-verify alone, reward = acc


def test_success_from_the_reward_uses_the_threshold():
    with _scorer(functions=(_fn("half"),), success="reward", success_threshold=0.6) as s:
        got = s.submit("anything", "x").result(WAIT_S)
    assert (got.reward, got.acc, got.status) == (0.5, 0, "ok")


@pytest.mark.parametrize(
    ("name", "status", "detail"),
    [
        ("raises", "error", "raised KeyError: 'no such field'"),
        ("returns_text", "error", "returned '1' (str), expected a float"),
        ("bad_acc", "error", "returned acc=2"),
        ("sleeps", "timeout", "ran past rewards.timeout_s=1.0"),
    ],
)
def test_a_failing_function_scores_no_success_and_is_reported_once(name, status, detail, capfd):
    with _scorer(functions=("math_verify", _fn(name))) as s:
        first = s.submit(r"\boxed{4}", "4").result(WAIT_S)
        second = s.submit(r"\boxed{4}", "4").result(WAIT_S)
        after = s.stats()
    assert first == second
    assert (first.acc, first.status) == (0, status) and detail in first.detail
    assert first.reward == 1.0  # math-verify's part still counts; the failed function's is 0
    assert after["errors" if status == "error" else "timeouts"] == 2 and after["workers_replaced"] == 0
    err = capfd.readouterr().err
    assert err.count(detail) == 1, err  # printed the first time only


def test_success_from_acc_needs_a_function_that_reports_it():
    with _scorer(functions=(_fn("half"),)) as s:
        got = s.submit("anything", "x").result(WAIT_S)
    assert (got.acc, got.status, got.reward) == (0, "error", 0.5)
    assert "no reward function reported 'acc'" in got.detail and "rewards.success: reward" in got.detail


def test_a_module_function_is_imported_from_the_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text("def const(problem, response, answer, fields):\n    return 0.25\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with _scorer(functions=("my_rewards_mod:const",), success="reward", success_threshold=0.2) as s:
        assert s.submit("r", "a").result(WAIT_S).reward == 0.25


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no_such_module_x:fn", "got no module 'no_such_module_x' on the path"),
        ("missing/file.py:fn", "got no file"),
        (f"{FIX}:no_such_function", "got no callable 'no_such_function'"),
    ],
)
def test_a_function_that_cannot_be_found_fails_at_start_in_one_line(entry, message):
    with pytest.raises(UsageError, match=message):
        _scorer(functions=(entry,))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rewards.functions=[exact_match]", "expected 'math_verify', 'module:function'"),
        ("rewards.functions=[]", "expected"),
        ("rewards.functions=[math_verify, math_verify]", "expected each function once"),
        ("rewards.weights={other: 2.0}", "got weights for \\['other'\\]"),
    ],
)
def test_config_rejects_malformed_reward_entries(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["model.name=x", override])


def test_the_spec_carries_the_config_and_math_verifys_reward_mode():
    cfg = load_config(EXAMPLE / "capitals.yaml", ["advantage.reward=acc"])
    spec = spec_from_config(cfg)
    fmt = "examples/rewards/string_rewards.py:answer_line_format"
    assert spec.functions == ("examples/rewards/string_rewards.py:exact_match", fmt)
    assert spec.weight(fmt) == 0.2 and spec.correctness == "acc" and spec.success == "acc"
    assert hash(cfg) == hash(load_config(EXAMPLE / "capitals.yaml", ["advantage.reward=acc"]))
    pm1 = RewardSpec(functions=("math_verify", fmt), weights={"math_verify": 3.0}, correctness="pm1")
    assert pm1.failure_reward("any") == -3.0  # a killed scorer: math-verify's wrong answer, 0 from the rest


def test_the_example_scores_through_the_pool_beside_math_verify(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example's entries are paths from the repository root
    cfg = load_config(EXAMPLE / "capitals.yaml")
    with MathVerifyScorer.for_run(cfg) as s:
        right = s.submit("It is Kyiv.\nAnswer: Kiev", "Kyiv", "q", "capitals", _row(aliases=["Kiev"])).result(WAIT_S)
        rambling = s.submit("Answer: Lviv\nAnswer: Kyiv and more words here", "Kyiv", "q", "capitals", _row())
        rambling = rambling.result(WAIT_S)
    assert (right.reward, right.acc, right.status) == (pytest.approx(1.2), 1, "ok")
    assert (rambling.reward, rambling.acc) == (0.0, 0)  # last Answer: line "Kyiv and more words here"


def test_rows_keep_their_fields_for_the_functions(tmp_path):
    from dynamo_async.data.problems import load_problems

    problems = load_problems(EXAMPLE / "capitals_train.jsonl")
    kyiv = next(p for p in problems if p.answer == "Kyiv")
    row = msgspec.msgpack.decode(kyiv.fields)
    assert row["aliases"] == ["Kiev"] and row["problem"] == kyiv.problem and kyiv.source == "capitals"


def test_a_run_trains_on_the_functions_rewards_per_source(tmp_path):
    """``dynamo-async run`` of the tiny config on a JSONL of two sources: rows of "scaled" are
    scored by ``parity`` alone, the rest by math-verify plus ``parity``. Every trained sample's
    stored reward and success are recomputed from its stored response and its row."""
    import json
    import subprocess

    import yaml

    from buffer.store import read_table
    from dynamo_async.models.loader import load_tokenizer
    from dynamo_async.rewards.worker import score_response

    rows = []
    for i in range(16):
        a, b = i % 4 + 1, i // 4 + 1
        source = "scaled" if i % 2 else "sums"
        rows.append({"id": f"r{i}", "problem": f"{a}+{b}=", "answer": str(a + b), "source": source, "bonus": i / 8})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["data"] = {**cfg["data"], "train": str(train), "eval": [str(train)]}
    cfg["data"].pop("synthetic", None)
    cfg["rewards"] = {
        "num_workers": 1,
        "functions": ["math_verify", _fn("parity")],
        "by_source": {"scaled": [_fn("parity")]},
    }
    cfg["trainer"] = {**cfg["trainer"], "total_steps": 2, "eval_samples": 0}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "dynamo_async.cli", "run", "--config", str(config), "--run-dir", str(run_dir)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = read_table(run_dir, "batches", ["prompt_id", "token_ids", "reward", "acc"]).to_pylist()
    tokenizer = load_tokenizer(cfg["model"]["name"])
    for t in trained:  # as the worker decoded it for the scorer
        t["response"] = tokenizer.decode(list(t["token_ids"]), skip_special_tokens=True)
    by_id = {r["id"]: r for r in rows}
    assert len(trained) >= 8 and {by_id[t["prompt_id"]]["source"] for t in trained} == {"scaled", "sums"}
    for t in trained:
        row = by_id[t["prompt_id"]]
        part = row["bonus"] + len(t["response"]) % 3
        if row["source"] == "scaled":
            assert t["reward"] == pytest.approx(part) and t["acc"] == len(t["response"]) % 2
        else:
            math = score_response(t["response"], row["answer"], 5.0, 50_000)
            assert t["reward"] == pytest.approx(2 * math.acc - 1 + part)  # tiny.yaml: advantage.reward pm1
            assert t["acc"] == (math.acc and len(t["response"]) % 2)

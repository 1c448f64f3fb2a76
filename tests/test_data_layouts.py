"""Training data as its users have it: verl's RL layout, DAPO's template, repeated rows, mapped fields."""

from __future__ import annotations

import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DAPO, DAPO_COPIES, DAPO_ROWS, verl_rows

from dynamo_async.config import load_config
from dynamo_async.data import templates
from dynamo_async.data.dedup import dedup_problems
from dynamo_async.data.problems import Problem, ReadOptions, load_problems
from dynamo_async.data.prompts import load_training_set, prompt_ids

needs_dapo = pytest.mark.skipif(not DAPO.exists(), reason="needs ../shared/data/dapo_math_17k.jsonl")


def _dapo_rows() -> list[dict]:
    with DAPO.open() as f:
        return [json.loads(line) for line in f]


def _cfg(train, *extra: str):
    return load_config(None, ["model.name=builtin:tiny", f"data.train={train}", *extra])


@needs_dapo
def test_verl_layout_with_repeated_rows_dedups_to_the_distinct_prompts(verl_dapo_parquet):
    problems, report = load_training_set(_cfg(verl_dapo_parquet, "data.strip_template=dapo").data)
    # 40 first rows + row 179, each 3 times; rows 35 and 179 share a text with answers 64 and 6.
    assert report.rows == (DAPO_ROWS + 1) * DAPO_COPIES
    assert (report.conflicting_texts, report.conflicting_rows) == (1, 2 * DAPO_COPIES)
    assert report.prompts == DAPO_ROWS - 1 == len(problems)
    assert report.merged_copies == report.rows - report.conflicting_rows - report.prompts
    source = {r["id"]: r for r in _dapo_rows()[:DAPO_ROWS]}
    by_id = {p.id: p for p in problems}
    assert "dapo-35" not in by_id and "dapo-179" not in by_id
    for i, row in source.items():
        if i == "35":
            continue
        p = by_id[f"dapo-{i}"]  # extra_info.index is the id; reward_model.ground_truth the answer
        assert (p.problem, p.answer, p.source) == (row["problem"], row["answer"], "math_dapo")


@needs_dapo
def test_verl_layout_keeps_the_template_unless_told_to_strip_it(verl_dapo_parquet):
    problems, _ = load_training_set(_cfg(verl_dapo_parquet).data)
    first = _dapo_rows()[0]
    kept = next(p for p in problems if p.id == "dapo-0")
    assert kept.problem == templates.apply("dapo", first["problem"])
    assert kept.problem.startswith("Solve the following math problem step by step.")


@needs_dapo
def test_dedup_off_refuses_repeated_ids_with_what_to_do(verl_dapo_parquet):
    with pytest.raises(ValueError, match="duplicate id 'dapo-0'.*data.dedup: true"):
        load_training_set(_cfg(verl_dapo_parquet, "data.dedup=false").data)


@needs_dapo
def test_the_whole_dapo_file_dedups_by_problem_text():
    """Measured on the 17,917 distinct prompts of DAPO-Math-17k: 628 problem texts repeat
    (601 twice, 20 three times, 7 four times), 12 of them with disagreeing answers."""
    problems, report = load_training_set(_cfg(DAPO).data)
    assert report.rows == 17_917 and report.conflicting_texts == 12
    assert report.prompts == 17_255 - 12 == len(problems)
    answers = {p.problem: p.answer for p in problems}
    assert "Determine the greatest power of $2$ that is a factor of $3^{15} + 3^{11} + 3^{6} + 1$." not in answers


def test_dedup_merges_identical_copies_and_drops_disagreeing_ones():
    rows = [
        Problem("a", "1+1", "2", "s"),
        Problem("b", "2+2", "4", "s"),
        Problem("c", "1+1", "2", "s"),
        Problem("d", "3+3", "6", "s"),
        Problem("e", " 3+3 ", "7", "s"),
    ]
    kept, report = dedup_problems((f"row {i}", p) for i, p in enumerate(rows))
    assert [(where, p.id) for where, p in kept] == [("row 0", "a"), ("row 1", "b")]
    assert (report.rows, report.prompts, report.merged_copies, report.conflicting_texts, report.conflicting_rows) == (
        5,
        2,
        1,
        1,
        2,
    )


def test_template_strip_undoes_apply_and_knows_the_boxed_variant():
    problem = "Find $x$ if $x^2 = 4$ and $x > 0$.\n\nGive $x$."
    assert templates.strip("dapo", templates.apply("dapo", problem)) == problem
    slime = templates.DAPO.replace("Answer: $Answer (without quotes)", "Answer: \\boxed{$Answer}")
    assert templates.strip("dapo", slime.replace("{problem}", problem)) == problem
    assert templates.strip("dapo", problem) == problem
    with pytest.raises(ValueError, match="expected a text with '\\{problem\\}'"):
        load_config(None, ["model.name=x", "data.user_template=Solve it."])


class _RecordingTokenizer:
    """Keeps the chat messages it is asked to render."""

    def __init__(self):
        self.messages = None

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        self.messages = messages
        return "\n".join(m["content"] for m in messages)

    def encode(self, text, add_special_tokens):
        return [ord(c) for c in text]


def test_user_template_wraps_training_and_held_out_prompts():
    cfg = _cfg(
        "synthetic",
        "data.user_template=dapo",
        "data.system_prompt=",
        "rewards.answer_format=answer_line",
        "data.few_shot=[{problem: 'What is 1 + 1?', answer: '2'}]",
        "data.max_prompt_tokens=100000",
    )
    tok = _RecordingTokenizer()
    ids = prompt_ids(tok, "What is 2 + 3?", cfg)
    assert [m["role"] for m in tok.messages] == ["user", "assistant", "user"]  # no system prompt
    assert tok.messages[0]["content"] == templates.apply("dapo", "What is 1 + 1?")
    assert tok.messages[1]["content"] == "Answer: 2"  # the worked example answers in the reward's form
    assert tok.messages[2]["content"] == templates.apply("dapo", "What is 2 + 3?")
    assert tok.messages[2]["content"].endswith(
        'What is 2 + 3?\n\nRemember to put your answer on its own line after "Answer:".'
    )
    assert len(ids) == sum(len(m["content"]) for m in tok.messages) + 2
    boxed = _cfg("synthetic", "data.few_shot=[{problem: 'What is 1 + 1?', answer: '2'}]")
    prompt_ids(tok, "What is 2 + 3?", boxed)
    assert tok.messages[0]["role"] == "system" and tok.messages[2]["content"] == "\\boxed{2}"
    assert tok.messages[-1]["content"] == "What is 2 + 3?"


def test_mapped_fields_with_dotted_paths(tmp_path):
    rows = [
        {"question": "What is 6 * 7?", "meta": {"gold": 42}, "uid": "q1"},
        {"question": "What is 2 + 2?", "meta": {"gold": "4"}, "uid": "q2"},
    ]
    path = tmp_path / "custom.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(path, "data.problem_field=question", "data.answer_field=meta.gold", "data.id_field=uid")
    problems, _ = load_training_set(cfg.data)
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        ("q1", "What is 6 * 7?", "42"),
        ("q2", "What is 2 + 2?", "4"),
    ]


def test_one_mapped_field_with_the_layouts_other_field(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "What is 1 + 2?", "answer": "3"}) + "\n")
    problems, _ = load_training_set(_cfg(path, "data.problem_field=question").data)
    assert [(p.problem, p.answer) for p in problems] == [("What is 1 + 2?", "3")]


def test_distinct_problems_sharing_an_id_after_dedup_say_so(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text(
        json.dumps({"id": "x", "problem": "p", "answer": "1"})
        + "\n"
        + json.dumps({"id": "x", "problem": "q", "answer": "2"})
        + "\n"
    )
    with pytest.raises(
        ValueError,
        match=r"ids\.jsonl, line 2: got duplicate id 'x' \(first at .*line 1\).*"
        "two different problems share this id",
    ):
        load_training_set(_cfg(path).data)


def test_rows_matching_no_layout_name_their_fields_and_the_options(tmp_path):
    path = tmp_path / "odd.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "1+1", "solution": "2"}]), path)
    with pytest.raises(ValueError) as err:
        load_training_set(_cfg(path).data)
    for words in ("['question', 'solution']", "data.problem_field", "data.answer_field", "reward_model.ground_truth"):
        assert words in str(err.value)


def test_chat_prompt_without_a_user_turn_is_a_clear_error(tmp_path):
    path = tmp_path / "sys.jsonl"
    path.write_text(
        json.dumps({"prompt": [{"role": "system", "content": "hi"}], "reward_model": {"ground_truth": "1"}}) + "\n"
    )
    with pytest.raises(ValueError, match="expected a 'user' message"):
        load_problems(path)


def test_unreachable_hub_dataset_says_how_to_pass_a_local_copy(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError("Couldn't reach 'BytedTsinghua-SIA/DAPO-Math-17k' on the Hub (LocalEntryNotFoundError)")

    fake = types.SimpleNamespace(load_dataset=load_dataset, get_dataset_split_names=lambda name: ["train"])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    cfg = load_config("configs/qwen2.5-math-1.5b.yaml")
    with pytest.raises(ValueError) as err:
        load_training_set(cfg.data)
    assert "could not be reached" in str(err.value) and "data.train=DIR/FILE.parquet" in str(err.value)
    assert "huggingface-cli download BytedTsinghua-SIA/DAPO-Math-17k" in str(err.value)


def test_hub_rows_in_verl_layout_load_like_a_local_file(monkeypatch):
    rows = verl_rows(copies=2)[:6] if DAPO.exists() else []
    if not rows:
        pytest.skip("needs ../shared/data/dapo_math_17k.jsonl")
    fake = types.SimpleNamespace(load_dataset=lambda name, split: rows, get_dataset_split_names=lambda name: ["train"])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    problems, report = load_training_set(_cfg("BytedTsinghua-SIA/DAPO-Math-17k", "data.strip_template=dapo").data)
    assert report.rows == 6 and problems[0].problem == _dapo_rows()[0]["problem"]


def test_eval_sets_are_read_with_the_runs_template_stripping(tmp_path):
    from dynamo_async.data.prompts import eval_problems

    path = tmp_path / "aime-templated.jsonl"
    path.write_text(json.dumps({"problem": templates.apply("dapo", "What is 1 + 1?"), "answer": "2"}) + "\n")
    cfg = _cfg("synthetic", f"data.eval=[{path}]", "data.strip_template=dapo")
    assert eval_problems(cfg.data)["aime-templated"][0].problem == "What is 1 + 1?"
    assert load_problems(path, ReadOptions())[0].problem.startswith("Solve the following")


def test_missing_hub_dataset_says_to_check_the_name_or_pass_a_file(monkeypatch):
    class DatasetNotFoundError(FileNotFoundError):
        pass

    def load_dataset(name, split):
        raise DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")

    fake = types.SimpleNamespace(
        load_dataset=load_dataset,
        get_dataset_split_names=lambda name: ["train"],
        exceptions=types.SimpleNamespace(DatasetNotFoundError=DatasetNotFoundError),
    )
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(ValueError) as err:
        load_training_set(_cfg("someone/no-such-set").data)
    assert "neither a local file nor a Hugging Face dataset" in str(err.value)
    assert "check the name" in str(err.value) and "data.train=DIR/FILE.parquet" in str(err.value)

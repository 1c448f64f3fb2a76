"""Decoded samples per learner step (metrics.log_samples): the deterministic pick, the store's
samples table (kept across a resume as one history), replay --samples, and the logging to
TensorBoard (text) and W&B (a table) with the real packages, W&B offline."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from buffer.history import supersede
from buffer.replay import replay_main
from buffer.store import RunStore, read_table
from buffer.tables import SAMPLES_SCHEMA
from dynamo_async.config import load_config
from dynamo_async.config.schema import MetricsConfig
from dynamo_async.learner.metrics import MetricsLog
from dynamo_async.learner.samples import markdown, pick, sample_rows
from dynamo_async.learner.sinks import TensorBoardSink, WandbSink, make_sinks

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

# group id -> rewards of its samples (by sample index)
REWARDS = {10: [0.0, 1.0, 0.5], 11: [1.0, -1.0, 0.0, 1.0], 12: [0.2, 0.9]}


def _batch(step: int = 3, rewards: dict = REWARDS) -> LearnerBatch:
    groups = []
    for g, rs in rewards.items():
        samples = tuple(
            sample_record(
                g, f"p{g}", i, np.array([65 + i, 66], np.int32), np.zeros(2), np.zeros(2), reward=r, acc=int(r > 0.5)
            )
            for i, r in enumerate(rs)
        )
        groups.append(ReadyGroup(g, f"p{g}", np.array([72, 105], np.int32), str(g), samples))
    return LearnerBatch(step=step, policy_version=step - 1, groups=tuple(groups), staleness=(0,) * len(groups))


def _decode(ids: np.ndarray) -> str:
    return "".join(chr(int(i)) for i in ids)


def test_the_pick_takes_best_and_worst_of_the_first_groups_in_turn():
    got = [(g.group_id, s.sample_index) for g, s in pick(_batch(), 4)]
    # group 10 its best (index 1), group 11 its worst (index 1), group 12 its best (index 1),
    # then a second round: group 10 its worst (index 0)
    assert got == [(10, 1), (11, 1), (12, 1), (10, 0)]
    assert [(g.group_id, s.sample_index) for g, s in pick(_batch(), 2)] == [(10, 1), (11, 1)]
    assert pick(_batch(), 0) == []
    assert len(pick(_batch(), 100)) == sum(len(r) for r in REWARDS.values())  # every sample, once
    again = [(g.group_id, s.sample_index) for g, s in pick(_batch(), 100)]
    assert len(set(again)) == len(again) and again == [(g.group_id, s.sample_index) for g, s in pick(_batch(), 100)]


def test_sample_rows_hold_the_decoded_texts_and_the_groups_figures():
    rows = sample_rows(_batch(), 2, _decode)
    assert rows[0] == {
        "step": 3,
        "policy_version": 2,
        "prompt_id": "p10",
        "group_id": 10,
        "sample_index": 1,
        "rollouts": 3,
        "reward": 1.0,
        "acc": 1,
        "finish_reason": "stop",
        "num_tokens": 2,
        "prompt": "Hi",
        "response": "BB",
        "answer": "10",
    }
    assert rows[1]["prompt_id"] == "p11" and rows[1]["reward"] == -1.0 and rows[1]["rollouts"] == 4
    assert sorted(rows[0]) == sorted(SAMPLES_SCHEMA.names)


def test_the_learner_keeps_its_steps_samples_in_the_store(tmp_path):
    """Learner.keep_samples decodes with the model's tokenizer (special tokens left out) and
    writes the rows to the store at once."""
    from dynamo_async.learner.loop import Learner
    from dynamo_async.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "1+2="}], add_generation_prompt=True, tokenize=False)
    prompt = np.array(tok.encode(text, add_special_tokens=False))
    response = np.array(tok.encode("3", add_special_tokens=False) + [tok.eos_token_id], np.int32)
    samples = tuple(
        sample_record(0, "p0", i, response, np.zeros(len(response)), np.zeros(len(response)), reward=float(i))
        for i in range(2)
    )
    batch = LearnerBatch(step=5, policy_version=4, groups=(ReadyGroup(0, "p0", prompt.astype(np.int32), "3", samples),))
    with RunStore(tmp_path, 1 << 20, 16) as store:
        learner = types.SimpleNamespace(
            cfg=load_config(TINY, ["metrics.log_samples=1"]), trainer=types.SimpleNamespace(tokenizer=tok), store=store
        )
        (row,) = Learner.keep_samples(learner, batch)
        more = Learner.keep_samples(types.SimpleNamespace(**{**vars(learner), "cfg": load_config(TINY)}), _batch(6))
    assert row["response"] == "3" and row["prompt"] == "user\n1+2=\nassistant\n" and row["sample_index"] == 1
    assert len(more) == 4  # the default, metrics.log_samples = 4
    table = read_table(tmp_path, "samples")
    assert table["step"].to_pylist() == [5, 6, 6, 6, 6] and table["response"][0].as_py() == "3"


def test_log_samples_zero_writes_no_samples_table(tmp_path):
    with RunStore(tmp_path, 1 << 20, 16) as store:
        store.append_samples(sample_rows(_batch(), 0, _decode))
        assert "samples" not in store.checkpoint_rows()
    assert not (tmp_path / "store" / "samples").exists()
    assert read_table(tmp_path, "samples").num_rows == 0
    assert "samples" not in RunStore(tmp_path, 1 << 20, 16).base_rows


def test_a_resume_supersedes_the_samples_written_after_the_checkpoint(tmp_path):
    with RunStore(tmp_path, 1 << 20, 16) as store:
        store.append_samples(sample_rows(_batch(1), 2, _decode))
        kept = store.checkpoint_rows()
        store.append_samples(sample_rows(_batch(2), 2, _decode))  # the killed run's step 2
    assert kept["samples"] == 2
    resumed = RunStore(tmp_path, 1 << 20, 16)
    assert resumed.base_rows["samples"] == 4
    assert supersede(tmp_path, 1, kept, resumed.base_rows)["samples"] == (2, 4)
    resumed.append_samples(sample_rows(_batch(2), 3, _decode))  # step 2 again
    resumed.close()
    assert read_table(tmp_path, "samples")["step"].to_pylist() == [1, 1, 2, 2, 2]


def test_replay_prints_the_samples_and_exports_them(tmp_path, capsys):
    with RunStore(tmp_path, 1 << 20, 16) as store:
        for step in (1, 2):
            store.append_samples(sample_rows(_batch(step), 2, _decode))
    assert replay_main([str(tmp_path), "--samples", "--step", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== step 2  prompt") == 2 and "=== step 1" not in out
    assert "prompt p10 (group 10, sample 1)  rollouts 3  reward 1  acc 1  2 tokens (stop)  answer 10" in out
    assert "--- prompt\nHi\n--- response\nBB\n" in out
    assert replay_main([str(tmp_path), "--samples", "--prompt", "p11"]) == 0
    assert capsys.readouterr().out.count("prompt p11") == 2
    path = tmp_path / "samples.jsonl"
    assert replay_main([str(tmp_path), "--export", str(path), "--table", "samples", "--step", "1"]) == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["p10", "p11"] and rows[0]["response"] == "BB"
    with pytest.raises(ValueError, match="got --samples with --export/--table"):
        replay_main([str(tmp_path), "--samples", "--export", str(path)])


def test_replay_samples_of_a_run_without_them_says_so(tmp_path, capsys):
    RunStore(tmp_path, 1 << 20, 16).close()
    assert replay_main([str(tmp_path), "--samples"]) == 0
    assert capsys.readouterr().out.startswith("no samples (the learner keeps metrics.log_samples per step")


def test_markdown_keeps_each_text_verbatim_in_a_code_block():
    rows = sample_rows(_batch(), 1, lambda ids: "a | b\n**not bold**")
    text = markdown(rows)
    assert text.startswith("**step 3** · prompt `p10` · rollouts 3 · reward 1 · acc 1")
    assert "prompt:\n\n    a | b\n    **not bold**" in text and "response:\n\n    a | b" in text


def test_tensorboard_gets_the_samples_as_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (sink,) = [s for s in make_sinks(MetricsConfig(tensorboard=True), tmp_path, {}) if isinstance(s, TensorBoardSink)]
    rows = sample_rows(_batch(), 2, _decode)
    sink.write_samples(rows)
    sink.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    (event,) = events.Tensors("samples/text_summary")
    assert event.step == 3
    assert event.tensor_proto.string_val[0].decode() == markdown(rows)


def test_metrics_log_hands_the_samples_to_the_sinks_and_skips_an_empty_step(tmp_path):
    class Recorder:
        def __init__(self):
            self.samples = []

        def write_samples(self, rows):
            self.samples.append(rows)

        def close(self):
            pass

    sink = Recorder()
    log = MetricsLog(tmp_path, 5, show=False, sinks=[sink])
    log.write_samples([])
    rows = sample_rows(_batch(), 2, _decode)
    log.write_samples(rows)
    log.close()
    assert sink.samples == [rows]


def test_wandb_gets_a_table_of_the_samples(tmp_path, monkeypatch):
    calls: list = []

    class Run:
        def log(self, data, step=None):
            calls.append((data, step))

    fake = types.SimpleNamespace(init=lambda **kw: Run(), Table=lambda columns, data: ("table", columns, data))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = WandbSink(MetricsConfig(wandb=True, wandb_mode="offline"), tmp_path, {})
    sink.write_samples(sample_rows(_batch(), 2, _decode))
    ((data, step),) = calls
    _, columns, rows = data["samples"]
    assert step == 3 and columns[:7] == ["step", "prompt_id", "rollouts", "reward", "acc", "prompt", "response"]
    assert sorted(columns) == sorted(SAMPLES_SCHEMA.names)
    assert rows[0][:7] == [3, "p10", 3, 1.0, 1, "Hi", "BB"] and len(rows) == 2


def test_wandb_offline_with_the_real_package_writes_the_samples_table(tmp_path):
    import wandb

    sinks = make_sinks(MetricsConfig(wandb=True, wandb_mode="offline"), tmp_path, {})
    sinks[-1].write({"step": 3, "accuracy": 0.5})
    sinks[-1].write_samples(sample_rows(_batch(), 2, _decode))
    for sink in sinks:
        sink.close()
    wandb.teardown()  # stops the W&B service process this test started
    (table,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/samples_3_*.table.json")
    saved = json.loads(table.read_text())
    assert saved["columns"][:7] == ["step", "prompt_id", "rollouts", "reward", "acc", "prompt", "response"]
    assert [row[:7] for row in saved["data"]] == [[3, "p10", 3, 1.0, 1, "Hi", "BB"], [3, "p11", 4, -1.0, 0, "Hi", "BB"]]

"""The run directory's lifecycle: what a new run, a resume and a pruned checkpoint folder see."""

import json

import pytest

from dynamo_async.errors import UsageError
from dynamo_async.learner.checkpoint import prune_checkpoints
from dynamo_async.learner.main import check_run_dir, write_ready_file


def _checkpoint(run_dir, step: int) -> None:
    (run_dir / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text(f"step-{step:06d}")


def test_a_failed_start_without_checkpoint_says_to_delete_the_directory(tmp_path):
    (tmp_path / "store").mkdir()  # what a learner that failed after opening its store leaves
    with pytest.raises(UsageError, match=r"no checkpoint to resume from.*rm -r"):
        check_run_dir(tmp_path, resume=False)
    with pytest.raises(UsageError, match=r"--resume: got run directory .* without a checkpoint.*rm -r"):
        check_run_dir(tmp_path, resume=True)


def test_an_earlier_run_with_a_checkpoint_says_resume_or_delete(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    _checkpoint(tmp_path, 4)
    with pytest.raises(UsageError, match=r"add --resume to continue it from step-000004, or delete it"):
        check_run_dir(tmp_path, resume=False)
    check_run_dir(tmp_path, resume=True)  # accepted
    check_run_dir(tmp_path / "fresh", resume=False)  # a new directory is accepted


def test_prune_keeps_the_newest_checkpoints_and_removes_interrupted_saves(tmp_path):
    for step in (2, 4, 6, 8):
        _checkpoint(tmp_path, step)
    (tmp_path / "checkpoints" / ".tmp-step-000009").mkdir()
    gone = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in gone) == [".tmp-step-000009", "step-000002", "step-000004"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000006", "step-000008"]
    assert prune_checkpoints(tmp_path, keep=0) == []  # 0 keeps all


def test_ready_file_is_written_whole_under_its_name(tmp_path):
    path = tmp_path / "learner.json"
    write_ready_file(path, {"host": "127.0.0.1", "work": 5555})
    assert json.loads(path.read_text()) == {"host": "127.0.0.1", "work": 5555}
    assert [p.name for p in tmp_path.iterdir()] == ["learner.json"]  # no temporary left beside it

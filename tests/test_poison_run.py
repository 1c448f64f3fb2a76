"""Poisonous values in real groups of a live run: a fake worker leases real work and sends each
bad value of docs/design.md section 6; every one is rejected and counted, its samples are
generated again by the real worker, and the run finishes with finite weights."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from sample_records import sample_record

from buffer.client import BufferClient, query_status
from dynamo_async.protocol import Completion, WorkGrant

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]
BAD = {  # reason -> the record's fields
    "nonfinite_logprobs": dict(logprobs=[-0.5, math.nan, -0.1]),
    "token_out_of_vocab": dict(tokens=[3, 10**6, 5]),
    "bad_version": dict(versions=[10**6] * 3),
}


def _poison(client: BufferClient, version: int) -> int:
    """Lease work as a worker would and answer every sample with one of the bad values."""
    sent = 0
    deadline = time.monotonic() + 60
    while sent < 3 * len(BAD) and time.monotonic() < deadline:
        grant = client.request_work(4, version)
        if not isinstance(grant, WorkGrant):
            time.sleep(0.2)
            continue
        for item in grant.items:
            for index in item.sample_indices:
                fields = dict(tokens=[3, 4, 5], logprobs=[-0.5, -0.1, -0.2], versions=[version] * 3)
                fields.update(list(BAD.values())[sent % len(BAD)])
                record = sample_record(item.group_id, item.prompt_id, index, **fields, worker_id=client.worker_id)
                client.send(Completion(lease_id=item.lease_id, sample=record))
                sent += 1
    return sent


def test_bad_values_in_a_live_run_are_rejected_and_the_run_finishes_with_finite_weights(tmp_path):
    run_dir, ready = tmp_path / "run", tmp_path / "ready.json"
    learner = subprocess.Popen(
        CLI + ["learner", "--config", str(TINY), "--run-dir", str(run_dir), "--port", "0", "--ready-file", str(ready)]
        + ["trainer.total_steps=4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    workers = None
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert learner.poll() is None and time.monotonic() < deadline, "the learner did not start"
            time.sleep(0.1)
        where = json.loads(ready.read_text())
        fake = BufferClient("127.0.0.1", where["work"], None, "poisoner", timeout_s=10, connect_timeout_s=30)
        welcome = fake.hello("fake", 4)
        sent = _poison(fake, welcome.policy_version)
        assert sent >= 3 * len(BAD)
        status = query_status("127.0.0.1", where["status"])
        for reason in BAD:
            assert status.rejected.get(reason, 0) >= 3, status.rejected
        fake.close()
        workers = subprocess.Popen(CLI + ["workers", "--connect", f"127.0.0.1:{where['work']}"])
        out, _ = learner.communicate(timeout=240)
        assert learner.returncode == 0, out[-3000:]
        assert workers.wait(timeout=60) == 0
    finally:
        for proc in (learner, workers):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in rows)
    weights = load_file(str(run_dir / "checkpoints" / "step-000004" / "model" / "model.safetensors"))
    assert all(bool(np.isfinite(t.numpy()).all()) for t in weights.values())

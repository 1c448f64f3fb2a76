"""A whole ``dynamo-async run`` on the real vLLM (CPU build): synchronous (``buffer.max_staleness=0``),
so the behaviour log-probs vLLM reports must equal the learner's proximal ones at every step
(``kl_behavior_proximal`` at the float32 floor) while the weights move far enough that frozen
weights would show it; and its engine is killed, then hung, mid-run: each time the worker
notices, hands its leases back, restarts the engine and the run finishes with every trained
group whole (no sample lost or counted twice).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from store_checks import assert_groups_complete

from buffer.replay import iter_batches
from dynamo_async.algo.logprobs import token_stats
from dynamo_async.models import load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]
STEPS = 6
FLOOR = 1e-9  # kl_behavior_proximal when vLLM and the learner agree (float32): about 1e-14 seen


def _steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if not r.get("eval")]


def _engine_core(run: psutil.Process) -> psutil.Process | None:
    """vLLM's engine process among the run's descendants (the newest, after a restart)."""
    found = [
        p for p in run.children(recursive=True) if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
    ]
    return max(found, key=lambda p: p.create_time(), default=None)


def _fault_at(run_dir: Path, run: psutil.Process, step: int, sig: int, done: list) -> None:
    """Once ``step`` is logged, send ``sig`` to the engine process in use."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and len(_steps(run_dir)) < step:
        time.sleep(0.1)
    core = _engine_core(run)
    assert core is not None, "no vLLM engine process found"
    core.send_signal(sig)
    done.append((core.pid, time.monotonic()))


def _frozen_kl(run_dir: Path) -> float:
    """KL estimate (w - 1 - log w) of the last step's samples between the behaviour log-probs
    and the initial weights: what kl_behavior_proximal would read had the engine never swapped."""
    model = load_model("builtin:tiny-math", "float32").eval()
    batch = list(iter_batches(run_dir))[-1]
    kls = []
    for group in batch.groups:
        prompt = np.asarray(group.prompt_token_ids, dtype=np.int64)
        for s in group.samples:
            tokens, behaviour = s.token_array, s.logprob_array
            ids = torch.as_tensor(np.concatenate([prompt, tokens]))[None]
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
            d = token_stats(logits, torch.as_tensor(tokens.astype(np.int64))).logp.numpy() - behaviour
            kls.append(np.exp(d) - 1 - d)
    return float(np.concatenate(kls).mean())


def test_vllm_run_stays_on_policy_and_survives_a_killed_and_a_hung_engine(tmp_path):
    run_dir = tmp_path / "run"
    cmd = CLI + ["run", "--config", str(TINY), "--run-dir", str(run_dir), "rollout.engine=vllm"]
    cmd += ["buffer.max_staleness=0", f"trainer.total_steps={STEPS}", "rollout.engine_timeout_s=5"]
    cmd += ["trainer.eval_samples=0", "buffer.worker_timeout_s=30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = psutil.Process(proc.pid)
    killed: list = []
    stopped: list = []

    def inject() -> None:
        _fault_at(run_dir, run, 2, signal.SIGKILL, killed)
        _fault_at(run_dir, run, 4, signal.SIGSTOP, stopped)

    faults = threading.Thread(target=inject)
    faults.start()
    lines: list[tuple[float, str]] = []  # (when, line) of the run's output, to time the recovery
    try:
        for line in proc.stdout:
            lines.append((time.monotonic(), line))
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        faults.join(5)
    out = "".join(line for _, line in lines)
    assert proc.returncode == 0, out[-4000:]
    assert killed and stopped, "the faults were not injected"
    assert not psutil.pid_exists(stopped[0][0]) or psutil.Process(stopped[0][0]).status() == psutil.STATUS_ZOMBIE

    rows = _steps(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["staleness_max"] == 0 and r["dropped_stale"] == 0 for r in rows)
    kl = [r["kl_behavior_proximal"] for r in rows]
    assert max(kl) < FLOOR, kl
    frozen = _frozen_kl(run_dir)
    assert frozen > 1e4 * FLOOR, f"the weights barely moved (frozen-weights KL {frozen:.2e}); raise the learning rate"

    handed_back = [t for t, line in lines if "its leases went back to the buffer" in line]
    assert len(handed_back) == 2, out[-4000:]
    noticed = (handed_back[0] - killed[0][1], handed_back[1] - stopped[0][1])
    print(f"leases back {noticed[0]:.1f} s after the kill, {noticed[1]:.1f} s after the stop")
    print(f"kl_behavior_proximal at most {max(kl):.1e} a step; with frozen weights {frozen:.2e}")
    assert noticed[0] < 10 and noticed[1] < 5 + 10, noticed
    assert "the vLLM engine process died" in out and "unanswered for 5 s (hung)" in out
    assert out.count("engine restarted") == 2
    assert_groups_complete(run_dir)

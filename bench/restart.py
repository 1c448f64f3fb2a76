"""Learner restart with workers alive: how long until completions on the new weights arrive.

Starts ``dynamo-async learner`` and ``dynamo-async workers`` as separate processes (the
multi-node layout, on loopback), waits for ``--kill-after`` learner steps, kills the learner
with SIGKILL (no checkpoint, no shutdown for the workers), and restarts it at once with
``--resume`` on the same port. The same worker processes rejoin (NoWork "reconnect", hello,
new weight-sync rendezvous, the resumed weights) and finish the run.

Measured from the moment the new learner process is started: ``learner_ready_s`` (it serves
again: model and checkpoint loaded, buffer restored, ports bound) and
``seconds_to_first_completion`` (the first completion received that was generated entirely with
the resumed learner's weights, version >= the checkpoint's, read from the Arrow store).
Last line: ``restart seconds_to_first_completion=<float> learner_ready_s=<float> ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "dynamo_async.cli"]


def _steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and '"eval": true' not in line)


def _wait(predicate, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"the learner exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s")
        time.sleep(0.05)


def measure(config: str, steps: int, kill_after: int, work: Path) -> dict:
    run_dir = work / "run"
    common = [
        "--config",
        config,
        "--run-dir",
        str(run_dir),
        f"trainer.total_steps={steps}",
        "trainer.checkpoint_every=1",
    ]
    ready1, ready2 = work / "ready1.json", work / "ready2.json"
    log = open(work / "processes.log", "w")
    first = subprocess.Popen(
        CLI + ["learner", "--port", "0", "--ready-file", str(ready1)] + common, stdout=log, stderr=log
    )
    _wait(ready1.exists, first)
    port = json.loads(ready1.read_text())["work"]
    workers = subprocess.Popen(CLI + ["workers", "--connect", f"127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        _wait(lambda: _steps(run_dir) >= kill_after, first)
        first.kill()
        first.wait()
        ckpt = (run_dir / "checkpoints" / "latest").read_text().strip()
        state = json.loads((run_dir / "checkpoints" / ckpt / "trainer_state.json").read_text())
        started = time.time()
        second = subprocess.Popen(
            CLI + ["learner", "--resume", "--port", str(port), "--ready-file", str(ready2)] + common,
            stdout=log,
            stderr=log,
        )
        _wait(ready2.exists, second)
        ready_s = time.time() - started
        if second.wait(timeout=1200) != 0:
            raise RuntimeError(f"the resumed learner exited with {second.returncode}; see {work / 'processes.log'}")
        if workers.wait(timeout=120) != 0:
            raise RuntimeError(f"the workers exited with {workers.returncode}; see {work / 'processes.log'}")
    finally:
        for proc in (first, workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"ready_s": ready_s, "first_s": _first_completion(run_dir, started, state["version"]) - started}


def _first_completion(run_dir: Path, after: float, version: int) -> float:
    from buffer.store import read_table

    rows = read_table(run_dir, "completions", ["received_at", "versions"]).to_pydict()
    times = [t for t, v in zip(rows["received_at"], rows["versions"]) if t > after and min(v) >= version]
    if not times:
        raise RuntimeError("no completion on the resumed weights arrived")
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--kill-after", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ready, first = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            m = measure(args.config, args.steps, args.kill_after, Path(tmp))
        ready.append(m["ready_s"])
        first.append(m["first_s"])
        print(f"round {r}: learner ready {m['ready_s']:.2f} s, first completion on its weights {m['first_s']:.2f} s")
    print(
        f"restart seconds_to_first_completion={np.median(first):.3f} learner_ready_s={np.median(ready):.3f} "
        f"rounds={args.rounds} config={Path(args.config).name}"
    )


if __name__ == "__main__":
    main()

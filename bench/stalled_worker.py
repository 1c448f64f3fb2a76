"""Step time with one of two workers stopped (SIGSTOP), against both running, in one run.

A tiny run (``configs/tiny.yaml``) with a learner and two worker processes on loopback: after
``--stop-at`` steps one worker is frozen with SIGSTOP (alive, holding its sockets, answering
nothing) until ``--resume-at``, then continued. A weight broadcast waits for a member at most
``weights.join_timeout_s``; the frozen worker misses the offer once (that step is up to the
join timeout longer), then counts as a laggard (0.25 s at most per broadcast), so the learner
keeps training on the other worker's groups. Prints the step times and, last,
``stalled_worker extra_s=<max step time while stopped minus the median before> ...``
(target: at most the join timeout, once).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]


def _steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r for r in rows if not r.get("eval")]


def _wait(cond, proc, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"stalled_worker: the learner exited ({proc.returncode}) or timed out")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--stop-at", type=int, default=8)
    parser.add_argument("--resume-at", type=int, default=16)
    parser.add_argument("--join-timeout", type=float, default=5.0, help="weights.join_timeout_s (the default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stalled-") as tmp:
        run_dir, ready = Path(tmp) / "run", Path(tmp) / "ready.json"
        overrides = [f"trainer.total_steps={args.steps}", f"weights.join_timeout_s={args.join_timeout}"]
        learner = subprocess.Popen(
            CLI + ["learner", "--config", str(TINY), "--run-dir", str(run_dir), "--port", "0"]
            + ["--ready-file", str(ready), *overrides],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        workers = None
        try:
            _wait(ready.exists, learner)
            port = json.loads(ready.read_text())["work"]
            workers = subprocess.Popen(CLI + ["workers", "--connect", f"127.0.0.1:{port}", "--num-workers", "2"])
            _wait(lambda: len(_steps(run_dir)) >= args.stop_at, learner)
            kids = psutil.Process(workers.pid).children()  # the workers (and multiprocessing's resource tracker)
            frozen = next(p for p in kids if "resource_tracker" not in " ".join(p.cmdline()))
            os.kill(frozen.pid, signal.SIGSTOP)
            _wait(lambda: len(_steps(run_dir)) >= args.resume_at, learner)
            os.kill(frozen.pid, signal.SIGCONT)
            learner.wait(timeout=600)
            workers.wait(timeout=120)
        finally:
            for proc in (learner, workers):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        rows = _steps(run_dir)
    times = {r["step"]: r["step_s"] for r in rows}
    syncs = {r["step"]: r.get("sync_s") or 0.0 for r in rows}
    stopped = range(args.stop_at + 1, args.resume_at + 1)
    before = [times[s] for s in range(3, args.stop_at + 1) if s in times]  # steps 1-2 warm up
    during = [times[s] for s in range(args.stop_at + 1, args.resume_at + 1) if s in times]
    for s in sorted(times):
        print(
            f"step {s:3d} step_s={times[s]:.3f} sync_s={syncs[s]:.3f}"
            + ("  (one worker stopped)" if s in stopped else "")
        )
    base = statistics.median(before)
    print(
        f"stalled_worker extra_s={max(during) - base:.3f} median_before_s={base:.3f} "
        f"median_stopped_s={statistics.median(during):.3f} join_timeout_s={args.join_timeout} "
        f"steps_stopped={len(during)} max_sync_stopped_s={max(syncs[s] for s in stopped if s in syncs):.3f}"
    )


if __name__ == "__main__":
    main()

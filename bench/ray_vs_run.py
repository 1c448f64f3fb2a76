"""Wall time of the tiny config through ``dynamo-async ray`` against ``dynamo-async run``.

Both commands run the same config for the same steps with one worker, alternated (ray, run, ray,
run, ...) so that drifts of the machine hit both alike; medians over the rounds. Start-up is
reported apart from the total: the time until the learner is ready (the launcher's or learner's
"ready" line) and, for Ray, until the local cluster is up ("Started a local Ray instance").
``dynamo-async ray`` starts and stops its own local cluster each time (``--address local``), or,
with ``--ray-address auto`` (after ``ray start --head``), joins a running cluster: its learner then
binds this node's address, serving its workers with ``--insecure`` (no keys, as ``run`` on loopback).

    python bench/ray_vs_run.py [--rounds 3] [--steps 3] [--workers 1] [--ray-address auto] [key=value ...]

Last line: ``ray_vs_run ratio=<ray/run total> ray_s=... run_s=... ray_startup_s=... rounds=N``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]
MARKS = {"cluster": "Started a local Ray instance", "ready": "learner ready at"}


def timed_run(command: str, run_dir: Path, workers: int, overrides: list[str], extra: list[str]) -> dict[str, float]:
    """One run: total wall seconds and the seconds at which each of ``MARKS`` first appeared."""
    argv = CLI + [command, "--config", str(TINY), "--run-dir", str(run_dir), "--num-workers", str(workers)] + extra
    start = time.monotonic()
    proc = subprocess.Popen(argv + overrides, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[str, float] = {}
    tail: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            tail[:] = (tail + [line])[-40:]
            for key, mark in MARKS.items():
                if mark in line and key not in seen:
                    seen[key] = time.monotonic() - start

    reader = threading.Thread(target=read)
    reader.start()
    code = proc.wait(600)
    reader.join()
    if code != 0:
        raise SystemExit(f"{command} exited with {code}:\n{''.join(tail)}")
    return {"total": time.monotonic() - start, **seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ray-address", default="local", help="local: a cluster per run; auto: a running one")
    parser.add_argument("overrides", nargs="*", help="config overrides for both commands")
    args = parser.parse_args()
    overrides = [f"trainer.total_steps={args.steps}", "trainer.eval_samples=1"] + args.overrides
    results: dict[str, list[dict[str, float]]] = {"ray": [], "run": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for command in ("ray", "run"):
                extra = ["--address", args.ray_address] if command == "ray" else []
                extra += ["--insecure"] if command == "ray" and args.ray_address != "local" else []
                t = timed_run(command, Path(tmp) / f"{command}-{r}", args.workers, overrides, extra)
                results[command].append(t)
                marks = " ".join(f"{k}={v:.1f}s" for k, v in t.items() if k != "total")
                print(f"round {r + 1} {command}: {t['total']:.1f} s ({marks})", flush=True)

    def med(command: str, key: str) -> float:
        values = [t[key] for t in results[command] if key in t]
        return statistics.median(values) if values else float("nan")

    ray_s, run_s = med("ray", "total"), med("run", "total")
    print(
        f"medians over {args.rounds} rounds, {args.steps} steps, {args.workers} worker(s): ray {ray_s:.1f} s "
        f"(cluster up {med('ray', 'cluster'):.1f} s, learner ready {med('ray', 'ready'):.1f} s), run {run_s:.1f} s "
        f"(learner ready {med('run', 'ready'):.1f} s); after start-up: ray {ray_s - med('ray', 'ready'):.1f} s, "
        f"run {run_s - med('run', 'ready'):.1f} s"
    )
    print(
        f"ray_vs_run ratio={ray_s / run_s:.3f} ray_s={ray_s:.2f} run_s={run_s:.2f} "
        f"ray_startup_s={med('ray', 'ready'):.2f} rounds={args.rounds} address={args.ray_address}"
    )


if __name__ == "__main__":
    main()

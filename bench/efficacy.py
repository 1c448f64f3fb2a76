"""DynaMO against GRPO at equal rollout budget: the whole pipeline, several seeds (issue 13).

Four arms, fixed before any result was seen (Table 2's rows), each a real ``dynamo-async run``
(learner, one ``hf`` worker, buffer, held-out evaluations) of SmolLM2-135M-Instruct on the CPU:

- ``grpo``: ``method=grpo``, uniform allocation (``avg_rollouts`` each), no modulation;
- ``dynamo``: ``method=dynamo``, dynamic rollout allocation (DRA) and advantage modulation;
- ``dynamo_no_dra``: ``method=dynamo allocation.dynamic=false`` (modulation only);
- ``dra_only``: ``method=grpo allocation.dynamic=true`` (DRA only).

The task is a mixed-difficulty synthetic pool where allocation matters (``--levels``, mixed
round-robin): by default three quarters single-digit sums (level 1, about 10% sampled accuracy
at the start: the frontier) and a quarter level 5 (multi-step two-digit expressions, 0 of 32
samples right at the start: near-impossible for a 135M model), ``--num-train`` 32 prompts,
``gen_batch_prompts`` 8, so with 12 steps every prompt is seen 3 times; lr ``--lr`` 1e-5.
Everything else is ``configs/demo.yaml`` (8 rollouts on average in [4, 16], 16 new tokens).
Every arm gets the same budget per step (8 prompts x 8 rollouts), the same steps and learning
rate; a seed sets the problem pool, the learner's seed and the sampling seed, the same for every
arm. The first design (``--levels 1,1,3,5 --num-train 24 --lr 2e-5``: a quarter of the pool
each at levels 3 and 5) collapsed in every arm to one constant answer within 5 steps (README).

Per arm: held-out sampled accuracy after the last step (``--num-eval`` problems of the same
mix, 4 samples each; mean and standard deviation over seeds), accuracy against rollouts
consumed (``efficacy.png``: held-out accuracy at the evaluations against the trained samples
so far, mean over seeds), effective rollouts (trained samples in groups whose rewards are not
all equal, i.e. with a non-zero advantage), groups dropped (stale or zero-variance) and wall
time per run. Runs are kept in ``--out``; a finished run (its ``result.json``) is not run again.

Last line: ``efficacy dynamo_minus_grpo=<float> spread=<float> seeds=<n> ...``: the mean over
seeds of dynamo's final accuracy minus grpo's at the same seed, and the standard deviation of
those paired differences.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
ARMS = {  # name: (method, dynamic allocation)
    "grpo": ("grpo", False),
    "dynamo": ("dynamo", True),
    "dynamo_no_dra": ("dynamo", False),
    "dra_only": ("grpo", True),
}


def arm_config(arm: str, seed: int, args) -> dict:
    """``configs/demo.yaml`` with the arm's method and allocation, the pool and the seeds."""
    method, dynamic = ARMS[arm]
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["method"] = method
    levels = [int(x) for x in args.levels.split(",")]
    cfg["data"]["synthetic"] = {"levels": levels, "num_train": args.num_train, "num_eval": args.num_eval, "seed": seed}
    cfg["optim"]["lr"] = args.lr
    alloc = cfg["allocation"]
    alloc["dynamic"] = dynamic
    if not dynamic:  # uniform allocation reads no bounds; naming them is an error
        del alloc["g_min"], alloc["g_max"]
    cfg["rollout"]["seed"] = seed
    cfg["trainer"].update(seed=seed, total_steps=args.steps, eval_every=args.eval_every, eval_samples=4)
    return cfg


def run_arm(arm: str, seed: int, args) -> dict:
    """One ``dynamo-async run``; its summary is cached in ``RUN_DIR/result.json``."""
    run_dir = Path(args.out) / f"{arm}-seed{seed}"
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "store", "checkpoints"):  # an interrupted earlier attempt
        path = run_dir / stale
        if path.is_file():
            path.unlink()
        elif path.is_dir():
            subprocess.run(["rm", "-rf", str(path)], check=True)
    config = run_dir / "efficacy.yaml"
    config.write_text(yaml.safe_dump(arm_config(arm, seed, args), sort_keys=False))
    cmd = [sys.executable, "-m", "dynamo_async.cli", "run", "--config", str(config), "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    with open(run_dir / "run.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed}: dynamo-async run exited {proc.returncode}; see {run_dir / 'run.log'}")
    result = summarise(run_dir / "metrics.jsonl", wall)
    done.write_text(json.dumps(result))
    return result


def summarise(metrics: Path, wall: float) -> dict:
    """Held-out accuracy at each evaluation against trained samples so far, and the run's counts."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if not r.get("eval")]
    consumed = {0: 0}
    total = 0
    for r in steps:
        total += r["samples"]
        consumed[r["step"]] = total
    curve = [(consumed[r["step"]], r["eval/synthetic"]) for r in rows if r.get("eval")]
    return {
        "curve": curve,
        "final": curve[-1][1],
        "samples": total,
        "effective": sum(r["effective_samples"] for r in steps),
        "dropped": sum(r["dropped_stale"] + r["dropped_zero_variance"] for r in steps),
        "wall_s": wall,
    }


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, runs in results.items():
        x = np.array([p[0] for p in runs[0]["curve"]])
        ys = np.array([[p[1] for p in r["curve"]] for r in runs])
        ax.plot(x, ys.mean(0), marker="o", label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(x, ys.min(0), ys.max(0), alpha=0.15)
    ax.set_xlabel("rollouts consumed (trained samples)")
    ax.set_ylabel("held-out sampled accuracy")
    ax.set_title("Mixed-difficulty sums, SmolLM2-135M, equal budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--levels", default="1,1,1,5", help="synthetic levels, mixed round-robin")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--num-train", type=int, default=32)
    ap.add_argument("--num-eval", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=6)
    ap.add_argument("--out", default="runs/efficacy")
    args = ap.parse_args()
    if args.seeds < 1:
        raise SystemExit(f"--seeds: got {args.seeds}, expected >= 1")
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):  # arms interleaved, so the machine's drift hits each alike
        for arm in ARMS:
            r = run_arm(arm, seed, args)
            results[arm].append(r)
            print(
                f"{arm:14s} seed {seed}: final {r['final']:.3f}  curve {r['curve']}  wall {r['wall_s']:.0f} s",
                flush=True,
            )
    print(f"\n{'arm':14s} {'final acc':>16s} {'effective':>10s} {'samples':>8s} {'dropped':>8s} {'wall s':>7s}")
    finals = {}
    for arm, runs in results.items():
        f = np.array([r["final"] for r in runs])
        finals[arm] = f
        spread = f.std(ddof=1) if len(f) > 1 else 0.0
        print(
            f"{arm:14s} {f.mean():8.3f} +- {spread:5.3f} {np.mean([r['effective'] for r in runs]):10.1f} "
            f"{np.mean([r['samples'] for r in runs]):8.1f} {np.mean([r['dropped'] for r in runs]):8.1f} "
            f"{np.median([r['wall_s'] for r in runs]):7.0f}"
        )
    png = Path(args.out) / "efficacy.png"
    plot(results, png)
    print(f"accuracy against rollouts: {png}")
    diff = finals["dynamo"] - finals["grpo"]
    spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
    means = " ".join(f"{arm}={f.mean():.4f}" for arm, f in finals.items())
    print(f"efficacy dynamo_minus_grpo={diff.mean():.4f} spread={spread:.4f} seeds={args.seeds} {means}")


if __name__ == "__main__":
    main()

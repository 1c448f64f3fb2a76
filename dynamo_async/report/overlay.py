"""``dynamo-async plot RUN_DIR RUN_DIR ... [--smooth K]``: several runs on one figure per metric.

    compare_accuracy.png    training accuracy per step (held-out accuracy as dashed points)
    compare_reward.png      mean reward per step
    compare_entropy.png     mean token entropy
    compare_grad_norm.png   gradient norm before clipping
    compare_staleness.png   mean staleness of the trained groups
    compare_throughput.png  response tokens trained per second
    compare_step_time.png   seconds per learner step

One colour per run, the legend names each run by its directory. With ``--smooth K`` every
series is a centred moving average over K consecutive recorded steps, drawn over the raw
points (faint, same colour)::

    smoothed[i] = mean(y[j] for j in [i - (K - 1) // 2, i + K // 2] within the series)

(a window of K points centred on i, shorter at the ends; no lag, unlike an EMA). ``K = 1``
draws the raw values only. The single-run figures (``plots.py``) smooth the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dynamo_async.errors import UsageError
from dynamo_async.report.rundata import RunData

RAW_ALPHA = 0.25

# figure name -> (metrics.jsonl key, y label, scale, title)
OVERLAYS = {
    "accuracy": ("accuracy", "training accuracy (% of the batch's samples)", 100.0, "Training accuracy"),
    "reward": ("reward", "mean reward per sample", 1.0, "Mean reward"),
    "entropy": ("entropy", "mean token entropy (nats)", 1.0, "Policy entropy"),
    "grad_norm": ("grad_norm", "gradient L2 norm before clipping", 1.0, "Gradient norm"),
    "staleness": ("staleness_mean", "mean staleness (policy versions)", 1.0, "Staleness of the trained groups"),
    "throughput": ("tokens_per_s", "response tokens trained per second", 1.0, "Throughput"),
    "step_time": ("step_s", "seconds per learner step", 1.0, "Step time"),
}


def check_smooth(k: int) -> int:
    if k < 1:
        raise UsageError(f"--smooth: got {k}, expected a window of at least 1 step (1: no smoothing)")
    return k


def smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average of ``y`` over windows of ``k`` points (module docstring)."""
    y = np.asarray(y, dtype=float)
    if k <= 1 or y.size == 0:
        return y.copy()
    n = len(y)
    lo = np.clip(np.arange(n) - (k - 1) // 2, 0, n)
    hi = np.clip(np.arange(n) + k // 2 + 1, 0, n)
    sums = np.concatenate([[0.0], np.cumsum(y)])
    return (sums[hi] - sums[lo]) / (hi - lo)


def draw_series(ax, x, y, k: int, label: str, **style) -> None:
    """``y`` against ``x``: raw (``k`` = 1), or faint raw points behind the smoothed line. Only
    the full-strength line carries ``label`` (the raw one is hidden from the legend)."""
    if k <= 1:
        ax.plot(x, y, label=label, **{"marker": "o", "ms": 3, **style})
        return
    (raw,) = ax.plot(x, y, label=f"_raw {label}", alpha=RAW_ALPHA, lw=0.8, **{"marker": ".", "ms": 2, **style})
    line_style = {k2: v for k2, v in style.items() if k2 not in ("marker", "ms")}
    ax.plot(x, smooth(y, k), label=label, lw=1.8, **{"color": raw.get_color(), **line_style})


def run_labels(runs: list[RunData]) -> list[str]:
    """Each run's directory name; the paths as given where names repeat."""
    names = [r.run_dir.resolve().name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.run_dir) for r in runs]


def smooth_note(k: int) -> str:
    return f" (centred moving average over {k} steps)" if k > 1 else ""


def overlay_figure(plt, runs: list[RunData], name: str, k: int = 1):
    """The overlay ``name`` of OVERLAYS for ``runs``; a string saying why not when no run has it."""
    key, ylabel, scale, title = OVERLAYS[name]
    have = [(run, label) for run, label in zip(runs, run_labels(runs)) if run.series(key)[0].size]
    if not have:
        return f"no run has {key} in metrics.jsonl"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (run, label) in enumerate(have):
        x, y = run.series(key)
        draw_series(ax, x, scale * y, k, label, color=f"C{i % 10}")
        if name == "accuracy":
            _held_out(ax, run, label, f"C{i % 10}")
    ax.set_xlabel("learner step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: {len(have)} runs{smooth_note(k)}")
    return fig


def _held_out(ax, run: RunData, label: str, color: str) -> None:
    for key in sorted({k for r in run.evals for k in r if k.startswith("eval/")}):
        pts = [(r["step"], 100 * r[key]) for r in run.evals if isinstance(r.get(key), (int, float)) and "step" in r]
        if pts:
            ax.plot(*zip(*pts), color=color, marker="s", ls="--", lw=1, label=f"{label} held-out ({key[5:]})")


def plot_overlays(plt, runs: list[RunData], out_dir: Path, k: int = 1) -> tuple[list[Path], dict[str, str]]:
    """Write every overlay some run has data for; returns (written paths, skipped name -> why)."""
    draws = {f"compare_{name}": (lambda name=name: overlay_figure(plt, runs, name, k)) for name in OVERLAYS}
    return save_figures(plt, draws, out_dir)


def save_figures(plt, draws: dict, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """``draws``: file stem -> a function giving a figure, or a string saying why there is none.
    Writes ``out_dir/<stem>.png`` for each figure; returns (written paths, skipped stem -> why)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name, draw in draws.items():
        fig = draw()
        if isinstance(fig, str):
            skipped[name] = fig
            continue
        path = out_dir / f"{name}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written, skipped

"""``dynamo-async plot RUN_DIR``: PNG figures of a run, written to RUN_DIR/plots.

    accuracy_reward.png  training accuracy and reward per step, held-out accuracy points
    entropy.png          mean token entropy of the policy per step
    grad_norm.png        gradient norm before clipping (the paper's Figure 3)
    allocation.png       rollouts per prompt over training and overall (Figure 1, left)
    allocation_success.png  rollouts per group against its prompt's earlier success rate
    beta.png             distribution of beta_comp and beta_stab over training (Eqs. 3-4)
    staleness.png        staleness of the trained groups, dropped groups per step
    throughput.png       tokens per second, step time, learner and worker idle time

``--smooth K`` draws the per-step lines of accuracy_reward, entropy, grad_norm and throughput
as centred moving averages over K steps over their faint raw points (``overlay.py``, which
also draws several runs on one figure per metric: ``dynamo-async plot RUN_DIR RUN_DIR ...``).

A figure whose data the run does not have (e.g. ``beta.png`` for a baseline without
modulation, or the store figures when RUN_DIR/store was deleted) is skipped with a line
saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dynamo_async.report.overlay import check_smooth, draw_series, plot_overlays, save_figures, smooth_note
from dynamo_async.report.rundata import RunData, load_run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10})
    return plt


def _title(run: RunData, what: str) -> str:
    method = run.config.get("method", "?")
    model = _section(run, "model").get("name", "?")
    return f"{what}\n{run.run_dir.resolve().name}: {method}, {model}"


def _section(run: RunData, name: str) -> dict:
    return run.config.get(name) or {}


def _columns(per_step: dict[int, np.ndarray], rows: int, column) -> tuple[np.ndarray, tuple]:
    """A [rows, steps] grid over every step from the first to the last (steps the run did
    not record stay blank), and the extent that puts column j at its step."""
    first, last = min(per_step), max(per_step)
    grid = np.full((rows, last - first + 1), np.nan)
    for step, values in per_step.items():
        grid[:, step - first] = column(values)
    return np.ma.masked_invalid(grid), (first - 0.5, last + 0.5)


def _steps_axis(ax) -> None:
    ax.set_xlabel("learner step")
    ax.xaxis.get_major_locator().set_params(integer=True)


def accuracy_reward(plt, run: RunData, k: int = 1):
    fig, ax = plt.subplots(figsize=(7, 4))
    x, acc = run.series("accuracy")
    draw_series(ax, x, 100 * acc, k, "training accuracy (batch)")
    for key in sorted({k for r in run.evals for k in r if k.startswith("eval/")}):
        pts = [(r["step"], r[key]) for r in run.evals if isinstance(r.get(key), (int, float)) and "step" in r]
        if not pts:
            continue
        ax.plot(*zip(*[(s, 100 * v) for s, v in pts]), marker="s", ls="--", label=f"held-out accuracy ({key[5:]})")
    ax.set_ylabel("accuracy (% of sampled responses)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    x, reward = run.series("reward")
    draw_series(ax2, x, reward, k, "mean reward", color="tab:green", marker=None)
    ax2.set_ylabel("mean reward per sample")
    ax2.grid(False)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    _steps_axis(ax)
    ax.set_title(_title(run, "Accuracy and reward" + smooth_note(k)))
    return fig


def entropy(plt, run: RunData, k: int = 1):
    fig, ax = plt.subplots(figsize=(7, 4))
    draw_series(ax, *run.series("entropy"), k, "_entropy")
    ax.set_ylabel("mean token entropy (nats)")
    _steps_axis(ax)
    ax.set_title(_title(run, "Policy entropy on the trained responses" + smooth_note(k)))
    return fig


def grad_norm(plt, run: RunData, k: int = 1):
    fig, ax = plt.subplots(figsize=(7, 4))
    draw_series(ax, *run.series("grad_norm"), k, "mean over the step's mini-batches")
    if run.has("grad_norm_max"):
        ax.plot(*run.series("grad_norm_max"), ls=":", label="largest mini-batch")
    clip = _section(run, "optim").get("grad_clip")
    if clip:
        ax.axhline(clip, color="gray", ls="--", lw=1, label=f"clipped to {clip}")
    ax.set_ylabel("gradient L2 norm before clipping")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _steps_axis(ax)
    ax.set_title(_title(run, "Gradient norm (paper Figure 3)" + smooth_note(k)))
    return fig


def allocation(plt, run: RunData, k: int = 1):
    if not run.group_sizes:
        return "no groups in the Arrow store (RUN_DIR/store/batches)"
    every = np.concatenate(list(run.group_sizes.values()))
    if every.size == 0:
        return "the Arrow store's batches hold no groups"
    sizes = np.arange(every.min(), every.max() + 1)
    grid, (x0, x1) = _columns(run.group_sizes, len(sizes), lambda g: [np.sum(g == k) for k in sizes])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    im = ax.imshow(
        grid,
        origin="lower",
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(x0, x1, sizes[0] - 0.5, sizes[-1] + 0.5),
    )
    fig.colorbar(im, ax=ax, label="prompts in the batch")
    ax.set_ylabel("rollouts per prompt (group size)")
    _steps_axis(ax)
    ax.grid(False)
    ax.set_title("per step")
    ax2.bar(sizes, [np.sum(every == k) for k in sizes], width=0.8)
    ax2.set_xlabel("rollouts per prompt (group size)")
    ax2.set_ylabel("prompts, whole run")
    ax2.set_title(f"whole run (mean {every.mean():.1f})")
    fig.suptitle(_title(run, "Rollout allocation (paper Figure 1, left)"))
    fig.tight_layout()
    return fig


def allocation_success(plt, run: RunData, k: int = 1):
    points = np.concatenate(list((run.allocation_points or {}).values()) or [np.zeros((0, 2))])
    points = points[~np.isnan(points[:, 0])] if points.size else points
    if points.size == 0:
        return "no prompt was trained on twice (the success rates come from a prompt's earlier groups)"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(points))
    ax.scatter(points[:, 0], points[:, 1] + jitter, s=12, alpha=0.5, label="a group")
    edges = np.linspace(0, 1, 11)
    bins = np.clip(np.digitize(points[:, 0], edges) - 1, 0, 9)
    centres = [(edges[b] + edges[b + 1]) / 2 for b in range(10) if np.any(bins == b)]
    means = [points[bins == b, 1].mean() for b in range(10) if np.any(bins == b)]
    ax.plot(centres, means, "o-", color="C1", label="mean per tenth")
    ax.set_xlabel("success rate of the prompt over its earlier trained groups")
    ax.set_ylabel("rollouts given to the group")
    ax.set_xlim(-0.03, 1.03)
    ax.legend(fontsize=8)
    ax.set_title(_title(run, "Rollouts against success rate (paper Figure 1, left)"))
    return fig


def beta(plt, run: RunData, k: int = 1):
    keys = [k for k in ("beta_comp_hist", "beta_stab_hist") if run.has(k)]
    if not keys:
        return (
            f"no beta factor histograms in metrics.jsonl (method {run.config.get('method', '?')} "
            "without modulation, or a run recorded before they were logged)"
        )
    mod = _section(run, "modulation")
    ranges = {
        "beta_comp_hist": (1.0, 1.0 + mod.get("alpha", 1.0), "beta_comp (tokens with A > 0)"),
        "beta_stab_hist": (mod.get("lambda_min", 0.0), 1.0, "beta_stab (every response token)"),
    }
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        low, high, label = ranges[key]
        per_step = {r["step"]: np.asarray(r[key], dtype=float) for r in run.steps if key in r}
        bins = len(next(iter(per_step.values())))
        hist, (x0, x1) = _columns(per_step, bins, lambda h: h / max(h.sum(), 1))
        im = ax.imshow(
            hist, origin="lower", aspect="auto", cmap="magma", interpolation="nearest", extent=(x0, x1, low, high)
        )
        fig.colorbar(im, ax=ax, label="fraction of tokens")
        centers = low + (high - low) * (np.arange(bins) + 0.5) / bins
        steps = sorted(per_step)
        means = [float(centers @ per_step[t] / per_step[t].sum()) if per_step[t].sum() else np.nan for t in steps]
        ax.plot(steps, means, color="cyan", lw=1.5, label="mean of these tokens")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_ylabel(label)
        ax.grid(False)
        _steps_axis(ax)
    fig.suptitle(_title(run, "Advantage modulation factors (Eqs. 3-4)"))
    fig.tight_layout()
    return fig


def staleness(plt, run: RunData, k: int = 1):
    if not run.staleness:
        return "no steps in the Arrow store (RUN_DIR/store/steps)"
    steps = sorted(run.staleness)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    mean = [run.staleness[s].mean() if run.staleness[s].size else 0.0 for s in steps]
    high = [run.staleness[s].max() if run.staleness[s].size else 0.0 for s in steps]
    ax.plot(steps, mean, marker="o", ms=3, label="mean over the batch's groups")
    ax.plot(steps, high, ls=":", label="oldest group")
    limit = _section(run, "buffer").get("max_staleness")
    if limit is not None:
        ax.axhline(limit, color="gray", ls="--", lw=1, label=f"max_staleness = {limit}")
    ax.set_ylabel("staleness (policy versions)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    stale = [run.dropped[s][0] for s in steps]
    zero = [run.dropped[s][1] for s in steps]
    ax2.bar(steps, stale, label="too stale", color="tab:red")
    ax2.bar(steps, zero, bottom=stale, label="zero variance", color="tab:gray")
    ax2.set_ylabel("groups dropped at the step")
    ax2.set_ylim(0, 1.15 * max(1, *(a + b for a, b in zip(stale, zero))))
    ax2.yaxis.get_major_locator().set_params(integer=True)
    ax2.legend(fontsize=8)
    _steps_axis(ax2)
    fig.suptitle(_title(run, "Staleness and dropped groups"))
    fig.tight_layout()
    return fig


def throughput(plt, run: RunData, k: int = 1):
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    draw_series(ax, *run.series("tokens_per_s"), k, "response tokens trained per second")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    for key, label in (
        ("step_s", "step time"),
        ("learner_idle_s", "learner waiting for a batch"),
        ("worker_idle_s", "workers waiting for work (summed)"),
        ("sync_s", "weight broadcast"),
    ):
        if run.has(key):
            draw_series(ax2, *run.series(key), k, label, marker=".")
    ax2.set_ylabel("seconds per step")
    ax2.set_ylim(bottom=0)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    _steps_axis(ax2)
    fig.suptitle(_title(run, "Throughput and idle time" + smooth_note(k)))
    fig.tight_layout()
    return fig


FIGURES = {
    "accuracy_reward": accuracy_reward,
    "entropy": entropy,
    "grad_norm": grad_norm,
    "allocation": allocation,
    "allocation_success": allocation_success,
    "beta": beta,
    "staleness": staleness,
    "throughput": throughput,
}


def plot_run(run_dir: Path, out_dir: Path | None = None, k: int = 1) -> tuple[list[Path], dict[str, str]]:
    """Write every figure the run has data for (lines smoothed over ``k`` steps); returns
    (written paths, skipped name -> why)."""
    run = load_run(run_dir)
    plt = _pyplot()
    draws = {name: (lambda draw=draw: draw(plt, run, k)) for name, draw in FIGURES.items()}
    return save_figures(plt, draws, out_dir or run_dir / "plots")


COMPARE_DIR = Path("plots-compare")  # several runs, without --out


def plot_main(run_dirs: list[Path], out_dir: Path | None, k: int = 1) -> int:
    """One run: its figures (RUN_DIR/plots). Several: one overlay per metric (``overlay.py``),
    in ``out_dir`` or ./plots-compare."""
    check_smooth(k)
    if len(run_dirs) == 1:
        written, skipped = plot_run(run_dirs[0], out_dir, k)
    else:
        runs = [load_run(d) for d in run_dirs]
        written, skipped = plot_overlays(_pyplot(), runs, out_dir or COMPARE_DIR, k)
    for path in written:
        print(f"wrote {path}")
    for name, why in skipped.items():
        print(f"skipped {name}.png: {why}")
    return 0

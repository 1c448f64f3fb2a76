"""``dynamo-async plot RUN RUN ... --smooth K``: one figure per metric with a line per run, and
the centred moving average the help names, on two small synthetic run directories."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from dynamo_async.cli import main
from dynamo_async.report.overlay import OVERLAYS, RAW_ALPHA, overlay_figure, smooth
from dynamo_async.report.plots import _pyplot
from dynamo_async.report.rundata import load_run

ACC = {"run-a": [0.1, 0.2, 0.3, 1.0, 0.5], "run-b": [0.0, 0.4, 0.4, 0.2, 0.6, 0.8]}


@pytest.fixture
def runs(tmp_path):
    """Two run directories with metrics.jsonl only (no store): accuracy, reward, entropy per step."""
    dirs = []
    for name, accs in ACC.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        rows = [
            {"step": s, "accuracy": a, "reward": 2 * a - 1, "entropy": 1.0 - a / 2, "step_s": 0.5}
            for s, a in enumerate(accs, start=1)
        ]
        rows.append({"eval": True, "step": len(accs), "label": "after", "eval/synthetic": 0.5})
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs.append(run_dir)
    return dirs


def test_smooth_is_the_centred_moving_average_over_k_points():
    y = np.array([1.0, 2.0, 3.0, 10.0])
    assert smooth(y, 1).tolist() == y.tolist()
    assert smooth(y, 3).tolist() == [1.5, 2.0, 5.0, 6.5]  # [i-1, i+1], shorter at the ends
    assert smooth(y, 4).tolist() == [2.0, 4.0, 5.0, 6.5]  # [i-1, i+2]
    assert smooth(y, 100).tolist() == [4.0] * 4


def test_the_overlay_has_one_labelled_line_per_run(runs):
    plt = _pyplot()
    fig = overlay_figure(plt, [load_run(d) for d in runs], "accuracy", 1)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["run-a", "run-a held-out (synthetic)", "run-b", "run-b held-out (synthetic)"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for name, accs in ACC.items():
        assert lines[name].get_xdata().tolist() == list(range(1, len(accs) + 1))
        assert lines[name].get_ydata() == pytest.approx([100 * a for a in accs])
    assert lines["run-a"].get_color() != lines["run-b"].get_color()
    plt.close(fig)


def test_smoothing_draws_the_average_over_the_faint_raw_points(runs):
    plt = _pyplot()
    fig = overlay_figure(plt, [load_run(d) for d in runs], "reward", 3)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["_raw run-a", "_raw run-b", "run-a", "run-b"]
    for name, accs in ACC.items():
        raw = [2 * a - 1 for a in accs]
        want = [np.mean(raw[max(0, i - 1) : i + 2]) for i in range(len(raw))]
        assert lines[name].get_ydata() == pytest.approx(want)
        assert lines[f"_raw {name}"].get_ydata() == pytest.approx(raw)
        assert lines[f"_raw {name}"].get_alpha() == RAW_ALPHA and lines[name].get_alpha() is None
        assert lines[f"_raw {name}"].get_color() == lines[name].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run-a", "run-b"]
    assert "centred moving average over 3 steps" in ax.get_title()
    plt.close(fig)


def test_plot_of_two_runs_writes_the_overlays_and_skips_what_neither_has(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["plot", str(runs[0]), str(runs[1]), "--smooth", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("accuracy", "reward", "entropy", "step_time"):
        path = out / f"compare_{name}.png"
        assert f"wrote {path}" in printed
        height, width = matplotlib.image.imread(path).shape[:2]
        assert width > 500 and height > 300
    assert "skipped compare_grad_norm.png: no run has grad_norm in metrics.jsonl" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"compare_{n}.png" for n in ("accuracy", "reward", "entropy", "step_time")
    )
    assert set(OVERLAYS) >= {"accuracy", "reward", "entropy", "grad_norm", "step_time"}


def test_plot_of_one_run_smooths_its_own_figures(runs, capsys):
    assert main(["plot", str(runs[0]), "--smooth", "2"]) == 0
    assert (runs[0] / "plots" / "accuracy_reward.png").is_file()
    assert "wrote" in capsys.readouterr().out


def test_smooth_below_one_is_a_usage_error(runs, capsys):
    assert main(["plot", str(runs[0]), "--smooth", "0"]) == 2
    assert "--smooth: got 0, expected a window of at least 1 step" in capsys.readouterr().err

"""The learner's progress: one plain line per step when its output is not a terminal (a log
file, a pipe), the tqdm bar on a terminal."""

from __future__ import annotations

import io
import sys

from dynamo_async.learner import metrics
from dynamo_async.learner.metrics import MetricsLog, plain_line


class Sink:
    def write(self, row):
        pass

    def write_eval(self, row):
        pass

    def close(self):
        pass


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rows(n: int):
    return [
        {"step": s, "reward": 0.25 * s, "accuracy": 0.125 * s, "step_s": 1.5, "entropy": 0.7} for s in range(1, n + 1)
    ]


def test_without_a_terminal_each_step_is_one_plain_line(tmp_path, capsys):
    log = MetricsLog(tmp_path, total_steps=600, sinks=[Sink()])  # capsys: stdout is not a TTY
    assert log.plain
    for row in _rows(3):
        log.write(row)
    log.note("held-out accuracy after (synthetic, 16 samples each): 0.5")
    log.close()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4 and "\r" not in out and err == ""  # no bar anywhere
    assert lines[0].startswith("step 1/600  reward 0.250  acc 0.125  1.50 s/step  eta ")
    assert lines[2].startswith("step 3/600  reward 0.750  acc 0.375  1.50 s/step  eta ")
    assert lines[3] == "held-out accuracy after (synthetic, 16 samples each): 0.5"


def test_on_a_terminal_the_bar_stays(tmp_path, monkeypatch):
    stdout, stderr = FakeTTY(), FakeTTY()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert metrics.on_terminal()
    log = MetricsLog(tmp_path, total_steps=600, sinks=[Sink()])
    assert not log.plain
    for row in _rows(2):
        log.write(row)
    log.close()
    assert "step 1/600" not in stdout.getvalue()
    bar = stderr.getvalue()
    assert "learner:" in bar and "2/600" in bar and "\r" in bar  # tqdm redraws one line


def test_a_redirected_stderr_alone_also_gives_plain_lines(monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # the bar's stream is a file
    assert not metrics.on_terminal()


def test_show_false_prints_nothing(tmp_path, capsys):
    log = MetricsLog(tmp_path, total_steps=5, show=False, sinks=[Sink()])
    assert not log.plain
    log.write(_rows(1)[0])
    log.close()
    assert capsys.readouterr() == ("", "")


def test_the_plain_line_leaves_out_what_the_row_lacks():
    assert plain_line({"step": 4}, 10, None) == "step 4/10  eta ?"
    assert plain_line({"step": 4, "reward": -1, "step_s": 12.345}, 10, 3725.0) == (
        "step 4/10  reward -1.000  12.35 s/step  eta 1h02m05s"
    )

"""Bad input at the edges is one clear line naming what to fix, and loses nothing: malformed or
duplicated YAML, non-finite numbers, oversized groups, bad ports and hosts, a learner of another
protocol version, a full disk, and a launcher killed by SIGKILL (no orphaned children)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import zmq

from buffer.client import BufferClient
from buffer.server import BufferServer
from dynamo_async import cli
from dynamo_async.config import load_config
from dynamo_async.errors import UsageError
from dynamo_async.protocol import PROTOCOL_VERSION, NoWork, encode

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
CLI = [sys.executable, "-m", "dynamo_async.cli"]
NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never an address of this machine


def _error_line(capsys) -> str:
    """The CLI's stderr, checked to be one line without a traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _config_error(capsys, path: str | None, *overrides: str) -> str:
    args = ["config"] + (["--config", path] if path else []) + list(overrides)
    assert cli.main(args) == 2
    return _error_line(capsys)


# ------------------------------------------------------------------------------------ config


def test_malformed_yaml_names_the_file_and_the_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: builtin:tiny\noptim:\n lr: 1\n  x: [1,\n")
    err = _config_error(capsys, str(path))
    assert re.search(
        rf"config file {re.escape(str(path))}: got YAML that does not parse \(.* at line 5, column 4\)", err
    )
    assert "expected valid YAML; fix that line" in err


def test_a_duplicated_key_is_refused_with_both_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  name: builtin:tiny\noptim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n")
    err = _config_error(capsys, str(path))
    assert re.search(r"got a duplicate key 'lr' \(first at line 4\) at line 5, column 3, expected each key once", err)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("model: &m\n  name: builtin:tiny\nrollout:\n  <<: {seed: 1}\n  seed: 2\n")
    assert load_config(path).rollout.seed == 2


def test_an_override_that_is_not_yaml_is_one_line(capsys):
    err = _config_error(capsys, TINY, "optim.lr=[1,")
    assert re.search(r"override 'optim.lr=\[1,': got a value that does not parse as YAML \(.*\), expected a value", err)


@pytest.mark.parametrize(
    "override, field, shown",
    [
        ("buffer.worker_timeout_s=inf", "buffer.worker_timeout_s", "inf"),  # YAML reads "inf" as a text
        ("buffer.worker_timeout_s=.inf", "buffer.worker_timeout_s", "inf"),
        ("loss.eps_high=-.inf", "loss.eps_high", "-inf"),
        ("optim.lr=.nan", "optim.lr", "nan"),
        ("optim.betas=[.nan, 0.9]", r"optim.betas\[0\]", "nan"),
    ],
)
def test_non_finite_numbers_are_refused(capsys, override, field, shown):
    err = _config_error(capsys, TINY, override)
    assert re.search(rf"config field {field}: got {shown}, expected a finite number", err), err


def test_non_finite_numbers_in_a_file_are_refused(tmp_path, capsys):
    path = tmp_path / "inf.yaml"
    path.write_text("model:\n  name: builtin:tiny\nrewards:\n  hard_timeout_s: .inf\n")
    err = _config_error(capsys, str(path))
    assert "config field rewards.hard_timeout_s: got inf, expected a finite number" in err


def test_a_group_larger_than_a_work_item_holds_is_refused(capsys):
    err = _config_error(capsys, TINY, "allocation.g_max=5000")
    assert re.search(r"config field allocation: got g_max=5000, expected at most 4096 .*lower allocation.g_max", err)
    err = _config_error(capsys, TINY, "method=grpo", "allocation.avg_rollouts=4097")  # uniform allocation
    assert "got avg_rollouts=4097, expected at most 4096" in err


# -------------------------------------------------------------------------------- host, port


def _learner(tmp_path, *args: str) -> list[str]:
    return ["learner", "--config", TINY, "model.name=builtin:tiny", "--run-dir", str(tmp_path / "run"), *args]


@pytest.mark.parametrize("command", ["learner", "buffer", "run"])
@pytest.mark.parametrize("port", ["70000", "65534", "-1"])
def test_a_port_out_of_range_is_refused(tmp_path, capsys, command, port):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--config", TINY, "--run-dir", str(tmp_path), "--port", port])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: got '{port}', expected 0..65533 (the learner binds PORT, PORT + 1 and PORT + 2" in err


@contextlib.contextmanager
def _listening(port: int = 0):
    """A plain TCP socket listening on 127.0.0.1 (``port`` 0: a free one); yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path, capsys):
    with _listening() as port:
        start = time.monotonic()
        assert cli.main(_learner(tmp_path, "--port", str(port))) == 2
        assert time.monotonic() - start < 10
        err = _error_line(capsys)
        assert (
            f"--port: got {port}, which is in use on 127.0.0.1 (another learner?); pick another port or stop "
            "that process" in err
        )
        assert cli.main(_learner(tmp_path, "--port", str(port - 1))) == 2
        assert f"--port: got {port - 1}, whose PORT + 1 ({port}) is in use" in _error_line(capsys)
    assert not (tmp_path / "run").exists(), "a refused start wrote into the run directory"


def _stub_service():
    return SimpleNamespace(cfg=load_config(TINY, ["model.name=builtin:tiny"]))


def test_the_buffer_server_turns_a_used_port_into_one_line():
    with _listening() as port:
        with pytest.raises(
            UsageError, match=rf"--port: got {port}, which is in use on 127.0.0.1 \(another learner\?\)"
        ):
            BufferServer(_stub_service(), "127.0.0.1", port)
        with pytest.raises(UsageError, match=rf"--port: got {port - 2}, whose PORT \+ 2 \({port}\) is in use"):
            BufferServer(_stub_service(), "127.0.0.1", port - 2)


def test_a_host_of_another_machine_is_refused_within_seconds(tmp_path, capsys):
    start = time.monotonic()
    assert cli.main(_learner(tmp_path, "--host", NOT_HERE)) == 2
    assert time.monotonic() - start < 10, "the host was not checked before the learner started"
    err = _error_line(capsys)
    assert f"--host: got '{NOT_HERE}', expected an address of this machine; use --host 0.0.0.0 --advertise NAME" in err
    buffer = ["buffer", "--config", TINY, "--run-dir", str(tmp_path / "buf"), "--host", NOT_HERE]
    assert cli.main(buffer) == 2
    assert f"--host: got '{NOT_HERE}', expected an address of this machine" in _error_line(capsys)
    with pytest.raises(UsageError, match=rf"--host: got '{re.escape(NOT_HERE)}', expected an address of this"):
        BufferServer(_stub_service(), NOT_HERE, 0)


# ---------------------------------------------------------------------------- protocol version


@contextlib.contextmanager
def _learner_of_version(version: int):
    """A fake learner that answers every request as a learner of ``version`` answers a message
    it cannot read (NoWork, buffer/server.py); yields (work port, completions port)."""
    ctx = zmq.Context()
    router, pull = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PULL)
    for sock in (router, pull):
        sock.setsockopt(zmq.LINGER, 0)
    ports = router.bind_to_random_port("tcp://127.0.0.1"), pull.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, _ = router.recv_multipart()
                router.send_multipart([identity, encode(NoWork(reason="empty", retry_after_s=1.0, v=version))])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ports
    finally:
        stop.set()
        thread.join(5)
        router.close()
        pull.close()
        ctx.term()


def test_a_worker_learns_that_the_learner_speaks_another_protocol():
    other = PROTOCOL_VERSION + 1
    with _learner_of_version(other) as (work, completions):
        with BufferClient("127.0.0.1", work, completions, "w", connect_timeout_s=10) as client:
            with pytest.raises(UsageError) as err:
                client.hello("hf", 1)
    assert str(err.value) == (
        f"this worker speaks protocol {PROTOCOL_VERSION}, the learner at 127.0.0.1:{work} speaks {other}; "
        "install the same dynamo-async version on both"
    )


def test_a_worker_of_another_protocol_exits_with_one_line():
    with _learner_of_version(PROTOCOL_VERSION - 1) as (work, _):
        proc = subprocess.run(
            CLI + ["workers", "--connect", f"127.0.0.1:{work}"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    line = (
        f"dynamo-async workers: error: this worker speaks protocol {PROTOCOL_VERSION}, the learner at "
        f"127.0.0.1:{work} speaks {PROTOCOL_VERSION - 1}; install the same dynamo-async version on both"
    )
    assert line in proc.stderr.splitlines(), proc.stderr


# -------------------------------------------------------------------------------- disk full


@pytest.fixture(scope="module")
def trainer():
    from dynamo_async.learner.trainer import Trainer

    return Trainer(load_config(TINY, ["model.name=builtin:tiny"]), "cpu")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "target, code, fix",
    [
        ("dynamo_async.learner.checkpoint.save_file", errno.ENOSPC, "free space"),
        ("torch.distributed.checkpoint.FileSystemWriter.finish", errno.ENOSPC, "free space"),  # DCP wraps it
        ("dynamo_async.learner.checkpoint.save_file", errno.EROFS, "make it writable"),
    ],
)
def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, trainer, target, code, fix
):
    from dynamo_async.learner import checkpoint

    trainer.step = 0
    first = checkpoint.save_checkpoint(tmp_path, trainer)
    before = _files(first)

    def no_room(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(target, no_room)
    trainer.step = 1
    with pytest.raises(UsageError) as err:
        checkpoint.save_checkpoint(tmp_path, trainer)
    root = tmp_path / "checkpoints"
    assert str(err.value) == (
        f"checkpoint: could not write {root / 'step-000001'} ({os.strerror(code)}); the last complete "
        f"checkpoint is step-000000; {fix} and restart with --resume"
    )
    assert checkpoint.latest_checkpoint(tmp_path) == first
    assert _files(first) == before, "the last complete checkpoint changed"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000000"], "the temporary folder was left"


def test_other_checkpoint_errors_keep_their_traceback(tmp_path, monkeypatch, trainer):
    from dynamo_async.learner import checkpoint

    def broken(*_args, **_kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))  # a failing disk is not the user's to fix

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError) as err:
        checkpoint.save_checkpoint(tmp_path, trainer)
    assert not isinstance(err.value, UsageError) and err.value.errno == errno.EIO


def test_a_run_directory_that_cannot_be_written_is_refused_at_start(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run_dir = blocker / "run"
    args = ["learner", "--config", TINY, "--run-dir", str(run_dir)]
    assert cli.main(args) == 2
    err = _error_line(capsys)
    assert f"--run-dir: got {run_dir}, which cannot be written (Not a directory), expected a writable directory" in err


# --------------------------------------------------------------------------------- orphans


def _family(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for_child(proc: subprocess.Popen, timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if family := _family(proc.pid):
            return family
        time.sleep(0.05)
    raise AssertionError(f"the launcher started no child (exit code {proc.poll()})")


def _kill_and_check_orphans(proc: subprocess.Popen, family: list[psutil.Process]) -> None:
    """SIGKILL the launcher ``proc``; every process under it must exit within seconds."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _, left = psutil.wait_procs(family, timeout=15)
        assert not left, f"children of the killed launcher are still running: {left}"
    finally:
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_their_launcher_killed_by_sigkill():
    with _listening() as port:  # nothing answers there: the worker waits for its learner
        proc = subprocess.Popen(
            CLI + ["workers", "--connect", f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert "started 1 worker(s)" in proc.stdout.readline()
        _kill_and_check_orphans(proc, _wait_for_child(proc, 30))
        proc.stdout.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_learner_dies_with_its_run_launcher_killed_by_sigkill(tmp_path):
    log = (tmp_path / "out.log").open("w")
    args = ["run", "--config", TINY, "model.name=builtin:tiny", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(CLI + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _kill_and_check_orphans(proc, _wait_for_child(proc, 30))
    finally:
        log.close()

"""``dynamo-async buffer`` standalone and ``dynamo-async replay`` on what it recorded."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sample_records import sample_record

from buffer.client import BufferClient, query_status
from dynamo_async.protocol import Completion, NoWork

ROOT = Path(__file__).resolve().parents[1]


def _free_port_block() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base < 65000 and all(_free(base + i) for i in range(3)):
            return base
    raise RuntimeError("no three consecutive free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_for_status(port: int, proc: subprocess.Popen, limit: float = 300.0):
    """The buffer answers once it has tokenized its prompts. When no earlier test built
    ``builtin:tiny-math`` into this session's cache, the buffer builds it first (a warm-up
    training: about 45 s on 2 idle cores, more under load), hence the generous limit."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            return query_status("127.0.0.1", port, timeout_s=1.0)
        except TimeoutError:
            continue
    raise AssertionError("buffer did not answer on its status port")


def test_standalone_buffer_serves_workers_and_replay_reads_its_run(tmp_path):
    port = _free_port_block()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynamo_async.cli",
            "buffer",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--run-dir",
            str(run_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_status(port + 2, proc)
        sent = 0
        with BufferClient("127.0.0.1", port, port + 1, "w-test", timeout_s=10, connect_timeout_s=30) as client:
            assert "builtin:tiny" in client.hello("hf", 4).config_yaml
            while not isinstance(grant := client.request_work(8, 0), NoWork):
                for item in grant.items:
                    for index in item.sample_indices:
                        sample = sample_record(
                            item.group_id,
                            item.prompt_id,
                            index,
                            [5, 6],
                            [-0.5, -0.25],
                            [0, 0],
                            worker_id="w-test",
                            acc=index % 2,
                        )
                        client.send(Completion(lease_id=item.lease_id, sample=sample))
                        sent += 1
            assert grant.reason == "staleness"
        deadline = time.monotonic() + 10
        while query_status("127.0.0.1", port + 2).completions < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        assert query_status("127.0.0.1", port + 2).completions == sent > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert (run_dir / "buffer" / "prompt_stats.parquet").exists() and (run_dir / "config.yaml").exists()
    report = subprocess.run(
        [sys.executable, "-m", "dynamo_async.cli", "replay", str(run_dir)], capture_output=True, text=True, check=True
    ).stdout
    assert "completions" in report and str(sent) in report

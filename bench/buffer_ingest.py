"""Ingest rate of the buffer: completions of 512 tokens over ZeroMQ from one sender process.

One sender process (multiprocessing, spawn) pre-encodes a round of completions, then pushes
them as fast as it can, twice per round, to two receivers, alternated in one run:

- ``buffer``: the real path. ``BufferServer``'s PULL socket -> typed decode -> validation ->
  ``BufferService.add_completion`` with a real ``RunStore`` writing Arrow segments into a temp
  dir, the leases settled and the Bernoulli statistics updated as groups complete. The
  completions are for samples leased in process beforehand (one group of ``--group`` samples
  per prompt, so every one of them is accepted; the script checks that).
- ``curve``: the same real path with ZeroMQ CURVE on (``BufferServer(keys=...)``, the sender
  with an authorized client key; ``buffer/curve.py``): encryption, the per-message key check
  and the worker-id binding; its own leased samples, pushed from the same sender.
- ``plain``: a PULL socket that only receives and decodes the same messages.

Rates are messages per second from the first to the last message received; for ``buffer``, to
the moment the round's Arrow rows are written (``RunStore.flush``), so rows still queued for the
store's writer thread are not left off the clock. Prints per-round
figures and, as its last line, ``buffer_ingest ratio=<float> msgs_per_s=<float>``: the median
buffer rate over the median plain rate, and the median buffer rate; then ``curve_ratio``, the
median CURVE rate over the median buffer rate (target: at least 0.7).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def sender_main(conn) -> None:
    """The sender process: ``("encode", spec, tokens, version)`` -> "ready"; ``("send", url)`` -> "sent"."""
    import zmq

    from buffer.curve import ClientKeys
    from dynamo_async.protocol import Completion, encode, pack_f32, pack_i32
    from dynamo_async.sample import SampleRecord

    ctx = zmq.Context()
    encoded: dict[str, list[bytes]] = {}
    rng = np.random.default_rng(0)
    while True:
        cmd = conn.recv()
        if cmd[0] == "encode":
            _, name, spec, tokens, version = cmd
            bases = [rng.integers(0, 150_000, tokens).astype(np.int32) for _ in range(16)]
            logprobs = pack_f32(-rng.random(tokens))
            versions = pack_i32(np.full(tokens, version, np.int32))
            frames = [
                encode(
                    Completion(
                        lease_id=lease_id,
                        sample=SampleRecord(
                            group_id=group_id,
                            prompt_id=prompt_id,
                            sample_index=i,
                            worker_id="bench-sender",
                            token_ids=pack_i32(bases[k % 16]),
                            logprobs=logprobs,
                            versions=versions,
                            finish_reason="stop",
                            acc=int((k * 7) % 3 == 0),
                            reward=1.0,
                            score_status="ok",
                            gen_seconds=1.0,
                            score_seconds=0.01,
                        ),
                    )
                )
                for k, (group_id, lease_id, prompt_id, i) in enumerate(spec)
            ]
            encoded[name] = frames
            conn.send(("ready", len(frames), len(frames[0])))
        elif cmd[0] == "send":
            _, url, name, keys = cmd
            frames = encoded[name]
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, -1)
            if keys is not None:
                ClientKeys.load(*keys).apply(push)
            push.connect(url)
            time.sleep(0.2)  # connected before the clock of the receiver can start
            for frame in frames:
                push.send(frame, copy=False)
            push.close()  # linger: returns once everything is delivered
            conn.send(("sent",))
        else:
            break
    ctx.term()


def make_timed_service(cfg, prompts, store):
    from buffer.service import BufferService

    class TimedService(BufferService):
        """Records when the first drained batch and the last completion were accepted."""

        def reset_clock(self) -> None:
            self.first = self.last = None
            self.seen = self.accepted = self.before_first = 0

        def add_completions(self, batch):
            reasons = super().add_completions(batch)
            now = time.perf_counter()
            if self.first is None:  # the clock starts once the first drained batch is in
                self.first, self.before_first = now, len(batch)
            self.last = now
            self.seen += len(batch)
            self.accepted += sum(r is None for r in reasons)
            return reasons

    svc = TimedService(cfg, prompts, store=store)
    svc.reset_clock()
    return svc


def lease_round(svc, groups: int, group_size: int) -> list[tuple[int, int, str, int]]:
    """Lease ``groups`` whole groups in process; (group, lease, prompt, sample) of every sample."""
    from dynamo_async.protocol import NoWork

    spec = []
    for _ in range(groups):
        items = svc.request_work("bench-sender", group_size)
        assert not isinstance(items, NoWork), f"no work for the benchmark: {items}"
        for item in items:
            spec.extend((item.group_id, item.lease_id, item.prompt_id, i) for i in item.sample_indices)
    return spec


def plain_round(ctx, conn, n: int, timeout_s: float) -> float:
    import zmq

    from dynamo_async.protocol import decode

    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    conn.send(("send", f"tcp://127.0.0.1:{port}", "buffer", None))
    first = last = None
    got = 0
    deadline = time.monotonic() + timeout_s
    try:
        while got < n:
            if not pull.poll(100):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"plain receiver: {got} of {n} messages")
                continue
            frame = pull.recv(copy=True)
            now = time.perf_counter()
            decode(frame)
            if first is None:
                first = now
            last = time.perf_counter()
            got += 1
    finally:
        pull.close()
    assert conn.recv() == ("sent",)
    return (n - 1) / (last - first)


def buffer_round(svc, server, conn, n: int, timeout_s: float, name: str = "buffer", keys=None) -> float:
    svc.reset_clock()
    conn.send(("send", server.endpoints.url(server.endpoints.completions), name, keys))
    deadline = time.monotonic() + timeout_s
    while svc.seen < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"buffer: {svc.seen} of {n} messages")
        time.sleep(0.001)
    svc.store.flush()  # the clock stops once the round's Arrow rows are on disk
    written = time.perf_counter()
    assert conn.recv() == ("sent",)
    assert svc.accepted == n, f"buffer accepted {svc.accepted} of {n} completions: {dict(svc.rejected)}"
    # messages received, decoded, accepted and written from the end of the first drained batch
    return (n - svc.before_first) / (written - svc.first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="completions per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each receiver, alternated")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per completion")
    parser.add_argument("--group", type=int, default=1000, help="samples per group (<= 4096)")
    args = parser.parse_args()
    import zmq

    from buffer.curve import ClientKeys, ServerKeys, write_keys
    from buffer.pool import PoolPrompt
    from buffer.server import BufferServer
    from buffer.store import RunStore, read_table
    from dynamo_async.config import load_config

    groups = -(-args.messages // args.group)
    n = groups * args.group
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
        [
            f"allocation.gen_batch_prompts={2 * groups}",  # a round leases for both buffer arms
            f"allocation.avg_rollouts={args.group}",
            f"allocation.g_min={args.group}",
            f"allocation.g_max={args.group}",
            "buffer.max_staleness=1",
        ],
    )
    prompts = [PoolPrompt(f"p{i}", f"prompt {i}", str(i), np.arange(64, dtype=np.int32) + i) for i in range(4 * groups)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sender = ctx.Process(target=sender_main, args=(child,), name="bench-sender", daemon=True)
    sender.start()
    zctx = zmq.Context()
    rates: dict[str, list[float]] = {"buffer": [], "plain": [], "curve": []}
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="buffer-ingest-") as run_dir:
            store = RunStore(run_dir, cfg.buffer.segment_bytes, cfg.buffer.flush_rows)
            svc = make_timed_service(cfg, prompts, store)
            keys = Path(run_dir) / "keys"
            write_keys(keys, 1)
            client = (str(keys / "clients" / "client-0.key_secret"), str(keys / "server.key"))
            with BufferServer(svc) as server, BufferServer(svc, keys=ServerKeys.load(keys)) as secure:
                secure._owners["bench-sender"] = ClientKeys.load(*client).public.decode()  # as after its hello
                for r in range(args.rounds):
                    for name in ("buffer", "curve"):
                        spec = lease_round(svc, groups, args.group)
                        assert len(spec) == n
                        parent.send(("encode", name, spec, args.tokens, svc.version))
                        _, count, size = parent.recv()
                        assert count == n
                    order = ("plain", "buffer", "curve") if r % 2 == 0 else ("curve", "buffer", "plain")
                    for kind in order:
                        if kind == "plain":
                            rate = plain_round(zctx, parent, n, timeout_s=60)
                        elif kind == "buffer":
                            rate = buffer_round(svc, server, parent, n, timeout_s=60)
                        else:
                            rate = buffer_round(svc, secure, parent, n, 60, "curve", client)
                        rates[kind].append(rate)
                        print(
                            f"round {r} {kind:6s} messages={n} bytes_per_message={size} msgs_per_s={rate:.0f}",
                            flush=True,
                        )
                    batch = svc.pull_batch(timeout=5)  # frees the round's groups (not timed)
                    assert batch is not None and batch.num_samples == 2 * n, f"no full batch: {svc.status()}"
                    svc.set_version(svc.version + 1)
            store.close()
            stored = read_table(run_dir, "completions", columns=["group_id"]).num_rows
            assert stored == 2 * n * args.rounds, f"store holds {stored} completions, expected {2 * n * args.rounds}"
            completed = int(svc.pool.attempts.sum())
            assert completed == 2 * n * args.rounds, f"statistics count {completed} attempts"
    finally:
        parent.send(("stop",))
        sender.join(timeout=10)
        if sender.is_alive():
            sender.terminate()
            sender.join(timeout=5)
        zctx.term()
    buffer_rate = statistics.median(rates["buffer"])
    plain_rate = statistics.median(rates["plain"])
    print(
        f"stored {stored} completions; statistics updated for {completed} attempts; "
        f"{time.monotonic() - t0:.1f} s in all"
    )
    curve_rate = statistics.median(rates["curve"])
    print(
        f"buffer_ingest ratio={buffer_rate / plain_rate:.4f} msgs_per_s={buffer_rate:.1f} "
        f"curve_ratio={curve_rate / buffer_rate:.4f} curve_msgs_per_s={curve_rate:.1f}"
    )


if __name__ == "__main__":
    main()

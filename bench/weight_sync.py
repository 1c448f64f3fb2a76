"""Weight sync through the project's path against one flat gloo broadcast of the same bytes.

A learner process (this one) and 2 worker processes, on loopback with gloo:

- project path: ``WeightSender.broadcast`` (sync plan, dtype-grouped buckets packed from the
  model's parameters) -> each worker's ``WeightReceiver`` thread stages the buckets -> the
  worker swaps them into its own SmolLM2 model (``load_staged``) and acknowledges;
- baseline: one ``broadcast`` of a single flat uint8 tensor holding the same number of bytes,
  already packed, into a preallocated buffer; the worker acknowledges on receipt.

Rounds alternate; each time runs from the start of the send until both workers acknowledged.
``--dtype`` is ``model.compute_dtype``, the dtype workers receive (bfloat16 for the presets:
half the bytes of float32). Prints per-round figures and, as its last line, ``weight_sync
dtype=<dtype> bytes=<int> ratio=<float> seconds=<float>`` (median project time over median
baseline time; the project's median seconds). Target: ratio at most 1.25.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time


def worker_main(
    index: int, model_name: str, dtype: str, sync_port: int, plain_port: int, total_bytes: int, conn
) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from dynamo_async.models import load_model
    from workers.receiver import WeightReceiver, load_staged

    torch.set_num_threads(1)
    model = load_model(model_name, dtype)  # workers generate in the compute dtype
    receiver = WeightReceiver(f"bench-{index}", "127.0.0.1", sync_port, timeout_s=120)
    receiver.start()
    store = dist.TCPStore("127.0.0.1", plain_port, is_master=False, timeout=datetime.timedelta(seconds=120))
    plain = dist.ProcessGroupGloo(dist.PrefixStore("plain/", store), index + 1, 3, datetime.timedelta(seconds=120))
    flat = torch.empty(total_bytes, dtype=torch.uint8)
    conn.send_bytes(b"ready")
    while (cmd := conn.recv_bytes()) != b"quit":
        if cmd == b"project":
            version = int(conn.recv_bytes())
            staged = receiver.wait_for_version(version, timeout_s=120)
            assert staged is not None, "no weights staged"
            load_staged(model, staged[1])
        else:
            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            plain.broadcast([flat], opts).wait()
        conn.send_bytes(b"done")
    receiver.stop()
    receiver.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float32"],
        help="model.compute_dtype: the dtype of the broadcast buckets (the presets': bfloat16)",
    )
    args = parser.parse_args()

    import datetime

    import torch
    import torch.distributed as dist

    from dynamo_async.models import load_model, resolve_model
    from dynamo_async.weights.sender import WeightSender

    resolve_model(args.model)  # build the cache once, before the workers load it
    torch.set_num_threads(1)
    model = load_model(args.model, args.dtype)  # the learner's compute copy, which it broadcasts
    tensors = {n: p.detach() for n, p in model.named_parameters()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    sender = WeightSender("127.0.0.1", 0, timeout_s=120)
    sender.bind({n: p for n, p in model.named_parameters()})  # as the learner does
    tensors = {n: p.detach() for n, p in model.named_parameters()}
    plain_store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=120)
    )
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for i in range(2):
        parent, child = ctx.Pipe()
        procs.append(
            ctx.Process(
                target=worker_main, args=(i, args.model, args.dtype, sender.port, plain_store.port, total, child)
            )
        )
        pipes.append(parent)
        procs[-1].start()
    plain = dist.ProcessGroupGloo(dist.PrefixStore("plain/", plain_store), 0, 3, datetime.timedelta(seconds=120))
    flat = torch.empty(total, dtype=torch.uint8)
    for p in pipes:
        assert p.recv_bytes() == b"ready"
    times: dict[str, list[float]] = {"project": [], "plain": []}
    try:
        for r in range(args.rounds + 1):  # round 0 warms up
            for kind in ("project", "plain") if r % 2 == 0 else ("plain", "project"):
                start = time.perf_counter()
                for p in pipes:
                    p.send_bytes(kind.encode())
                if kind == "project":
                    for p in pipes:
                        p.send_bytes(str(r + 1).encode())
                    report = sender.broadcast(tensors, r + 1, ["bench-0", "bench-1"])
                    assert report.error is None, report.error
                else:
                    opts = dist.BroadcastOptions()
                    opts.rootRank = 0
                    plain.broadcast([flat], opts).wait()
                for p in pipes:
                    assert p.recv_bytes() == b"done"
                took = time.perf_counter() - start
                if r > 0:
                    times[kind].append(took)
                print(f"round {r} {kind:7s} {total / 1e6:.0f} MB to 2 workers: {took:.3f} s", flush=True)
    finally:
        for p in pipes:
            p.send_bytes(b"quit")
        for proc in procs:
            proc.join(60)
    project, base = statistics.median(times["project"]), statistics.median(times["plain"])
    print(f"median: project {project:.3f} s, plain broadcast {base:.3f} s")
    print(f"weight_sync dtype={args.dtype} bytes={total} ratio={project / base:.4f} seconds={project:.4f}")


if __name__ == "__main__":
    main()

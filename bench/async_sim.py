"""The paper's scale on a virtual clock: simulated workers and learner driving the real buffer.

No models: ``BufferService`` (gate, leases, water-filling, staleness drops) runs unchanged on a
virtual clock, and an event loop plays the GPUs:

- ``--prompts`` prompts with true success rates from a mix of easy, impossible and frontier
  ones; 512 prompts per step, 16 rollouts on average in [8, 24] (Table 3);
- ``--gen-gpus`` workers, each asking for ``--capacity`` samples at a time; a response's length
  is drawn from a long-tailed distribution (lognormal, median ``--median-tokens``, capped at
  8192), and a worker's batch takes its tokens divided by ``--gen-rate`` (tokens per second per
  GPU); its samples are correct with their prompt's rate and carry the weight version the
  worker held when it started;
- a learner of ``--train-gpus`` GPUs takes a batch when one is ready and spends its tokens
  divided by ``--train-rate`` times the GPUs; then the version goes up (the broadcast is taken as
  instantaneous), which is when the gate admits the next version's groups.

Throughput is samples trained per virtual second over steps 2 to ``--steps`` (step 1 fills the
pipeline), for ``max_staleness`` 0 (synchronous: generation and training alternate) to 8, with
DynaMO's allocation and with uniform budgets (``trained_off_policy``: the share of trained groups
generated with older weights than the step's, within the limit). Prints a table and, as its last line,
``async_sim speedup_eta4=<float> dropped_eta4=<float> ...`` (DynaMO's allocation; dropped is the
fraction of finished groups dropped as too stale).
"""

from __future__ import annotations

import argparse
import heapq
import itertools

import numpy as np

MAX_TOKENS = 8192


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def true_rates(n: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(3, size=n, p=[0.3, 0.3, 0.4])
    return np.choose(kind, [rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 0.02, n), rng.uniform(0.1, 0.9, n)])


def simulate(args, eta: int, dynamic: bool) -> dict:
    from buffer.pool import PoolPrompt
    from buffer.service import BufferService
    from dynamo_async.config import load_config
    from dynamo_async.protocol import Completion, NoWork, pack_f32, pack_i32
    from dynamo_async.sample import SampleRecord

    cfg = load_config(
        None,
        [
            "model.name=x",
            f"method={'dynamo' if dynamic else 'grpo'}",
            "allocation.gen_batch_prompts=512",
            "allocation.avg_rollouts=16",
            *(("allocation.g_min=8", "allocation.g_max=24") if dynamic else ()),
            f"buffer.max_staleness={eta}",
            "buffer.lease_timeout_s=1e9",
            "buffer.worker_timeout_s=1e9",  # simulated workers send no heartbeats while they generate
            f"trainer.seed={args.seed}",
        ],
    )
    rng = np.random.default_rng(args.seed)
    rates = true_rates(args.prompts, rng)
    prompts = [PoolPrompt(f"p{i}", "", "1", np.array([1], np.int32)) for i in range(args.prompts)]
    clock = Clock()
    svc = BufferService(cfg, prompts, clock=clock)
    index = {p.prompt_id: i for i, p in enumerate(prompts)}
    lengths: dict[tuple[int, int], int] = {}
    events: list = []
    order = itertools.count()
    for w in range(args.gen_gpus):
        heapq.heappush(events, (0.0, next(order), "ask", w))
    learner_busy, ends, trained, dropped, kept_stale = False, [], 0, 0, 0

    def finished(w: int, items, version: int) -> list:
        out = []
        for item in items:
            p = rates[index[item.prompt_id]]
            for i in item.sample_indices:
                acc = int(rng.random() < p)
                rec = SampleRecord(
                    group_id=item.group_id, prompt_id=item.prompt_id, sample_index=i, token_ids=pack_i32([7]),
                    logprobs=pack_f32([-1.0]), versions=pack_i32([version]), acc=acc, reward=float(2 * acc - 1),
                    finish_reason="stop", worker_id=f"w{w}", score_status="ok", gen_seconds=0.0, score_seconds=0.0,
                )  # fmt: skip
                out.append(Completion(lease_id=item.lease_id, sample=rec))
        return out

    while len(ends) < args.steps:
        clock.t, _, kind, data = heapq.heappop(events)
        if kind == "ask":
            items = svc.request_work(f"w{data}", args.capacity)
            if isinstance(items, NoWork):
                heapq.heappush(events, (clock.t + args.retry_s, next(order), "ask", data))
                continue
            tokens = 0
            for item in items:
                for i in item.sample_indices:
                    n = int(min(MAX_TOKENS, max(16, rng.lognormal(np.log(args.median_tokens), args.sigma))))
                    lengths[item.group_id, i] = n
                    tokens += n
            done = clock.t + tokens / args.gen_rate
            heapq.heappush(events, (done, next(order), "done", (data, items, svc.version)))
        elif kind == "done":
            w, items, version = data
            reasons = svc.add_completions(finished(w, items, version))
            assert all(r is None for r in reasons), reasons
            heapq.heappush(events, (clock.t, next(order), "ask", w))
        elif kind == "learned":
            trained += data
            ends.append(clock.t)
            svc.set_version(svc.version + 1)
            learner_busy = False
        if not learner_busy:
            batch = svc.pull_batch(timeout=0)
            if batch is not None:
                learner_busy = True
                dropped += batch.dropped_stale
                kept_stale += sum(s > 0 for s in batch.staleness)
                tokens = sum(lengths[g.group_id, s.sample_index] for g in batch.groups for s in g.samples)
                seconds = tokens / (args.train_rate * args.train_gpus)
                heapq.heappush(events, (clock.t + seconds, next(order), "learned", batch.num_samples))
    per_step = trained / len(ends)
    groups = 512 * len(ends)
    return {
        "samples_per_s": per_step * (len(ends) - 1) / (ends[-1] - ends[0]),
        "dropped": dropped / (groups + dropped),
        "off_policy": kept_stale / groups,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--prompts", type=int, default=1024, help="pool size: 2 steps an epoch, so budgets vary from step 3"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gen-gpus", type=int, default=24)
    parser.add_argument("--train-gpus", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=256, help="samples a worker generates at once")
    parser.add_argument("--gen-rate", type=float, default=2000.0, help="generated tokens per second per GPU")
    parser.add_argument("--train-rate", type=float, default=6000.0, help="trained tokens per second per GPU")
    parser.add_argument("--median-tokens", type=float, default=1500.0)
    parser.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of response lengths")
    parser.add_argument("--retry-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {}
    for dynamic in (True, False):
        for eta in (0, 1, 2, 4, 8):
            r = simulate(args, eta, dynamic)
            results[dynamic, eta] = r
            base = results[dynamic, 0]["samples_per_s"]
            print(
                f"allocation={'dynamo' if dynamic else 'uniform'} max_staleness={eta} "
                f"samples_per_s={r['samples_per_s']:.1f} speedup={r['samples_per_s'] / base:.3f} "
                f"dropped={r['dropped']:.4f} trained_off_policy={r['off_policy']:.4f}",
                flush=True,
            )
    d4, u4 = results[True, 4], results[False, 4]
    print(
        f"async_sim speedup_eta4={d4['samples_per_s'] / results[True, 0]['samples_per_s']:.3f} "
        f"dropped_eta4={d4['dropped']:.4f} uniform_speedup_eta4="
        f"{u4['samples_per_s'] / results[False, 0]['samples_per_s']:.3f} uniform_dropped_eta4={u4['dropped']:.4f}"
    )


if __name__ == "__main__":
    main()

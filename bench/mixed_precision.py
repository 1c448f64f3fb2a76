"""bf16 compute with float32 masters against float32 and against pure bf16, at the presets' lr.

Three arms, fixed in advance, each a ``Trainer`` from the same weights, trained on the same
batches (groups with mixed rewards) for ``--steps`` learner steps at lr 1e-6 (Table 3), no
warm-up:

- ``fp32``: ``model.compute_dtype: float32`` (parameters are the masters);
- ``bf16+masters``: ``model.compute_dtype: bfloat16`` (this project: float32 masters and AdamW
  state, forward and backward in bf16);
- ``pure bf16``: the learner before float32 masters: parameters and AdamW state in bf16;
- ``fp32+autocast``: the other way to float32 masters that was considered: float32
  parameters, the step run under ``torch.autocast(bfloat16)`` (for its time only; autocast also
  reaches the objective's statistics, which the project keeps in float32).

Figures: the fraction of weight elements each arm moved, over the float32 arm's (target for
bf16+masters: at least 0.9), and the learner step time of bf16+masters over pure bf16 (the
arms alternate step by step; medians). Last line:
``mixed_precision moved_ratio=<bf16+masters / fp32> pure_bf16_moved_ratio=<...> step_ratio=<...>``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def make_batch(vocab: int, groups: int, samples: int, prompt_len: int, response_len: int, seed: int = 0):
    import numpy as np

    from buffer.batch import LearnerBatch, ReadyGroup
    from dynamo_async.protocol import pack_f32, pack_i32
    from dynamo_async.sample import SampleRecord

    rng = np.random.default_rng(seed)
    out = []
    for g in range(groups):
        prompt = rng.integers(5, vocab, prompt_len).astype(np.int32)
        items = []
        for i in range(samples):
            n = int(response_len * (0.5 + rng.random()))
            items.append(
                SampleRecord(
                    group_id=g,
                    prompt_id=f"p{g}",
                    sample_index=i,
                    worker_id="bench",
                    token_ids=pack_i32(rng.integers(5, vocab, n)),
                    logprobs=pack_f32(-0.5 - rng.random(n)),
                    versions=pack_i32(np.zeros(n)),
                    finish_reason="stop",
                    acc=(i + g) % 2,
                    reward=float(2 * ((i + g) % 2) - 1),
                    score_status="ok",
                    gen_seconds=0.0,
                    score_seconds=0.0,
                )
            )
        out.append(ReadyGroup(g, f"p{g}", prompt, "1", tuple(items)))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(out), staleness=(0,) * groups)


def make_trainer(model: str, arm: str, device: str):
    import torch

    from dynamo_async.config import load_config
    from dynamo_async.learner.optim import make_optimizer
    from dynamo_async.learner.trainer import Trainer

    dtype = "bfloat16" if arm == "bf16+masters" else "float32"
    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"model.name={model}",
            f"model.compute_dtype={dtype}",
            "optim.lr=1e-6",
            "optim.warmup_steps=0",
            "optim.weight_decay=0.1",
            "method=dynamo",
            "optim.micro_batch_tokens=2048",
        ],
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg, device)
    if arm == "pure bf16":  # parameters (still the optimizer's tensors) cast to bf16 in place
        trainer.model.to(torch.bfloat16)
        trainer.opt, trainer.sched = make_optimizer(trainer.masters.parameters(), cfg.optim)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-math")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--response-len", type=int, default=48)
    args = parser.parse_args()

    import torch

    from dynamo_async.models import resolve_model

    resolve_model(args.model)
    arms = ["fp32", "bf16+masters", "pure bf16", "fp32+autocast"]
    trainers = {arm: make_trainer(args.model, arm, args.device) for arm in arms}
    vocab = trainers["fp32"].model.config.vocab_size
    batch = make_batch(vocab, args.groups, args.samples, args.prompt_len, args.response_len)
    before = {arm: {n: t.detach().float().clone() for n, t in tr.masters.named.items()} for arm, tr in trainers.items()}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for step in range(args.steps):
        for arm, tr in trainers.items():
            t0 = time.perf_counter()
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=arm == "fp32+autocast"):
                metrics = tr.train_on(batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[arm].append(time.perf_counter() - t0)
            print(
                f"step {step} {arm:>13}: {times[arm][-1]:.3f} s loss {metrics['loss']:+.6f} "
                f"grad_norm {metrics['grad_norm']:.4f}"
            )
    moved = {}
    for arm, tr in trainers.items():
        total = sum(t.numel() for t in before[arm].values())
        changed = sum(int((before[arm][n] != t.detach().float()).sum()) for n, t in tr.masters.named.items())
        moved[arm] = changed / total
        print(
            f"{arm:>13}: {100 * moved[arm]:.2f}% of {total} weight elements moved; "
            f"median step {statistics.median(times[arm]):.3f} s"
        )
    assert all(p.dtype == torch.bfloat16 for p in trainers["bf16+masters"].model.parameters())
    ratio = moved["bf16+masters"] / moved["fp32"]
    pure = moved["pure bf16"] / moved["fp32"]
    step_ratio = statistics.median(times["bf16+masters"]) / statistics.median(times["pure bf16"])
    autocast = statistics.median(times["bf16+masters"]) / statistics.median(times["fp32+autocast"])
    print(f"bf16+masters step over fp32+autocast step: {autocast:.4f}")
    print(f"mixed_precision moved_ratio={ratio:.4f} pure_bf16_moved_ratio={pure:.4f} step_ratio={step_ratio:.4f}")


if __name__ == "__main__":
    main()

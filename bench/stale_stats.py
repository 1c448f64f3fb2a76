"""How far the proximal pass's statistics are from the current weights' for later mini-batches.

A learner step runs one proximal pass with the weights at the step's start, then one optimizer
step per mini-batch. Mini-batch j > 0 is trained with the per-token entropy and vocabulary sum
(and their mini-batch normalisers) of the step-start weights, while its pi(a) comes from the
weights after j updates. This script measures that approximation on the demo's shape
(``configs/demo.yaml``: SmolLM2-135M-Instruct, DynaMO, 8 prompts x 8 responses sampled from the
model), one prompt per mini-batch (8 mini-batches, the last 7 updates after the pass), for two
learning rates fixed in advance: 1e-6 (the paper's presets) and 2e-5 (the demo's), plus 1e-30
(weights that do not move: the measurement's floor).

Before each mini-batch's update it recomputes the statistics with the current weights and
reports, over mini-batches 1..7 (the largest value): the relative L1 error of the entropy and
of the vocabulary sum over response tokens, and the relative difference of the mini-batch's
loss computed with the proximal statistics against with the current ones.
``optim.refresh_stats`` (the default) removes the error with one more no-grad forward of each
later mini-batch; ``refresh_step_ratio`` is the step time with it over without (same batch,
alternated, medians). Last line: ``stale_stats refresh_step_ratio=<float> loss_rel_lr1e-6=...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
SHAPE = ("optim.warmup_steps=0", "optim.mini_batch_prompts=1")
LRS = ("1e-30", "1e-6", "2e-5")  # 1e-30: the floor (weights do not move); the presets; the demo


def _rel(fresh, stale, mask) -> float:

    m = mask.bool()
    return float((fresh[m] - stale[m]).abs().sum() / fresh[m].abs().sum().clamp_min(1e-30))


def _fresh(trainer, mini) -> dict:
    """Statistics of ``mini`` under the current weights, and its normalisers from them."""
    import dataclasses

    import torch

    obj, out, norms = trainer.objective, {}, {}
    with torch.no_grad():
        for k, mb in enumerate(mini.all()):
            stats = obj.proximal_stats(trainer._logits(mb), mb.targets, mask=mb.mask)
            out[k] = stats
            pb = dataclasses.replace(trainer._policy_batch(mb), entropy=stats.entropy, vocab_sum=stats.vocab_sum)
            for key, v in obj.mini_batch_stats(stats, pb).items():
                norms[key] = max(norms.get(key, -float("inf")), v)
    return {"stats": out, "normalisers": norms}


def _loss(trainer, mb, entropy, vocab_sum, normalisers) -> float:
    import dataclasses

    import torch

    pb = dataclasses.replace(trainer._policy_batch(mb), entropy=entropy, vocab_sum=vocab_sum, normalisers=normalisers)
    with torch.no_grad():
        loss, _ = trainer.objective(trainer._logits(mb), pb, torch.Generator().manual_seed(0))
    return float(loss)


def measure(lr: str, batch_of) -> dict:
    from dynamo_async.config import load_config
    from dynamo_async.learner.trainer import Trainer

    cfg = load_config(DEMO, [f"optim.lr={lr}", *SHAPE, "optim.refresh_stats=false"])
    trainer = Trainer(cfg, "cpu")
    minis = trainer.prepare(batch_of(trainer, cfg))
    trainer.proximal_pass(minis)
    worst = {"entropy_rel": 0.0, "vocab_sum_rel": 0.0, "loss_rel": 0.0}
    for j, mini in enumerate(minis):
        if j > 0 and mini.update:
            fresh = _fresh(trainer, mini)
            for k, mb in enumerate(mini.all()):
                st = fresh["stats"][k]
                if mb.entropy is not None:
                    worst["entropy_rel"] = max(worst["entropy_rel"], _rel(st.entropy, mb.entropy, mb.mask))
                if mb.vocab_sum is not None:
                    worst["vocab_sum_rel"] = max(worst["vocab_sum_rel"], _rel(st.vocab_sum, mb.vocab_sum, mb.mask))
            for k, mb in enumerate(mini.update):
                stale = _loss(trainer, mb, mb.entropy, mb.vocab_sum, mb.normalisers)
                st = fresh["stats"][k]
                now = _loss(trainer, mb, st.entropy, st.vocab_sum, fresh["normalisers"])
                worst["loss_rel"] = max(worst["loss_rel"], abs(stale - now) / max(abs(now), 1e-30))
        trainer.update([mini])  # this mini-batch's optimizer step
    return worst


def refresh_cost(batch, rounds: int) -> float:
    """Median step time with ``optim.refresh_stats`` on over off (lr 1e-6), alternated."""
    import statistics
    import time

    from dynamo_async.config import load_config
    from dynamo_async.learner.trainer import Trainer

    arms = {
        on: Trainer(load_config(DEMO, ["optim.lr=1e-6", *SHAPE, f"optim.refresh_stats={on}"]))
        for on in ("true", "false")
    }
    times: dict[str, list[float]] = {on: [] for on in arms}
    for r in range(rounds + 1):
        for on in arms if r % 2 == 0 else list(arms)[::-1]:
            t0 = time.perf_counter()
            arms[on].train_on(batch)
            if r:  # round 0 warms up
                times[on].append(time.perf_counter() - t0)
    return statistics.median(times["true"]) / statistics.median(times["false"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-prompts", type=int, default=8)
    parser.add_argument("--demo-samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per arm for refresh_step_ratio")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from learner_step import demo_batch

    cache: dict = {}

    def batch_of(trainer, cfg):
        if "batch" not in cache:  # the same sampled batch for both learning rates
            cache["batch"] = demo_batch(trainer, cfg, args)
        return cache["batch"]

    torch.manual_seed(0)
    results = {lr: measure(lr, batch_of) for lr in LRS}
    for lr, r in results.items():
        print(f"stale_stats_lr{lr} " + " ".join(f"{k}={v:.3g}" for k, v in r.items()), flush=True)
    ratio = refresh_cost(cache["batch"], args.rounds)
    tail = f"refresh_step_ratio={ratio:.3f} " + " ".join(
        f"{k}_lr{lr}={r[k]:.3g}" for lr, r in results.items() for k in ("loss_rel", "entropy_rel")
    )
    print(f"stale_stats {tail} mini_batches={args.demo_prompts}")


if __name__ == "__main__":
    main()

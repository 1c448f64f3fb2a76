"""One full learner step (proximal pass + update), today's path against everything on.

Two arms, fixed in advance, on the same batch, alternated in one process (median of
``--rounds`` after one warm-up round each):

- ``full_rows``: the path before prompts were shared: every sample as ``prompt + response``
  rows in the batch's order, zero-advantage samples trained on, DynaMO's normalisers per
  micro-batch (``optim.shared_prompt=false optim.sort_by_length=false
  optim.skip_zero_advantage=false modulation.normaliser_scope=micro_batch``);
- ``shared``: the defaults: each group's prompt forwarded once, zero-advantage samples left
  out of the update, micro-batches by length, mini-batch normalisers.

Shapes:

- ``demo`` (the headline): ``configs/demo.yaml`` (SmolLM2-135M-Instruct, DynaMO, 8 prompts x 8
  samples, micro-batches of 2048 tokens): the first 8 training prompts rendered as the demo
  renders them (system prompt, one worked example), 8 responses each sampled from the model
  at the demo's temperature and length cap, so prompt and response lengths are the demo's;
  groups 0-3 get mixed rewards, groups 4-7 all-equal ones (half zero-variance).
- ``long``: prompts of 256 and responses of 1024 random tokens, every group mixed (no
  zero-variance), ``--long-prompts`` x ``--long-samples``, the default micro-batch size
  (16384): where the prompt is a small part of each row and the gain is small.

Prints one line per shape, ``learner_step_long ratio=...`` then, last, ``learner_step
ratio=<float> ...`` (shared over full_rows on the demo shape). Targets: at most 0.33 (demo),
at most 1.02 (long).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_ROWS = (
    "optim.shared_prompt=false",
    "optim.sort_by_length=false",
    "optim.skip_zero_advantage=false",
    "modulation.normaliser_scope=micro_batch",
)


def demo_batch(trainer, cfg, args):
    """8 demo prompts x 8 responses sampled from the model (the demo's lengths)."""
    import numpy as np
    import torch

    from dynamo_async.data.prompts import prompt_ids, training_problems

    problems = training_problems(cfg.data)[: args.demo_prompts]
    prompts = [prompt_ids(trainer.tokenizer, p.problem, cfg) for p in problems]
    torch.manual_seed(0)
    responses = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.from_numpy(ids.astype(np.int64))[None].repeat(args.demo_samples, 1)
            out = trainer.model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                do_sample=True,
                temperature=cfg.rollout.temperature,
                max_new_tokens=cfg.rollout.max_new_tokens,
                pad_token_id=trainer.tokenizer.pad_token_id,
            )[:, x.shape[1] :]
            responses.append([_until_eos(row.numpy(), trainer.tokenizer.eos_token_id) for row in out])
    accs = [[(i + g) % 2 for i in range(args.demo_samples)] if g < len(prompts) // 2 else [0] * args.demo_samples
            for g in range(len(prompts))]  # fmt: skip
    return _batch(prompts, responses, accs)


def long_batch(args, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    prompts = [rng.integers(5, vocab, 256).astype(np.int32) for _ in range(args.long_prompts)]
    responses = [[rng.integers(5, vocab, 1024).astype(np.int32) for _ in range(args.long_samples)] for _ in prompts]
    accs = [[i % 2 for i in range(args.long_samples)] for _ in prompts]
    return _batch(prompts, responses, accs)


def _until_eos(row, eos: int):
    import numpy as np

    stop = np.nonzero(row == eos)[0]
    return (row[: stop[0] + 1] if stop.size else row).astype(np.int32)


def _batch(prompts, responses, accs):
    import numpy as np

    from buffer.batch import LearnerBatch, ReadyGroup
    from dynamo_async.protocol import pack_f32, pack_i32
    from dynamo_async.sample import SampleRecord

    groups = []
    for g, (prompt, rs, acc) in enumerate(zip(prompts, responses, accs)):
        samples = tuple(
            SampleRecord(
                group_id=g,
                prompt_id=f"p{g}",
                sample_index=i,
                token_ids=pack_i32(r),
                logprobs=pack_f32(np.full(len(r), -1.0, np.float32)),
                versions=pack_i32(np.zeros(len(r), np.int32)),
                acc=a,
                reward=float(2 * a - 1),
                finish_reason="stop",
                worker_id="bench",
                score_status="ok",
                gen_seconds=0.0,
                score_seconds=0.0,
            )  # fmt: skip
            for i, (r, a) in enumerate(zip(rs, acc))
        )
        groups.append(ReadyGroup(g, f"p{g}", np.asarray(prompt, np.int32), "1", samples))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(groups), staleness=(0,) * len(groups))


def measure(name: str, arms: dict, batch, rounds: int) -> dict:
    """Alternate the arms on ``batch``; median seconds and the last step's metrics per arm."""
    times = {a: [] for a in arms}
    metrics = {}
    for r in range(rounds + 1):
        for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            start = time.perf_counter()
            metrics[arm] = arms[arm].train_on(batch)
            if r > 0:  # round 0 warms up
                times[arm].append(time.perf_counter() - start)
    return {a: (statistics.median(t), metrics[a]) for a, t in times.items()}


def report(label: str, result: dict, batch) -> None:
    (old_s, old_m), (new_s, new_m) = result["full_rows"], result["shared"]
    prompt = sum(len(g.prompt_token_ids) for g in batch.groups) / len(batch.groups)
    samples = [s.num_tokens for g in batch.groups for s in g.samples]
    print(
        f"{label} ratio={new_s / old_s:.4f} full_rows_s={old_s:.3f} shared_s={new_s:.3f} "
        f"groups={len(batch.groups)} samples={len(samples)} prompt_mean={prompt:.1f} "
        f"response_mean={sum(samples) / len(samples):.1f} response_max={max(samples)} "
        f"padded_frac_full_rows={old_m['padded_frac']:.3f} padded_frac_shared={new_m['padded_frac']:.3f} "
        f"skipped_samples={new_m['skipped_samples']:.0f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="long,demo", help="comma-separated: long, demo")
    parser.add_argument("--demo-prompts", type=int, default=8)
    parser.add_argument("--demo-samples", type=int, default=8)
    parser.add_argument("--long-prompts", type=int, default=1)
    parser.add_argument("--long-samples", type=int, default=4)
    parser.add_argument("--long-rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from dynamo_async.config import load_config

    def configs(*extra):
        return {
            "full_rows": load_config(args.config, [*extra, *FULL_ROWS]),
            "shared": load_config(args.config, list(extra)),
        }

    shapes = args.shapes.split(",")
    demo_cfgs = configs()
    long_cfgs = configs("optim.micro_batch_tokens=16384", f"optim.mini_batch_prompts={args.long_prompts}")

    import torch

    from dynamo_async.learner.trainer import Trainer

    print(f"device={args.device} threads={torch.get_num_threads()} model={demo_cfgs['shared'].model.name}")
    if "long" in shapes:
        torch.manual_seed(0)
        arms = {a: Trainer(c, args.device) for a, c in long_cfgs.items()}
        batch = long_batch(args, arms["shared"].model.config.vocab_size)
        report("learner_step_long", measure("long", arms, batch, args.long_rounds), batch)
        del arms
    if "demo" in shapes:
        torch.manual_seed(0)
        arms = {a: Trainer(c, args.device) for a, c in demo_cfgs.items()}
        batch = demo_batch(arms["shared"], demo_cfgs["shared"], args)
        report("learner_step", measure("demo", arms, batch, args.rounds), batch)


if __name__ == "__main__":
    main()

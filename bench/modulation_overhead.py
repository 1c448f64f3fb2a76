"""Overhead of DynaMO's token-level modulation on one loss-and-backward step.

Same model (SmolLM2-135M-Instruct, the embedded default), same batch, runs alternated in
one process: plain GRPO computes only the sampled tokens' log-probs; DynaMO also computes
the entropy and the vocabulary sum of Theorem 1 (exact entropy change), both modulation
factors, and the modulated loss.

Two placements of DynaMO's statistics are timed:
- ``in_step`` (the headline): computed inside the loss-and-backward step itself, as in
  ``off_policy.mode: behavior``;
- ``proximal``: computed in the proximal pass that decoupled PPO runs anyway (docs/design.md section 8);
  here both methods are timed as proximal pass + loss-and-backward.

Prints the median times and, as its last line, ``modulation_overhead ratio=<float>``
(DynaMO over GRPO, in_step). Target: at most 1.03 (the paper reports under 3%, Appendix K).
"""

from __future__ import annotations

import argparse
import statistics
import time


def make_batch(model, args, torch):
    from dynamo_async.algo.objective import PolicyBatch

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    seq = torch.randint(0, vocab, (args.batch, args.prompt + args.response), generator=gen).to(args.device)
    tokens = seq[:, args.prompt :]
    mask = torch.ones(tokens.shape, device=args.device)
    for i in range(args.batch):  # ragged responses: right padding
        mask[i, args.response - 8 * i :] = 0
    with torch.no_grad():
        logits = model(input_ids=seq).logits[:, args.prompt - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    noise = 0.05 * torch.randn(logp.shape, generator=gen).to(args.device)
    adv = torch.tensor([1.0, -1.0] * (args.batch // 2), device=args.device)
    return seq, PolicyBatch(tokens=tokens, mask=mask, advantages=adv, logp_old=logp + noise, logp_behavior=logp - noise)


def load(args, torch):
    if args.config_only:
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config_only))
        return model.to(device=args.device, dtype=getattr(torch, args.dtype))
    from dynamo_async.models import load_model

    return load_model(args.model, args.dtype, args.device)


def sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step(model, seq, batch, cfg, prompt, entropy_metric, proximal, torch) -> float:
    import dataclasses

    from dynamo_async.algo.objective import policy_objective, proximal_stats

    model.zero_grad(set_to_none=True)
    sync(torch)
    start = time.perf_counter()
    if proximal:
        with torch.no_grad():
            logits = model(input_ids=seq).logits[:, prompt - 1 : -1]
            stats = proximal_stats(logits, batch.tokens, cfg, entropy_metric=entropy_metric, mask=batch.mask)
        batch = dataclasses.replace(batch, logp_old=stats.logp, entropy=stats.entropy, vocab_sum=stats.vocab_sum)
    logits = model(input_ids=seq).logits[:, prompt - 1 : -1]
    loss, _ = policy_objective(logits, batch, cfg, entropy_metric=entropy_metric)
    loss.backward()
    sync(torch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--response", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--config-only",
        metavar="DIR",
        help=(
            "build a randomly initialised model from DIR/config.json instead of loading weights "
            "(same shapes and cost; for machines without the weights)"
        ),
    )
    args = parser.parse_args()

    from dynamo_async.config import load_config

    grpo = load_config(None, [f"model.name={args.model}", "method=grpo"])
    dynamo = load_config(None, [f"model.name={args.model}", "method=dynamo"])

    import torch

    model = load(args, torch)
    seq, batch = make_batch(model, args, torch)
    runs = [
        (m, cfg, m == "dynamo", placement)
        for placement in ("in_step", "proximal")
        for m, cfg in (("grpo", grpo), ("dynamo", dynamo))
    ]
    times: dict[tuple[str, str], list[float]] = {(m, p): [] for m, _, _, p in runs}
    for r in range(args.rounds + 1):
        for name, cfg, ent, placement in runs if r % 2 == 0 else runs[::-1]:
            t = step(model, seq, batch, cfg, args.prompt, ent, placement == "proximal", torch)
            if r > 0:  # round 0 warms up
                times[(name, placement)].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = int(batch.mask.sum())
    pg, pd = med[("grpo", "proximal")], med[("dynamo", "proximal")]
    print(f"proximal: grpo_median_s={pg:.3f} dynamo_median_s={pd:.3f} ratio={pd / pg:.4f}")
    g, d = med[("grpo", "in_step")], med[("dynamo", "in_step")]
    print(
        f"in_step: device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"batch={args.batch}x{args.prompt + args.response} "
        f"response_tokens={tokens} grpo_median_s={g:.3f} dynamo_median_s={d:.3f}"
    )
    print(f"modulation_overhead ratio={d / g:.4f}")


if __name__ == "__main__":
    main()

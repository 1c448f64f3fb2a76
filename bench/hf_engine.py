"""Generation throughput of the ``hf`` engine against a bare ``model.generate`` on the same model.

Both sample the same batch of chat prompts (the synthetic task's, via ``dynamo_async.data.prompts``)
with the same temperature and top-p, from the same model object, and produce exactly
``--max-new-tokens`` tokens per row:

- ``model.generate(do_sample=True, temperature, top_p, top_k=0, min_new_tokens=N, max_new_tokens=N)``
  (``min_new_tokens`` masks eos, so no row stops early);
- ``HFEngine.generate`` with a tokenizer view whose eos id is one no token has, so no row stops
  early either (an eos the model samples is simply kept, at the same cost).

Generated tokens are counted from the outputs (and checked equal). Runs alternate in one process
(the order flips every round), after one warm-up run of each; the figures are medians over rounds.
The engine also computes what ``generate`` does not: per-token log-probs and entropy of the
temperature-scaled distribution, and one seeded generator per row.

Prints per-round figures and, as its last line,
``hf_engine ratio=<engine tokens/s over generate tokens/s> tokens_per_s=<engine tokens/s>``.
Target: ratio >= 0.9. About 1-2 minutes with SmolLM2-135M on 2 cores (plus ~15 s to build it
on first use); ``--model builtin:tiny`` for a quick run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


class _NoEosTokenizer:
    """The tokenizer as HFEngine sees it, with an eos id that no token has (rows never stop)."""

    def __init__(self, tokenizer):
        self.eos_token_id = -1
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_padded(prompts: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(np.asarray(p, dtype=np.int64))
        mask[i, width - len(p) :] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8, help="prompts per generation call")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dynamo_async.config import load_config
    from dynamo_async.data.prompts import pool_prompts, training_problems
    from dynamo_async.models import load_model, load_tokenizer
    from workers.engine import GenRequest
    from workers.hf_engine import HFEngine

    n = args.max_new_tokens
    cfg = load_config(
        TINY,
        [
            f"model.name={args.model}",
            f"rollout.max_new_tokens={n}",
            f"rollout.temperature={args.temperature}",
            f"rollout.top_p={args.top_p}",
        ],
    )
    tokenizer = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, cfg.model.compute_dtype, "cpu").eval()
    prompts = [p.token_ids for p in pool_prompts(training_problems(cfg.data), tokenizer, cfg)[: args.batch]]
    if len(prompts) < args.batch:
        raise SystemExit(f"--batch {args.batch}: only {len(prompts)} prompts in the synthetic task")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_padded(prompts, pad_id)
    engine = HFEngine(model, _NoEosTokenizer(tokenizer), cfg, "cpu")
    print(
        f"model {args.model}: batch {args.batch}, prompt lengths {min(map(len, prompts))}-{max(map(len, prompts))}, "
        f"{n} new tokens per row, temperature {args.temperature}, top_p {args.top_p}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    def run_engine(seed: int) -> int:
        results = engine.generate([GenRequest(p, seed * 1000 + i) for i, p in enumerate(prompts)])
        return sum(len(r.token_ids) for r in results)

    @torch.no_grad()
    def run_generate(seed: int) -> int:
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=0,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=pad_id,
        )
        return int(out[:, ids.shape[1] :].numel())

    runs = {"engine": run_engine, "generate": run_generate}
    for fn in runs.values():  # warm-up: first-call allocations, kernel selection
        fn(0)
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        line = []
        counts = {}
        for name in order:
            start = time.perf_counter()
            counts[name] = runs[name](r + 1)
            seconds = time.perf_counter() - start
            rates[name].append(counts[name] / seconds)
            line.append(f"{name} {counts[name] / seconds:8.1f} tok/s ({counts[name]} tokens, {seconds:.2f} s)")
        assert counts["engine"] == counts["generate"] == args.batch * n, counts
        print(f"round {r + 1}: " + " | ".join(line), flush=True)
    engine_rate, generate_rate = statistics.median(rates["engine"]), statistics.median(rates["generate"])
    print(f"median: engine {engine_rate:.1f} tok/s, generate {generate_rate:.1f} tok/s")
    print(f"hf_engine ratio={engine_rate / generate_rate:.3f} tokens_per_s={engine_rate:.1f}")


if __name__ == "__main__":
    main()

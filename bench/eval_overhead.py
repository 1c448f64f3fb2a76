"""What ``dynamo-async eval`` costs on top of bare generation, on the same problems.

Side by side in one process, alternating, after a warm-up of each:

- bare: render the prompts, ``HFEngine.generate`` n samples per problem in chunks of
  ``--batch-size``, decode the texts; nothing else;
- eval: ``run_eval`` (the command's code): the same prompts, chunks and seeds, plus the
  math-verify scoring pool (scores a chunk while the next one generates), the per-problem
  record file, pass@k and results.json; it also loads the model (from the local cache) and
  starts the scoring processes each time, as the command does.

Generated tokens are equal in both (same seeds), checked. Prints per-round times and, as
its last line, ``eval_overhead ratio=<eval seconds over bare seconds> samples_per_s=<eval>
pass@1=<percent>``. About 2-3 minutes with SmolLM2-135M on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--limit", type=int, default=16, help="problems")
    parser.add_argument("--n", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from dynamo_async.data.prompts import prompt_ids
    from dynamo_async.evaluation.benchmarks import load_benchmarks
    from dynamo_async.evaluation.runner import EvalRequest, eval_config, make_engine, run_eval, sample_seed
    from workers.engine import GenRequest

    tmp = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    overrides = [f"rollout.max_new_tokens={args.max_new_tokens}"]

    def request(i: int) -> EvalRequest:
        return EvalRequest(
            model=args.model,
            data=[args.data],
            out=tmp / f"r{i}.json",
            n=args.n,
            ks=(1,),
            overrides=overrides,
            batch_size=args.batch_size,
            limit=args.limit,
            show_progress=False,
        )

    cfg = eval_config(request(0))
    (bench,) = load_benchmarks([args.data], args.limit)
    per_batch = max(1, args.batch_size // args.n)

    def bare() -> int:
        engine, tokenizer = make_engine(cfg, "cpu")
        tokens = 0
        for start in range(0, len(bench.problems), per_batch):
            reqs = []
            for p in bench.problems[start : start + per_batch]:
                ids = prompt_ids(tokenizer, p.problem, cfg)
                reqs += [GenRequest(ids, sample_seed(0, bench.name, p.id, k)) for k in range(args.n)]
            results = engine.generate(reqs)
            [tokenizer.decode(r.token_ids.tolist(), skip_special_tokens=True) for r in results]
            tokens += sum(len(r.token_ids) for r in results)
        return tokens

    times: dict[str, list[float]] = {"bare": [], "eval": []}
    counter = iter(range(1, 1000))
    results = {}

    def run(kind: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        if kind == "bare":
            tokens = bare()
        else:
            res = run_eval(request(next(counter)))
            results["last"] = res
            tokens = round(res["benchmarks"][0]["mean_response_tokens"] * args.limit * args.n)
        return time.perf_counter() - t0, tokens

    run("bare"), run("eval")  # warm-up (model cache, scorer imports)
    for r in range(args.rounds):
        order = ("bare", "eval") if r % 2 == 0 else ("eval", "bare")
        got = {}
        for kind in order:
            seconds, tokens = run(kind)
            times[kind].append(seconds)
            got[kind] = tokens
        assert got["bare"] == got["eval"], f"generated tokens differ: {got}"
        print(f"round {r}: bare {times['bare'][-1]:.2f} s, eval {times['eval'][-1]:.2f} s, {got['eval']} tokens")
    b, e = statistics.median(times["bare"]), statistics.median(times["eval"])
    samples = args.limit * args.n
    pass1 = results["last"]["benchmarks"][0]["pass@1"]
    print(f"eval_overhead ratio={e / b:.4f} samples_per_s={samples / e:.2f} pass@1={pass1:.1f}")


if __name__ == "__main__":
    main()

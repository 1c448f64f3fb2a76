"""Cost per response of a user reward function beside math-verify's, through the same pool.

Three arms, fixed in advance, each one ``MathVerifyScorer`` with the same pool settings
(2 worker processes, the default timeouts), scoring the same responses:

- ``math_verify``: the built-in alone (``rewards.functions: [math_verify]``);
- ``exact_match``: the example's string reward alone
  (``examples/rewards/string_rewards.py:exact_match``, with ``success: acc``);
- ``both``: ``[math_verify, examples/rewards/string_rewards.py:answer_line_format]``.

Responses: for the first ``--problems`` rows of DAPO-Math-17k, a worked paragraph of about 600
characters ending in ``\\boxed{gold}`` (half of them) or in ``\\boxed{gold + 1}``, plus an
``Answer:`` line, so every function has something to read. Each round scores all responses with
each arm in turn (order rotated per round, the machine is noisy); figures are medians over rounds
of wall seconds per response, i.e. the pool's throughput, not one call's latency.

Last line: ``reward_cost exact_match_ms=<f> math_verify_ms=<f> both_ms=<f> ratio=<f> ...``
with ratio = exact_match / math_verify.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/rewards/string_rewards.py"
ARMS = {
    "math_verify": dict(functions=("math_verify",)),
    "exact_match": dict(functions=(f"{EXAMPLE}:exact_match",)),
    "both": dict(functions=("math_verify", f"{EXAMPLE}:answer_line_format")),
}


def responses(data: Path, count: int) -> list[tuple[str, str]]:
    """(response, gold) pairs, half of them right."""
    out = []
    with data.open() as f:
        for i, line in enumerate(f):
            if i == count:
                break
            row = json.loads(line)
            gold = row["answer"]
            given = gold if i % 2 == 0 else (str(int(gold) + 1) if gold.lstrip("-").isdigit() else gold + "1")
            work = " ".join(f"Step {k}: we simplify the expression and keep track of the terms." for k in range(9))
            out.append((f"{work}\nSo the result is $\\boxed{{{given}}}$.\nAnswer: {given}", gold))
    return out


def time_arm(name: str, pairs: list[tuple[str, str]], workers: int) -> float:
    """Seconds per response for one pass of ``pairs`` through a fresh pool (start-up excluded)."""
    from dynamo_async.rewards import MathVerifyScorer
    from dynamo_async.rewards.spec import RewardSpec

    with MathVerifyScorer(num_workers=workers, spec=RewardSpec(**ARMS[name])) as scorer:
        scorer.score([pairs[0][0]], [pairs[0][1]])  # warm: imports and the gold cache of one row
        start = time.perf_counter()
        futures = [scorer.submit(r, g, "problem", "dapo", b"") for r, g in pairs]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - start
    assert all(r.status in ("ok", "no_answer") for r in results), {r.status for r in results}
    return seconds / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dapo_math_17k.jsonl")
    ap.add_argument("--problems", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import os

    os.chdir(ROOT)  # the example's entries are paths from the repository root
    pairs = responses(args.data, args.problems)
    names = list(ARMS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(time_arm(name, pairs, args.workers))
            print(f"round {r} {name}: {1e3 * times[name][-1]:.3f} ms/response", flush=True)
    ms = {n: 1e3 * statistics.median(v) for n, v in times.items()}
    print(
        f"reward_cost exact_match_ms={ms['exact_match']:.4f} math_verify_ms={ms['math_verify']:.4f} "
        f"both_ms={ms['both']:.4f} ratio={ms['exact_match'] / ms['math_verify']:.4f} "
        f"responses={len(pairs)} rounds={args.rounds} workers={args.workers}"
    )


if __name__ == "__main__":
    main()

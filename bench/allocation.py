"""Time water_fill on a large generation batch.

Prints ``water_fill N=1000000 seconds=<float>`` (median of a few runs) as its last line.
Target: under 1 s on a 2-core CPU machine (docs/design.md section 4.1: O(N log N), 10^6 prompts well under a second).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dynamo_async.algo.allocation import allocation_priority, water_fill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    attempts = rng.integers(0, 64, size=args.n)
    successes = rng.binomial(attempts, rng.beta(0.5, 0.5, size=args.n))
    priority = allocation_priority(successes, attempts)
    budget = 16 * args.n
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        counts = water_fill(priority, budget, 8, 24)
        times.append(time.perf_counter() - start)
    assert counts.sum() == budget
    print(f"counts: min={counts.min()} max={counts.max()} mean={counts.mean():.2f}; runs={[f'{t:.3f}' for t in times]}")
    print(f"water_fill N={args.n} seconds={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()

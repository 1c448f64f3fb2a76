"""Simulate DynaMO's allocation against uniform and oracle allocations at equal budget.

N prompts get true success rates from a mix of easy (p in [0.9, 1]), impossible
(p in [0, 0.02]) and frontier (p in [0.1, 0.9]) prompts. A warm-up epoch of uniform
``avg`` rollouts per prompt builds the Bernoulli statistics (k_i, G_i). At the same total
budget B = avg * N and bounds [g_min, g_max] we then compare:

- uniform: every prompt gets ``avg`` rollouts;
- DRA: ``water_fill(P_i ** power)`` from the warm-up statistics (DynaMO, Appendix D);
- oracle: the variance-optimal allocation of Appendix C (Eq. 20) under the same bounds, from the
  true ``sigma_i = sqrt(p_i (1 - p_i))``: ``n_i = clip(sigma_i t, g_min, g_max)`` with ``t`` set
  by bisection so that the budget is spent, rounded to integers by largest remainder
  (``bounded_optimum``). (Until issue 13 the oracle was ``water_fill(sigma_i)``, which gives
  ``g_min`` plus a share of the rest proportional to sigma: not the optimum.)

Figures (true p_i, expectations, averaged over seeds):
- variance proxy ``sum_i p_i (1 - p_i) / n_i`` (Appendix C); ratios dra/uniform, dra/oracle;
- effective samples ``sum_i n_i (1 - p_i^n_i - (1 - p_i)^n_i)``: rollouts expected to land in
  groups with a non-zero GRPO advantage; gain = DRA over uniform.

Last line: ``allocation_variance dra_vs_uniform=<f> dra_vs_oracle=<f> effective_groups_gain=<f>``
for ``priority_power`` 1.0 (the paper); the line before gives 0.5.
"""

from __future__ import annotations

import argparse

import numpy as np

from dynamo_async.algo.allocation import allocation_priority, water_fill


def true_rates(n: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(3, size=n, p=[0.3, 0.3, 0.4])
    easy = rng.uniform(0.9, 1.0, n)
    impossible = rng.uniform(0.0, 0.02, n)
    frontier = rng.uniform(0.1, 0.9, n)
    return np.choose(kind, [easy, impossible, frontier])


def variance_proxy(p: np.ndarray, n: np.ndarray) -> float:
    return float(np.sum(p * (1 - p) / n))


def effective_samples(p: np.ndarray, n: np.ndarray) -> float:
    return float(np.sum(n * (1 - p**n - (1 - p) ** n)))


def bounded_optimum(sigma: np.ndarray, budget: int, g_min: int, g_max: int) -> np.ndarray:
    """Integer ``n_i`` near ``clip(sigma_i t, g_min, g_max)`` summing to ``budget``: the minimiser
    of ``sum sigma_i^2 / n_i`` under the bounds (its Lagrange condition gives ``n_i ~ sigma_i``
    between them), rounded by largest remainder within the bounds."""
    assert g_min * sigma.size <= budget <= g_max * sigma.size
    low, high = 0.0, 1.0
    while np.clip(sigma * high, g_min, g_max).sum() < budget and high < 1e12:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if np.clip(sigma * mid, g_min, g_max).sum() < budget else (low, mid)
    x = np.clip(sigma * high, g_min, g_max)
    n = np.floor(x).astype(np.int64)
    for i in np.argsort(-(x - n), kind="stable"):  # largest remainders first
        if n.sum() >= budget:
            break
        if n[i] < g_max:
            n[i] += 1
    while n.sum() < budget:  # prompts with sigma 0 hold g_min: the rest goes to whoever has room
        n[np.flatnonzero(n < g_max)[: budget - n.sum()]] += 1
    assert n.sum() == budget and n.min() >= g_min and n.max() <= g_max
    return n


def one_seed(seed: int, args, power: float) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    p = true_rates(args.prompts, rng)
    attempts = np.full(args.prompts, args.avg)
    successes = rng.binomial(attempts, p)
    budget = args.avg * args.prompts
    uniform = np.full(args.prompts, args.avg)
    dra = water_fill(allocation_priority(successes, attempts, power=power), budget, args.g_min, args.g_max)
    oracle = bounded_optimum(np.sqrt(p * (1 - p)), budget, args.g_min, args.g_max)
    assert dra.sum() == oracle.sum() == uniform.sum() == budget
    v_u, v_d, v_o = (variance_proxy(p, n) for n in (uniform, dra, oracle))
    gain = effective_samples(p, dra) / effective_samples(p, uniform)
    return v_d / v_u, v_d / v_o, gain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=4096)
    parser.add_argument("--avg", type=int, default=16)
    parser.add_argument("--g-min", type=int, default=8)
    parser.add_argument("--g-max", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    lines = []
    for power in (0.5, 1.0):
        results = np.array([one_seed(s, args, power) for s in range(args.seeds)]).mean(axis=0)
        lines.append(
            f"allocation_variance dra_vs_uniform={results[0]:.4f} dra_vs_oracle={results[1]:.4f} "
            f"effective_groups_gain={results[2]:.4f}"
        )
        print(f"priority_power={power}: {lines[-1]}")
    print(lines[-1])


if __name__ == "__main__":
    main()

"""Unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained
on Code", Section 2.1), as reported in the DynaMO paper's Table 1 (P@1, P@32).

For one problem with ``n`` samples of which ``c`` are correct:

    pass@k = 1 - C(n - c, k) / C(n, k)

the probability that at least one of ``k`` samples drawn without replacement from the ``n``
is correct. It equals 1 when ``n - c < k``. The product form

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

avoids huge binomials. A benchmark's pass@k is the mean over its problems; pass@1 is the
mean fraction of correct samples.
"""

from __future__ import annotations

from collections.abc import Iterable

from dynamo_async.errors import UsageError


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem with ``c`` correct out of ``n`` samples."""
    if n < 1 or not 0 <= c <= n:
        raise UsageError(f"got n={n}, c={c}, expected n >= 1 and 0 <= c <= n")
    if not 1 <= k <= n:
        raise UsageError(f"got k={k}, expected 1 <= k <= n={n} (sample at least k responses per problem)")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given as ``(n, c)`` pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise UsageError("got no problems, expected at least one (n, c) pair")
    return sum(values) / len(values)


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``: distinct positive integers in increasing order."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--k: got {text!r}, expected comma-separated integers like 1,32") from None
    if not ks or ks[0] < 1:
        raise UsageError(f"--k: got {text!r}, expected positive integers like 1,32")
    return tuple(ks)

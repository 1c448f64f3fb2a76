"""Bernoulli variance proxy and water-filling allocation (docs/design.md section 4.1, DynaMO App. C/D)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_async.algo.allocation import allocation_priority, bernoulli_variance, water_fill

SETTINGS = settings(max_examples=80, deadline=None)


# --------------------------------------------------------------------------- bernoulli_variance


def test_bernoulli_variance_hand_values():
    got = bernoulli_variance([2, 1, 3, 5], [4, 2, 4, 10])
    expected = [
        2 * 2 / (4 * 3),  # k=2, G=4: 4/12 = 1/3
        1 * 1 / (2 * 1),  # k=1, G=2: 1/2
        3 * 1 / (4 * 3),  # k=3, G=4: 3/12 = 1/4
        5 * 5 / (10 * 9),  # k=5, G=10: 25/90
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert got[0] == pytest.approx(1 / 3)


def test_bernoulli_variance_unseen_prompts_get_prior():
    got = bernoulli_variance([0, 1, 0, 1], [0, 1, 2, 2], prior=0.2)
    # G=0 and G=1 have no estimate -> prior; G=2, k=0 -> 0; G=2, k=1 -> 1*1/(2*1) = 0.5
    np.testing.assert_array_equal(got, [0.2, 0.2, 0.0, 0.5])
    np.testing.assert_array_equal(bernoulli_variance([0], [1]), [0.25])  # default prior


def test_bernoulli_variance_all_correct_or_all_wrong_is_zero():
    got = bernoulli_variance([0, 8, 0, 3], [8, 8, 3, 3])
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 0.0])


def test_bernoulli_variance_returns_float_array_of_input_shape():
    got = bernoulli_variance(np.array([[1, 2], [0, 3]]), np.array([[2, 4], [1, 3]]))
    assert got.shape == (2, 2)
    assert got.dtype == np.float64


def test_bernoulli_variance_mismatched_shapes_is_value_error():
    with pytest.raises(ValueError):
        bernoulli_variance([1, 2], [4, 4, 4])


def test_bernoulli_variance_successes_above_attempts_is_value_error():
    with pytest.raises(ValueError):
        bernoulli_variance([5], [4])
    with pytest.raises(ValueError):
        bernoulli_variance([-1], [4])


def test_allocation_priority_power_half_is_sqrt_of_power_one():
    k, g = [0, 1, 2, 3, 7, 0], [4, 4, 4, 5, 9, 1]
    p1 = allocation_priority(k, g, power=1.0)
    p_half = allocation_priority(k, g, power=0.5)
    np.testing.assert_allclose(p_half, np.sqrt(p1), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(p1, bernoulli_variance(k, g))


# --------------------------------------------------------------------------- water_fill: hand values


def test_water_fill_proportional_shares_without_capping():
    # residual = 14 - 3*2 = 8, shared 1:1:2 -> 2, 2, 4 (no cap hit: cap = 10 - 2 = 8)
    got = water_fill([1.0, 1.0, 2.0], budget=14, g_min=2, g_max=10)
    np.testing.assert_array_equal(got, [4, 4, 6])
    assert got.dtype == np.int64


def test_water_fill_overflow_is_redistributed():
    # cap = 5 - 1 = 4, residual = 12 - 3*1 = 9.
    # Proportional: 9*10/12 = 7.5 > cap -> prompt 0 saturates at 4 extra;
    # the remaining 9 - 4 = 5 is shared 1:1 -> 2.5, 2.5; floors 2, 2 leave 1, which goes to the
    # largest remainder (tie 0.5/0.5, equal priority -> lower index): extras 4, 3, 2.
    got = water_fill([10.0, 1.0, 1.0], budget=12, g_min=1, g_max=5)
    np.testing.assert_array_equal(got, [5, 4, 3])


def test_water_fill_overflow_cascades_through_two_prompts():
    # cap = 6 - 0 = 6, residual = 16. Shares 100:50:1:1 would give 10.5, 5.3, ... -> prompt 0 caps (6);
    # the rest 10 over 50:1:1 gives 9.6 > 6 -> prompt 1 caps too; 4 left over 1:1 -> 2, 2.
    got = water_fill([100.0, 50.0, 1.0, 1.0], budget=16, g_min=0, g_max=6)
    np.testing.assert_array_equal(got, [6, 6, 2, 2])


def test_water_fill_largest_remainder_rounding():
    # residual = 5 shared 1:2:3 -> 5/6 = 0.833, 10/6 = 1.667, 15/6 = 2.5.
    # Floors 0, 1, 2 (sum 3) leave 2 units; remainders .833 > .667 > .5 -> prompts 0 and 1 get +1.
    got = water_fill([1.0, 2.0, 3.0], budget=5, g_min=0, g_max=10)
    np.testing.assert_array_equal(got, [1, 2, 2])


def test_water_fill_leftover_goes_evenly_to_zero_priority_prompts():
    # g_min 1, g_max 3 (cap 2), residual = 11 - 4 = 7. Positive prompts 0 and 2 take 2 each (cap);
    # the 3 left go round robin over the zero-priority prompts 1, 3 -> 2 and 1 extra.
    got = water_fill([0.5, 0.0, 0.25, 0.0], budget=11, g_min=1, g_max=3)
    np.testing.assert_array_equal(got, [3, 3, 3, 2])


def test_water_fill_zero_priority_prompts_stay_at_g_min_while_positive_ones_have_room():
    # residual = 4 fits entirely in the positive prompts (cap 8 each): zeros stay at g_min.
    got = water_fill([0.0, 1.0, 0.0, 1.0], budget=4 * 2 + 4, g_min=2, g_max=10)
    np.testing.assert_array_equal(got, [2, 4, 2, 4])


def test_water_fill_all_zero_priorities_spread_evenly():
    # residual = 8 - 3 = 5 -> 1 each, 2 left to the lowest indices.
    got = water_fill([0.0, 0.0, 0.0], budget=8, g_min=1, g_max=5)
    np.testing.assert_array_equal(got, [3, 3, 2])


def test_water_fill_budget_above_capacity_gives_everyone_g_max():
    got = water_fill([0.1, 0.0, 3.0], budget=1000, g_min=2, g_max=7)
    np.testing.assert_array_equal(got, [7, 7, 7])


def test_water_fill_budget_exactly_minimum_gives_everyone_g_min():
    got = water_fill([0.1, 0.5, 3.0], budget=3 * 8, g_min=8, g_max=24)
    np.testing.assert_array_equal(got, [8, 8, 8])


def test_water_fill_budget_below_minimum_is_value_error():
    with pytest.raises(ValueError):
        water_fill([0.1, 0.2, 0.3], budget=3 * 8 - 1, g_min=8, g_max=24)


def test_water_fill_bad_priorities_or_bounds_are_value_errors():
    with pytest.raises(ValueError):
        water_fill([0.1, -0.2], budget=10, g_min=1, g_max=5)
    with pytest.raises(ValueError):
        water_fill([0.1, float("nan")], budget=10, g_min=1, g_max=5)
    with pytest.raises(ValueError):
        water_fill([0.1, 0.2], budget=10, g_min=6, g_max=5)


def test_water_fill_no_prompts_gives_empty_counts():
    got = water_fill([], budget=100, g_min=8, g_max=24)
    assert got.shape == (0,)
    assert got.dtype == np.int64


def test_water_fill_table3_defaults_average_16():
    rng = np.random.default_rng(0)
    k = rng.integers(0, 17, size=512)
    p = bernoulli_variance(k, np.full(512, 16))
    got = water_fill(p, budget=16 * 512, g_min=8, g_max=24)
    assert got.sum() == 16 * 512
    assert got.min() >= 8 and got.max() <= 24
    # prompts solved always or never (P = 0) get no more than anybody else
    assert got[p == 0].max() <= got[p > 0].min()


# --------------------------------------------------------------------------- water_fill: properties


@st.composite
def allocation_problems(draw):
    n = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["floats", "bernoulli", "few_values"]))
    if kind == "floats":
        p = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 10.0)), min_size=n, max_size=n))
    elif kind == "bernoulli":
        g = draw(st.lists(st.integers(0, 24), min_size=n, max_size=n))
        k = [draw(st.integers(0, gi)) for gi in g]
        p = list(bernoulli_variance(k, g))
    else:  # many ties
        p = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5]), min_size=n, max_size=n))
    g_min = draw(st.integers(0, 8))
    g_max = draw(st.integers(g_min, g_min + 20))
    budget = draw(st.integers(n * g_min, n * g_max + 30))
    return np.asarray(p, dtype=np.float64), budget, g_min, g_max


@SETTINGS
@given(allocation_problems())
def test_water_fill_sum_is_exactly_min_of_budget_and_capacity(problem):
    p, budget, g_min, g_max = problem
    counts = water_fill(p, budget, g_min, g_max)
    assert counts.dtype == np.int64
    assert counts.shape == p.shape
    assert int(counts.sum()) == min(budget, p.size * g_max)


@SETTINGS
@given(allocation_problems())
def test_water_fill_counts_within_bounds(problem):
    p, budget, g_min, g_max = problem
    counts = water_fill(p, budget, g_min, g_max)
    assert counts.min() >= g_min
    assert counts.max() <= g_max


@SETTINGS
@given(allocation_problems())
def test_water_fill_monotone_in_priority(problem):
    p, budget, g_min, g_max = problem
    counts = water_fill(p, budget, g_min, g_max)
    higher = p[:, None] > p[None, :]  # higher[i, j]: p_i > p_j
    violating = higher & (counts[:, None] < counts[None, :])
    assert not violating.any(), (p, counts)


@SETTINGS
@given(allocation_problems())
def test_water_fill_is_deterministic(problem):
    p, budget, g_min, g_max = problem
    first = water_fill(p, budget, g_min, g_max)
    second = water_fill(p.copy(), budget, g_min, g_max)
    as_list = water_fill(list(p), budget, g_min, g_max)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, as_list)


@SETTINGS
@given(st.integers(1, 50), st.integers(0, 6), st.integers(0, 12), st.data())
def test_water_fill_all_zero_priorities_are_even(n, g_min, width, data):
    g_max = g_min + width
    budget = data.draw(st.integers(n * g_min, n * g_max + 5))
    counts = water_fill(np.zeros(n), budget, g_min, g_max)
    assert counts.sum() == min(budget, n * g_max)
    assert counts.max() - counts.min() <= 1


@SETTINGS
@given(allocation_problems())
def test_water_fill_leftover_after_positive_prompts_saturate_is_even(problem):
    p, budget, g_min, g_max = problem
    counts = water_fill(p, budget, g_min, g_max)
    pos, zero = p > 0, p == 0
    if not zero.any():
        return
    if pos.any() and (counts[pos] < g_max).any():
        # positive prompts still have room: zero-priority prompts must not get anything
        assert (counts[zero] == g_min).all(), (p, counts)
    else:
        # every positive prompt at g_max (or none): the rest is spread evenly over the zeros
        assert counts[zero].max() - counts[zero].min() <= 1, (p, counts)
        assert counts[zero].sum() == min(budget, p.size * g_max) - g_max * int(pos.sum())


@SETTINGS
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=30), st.integers(0, 8), st.data())
def test_water_fill_matches_continuous_share_when_nothing_caps(p, g_min, data):
    p = np.asarray(p)
    n = p.size
    g_max = g_min + 30
    cap = g_max - g_min
    # largest residual for which the biggest share stays within the cap: residual * max/sum <= cap
    max_residual = int(np.floor(cap * p.sum() / p.max()))
    residual = data.draw(st.integers(0, min(max_residual, n * cap)))
    counts = water_fill(p, n * g_min + residual, g_min, g_max)
    share = g_min + residual * p / p.sum()
    assert np.all(np.abs(counts - share) < 1.0 + 1e-9), (counts, share)


def test_water_fill_large_n_is_fast():
    import time

    rng = np.random.default_rng(1)
    p = rng.random(1_000_000)
    p[rng.random(p.size) < 0.2] = 0.0
    start = time.perf_counter()
    counts = water_fill(p, budget=16 * p.size, g_min=8, g_max=24)
    elapsed = time.perf_counter() - start
    assert counts.sum() == 16 * p.size
    assert elapsed < 5.0  # docs/design.md: well under a second for 1e6 prompts; generous for a loaded CI box


def test_water_fill_is_scale_invariant_for_extreme_finite_priorities():
    # Equal priorities at any finite positive scale must give the same counts as at scale 1.
    # Three prompts: residual = 5 - 3*1 = 2 -> 2/3 each, floors 0, remainders tie -> lower indices: [2, 2, 1].
    # Two prompts: residual = 5 - 2*1 = 3 -> 1.5 each -> floors 1, 1 and the tie to index 0: [3, 2].
    for n, expected in ((3, [2, 2, 1]), (2, [3, 2])):
        np.testing.assert_array_equal(water_fill([1.0] * n, budget=5, g_min=1, g_max=8), expected)
        # subnormal and near-max values are finite and >= 0, so _check_inputs accepts them
        for scale in (5e-324, 1e-310, 1e308):
            got = water_fill([scale] * n, budget=5, g_min=1, g_max=8)
            np.testing.assert_array_equal(got, expected, err_msg=f"n={n}, scale={scale}")

"""Group-relative advantages for groups of unequal size (docs/design.md section 4.1 alignment, 4.2)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_async.algo.advantage import (
    group_advantages,
    group_index,
    training_rewards,
    zero_variance_groups,
)

EPS = 1e-6


def _reference(rewards, eps=EPS, scale_by_std=True):
    """Advantages of one group, computed on its own (numpy, float64)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2 or np.all(r == r[0]):
        return np.zeros_like(r)
    centered = r - r.mean()
    if not scale_by_std:
        return centered
    return centered / (r.std(ddof=1) + eps)


def test_group_advantages_hand_values():
    got = group_advantages([1.0, -1.0, -1.0, 1.0, 1.0], [0, 0, 0, 0, 0])
    # mean = (1 - 1 - 1 + 1 + 1) / 5 = 0.2; deviations 0.8, -1.2, -1.2, 0.8, 0.8
    # sum of squares = 3 * 0.64 + 2 * 1.44 = 4.8; unbiased var = 4.8 / 4 = 1.2; std = sqrt(1.2) = 1.0954451
    std = math.sqrt(1.2)
    expected = torch.tensor([0.8, -1.2, -1.2, 0.8, 0.8]) / (std + 1e-6)
    # 0.8 / 1.0954461 = 0.7302961, -1.2 / 1.0954461 = -1.0954441
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert got[0].item() == pytest.approx(0.7302961, abs=1e-6)
    assert got[1].item() == pytest.approx(-1.0954441, abs=1e-6)


def test_group_advantages_two_groups_hand_values():
    # group a: [1, 0] -> mean .5, unbiased std sqrt(.5) = .70711 -> +-0.5/0.70711 = +-0.70711
    # group b: [1, 1, 0, 0] -> mean .5, unbiased std sqrt(1/3) = .57735 -> +-0.5/0.57735 = +-0.86603
    got = group_advantages([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], ["a", "b", "a", "b", "b", "b"])
    expected = torch.tensor([0.70711, 0.86603, -0.70711, 0.86603, -0.86603, -0.86603])
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_group_advantages_eps_is_added_to_std():
    # [1, 0]: std = sqrt(0.5) = 0.7071068; with eps = 0.3: 0.5 / 1.0071068 = 0.4964719
    got = group_advantages([1.0, 0.0], [7, 7], eps=0.3)
    torch.testing.assert_close(got, torch.tensor([0.4964719, -0.4964719]), rtol=0, atol=1e-6)


def test_dr_grpo_is_reward_minus_group_mean():
    # scale_by_std=False: A = R - mean_g. Group x: [1, -1, -1] mean -1/3 -> 4/3, -2/3, -2/3; group y: [3, 5] -> -1, 1
    got = group_advantages([1.0, 3.0, -1.0, 5.0, -1.0], ["x", "y", "x", "y", "x"], scale_by_std=False)
    expected = torch.tensor([4 / 3, -1.0, -2 / 3, 1.0, -2 / 3])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_size_one_group_and_all_equal_group_give_exact_zero():
    got = group_advantages([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], ["solo", "same", "same", "same", "mixed", "mixed"])
    assert got[0].item() == 0.0  # size-1 group
    assert got[1:4].tolist() == [0.0, 0.0, 0.0]  # all-equal group
    assert got[4].item() > 0 and got[5].item() < 0
    dr = group_advantages([1.0, 0.0, 0.0, 0.0], ["solo", "same", "same", "same"], scale_by_std=False)
    assert dr.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_all_equal_non_binary_rewards_give_exact_zero():
    # The contract says all-equal rewards give *exactly* 0, whatever the reward value.
    # mean([0.1, 0.1, 0.1]) in floating point is 0.10000000000000002, not 0.1: a centred value of
    # ~1e-17 divided by (std ~1e-17 + eps 1e-6) must not leak out as a non-zero advantage.
    got = group_advantages([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.7, 0.7], [0, 0, 0, 1, 1, 1, 1, 1])
    assert got.tolist() == [0.0] * 8
    assert zero_variance_groups([0.1, 0.1, 0.1], [0, 0, 0]).tolist() == [True]


def test_unequal_interleaved_groups_keep_their_own_prompt_alignment():
    # Responses are records (prompt_id, gold answer, predicted answer); the reward comes from the
    # record's own gold answer. Group sizes 1, 3, 8, 5 (DynaMO allocation), shuffled together.
    rng = random.Random(0)
    prompts = {"p-one": ("7", 1), "p-three": ("12", 3), "p-eight": ("-4", 8), "p-five": ("0.5", 5)}
    records = []
    for pid, (gold, size) in prompts.items():
        for i in range(size):
            pred = gold if rng.random() < 0.5 or i == 0 else "wrong"
            records.append((pid, gold, pred))
    rng.shuffle(records)
    acc = torch.tensor([float(pred == gold) for _, gold, pred in records])
    rewards = training_rewards(acc, "pm1")
    adv = group_advantages(rewards, [pid for pid, _, _ in records])
    assert adv.shape == (len(records),)
    for pid in prompts:
        rows = [i for i, rec in enumerate(records) if rec[0] == pid]
        # per-prompt computation from that prompt's own records only
        own = [2.0 * float(records[i][2] == records[i][1]) - 1.0 for i in rows]
        np.testing.assert_allclose(adv[rows].numpy(), _reference(own), rtol=1e-6, atol=1e-6)
        # and each record still carries its own gold answer: positive advantage <=> correct
        for i in rows:
            pid_i, gold_i, pred_i = records[i]
            assert gold_i == prompts[pid_i][0]
            if adv[i] > 0:
                assert pred_i == gold_i
            if adv[i] < 0:
                assert pred_i != gold_i
    # the 8-response group has both outcomes, so the check above is not vacuous
    eight = [i for i, rec in enumerate(records) if rec[0] == "p-eight"]
    assert (adv[eight] > 0).any() and (adv[eight] < 0).any()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]), min_size=1, max_size=9), min_size=1, max_size=6),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_equals_per_group_computation(groups, scale_by_std, rnd):
    records = [(f"g{g}", r) for g, rewards in enumerate(groups) for r in rewards]
    rnd.shuffle(records)
    adv = group_advantages([r for _, r in records], [gid for gid, _ in records], scale_by_std=scale_by_std)
    for g in range(len(groups)):
        rows = [i for i, (gid, _) in enumerate(records) if gid == f"g{g}"]
        expected = _reference([records[i][1] for i in rows], scale_by_std=scale_by_std)
        np.testing.assert_allclose(adv[rows].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_tensor_and_list_group_ids_agree():
    rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    ids = [30, 10, 30, 20, 10, 20, 10]
    from_list = group_advantages(rewards, ids)
    from_tensor = group_advantages(torch.tensor(rewards), torch.tensor(ids))
    torch.testing.assert_close(from_list, from_tensor)


def test_mismatched_lengths_is_value_error_and_empty_is_empty():
    with pytest.raises(ValueError):
        group_advantages([1.0, 0.0, 1.0], ["a", "a"])
    assert group_advantages([], []).shape == (0,)


def test_training_rewards_modes():
    acc = torch.tensor([1.0, 0.0, 1.0])
    assert training_rewards(acc, "pm1").tolist() == [1.0, -1.0, 1.0]  # 2*acc - 1
    assert training_rewards(acc, "acc").tolist() == [1.0, 0.0, 1.0]
    assert training_rewards([0, 1], "pm1").tolist() == [-1.0, 1.0]  # lists accepted


def test_training_rewards_bad_mode_is_value_error():
    with pytest.raises(ValueError):
        training_rewards(torch.tensor([1.0]), "binary")


def test_zero_variance_groups_marks_all_equal_groups():
    # dense order = first appearance: "a" (1, 1 -> equal), "b" (0, 1 -> not), "c" (size 1 -> equal)
    got = zero_variance_groups([1.0, 0.0, 1.0, 1.0, -1.0], ["a", "b", "a", "b", "c"])
    assert got.tolist() == [True, False, True]


def test_group_index_is_first_appearance_order_for_lists_and_tensors():
    # group_index documents "dense indices 0..G-1 in order of first appearance"; zero_variance_groups
    # returns its flags in that dense order, so the order must not depend on the container type.
    ids = [5, 5, 1, 1, 3]
    dense_list, n_list = group_index(ids)
    dense_tensor, n_tensor = group_index(torch.tensor(ids))
    assert dense_list.tolist() == [0, 0, 1, 1, 2]
    assert n_list == n_tensor == 3
    assert dense_tensor.tolist() == dense_list.tolist()


def test_zero_variance_groups_same_answer_for_tensor_ids():
    rewards = [1.0, 1.0, 0.0, 1.0]
    ids = [5, 5, 1, 1]  # group 5 (first seen) is all-equal, group 1 is not
    assert zero_variance_groups(rewards, ids).tolist() == [True, False]
    assert zero_variance_groups(rewards, torch.tensor(ids)).tolist() == [True, False]

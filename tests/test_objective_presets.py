"""``method`` as a preset of components; every setting read; the objective assembled once
(docs/design.md section 4.6)."""

from __future__ import annotations

import pytest

from dynamo_async.algo.objective import assemble
from dynamo_async.config import METHODS, config_to_yaml, load_config, parse_yaml
from dynamo_async.config.loader import config_from_dict
from dynamo_async.errors import UsageError
from dynamo_async.objective.presets import PRESETS
from dynamo_async.objective.registry import registered
from dynamo_async.objective.settings import unread_keys


def _cfg(*overrides):
    return load_config(None, ["model.name=x", *overrides])


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_expands_to_settings_its_own_components_read(method):
    cfg = _cfg(f"method={method}")
    assert unread_keys(cfg, list(PRESETS[method])) == {}
    chosen = cfg.objective.chosen()
    assert all(name in registered() for name in chosen)


@pytest.mark.parametrize("method", METHODS)
def test_the_resolved_config_shows_the_expansion_and_reads_back_equal(method):
    cfg = _cfg(f"method={method}")
    tree = parse_yaml(config_to_yaml(cfg))
    assert tree["method"] == method
    assert tree["allocation"]["dynamic"] is (method == "dynamo")
    assert tree["objective"]["token_advantage"] == PRESETS[method]["objective.token_advantage"]
    assert ("modulation" in tree) is (method == "dynamo")  # an unused component's settings are left out
    assert config_from_dict(tree) == cfg


def test_the_presets_expand_as_table_1_describes():
    assert _cfg("method=clip_higher").loss.eps_high == 0.28
    assert _cfg("method=entropy_loss").objective.extra == ("entropy_bonus",)
    clip_cov = _cfg("method=clip_cov")
    assert (clip_cov.loss.eps_low, clip_cov.loss.eps_high, clip_cov.loss.dual_clip) == (1.0, 1.0, False)
    assert _cfg("method=kl_cov").objective.token_loss == "kl_cov"
    assert _cfg("method=w_reinforce").objective.advantage == "w_reinforce"


def test_a_users_value_wins_over_the_preset_so_combinations_are_legal():
    cfg = _cfg("method=dynamo", "loss.eps_high=0.28")  # DynaMO with Clip-Higher
    assert cfg.loss.eps_high == 0.28 and cfg.objective.token_advantage == ("modulation",)
    assert _cfg("method=grpo", "allocation.dynamic=true").allocation.dynamic  # a baseline with DRA
    both = _cfg("method=dynamo", "objective.token_advantage=[entropy_advantage, modulation]")
    assert [type(c).__name__ for c in assemble(both).token_advantage] == ["EntropyAdvantage", "Modulation"]
    assert _cfg("method=clip_cov", "loss.eps_high=0.5").loss.eps_high == 0.5


@pytest.mark.parametrize(
    "overrides, key",
    [
        (("method=grpo", "modulation.alpha=0.5"), "modulation.alpha"),
        (("method=grpo", "objective.clip_cov.ratio=0.1"), "objective.clip_cov.ratio"),
        (("method=grpo", "allocation.g_min=4"), "allocation.g_min"),
        (("method=kl_cov", "loss.eps_high=0.3"), "loss.eps_high"),
        (("method=w_reinforce", "advantage.scale_by_std=false"), "advantage.scale_by_std"),
        (("objective.token_weights=[icepop]", "off_policy.is_cap=3"), "off_policy.is_cap"),
    ],
)
def test_a_setting_no_chosen_component_reads_is_an_error_naming_it(overrides, key):
    with pytest.raises(UsageError, match=rf"config field {key}: got a value, but nothing this run uses reads it"):
        _cfg(*overrides)


def test_an_unknown_component_name_lists_the_registered_ones():
    with pytest.raises(UsageError, match=r"objective.token_weights: got 'tis', expected one of \[.*'icepop'"):
        _cfg("objective.token_weights=[tis]")
    with pytest.raises(UsageError, match=r"objective.token_loss: got 'icepop', expected one of \['clipped'"):
        _cfg("objective.token_loss=icepop")  # a component of another stage


def test_old_baseline_spellings_keep_working_under_their_new_names():
    with pytest.warns(FutureWarning, match="baselines.clip_cov_ratio is now objective.clip_cov.ratio"):
        cfg = _cfg("method=clip_cov", "baselines.clip_cov_ratio=0.3")
    assert cfg.objective.clip_cov.ratio == 0.3
    assert _cfg("method=clip_higher", "baselines.clip_higher_eps_high=0.3").loss.eps_high == 0.3
    with pytest.raises(UsageError, match="baselines.clip_cov_eps.*renamed to loss.eps_low and loss.eps_high"):
        _cfg("method=clip_cov", "baselines.clip_cov_eps=0.5")


def test_the_trainer_computes_only_the_statistics_the_components_need():
    assert assemble(_cfg("method=grpo")).needs == frozenset()
    assert assemble(_cfg("method=dynamo")).needs == {"entropy", "vocab_sum", "mini_batch_stats"}
    centred = ("modulation.entropy_change=sequence_centered", "modulation.normaliser_scope=micro_batch")
    assert assemble(_cfg("method=dynamo", *centred)).needs == {"entropy"}
    assert assemble(_cfg("method=entropy_loss")).needs == {"entropy", "entropy_grad"}
    assert assemble(_cfg("method=fork_tokens")).needs == {"entropy"}


def test_the_objective_is_assembled_once_per_config():
    cfg = _cfg("method=dynamo")
    assert assemble(cfg) is assemble(load_config(None, ["model.name=x", "method=dynamo"]))

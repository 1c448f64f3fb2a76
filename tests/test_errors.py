"""Errors by type: a user's mistake is one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from dynamo_async import cli
from dynamo_async.errors import UsageError
from dynamo_async.protocol import PROTOCOL_VERSION, Heartbeat, ProtocolError, decode, encode


def test_a_users_mistake_is_one_line_and_exit_2(capsys):
    assert cli.main(["config", "--config", "configs/tiny.yaml", "loss.eps_low=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynamo-async config: error: config field loss.eps_low: got -1")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise ValueError("operands could not be broadcast together")  # e.g. numpy, hours into a run

    monkeypatch.setitem(cli.COMMANDS, "config", broken)
    with pytest.raises(ValueError, match="could not be broadcast"):
        cli.main(["config", "--config", "configs/tiny.yaml"])


def test_usage_errors_are_value_errors_for_library_callers():
    from dynamo_async.config import load_config

    with pytest.raises(UsageError):
        load_config(None, ["model.name=builtin:tiny", "method=ppo"])
    assert issubclass(UsageError, ValueError)


def test_protocol_errors_carry_their_reason_code():
    with pytest.raises(ProtocolError) as err:
        decode(b"\x00" * 64, max_bytes=16)
    assert err.value.reason == "oversized"
    other = encode(Heartbeat(worker_id="w", lease_ids=(), policy_version=0, v=PROTOCOL_VERSION + 1))
    with pytest.raises(ProtocolError) as err:
        decode(other)
    assert err.value.reason == "version"
    with pytest.raises(ProtocolError) as err:
        decode(b"\xc1garbage")
    assert err.value.reason == "malformed"

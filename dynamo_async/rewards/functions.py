"""Score one response with the run's reward functions, in a scorer process (docs/rewards.md).

The combination rule is ``spec.py``'s. A user function is called as
``fn(problem=..., response=..., answer=..., fields=...)`` (``fields``: the row as read from the
dataset, a dict) under the same limit as math-verify's own: ``signal.alarm`` of
``rewards.timeout_s`` seconds (the scorer process's main thread), with the pool's hard timeout
behind it. It returns a float (or int, or bool) or ``{"reward": float, "acc": 0 or 1}``.

A function that raises, returns something else or runs out of time scores 0 for its part; the
response's status is then "error" or "timeout", ``detail`` says which function and why, and it
does not count as a success. The worker prints each new detail once and the pool counts them,
so a bug in a reward function is seen, not silently trained on.
"""

from __future__ import annotations

import math
import numbers
import signal
from collections.abc import Callable
from typing import Any

import msgspec

from dynamo_async.rewards.messages import ScoreJob, ScoreResult
from dynamo_async.rewards.spec import BUILTIN, RewardSpec, resolve
from dynamo_async.rewards.worker import alarm_seconds, score_response

_RETURN_HINT = "expected a float or {'reward': float, 'acc': 0 or 1}"


class _Expired(BaseException):
    """Raised by SIGALRM inside a user function (a BaseException, so that its ``except
    Exception`` cannot swallow it)."""


class _BadReturn(Exception):
    pass


class RewardFunctions:
    """The resolved functions of one spec, and the scoring of a job with them."""

    def __init__(self, spec: RewardSpec, timeout_s: float, max_chars: int, answer_format: str) -> None:
        self.spec = spec
        self._timeout = alarm_seconds(timeout_s)
        self._timeout_s, self._max_chars, self._format = timeout_s, max_chars, answer_format
        self._fns: dict[str, Callable[..., Any]] = {e: resolve(e) for e in spec.user_entries()}
        self._fields_decoder = msgspec.msgpack.Decoder(dict)

    def score(self, job: ScoreJob) -> ScoreResult:
        """The response's total reward, success and status (see the module docstring)."""
        total, accs, status, details = 0.0, [], "ok", []
        fields = self._fields_decoder.decode(job.fields) if job.fields else {}
        for entry in self.spec.entries(job.source):
            if entry == BUILTIN:
                r = score_response(job.response, job.gold, self._timeout_s, self._max_chars, self._format)
                reward, acc, part_status, detail = self._math_reward(r.acc), r.acc, r.status, ""
            else:
                reward, acc, part_status, detail = self._call(entry, job, fields)
            total += self.spec.weight(entry) * reward
            if acc is not None:
                accs.append(acc)
            if part_status != "ok" and status == "ok":
                status = part_status
            if detail:
                details.append(detail)
        success = self._success(total, accs, details)
        if status != "ok" or details:
            status = status if status != "ok" else "error"
            success = 0
        return ScoreResult(acc=success, status=status, reward=total, detail="; ".join(details))

    def _math_reward(self, acc: int) -> float:
        return float(2 * acc - 1) if self.spec.correctness == "pm1" else float(acc)

    def _success(self, total: float, accs: list[int], details: list[str]) -> int:
        if self.spec.success == "reward":
            return int(total >= self.spec.success_threshold)
        if not accs and not details:
            details.append(
                "no reward function reported 'acc' (rewards.success: acc); return {'reward': r, 'acc': 0 or 1} "
                "from one, include math_verify, or set rewards.success: reward"
            )
        return int(bool(accs) and all(accs))

    def _call(self, entry: str, job: ScoreJob, fields: dict) -> tuple[float, int | None, str, str]:
        """(reward, acc or None, status, detail) of one user function."""
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(self._timeout)
        try:
            out = self._fns[entry](problem=job.problem, response=job.response, answer=job.gold, fields=fields)
            signal.alarm(0)
            reward, acc = _normalise(out)
        except _Expired:
            return 0.0, None, "timeout", f"{entry} ran past rewards.timeout_s={self._timeout_s}"
        except _BadReturn as e:
            return 0.0, None, "error", f"{entry} returned {e}, {_RETURN_HINT}"
        except Exception as e:  # noqa: BLE001 - user code may raise anything: scored 0, reported, counted
            return 0.0, None, "error", f"{entry} raised {type(e).__name__}: {e}"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        return reward, acc, "ok", ""


def _on_alarm(signum, frame) -> None:
    raise _Expired


def _normalise(out: Any) -> tuple[float, int | None]:
    """A function's return value as (reward, acc or None); anything else raises _BadReturn."""
    acc = None
    if isinstance(out, dict):
        if "reward" not in out or set(out) - {"reward", "acc"}:
            raise _BadReturn(f"a dict with keys {sorted(out)}")
        if "acc" in out:
            acc = out["acc"]
            if isinstance(acc, float) and acc in (0.0, 1.0):
                acc = int(acc)
            if not isinstance(acc, (bool, int)) or acc not in (0, 1):
                raise _BadReturn(f"acc={acc!r}")
            acc = int(acc)
        out = out["reward"]
    if not isinstance(out, numbers.Real) or not math.isfinite(float(out)):
        raise _BadReturn(f"{out!r} ({type(out).__name__})")
    return float(out), acc

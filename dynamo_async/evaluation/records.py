"""The resumable record file of ``dynamo-async eval``: ``OUT`` ``results.json`` keeps its
per-problem records in ``results.records.jsonl`` beside it.

Line 1 is an ``EvalSettings`` header; every further line is one ``ProblemRecord``, appended
and flushed as soon as the problem's samples are scored. A rerun with the same ``--out``
reads the file back, skips the problems it holds and samples the rest; a torn last line
(the process died while writing it) is cut off. Sampling seeds depend only on the seed, the
benchmark, the problem id and the sample index, so a resumed evaluation draws the samples
an uninterrupted one would have (exactly, with the same --batch-size: batch composition can
move the last bits of the logits). A file with a header and no records yet (the
evaluation failed before its first problem) is started over with the new settings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from dynamo_async.errors import UsageError
from dynamo_async.lines import cut_torn_tail


class EvalSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything that decides the samples; a resume must match it exactly."""

    model: str
    engine: str
    n: int
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int
    max_prompt_tokens: int
    dtype: str
    system_prompt: str
    few_shot: tuple[tuple[str, str], ...] = ()
    reward_timeout_s: float = 5.0  # math-verify's timeout and input cap can change scores
    reward_max_chars: int = 50_000
    user_template: str = "{problem}"
    answer_format: str = "boxed"


class ProblemRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """n scored samples of one problem."""

    benchmark: str
    id: str
    answer: str
    digest: str  # of the problem text and gold answer (``problem_digest``)
    acc: tuple[int, ...]  # 1 = correct, per sample
    tokens: tuple[int, ...]  # response length, per sample
    finish: tuple[str, ...]  # "stop" | "length" | "abort", per sample
    responses: tuple[str, ...] = ()  # the texts, with --save-responses

    @property
    def n(self) -> int:
        return len(self.acc)

    @property
    def correct(self) -> int:
        return sum(self.acc)


class _Line(msgspec.Struct, frozen=True, omit_defaults=True):
    header: EvalSettings | None = None
    record: ProblemRecord | None = None


def problem_digest(problem: str, answer: str) -> str:
    """Identifies what a record was scored against: a resume refuses records of a problem
    whose text or gold answer changed under the same benchmark name and id."""
    return hashlib.sha256(f"{problem}\x00{answer}".encode()).hexdigest()[:16]


def records_path(out: Path) -> Path:
    """``results.json`` -> ``results.records.jsonl``."""
    return out.with_name(out.stem + ".records.jsonl")


class RecordFile:
    """Open (or create) the record file for ``settings``; ``done`` maps (benchmark, id) to records."""

    def __init__(self, path: Path, settings: EvalSettings):
        self.path = path
        self.done: dict[tuple[str, str], ProblemRecord] = {}
        if path.exists() and path.stat().st_size:
            self._read_back(settings)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(msgspec.json.encode(_Line(header=settings)) + b"\n")
        self._file = path.open("ab")

    def add(self, record: ProblemRecord) -> None:
        self._file.write(msgspec.json.encode(_Line(record=record)) + b"\n")
        self._file.flush()
        self.done[(record.benchmark, record.id)] = record

    def close(self) -> None:
        self._file.close()

    def _read_back(self, settings: EvalSettings) -> None:
        lines = cut_torn_tail(self.path).splitlines()
        decoder = msgspec.json.Decoder(_Line)
        try:
            header = decoder.decode(lines[0]).header if lines else None
        except msgspec.DecodeError as err:
            raise UsageError(
                f"{self.path}: got an unreadable header ({err}), expected the record file of "
                "an earlier `dynamo-async eval`; delete it or pass another --out"
            ) from None
        if header != settings and len(lines) <= 1:  # nothing sampled yet: start over
            self.path.write_bytes(msgspec.json.encode(_Line(header=settings)) + b"\n")
            return
        if header != settings:
            raise UsageError(
                f"{self.path}: got records sampled with {_diff(header, settings)}; expected the "
                "same settings to resume; pass another --out or delete the file to start over"
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = decoder.decode(line).record
            except msgspec.DecodeError as err:
                raise UsageError(
                    f"{self.path}, line {number}: got {err}, expected a problem record; delete the file to start over"
                ) from None
            if record is None:
                raise UsageError(
                    f"{self.path}, line {number}: got a second header, expected problem records; "
                    "delete the file to start over"
                )
            self.done[(record.benchmark, record.id)] = record

    def check(self, benchmark: str, problem_id: str, digest: str) -> bool:
        """True if ``(benchmark, problem_id)`` is done; an error if it was done for another
        problem text or answer."""
        record = self.done.get((benchmark, problem_id))
        if record is None:
            return False
        if record.digest != digest:
            raise UsageError(
                f"{self.path}: got a record of {benchmark} problem {problem_id!r} for another problem "
                "text or answer, expected the same data as before; pass another --out for new data"
            )
        return True


def _diff(old: EvalSettings | None, new: EvalSettings) -> str:
    if old is None:
        return "no header"
    fields = [f for f in new.__struct_fields__ if getattr(old, f) != getattr(new, f)]
    return ", ".join(f"{f}={getattr(old, f)!r} (now {getattr(new, f)!r})" for f in fields)

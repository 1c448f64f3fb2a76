"""Where a data row keeps its problem, answer and id: published layouts and mappings (docs/data.md).

- ``plain``: fields ``problem`` and ``answer`` (optional ``id``, ``source``, ``level`` or
  ``meta.level``), as the evaluation benchmarks are published.
- ``verl``: verl's RL parquet layout, as DAPO-Math-17k is published on the hub: ``prompt`` is a
  list of chat messages (the problem is the last user message's content), the gold answer is
  ``reward_model.ground_truth``, the id ``extra_info.index`` and the source ``data_source``.
- any other layout: ``data.problem_field`` / ``data.answer_field`` / ``data.id_field`` name the
  fields, with dotted paths into nested records (``reward_model.ground_truth``). A problem field
  may hold text or a list of chat messages.

``layout: auto`` (the default) takes ``plain`` when the first row has ``problem`` and ``answer``,
else ``verl`` when it has ``prompt`` and ``reward_model``; a row that matches neither is an error
naming the fields it has and the options that map them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dynamo_async.errors import UsageError

LAYOUTS = ("auto", "plain", "verl")
_DEFAULTS = {
    "plain": {"problem": "problem", "answer": "answer", "id": "id", "source": "source"},
    "verl": {
        "problem": "prompt",
        "answer": "reward_model.ground_truth",
        "id": "extra_info.index",
        "source": "data_source",
    },
}


class FieldMap(msgspec.Struct, frozen=True):
    """How rows are read (from ``DataConfig``); empty fields take the layout's defaults."""

    layout: str = "auto"
    problem: str = ""
    answer: str = ""
    id: str = ""

    def resolve(self, first_row: Any, where: str) -> dict[str, str]:
        """Dotted paths of problem, answer, id and source for the rows of one file."""
        layout = self.layout if self.layout != "auto" else detect(first_row, self, where)
        paths = dict(_DEFAULTS[layout])
        paths.update({k: v for k, v in (("problem", self.problem), ("answer", self.answer), ("id", self.id)) if v})
        return paths


def detect(row: Any, fields: FieldMap, where: str) -> str:
    """``plain`` or ``verl`` from a row's keys (explicit fields count as present)."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: got {type(row).__name__}, expected a record (a JSON object / Parquet row)")
    for layout in ("plain", "verl"):  # a mapped field stands in for the layout's own
        defaults = _DEFAULTS[layout]
        if all(
            lookup(row, mapped or defaults[key]) is not None
            for key, mapped in (("problem", fields.problem), ("answer", fields.answer))
        ):
            return layout
    raise UsageError(
        f"{where}: got a row with fields {sorted(row)}, expected 'problem' and 'answer' (plain layout) or "
        "'prompt' and 'reward_model.ground_truth' (verl's layout); map other fields with "
        "data.problem_field=..., data.answer_field=... (dotted paths into nested fields, e.g. "
        "reward_model.ground_truth) and optionally data.id_field=..."
    )


def lookup(row: dict, path: str) -> Any:
    """The value at dotted ``path`` in ``row``, or None where any part is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def problem_text(value: Any, path: str, where: str) -> str:
    """A problem field's text: a string, or the content of the last user message of a chat."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
        raise UsageError(
            f"{where}: field {path!r} got chat messages with roles "
            f"{[m.get('role') for m in value]}, expected a 'user' message with text content"
        )
    raise UsageError(
        f"{where}: field {path!r} got {type(value).__name__}, expected text or a list of chat "
        "messages ({'role': 'user', 'content': ...})"
    )

"""Prompt templates around a problem: known ones by name, stripping and applying (docs/data.md).

DAPO-Math-17k (BytedTsinghua-SIA) publishes every problem inside DAPO's instruction template,
which asks for the answer on a last line ``Answer: X`` (verl's ``math_dapo`` reward reads it)::

    Solve the following math problem step by step. The last line of your response should be
    of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.

    {problem}

    Remember to put your answer on its own line after "Answer:".

``data.strip_template: dapo`` takes it off at load (copies that re-publish it with
``Answer: \\boxed{$Answer}`` in the first line are recognised too), so that duplicates are found
by the problem's own text; ``data.user_template: dapo`` puts it back around every problem, the
held-out ones included, so training and evaluation prompts read the same.
"""

from __future__ import annotations

import re

from dynamo_async.errors import UsageError

DAPO = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)

KNOWN: dict[str, str] = {"dapo": DAPO}

_DAPO_HEAD = re.compile(
    r"\ASolve the following math problem step by step\. The last line of your response "
    r"should be of the form Answer: [^\n]*? where \$Answer is the answer to the problem\.\s*"
)
_DAPO_TAIL = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*\Z")
_STRIPPERS: dict[str, tuple[re.Pattern, re.Pattern]] = {"dapo": (_DAPO_HEAD, _DAPO_TAIL)}


def expand(template: str) -> str:
    """The template text of ``template``: a known name (``dapo``) or a text holding ``{problem}``."""
    text = KNOWN.get(template, template)
    if "{problem}" not in text:
        raise UsageError(
            f"data.user_template: got {template!r}, expected a text with '{{problem}}' in it "
            f"or one of the known names {sorted(KNOWN)}"
        )
    return text


def apply(template: str, problem: str) -> str:
    """The user turn: ``problem`` inside ``template`` (see ``expand``)."""
    return expand(template).replace("{problem}", problem)


def strip(name: str, text: str) -> str:
    """``text`` without the known template ``name`` around it; a text without it is returned as is."""
    if name not in _STRIPPERS:
        raise UsageError(
            f"data.strip_template: got {name!r}, expected one of {sorted(_STRIPPERS)} (or '' to keep "
            "the data's own text)"
        )
    head, tail = _STRIPPERS[name]
    return tail.sub("", head.sub("", text, count=1), count=1).strip()

"""Extract the final answer of a response: its last ``\\boxed{...}``, or its last ``Answer:`` line.

docs/data.md ("Answer formats"): by default the prediction is the last ``\\boxed{}`` of the
response (the convention of verl's ``last_boxed_only_string`` and of prime-rl/verifiers'
``extract_boxed_answer``). Braces are matched with nesting;
an escaped brace (``\\{``, ``\\}``) does not count. ``\\boxed 5`` (a space, then one token) and
``\\fbox{...}`` are accepted too.

``rewards.answer_format: answer_line`` reads DAPO's form instead: what follows the last
``Answer:`` (case insensitive) up to the end of its line, or the next line when it ends its line
(verl's ``math_dapo`` reads the same), with ``$...$`` or ``**...**`` around it and a final full
stop taken off, a ``\\boxed{}`` inside it unwrapped, and a ``$$ ... $$`` block opened there read
to its end. ``auto``
takes whichever of the two comes last in the response.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
_TOKEN_END = re.compile(r"[\s$]")


_ANSWER_RE = re.compile(r"(?i)answer\s*:")
_DISPLAY = {"$$": "$$", "\\[": "\\]"}  # display math opened on the answer line, closed below
FORMATS = ("boxed", "answer_line", "auto")


def final_answer(text: str, answer_format: str) -> str | None:
    """The response's final answer in ``answer_format`` (see the module docstring); None if none."""
    if answer_format == "boxed":
        return last_boxed(text)
    if answer_format == "answer_line":
        return last_answer_line(text)
    assert answer_format == "auto", answer_format
    found = [f for f in (_last_boxed_at(text), _last_answer_line_at(text)) if f is not None and f[1]]
    return max(found, key=lambda f: f[0])[1] if found else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Returns None when there is no box or when the last box's braces are unbalanced. A
    ``\\boxed`` that is the prefix of a longer command name (``\\boxedfoo``) is not a box.
    """
    found = _last_boxed_at(text)
    return found[1] if found else None


def last_answer_line(text: str) -> str | None:
    """The answer on the last ``Answer:`` line of ``text``, cleaned; None when there is none."""
    found = _last_answer_line_at(text)
    return found[1] if found else None


def _last_boxed_at(text: str) -> tuple[int, str | None] | None:
    for match in reversed(list(_BOX_RE.finditer(text))):
        is_box, content = _box_content(text, match.end())
        if is_box:
            return match.start(), content
    return None


def _last_answer_line_at(text: str) -> tuple[int, str | None] | None:
    """(position, answer) of the last ``Answer:`` marker: the rest of its line, or the next
    non-empty line when the marker ends its line; a display-math block opened there is read to
    its end."""
    markers = list(_ANSWER_RE.finditer(text))
    if not markers:
        return None
    start = markers[-1].end()
    rest = text[start:].lstrip()
    line = rest.split("\n", 1)[0].strip()
    closing = _DISPLAY.get(line.strip("*").strip())
    if closing is not None:
        body = rest.split("\n", 1)[1] if "\n" in rest else ""
        line = body.split(closing, 1)[0] if closing in body else ""
    return markers[-1].start(), _clean_answer(line)


def _clean_answer(raw: str) -> str | None:
    """``$42$.`` -> ``42``; ``\\boxed{42}`` -> ``42``; ``**42**`` -> ``42``; None when nothing is left."""
    answer = raw.strip().strip("*").strip()
    if _BOX_RE.search(answer):
        answer = last_boxed(answer) or ""
    answer = answer.strip().removesuffix(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(answer) > len(left) + len(right) - 1 and answer.startswith(left) and answer.endswith(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
            break
    answer = answer.removesuffix(".").strip()
    return answer or None


def _box_content(text: str, pos: int) -> tuple[bool, str | None]:
    """(is a box, its content or None) for the command name that ends at ``pos``."""
    if pos < len(text) and text[pos].isalpha():
        return False, None  # a longer command name such as \boxedfoo
    if pos < len(text) and text[pos] == "{":
        return True, _braced(text, pos)
    start = pos
    while start < len(text) and text[start] in " \t":
        start += 1
    if start == pos:
        return True, None  # \boxed followed by neither a brace nor a space
    if start < len(text) and text[start] == "{":
        return True, _braced(text, start)
    end_match = _TOKEN_END.search(text, start)
    end = end_match.start() if end_match else len(text)
    return True, (text[start:end] if end > start else None)


def _braced(text: str, open_pos: int) -> str | None:
    """Text between the ``{`` at ``open_pos`` and its matching ``}``; None if unbalanced."""
    assert text[open_pos] == "{"
    depth = 0
    i = open_pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : i]
        i += 1
    return None

"""Extract the final answer of a response: the content of its last ``\\boxed{...}``.

DESIGN section 4.5: the prediction is taken from the last ``\\boxed{}`` of the response (the
convention of verl's ``last_boxed_only_string`` and of prime-rl/verifiers'
``extract_boxed_answer``; notes/algorithms.md section 5.3). Braces are matched with nesting;
an escaped brace (``\\{``, ``\\}``) does not count. ``\\boxed 5`` (a space, then one token) and
``\\fbox{...}`` are accepted too.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
_TOKEN_END = re.compile(r"[\s$]")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Returns None when there is no box or when the last box's braces are unbalanced. A
    ``\\boxed`` that is the prefix of a longer command name (``\\boxedfoo``) is not a box.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        is_box, content = _box_content(text, match.end())
        if is_box:
            return content
    return None


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
                return text[open_pos + 1:i]
        i += 1
    return None

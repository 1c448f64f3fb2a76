"""Line-oriented files written by appending (metrics.jsonl, eval record files)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """``text`` at ``path``, written beside it and renamed into place: a reader sees the old file
    or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cut_torn_tail(path: Path) -> bytes:
    """The file's bytes up to its last newline; a torn last line (its writer was killed
    mid-line) is cut from the file, so the next append starts on a fresh line. A missing
    file reads as empty."""
    if not path.exists():
        return b""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    return complete

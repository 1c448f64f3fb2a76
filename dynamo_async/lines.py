"""Line-oriented files written by appending (metrics.jsonl, eval record files)."""

from __future__ import annotations

from pathlib import Path


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

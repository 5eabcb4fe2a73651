"""The one machine-readable line of a vqct command: every command that produces figures prints
them as one JSON object on its last stdout line, after human-readable progress on stderr.
Readers of that line (`vqct compare`, `make compare`, the tests) read it here."""

from __future__ import annotations

import json
from pathlib import Path


def last_json(output: str) -> dict:
    """The JSON object on the last non-empty line of a command's stdout."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the command printed nothing on stdout")
    return json.loads(lines[-1])


def read_last_json(path: str | Path) -> dict:
    """last_json of a file holding a command's stdout (`vqct train ... | tee FILE`)."""
    return last_json(Path(path).read_text())

"""Progress and error lines of the benchmark commands."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    """Writes `msg` to stderr at once (progress and errors of the commands)."""
    print(msg, file=sys.stderr, flush=True)

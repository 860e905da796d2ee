"""Atomic file writes for everything the benchmarks produce: a temporary file in
the same folder, flushed to disk, then renamed over the target, so an interrupted
run never leaves a half-written file in place of a good one.

The file gets the permissions of an ordinary `open(path, "w")`: 0o666 minus the
process umask (`-rw-r--r--` under the usual umask 022), not the owner-only mode
that `tempfile.mkstemp` gives its temporary files.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes `data` to `path` (creating its folder) with mode 0o666 & ~umask;
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mode = 0o666 & ~current_umask()
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Writes `data` as indented JSON, atomically."""
    return write_atomic(path, json.dumps(data, indent=2).encode())

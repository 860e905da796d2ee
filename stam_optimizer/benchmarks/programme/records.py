"""The benchmarks' records: writing, reading and describing result files.

Writes are atomic for everything the benchmarks produce: a temporary file in
the same folder, flushed to disk, then renamed over the target, so an interrupted
run never leaves a half-written file in place of a good one. Every record
carries `SCHEMA` and the `environment()` it was measured in; the format is in
docs/benchmark_format.md.

The file gets the permissions of an ordinary `open(path, "w")`: 0o666 minus the
process umask (`-rw-r--r--` under the usual umask 022), not the owner-only mode
that `tempfile.mkstemp` gives its temporary files.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

SCHEMA = 1  # version of the run and sweep record format

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


def load_json(path: str | os.PathLike[str]) -> dict | None:
    """The record in `path`, or None if it is missing or unreadable (no warning:
    the programme uses it to ask "is this job done?")."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def environment() -> dict:
    """Versions and machine facts stored with every record."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "python": sys.version.split()[0], "jax": jax.__version__, "optax": optax.__version__,
        "numpy": np.__version__, "backend": jax.default_backend(), "cpu": cpu,
        "threads": os.cpu_count(), "devices": jax.device_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_record(path: Path) -> dict | None:
    """The JSON object in `path`, or None with a warning if it cannot be read."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("the top level is not a JSON object")
        return data
    except (OSError, ValueError) as e:
        warnings.warn(f"stam-bench report: skipping unreadable {path}: {e}", stacklevel=3)
        return None


REQUIRED = {
    "run": ("task", "optimizer", "task_info.min_effect", "final.seeds", "final.metric"),
    "sweep": ("task", "optimizer", "task_info.min_effect", "lrs", "wds", "seeds", "metric"),
}


def check(data: dict, kind: str) -> None:
    """Raises ValueError if a run or sweep file lacks what the report needs."""
    for key in REQUIRED[kind]:
        obj = data
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise ValueError(f"missing {key}")
            obj = obj[part]
    if kind == "run" and len(data["final"]["seeds"]) != len(data["final"]["metric"]):
        raise ValueError("final.seeds and final.metric differ in length")
    if kind == "sweep" and np.asarray(data["metric"], dtype=float).size != (
            len(data["lrs"]) * len(data["wds"]) * len(data["seeds"])):
        raise ValueError("metric is not n_wd x n_lr x n_seeds")


def _load_folder(results_dir: str | Path, sub: str, kind: str) -> list[dict]:
    out = []
    for path in sorted(Path(results_dir, sub).glob("*/*.json")):
        data = read_record(path)
        if data is None:
            continue
        try:
            check(data, kind)
        except (KeyError, TypeError, ValueError) as e:
            warnings.warn(f"stam-bench report: skipping {path}: not a valid {kind} file "
                          f"({e})", stacklevel=3)
            continue
        out.append(data)
    return out


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every readable `runs/<task>/<optimizer>.json` under `results_dir`."""
    return _load_folder(results_dir, "runs", "run")


def load_sweeps(results_dir: str | Path) -> list[dict]:
    """Every readable `sweeps/<task>/<optimizer>.json` under `results_dir`."""
    return _load_folder(results_dir, "sweeps", "sweep")


def load_optional(path: Path) -> dict | None:
    """`read_record(path)`, or None if the file does not exist."""
    return read_record(path) if path.exists() else None

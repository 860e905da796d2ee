"""examples/checkpoint_resume.py: killed (while training, and while saving), resumed,
it ends with the parameters of the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "checkpoint_resume.py"
COMMON = ["--steps", "12", "--every", "4", "--devices", "2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *COMMON, *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _steps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_killed_runs_resume_to_the_uninterrupted_parameters(tmp_path):
    ref = _run("--dir", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.npz"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = str(tmp_path / "run")

    # Killed while the checkpoint of step 8 is being finalised: step 4 stays the latest.
    r = _run("--dir", run_dir, "--die-while-saving", "8")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    names = _steps(tmp_path / "run")
    assert "4" in names and "8" not in names, names
    assert any(n.startswith("8.") for n in names), names  # the unfinished save

    # Resumes from 4 (the unfinished step 8 is ignored and cleaned up), killed before step 10.
    r = _run("--dir", run_dir, "--die-at-step", "10")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "resumed from step 4" in r.stdout, r.stdout
    assert _steps(tmp_path / "run") == ["4", "8"]

    r = _run("--dir", run_dir, "--out", str(tmp_path / "run.npz"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 8" in r.stdout, r.stdout
    want, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "run.npz")
    assert sorted(want.files) == sorted(got.files) and len(want.files) == 5
    start = np.random.default_rng(0)  # the script's initial params: training moved them
    assert np.max(np.abs(want["w1"] - 0.5 * start.normal(size=(8, 32)))) > 1e-3
    for k in want.files:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # same devices: bit for bit

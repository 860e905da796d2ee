"""Runs a 0.1.0 command from its file path (`python stam_optimizer/benchmarks/NAME.py`)."""

import os
import runpy
import sys


def run(name: str) -> None:
    """Runs `stam_optimizer.benchmarks.legacy.<name>` as `__main__` with the
    repository root, not this folder, first on the import path."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(os.path.dirname(here))] + [
        p for p in sys.path if os.path.abspath(p or ".") != here]
    runpy.run_module(f"stam_optimizer.benchmarks.legacy.{name}", run_name="__main__",
                     alter_sys=True)

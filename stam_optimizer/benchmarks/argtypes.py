"""argparse types shared by the benchmark commands: each rejects bad input with a
message naming the allowed range."""

from __future__ import annotations

import argparse

from stam_optimizer.benchmarks import registry


def positive(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def nonnegative(text: str) -> int:
    """An integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def optimizer_names(text: str) -> list[str]:
    """A comma-separated list of registry names."""
    try:
        return registry.parse_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e

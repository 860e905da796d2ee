"""argparse types shared by the benchmark commands: each rejects bad input with a
message naming the allowed range."""

from __future__ import annotations

import argparse

from stam_optimizer.benchmarks.measure import memory
from stam_optimizer.benchmarks.programme import registry


def positive(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def nonnegative(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def optimizer_names(text: str) -> list[str]:
    """A comma-separated list of registry names."""
    try:
        return registry.parse_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def model_names(text: str) -> list[str]:
    """A comma-separated list of `stam-bench memory` models."""
    try:
        return memory.parse_models(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def model_name(text: str) -> str:
    """One `stam-bench memory` model."""
    name = text.strip()
    if name not in memory.MODELS:
        raise argparse.ArgumentTypeError(
            f"unknown model {name!r}; choose one of {', '.join(memory.MODELS)}")
    return name

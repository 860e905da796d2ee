"""Markdown helpers of the reports: numbers, intervals and tables as text."""

from __future__ import annotations

import math


def number(x: float | None, digits: int = 4) -> str:
    """`x` to `digits` significant digits; "n/a" for None, NaN or ±Inf."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def interval_text(mean: float, lo: float, hi: float) -> str:
    """"mean [lo, hi]"."""
    return f"{number(mean)} [{number(lo)}, {number(hi)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table as lines, followed by an empty line."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]

"""The sizes of the benchmark programme (`--size tiny|quick|full|gpu`): everything
the programme itself changes with the size, in one object per size.

A task's own dimensions (steps, batch, data) come from `Config.pick` inside the
task; a task may also fix its own grid and seeds (`Task.fixed_grid`,
`Task.seeds`), which then win over the size's.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _half_decades(lo: int, hi: int, per_decade: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.logspace(lo, hi, (hi - lo) * per_decade + 1))


@dataclasses.dataclass(frozen=True)
class Size:
    """What one size runs.

    lr_grid: learning rates every optimizer is tuned on (the same for all).
    tune_seeds, final_seeds: seeds of the tuning runs and of the final, paired runs.
    sweep_lrs, sweep_wds, sweep_seeds: the learning rate x weight decay sweep.
    memory_models: models whose optimizer-state bytes are counted.
    memory_compiled: also compile the updates and train steps (minutes).
    timing_trees, timing_steps, timing_tasks: `stam-bench speed` inside the programme.
    signal_steps, signal_sizes, signal_window: the signal suite's streams (steps,
      tensor sizes, and the response window after the change).
    """

    name: str
    lr_grid: tuple[float, ...]
    tune_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    sweep_lrs: tuple[float, ...]
    sweep_wds: tuple[float, ...]
    sweep_seeds: tuple[int, ...]
    memory_models: tuple[str, ...]
    memory_compiled: bool
    timing_trees: tuple[str, ...]
    timing_steps: int
    timing_tasks: tuple[str, ...]
    signal_steps: int
    signal_sizes: tuple[int, ...]
    signal_window: int


SIZES: dict[str, Size] = {
    "tiny": Size("tiny", lr_grid=(1e-3, 1e-2, 1e-1), tune_seeds=(1000,), final_seeds=(0, 1),
                 sweep_lrs=(1e-2, 1e-1), sweep_wds=(0.0, 0.1), sweep_seeds=(0, 1),
                 memory_models=("small_mlp",), memory_compiled=False,
                 timing_trees=("square8",), timing_steps=2, timing_tasks=(),
                 signal_steps=240, signal_sizes=(64,), signal_window=60),
    "quick": Size("quick", lr_grid=_half_decades(-4, 0, 1), tune_seeds=(1000,),
                  final_seeds=(0, 1, 2, 3), sweep_lrs=_half_decades(-4, 0, 1),
                  sweep_wds=(0.0, 1e-3, 1e-2, 1e-1), sweep_seeds=(0, 1, 2),
                  memory_models=("small_mlp", "transformer"), memory_compiled=False,
                  timing_trees=("square8",), timing_steps=10, timing_tasks=(),
                  signal_steps=3000, signal_sizes=(4096,), signal_window=200),
    "full": Size("full", lr_grid=_half_decades(-4, 0, 2), tune_seeds=(1000, 1001),
                 final_seeds=tuple(range(6)), sweep_lrs=_half_decades(-4, 0, 2),
                 sweep_wds=(0.0, 1e-4, 1e-3, 1e-2, 1e-1), sweep_seeds=(0, 1, 2, 3, 4),
                 memory_models=("small_mlp", "medium_mlp", "wide_linear", "transformer"),
                 memory_compiled=True,
                 timing_trees=("small200", "square8", "large64", "single16"), timing_steps=20,
                 timing_tasks=("mlp", "transformer"),
                 signal_steps=3000, signal_sizes=(64, 4096, 16384), signal_window=200),
}
# One GPU (`stam-bench run chinchilla --size gpu`): only the suites with gpu tasks run
# at this size, each task with its own grid and seeds; the rest is as at full.
SIZES["gpu"] = dataclasses.replace(SIZES["full"], name="gpu")


def get(name: str) -> Size:
    """The size `name`; ValueError lists the sizes."""
    if name not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {name!r}")
    return SIZES[name]

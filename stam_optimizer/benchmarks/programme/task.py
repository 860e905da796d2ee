"""The `Task`: one of the two extension points of the benchmark (the other is the
optimizer registry).

A task is data plus four pure functions, all traceable by JAX so that a whole
training run (every step, every seed, every learning rate) is one compiled
program:

* `init(key) -> params`
* `batch(key, step) -> batch`: the training batch of `step` (the step is a traced
  integer, so a distribution shift is a `jnp.where` on it);
* `loss(params, batch) -> scalar`: the training loss;
* `evaluate(params, step) -> {"val_loss": ..., ...}`: metrics on held-out data of
  the distribution in force at `step`. The comparison metric (`metric`, lower is
  better) must be among them;
* optionally `test(params) -> {"test_loss": ..., ...}`, evaluated once at the end.

Adding a task is one small module in `stam_optimizer/benchmarks/tasks/` with a
`make(cfg: Config) -> Task` registered in `tasks/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# One log grid for every optimizer: half-decades from 1e-4 to 1. A tuning that
# lands on an edge gets two more points beyond it (see runner.tune).
LR_GRID = tuple(float(x) for x in np.logspace(-4, 0, 9))


@dataclasses.dataclass(frozen=True)
class Config:
    """How big to make a task, and where its files live."""

    size: str = "quick"  # "quick" | "full" | "tiny" (tests)
    data_dir: Path | None = None  # MNIST / Fashion-MNIST / CIFAR-10 files
    cache_dir: Path = Path("results/cache")  # generated data (MNIST-1D)
    steps: int | None = None  # overrides the size's number of steps (0.1.0 commands)

    def pick(self, tiny: Any, quick: Any, full: Any) -> Any:
        """The value for this size."""
        if self.size not in ("tiny", "quick", "full"):
            raise ValueError(f"size must be 'tiny', 'quick' or 'full', got {self.size!r}")
        return {"tiny": tiny, "quick": quick, "full": full}[self.size]

    def schedule(self, tiny: int, quick: int, full: int, evals: int) -> tuple[int, int]:
        """(steps, eval_every): the size's steps (or the override), rounded up to a
        whole number of `evals` evaluation intervals."""
        steps = self.steps if self.steps is not None else self.pick(tiny, quick, full)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        evals = min(evals, steps)
        every = -(-steps // evals)
        return every * evals, every


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem, runnable for any optimizer of the registry."""

    name: str
    suite: str
    description: str
    init: Callable[[Any], Any]
    batch: Callable[[Any, Any], Any]
    loss: Callable[[Any, Any], Any]
    evaluate: Callable[[Any, Any], dict[str, Any]]
    steps: int
    eval_every: int
    batch_size: int
    min_effect: float  # smallest difference of `metric` that matters (absolute)
    target: float  # `metric` value that counts as "reached" (performance profile)
    metric: str = "val_loss"
    shift_steps: tuple[int, ...] = ()
    grad_noise: float = 0.0  # std of Gaussian noise added to every gradient entry
    lr_grid: tuple[float, ...] = LR_GRID
    test: Callable[[Any], dict[str, Any]] | None = None
    # A training recipe of the task's own (None: the registry optimizer built at
    # lr 1 and multiplied by a constant learning rate, see runner):
    # `make_optimizer(name, peak_lr)` with a traced peak lr, its updates applied
    # as they are. The parameters evaluated are the entry's `eval_params`.
    make_optimizer: Callable[[str, Any], Any] | None = None
    seeds: tuple[list[int], list[int]] | None = None  # (tuning, final); None: the size's
    fixed_grid: bool = False  # True: `lr_grid` is kept, not replaced by the size's grid
    record: Callable[[str], dict] | None = None  # optimizer -> extra JSON for its run file
    # True: `batch(key, step)` gets the seed's own data key at every step (not one
    # folded with the step), so a task can fix a whole order of batches per seed,
    # such as a permutation of windows drawn without replacement.
    seed_batches: bool = False
    # True: tune on the tuning seeds alone, then run the final seeds at the chosen
    # learning rate only (two programs; the final seeds are not run at the other
    # learning rates, so a long run costs tuning + final seeds, not their product).
    final_at_best: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError(f"task {self.name}: steps ({self.steps}) must be a positive "
                             f"multiple of eval_every ({self.eval_every})")
        if self.min_effect <= 0:
            raise ValueError(f"task {self.name}: min_effect must be > 0, got {self.min_effect}")

    def info(self) -> dict:
        """The JSON description stored with every run."""
        return {"description": self.description, "metric": self.metric,
                "min_effect": self.min_effect, "target": self.target, "steps": self.steps,
                "batch_size": self.batch_size, "eval_every": self.eval_every,
                "shift_steps": list(self.shift_steps), "grad_noise": self.grad_noise}

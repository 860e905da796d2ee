"""The task registry and the suites of the benchmark programme.

A suite is a list of task names; the optimizers it runs are the registry
entries that say they belong to it (`Suite.member`: `full` for the general
suites, `gpt`, `ablation`), narrowed at quick size to the entries that run there
(`registry.Entry.quick`). Special suites without tasks (smoke, memory, timing,
signal) and the lr x weight-decay sweep are run by `programme.scheduler`.

Targets (for steps-to-target) and minimum effect sizes were fixed from a pilot
quick run, before any full run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks import (
    chinchilla,
    convex,
    gpt,
    language,
    nonstationary,
    quadratic,
    real_data,
)

TASKS: dict[str, Callable[[Config], Task]] = {
    "linear_regression": convex.linear_regression,
    "nonstationary_mlp": nonstationary.nonstationary_mlp,
    "stress_b4": nonstationary.stress_b4,
    "stress_b8": nonstationary.stress_b8,
    "stress_b32": nonstationary.stress_b32,
    "digits_mlp": real_data.digits_mlp,
    "mnist1d_mlp": real_data.mnist1d_mlp,
    "mnist1d_cnn": real_data.mnist1d_cnn,
    "noisy_shift": nonstationary.noisy_shift,
    "long_horizon_mlp": nonstationary.long_horizon_mlp,
    "markov_lm": language.markov_lm,
    "char_lm": language.char_lm,
    "noisy_quadratic_low": quadratic.noisy_quadratic_low,
    "noisy_quadratic_high": quadratic.noisy_quadratic_high,
    "mnist_mlp": real_data.mnist_mlp,
    "mnist_cnn": real_data.mnist_cnn,
    "fashion_mnist_mlp": real_data.fashion_mnist_mlp,
    "fashion_mnist_cnn": real_data.fashion_mnist_cnn,
    "cifar10_mlp": real_data.cifar10_mlp,
    "cifar10_cnn": real_data.cifar10_cnn,
    **gpt.TASKS,
    **chinchilla.TASKS,
}

# Tasks that choose their own optimizers (`size -> names`) instead of the suite's
# membership attribute: the one-Chinchilla regime runs the primary family's.
TASK_OPTIMIZERS: dict[str, Callable[[str], list[str]]] = dict.fromkeys(chinchilla.TASKS,
                                                                       chinchilla.optimizers)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A suite of the programme. `kind` says how it runs: "tasks" (tune and run
    every optimizer on each task), "sweep" (the lr x weight-decay grid on each
    task), or one of the suites without tasks: "smoke", "memory", "timing",
    "signal"."""

    description: str
    tasks: tuple[str, ...] = ()
    # Its optimizers: the registry entries whose attribute `member` is True; at
    # quick and tiny sizes, if `narrow_at_quick`, only those that run on the task
    # at quick size (`registry.Entry.on_task`).
    member: str = "full"
    narrow_at_quick: bool = True
    quick_tasks: tuple[str, ...] | None = None  # quick and tiny sizes (None: `tasks`)
    kind: str = "tasks"
    tiny_tasks: tuple[str, ...] | None = None  # tiny size (None: as quick)
    gpu_tasks: tuple[str, ...] = ()  # the gpu size (one GPU; never in CI)

    def tasks_at(self, size: str) -> tuple[str, ...]:
        """The suite's tasks at `size`: `tasks` at full, `gpu_tasks` at gpu,
        `tiny_tasks` (else `quick_tasks`) at tiny, `quick_tasks` at quick; where
        those are None, `tasks`."""
        if size == "full":
            return self.tasks
        if size == "gpu":
            return self.gpu_tasks
        if size == "tiny" and self.tiny_tasks is not None:
            return self.tiny_tasks
        return self.tasks if self.quick_tasks is None else self.quick_tasks


SUITES: dict[str, Suite] = {
    "smoke": Suite("one update per optimizer: finite, state bytes", kind="smoke"),
    "convex": Suite("convex regression", ("linear_regression",)),
    "nonstationary": Suite("MLP with a distribution shift", ("nonstationary_mlp",)),
    "stress": Suite("small-batch stress (batch 4, 8, 32) with a shift",
                    ("stress_b4", "stress_b8", "stress_b32")),
    "digits": Suite("scikit-learn digits", ("digits_mlp",)),
    "mnist1d": Suite("MNIST-1D MLP and CNN", ("mnist1d_mlp", "mnist1d_cnn")),
    "noisy_shift": Suite("shift plus gradient noise: recovery", ("noisy_shift",)),
    "sweep": Suite("learning rate x weight decay grid (decoupled-decay optimizers)",
                   ("nonstationary_mlp",), kind="sweep"),
    "ablation": Suite("does adaptivity matter? STAM, its energy-signal variant, fixed-beta1 "
                      "variants (0.9, 0.81, STAM's own mean beta1)",
                      ("nonstationary_mlp", "long_horizon_mlp", "noisy_quadratic_high"),
                      member="ablation", narrow_at_quick=False),
    "long_horizon": Suite("long-horizon non-stationary MLP (four shifts)",
                          ("long_horizon_mlp",)),
    "lm": Suite("causal transformer: Markov tokens and stdlib docstring characters",
                ("markov_lm", "char_lm")),
    "quadratic": Suite("noisy quadratic model, low and high gradient noise",
                       ("noisy_quadratic_low", "noisy_quadratic_high")),
    "images": Suite("MNIST, Fashion-MNIST, CIFAR-10 from --data-dir (MLP and CNN)",
                    ("mnist_mlp", "mnist_cnn", "fashion_mnist_mlp", "fashion_mnist_cnn",
                     "cifar10_mlp", "cifar10_cnn")),
    "gpt": Suite("small GPTs with warmup + cosine: LR sensitivity, loss spikes, memory; "
                 "at full size also the one-Chinchilla regime",
                 tuple(v.name for v in gpt.VARIANTS) + chinchilla.FULL_TASKS,
                 member="gpt", quick_tasks=tuple(v.name for v in gpt.QUICK_VARIANTS),
                 gpu_tasks=chinchilla.GPU_TASKS),
    "chinchilla": Suite("one Chinchilla: small GPTs on 20 tokens per non-embedding parameter "
                        "of CPython source, 3 widths and an 8x batch; the primary family "
                        "(not at quick size)",
                        chinchilla.FULL_TASKS, quick_tasks=(),
                        tiny_tasks=chinchilla.FULL_TASKS, gpu_tasks=chinchilla.GPU_TASKS),
    "memory": Suite("optimizer-state bytes per parameter and compiled step memory",
                    kind="memory"),
    "timing": Suite("update and train-step timing (stam-bench speed)", kind="timing"),
    "signal": Suite("what beta1 responds to: controlled gradient streams (noise up/down, "
                    "sign flip, rotation, heavy tails, one sign, warmup, decay)",
                    kind="signal"),
}

"""Non-stationary classification: a teacher network labels Gaussian inputs, and at
each shift both the input mean and the teacher change (suites nonstationary,
stress, noisy_shift, long_horizon)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks.models import classification_task, mlp

DIM, CLASSES = 20, 4


def teacher_data(phases: int, n_train: int, n_val: int, seed: int = 1234):
    """Per phase: inputs ~ N(m_p, I) with a fresh mean m_p, labels from a fresh
    random tanh teacher. Returns arrays with a leading phase axis."""
    rng = np.random.default_rng(seed)
    xs_tr, ys_tr, xs_va, ys_va = [], [], [], []
    for _ in range(phases):
        mean = rng.normal(0.0, 1.0, DIM)
        w1, w2 = rng.normal(0, 1, (DIM, 32)) / np.sqrt(DIM), rng.normal(0, 1, (32, CLASSES))
        for n, xs, ys in ((n_train, xs_tr, ys_tr), (n_val, xs_va, ys_va)):
            x = rng.normal(0.0, 1.0, (n, DIM)) + mean
            logits = np.tanh((x - mean) @ w1) @ w2 * 3.0
            xs.append(x.astype(np.float32))
            ys.append(np.argmax(logits + rng.gumbel(size=logits.shape) * 0.3, 1).astype(np.int32))
    return tuple(np.stack(a) for a in (xs_tr, ys_tr, xs_va, ys_va))


def shifting(name: str, suite: str, description: str, cfg: Config, *, steps: int,
             shift_steps: Sequence[int], batch_size: int, eval_every: int,
             grad_noise: float = 0.0, metric: str = "val_loss", target: float = 0.5) -> Task:
    x_tr, y_tr, x_va, y_va = teacher_data(len(shift_steps) + 1, 4096, 1024)
    return classification_task(
        name, suite, description, mlp((DIM, 64, 64, CLASSES)), x_tr, y_tr, x_va, y_va,
        steps=steps, batch_size=batch_size, eval_every=eval_every, min_effect=0.02,
        target=target, shift_steps=shift_steps, grad_noise=grad_noise, metric=metric)


def nonstationary_mlp(cfg: Config) -> Task:
    steps, every = cfg.schedule(40, 300, 1000, 20)
    return shifting("nonstationary_mlp", "nonstationary",
                    "MLP 20-64-64-4, teacher and input mean change at mid-training; "
                    "metric: validation loss on the new distribution at the end",
                    cfg, steps=steps, shift_steps=(steps // 2,), batch_size=32,
                    eval_every=every)


def stress(batch_size: int):
    """The stress task factory for any batch size (the 0.1.0 stress_runner uses it)."""
    def make(cfg: Config) -> Task:
        steps, every = cfg.schedule(40, 200, 300, 10)
        return shifting(f"stress_b{batch_size}", "stress",
                        f"as nonstationary_mlp with batch size {batch_size} (noisy "
                        "gradients), one shift at mid-training", cfg, steps=steps,
                        shift_steps=(steps // 2,), batch_size=batch_size,
                        eval_every=every, target={4: 1.0, 8: 0.7}.get(batch_size, 0.55))
    return make


stress_b4, stress_b8, stress_b32 = stress(4), stress(8), stress(32)


def noisy_shift(cfg: Config) -> Task:
    steps, every = cfg.schedule(40, 300, 1000, 20)
    return shifting("noisy_shift", "noisy_shift",
                    "abrupt input and label shift at mid-training plus Gaussian gradient "
                    "noise (std 0.05 per entry); metric: mean validation loss over the "
                    "evaluations after the shift (recovery)", cfg, steps=steps,
                    shift_steps=(steps // 2,), batch_size=32, eval_every=every,
                    grad_noise=0.05, metric="post_shift_val_loss", target=0.7)


def long_horizon_mlp(cfg: Config) -> Task:
    steps, every = cfg.schedule(80, 600, 2000, 40)
    shifts = tuple(steps * i // 5 for i in range(1, 5))
    return shifting("long_horizon_mlp", "long_horizon",
                    "MLP on a stream with four shifts (five distributions) over the run; "
                    "metric: validation loss on the last distribution at the end",
                    cfg, steps=steps, shift_steps=shifts, batch_size=32,
                    eval_every=every, target=0.55)

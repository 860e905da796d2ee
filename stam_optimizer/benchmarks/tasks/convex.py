"""Convex regression: an ill-conditioned linear least-squares problem (suite convex)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stam_optimizer.benchmarks.programme.task import Config, Task


def linear_regression(cfg: Config) -> Task:
    rng = np.random.default_rng(7)
    dim, n_train, n_val = 50, 2048, 1024
    scales = np.logspace(0, -1.5, dim)  # feature scales: condition number 1000
    w_true = rng.normal(0, 1, dim)

    def sample(n):
        x = rng.normal(0, 1, (n, dim)) * scales
        return (jnp.asarray(x, jnp.float32),
                jnp.asarray(x @ w_true + 0.1 * rng.normal(0, 1, n), jnp.float32))

    (x_tr, y_tr), (x_va, y_va) = sample(n_train), sample(n_val)
    batch_size, (steps, every) = 32, cfg.schedule(40, 300, 1000, 20)

    def init(key):  # a convex problem: every seed starts at zero, seeds vary the batches
        return {"w": jnp.zeros(dim), "b": jnp.zeros(())}

    def mse(p, x, y):
        return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    def batch(key, step):
        idx = jax.random.randint(key, (batch_size,), 0, n_train)
        return x_tr[idx], y_tr[idx]

    return Task(name="linear_regression", suite="convex",
                description="linear least squares, 50 features with scales spanning 1.5 "
                            "decades, label noise 0.1; metric: validation MSE/2",
                init=init, batch=batch, loss=lambda p, b: mse(p, *b),
                evaluate=lambda p, step: {"val_loss": mse(p, x_va, y_va)},
                steps=steps, eval_every=every, batch_size=batch_size,
                min_effect=0.001, target=0.02)

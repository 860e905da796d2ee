"""Noisy quadratic model (Zhang et al., 2019, arXiv:1907.04164): a diagonal
quadratic whose gradient noise has the curvature's shape, the simplest setting in
which momentum and adaptivity trade off against noise (suite quadratic)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stam_optimizer.benchmarks.programme.task import Config, Task

DIM = 100


def _nqm(noise: float, label: str, target: float, min_effect: float):
    def make(cfg: Config) -> Task:
        h = 1.0 / jnp.arange(1, DIM + 1, dtype=jnp.float32)  # curvatures 1 ... 1/100
        steps, every = cfg.schedule(40, 300, 1000, 20)

        def expected_loss(p):
            return 0.5 * jnp.sum(h * p["w"] ** 2)

        def loss(p, eps):  # gradient: h*w + noise*sqrt(h)*eps
            return expected_loss(p) + noise * jnp.sum(jnp.sqrt(h) * p["w"] * eps)

        return Task(name=f"noisy_quadratic_{label}", suite="quadratic",
                    description=f"noisy quadratic model, {DIM} curvatures 1/i, gradient "
                                f"noise {noise} x sqrt(curvature); metric: expected loss",
                    init=lambda key: {"w": jax.random.normal(key, (DIM,))},
                    batch=lambda key, step: jax.random.normal(key, (DIM,)),
                    loss=loss, evaluate=lambda p, step: {"val_loss": expected_loss(p)},
                    steps=steps, eval_every=every, batch_size=1,
                    min_effect=min_effect, target=target)
    return make


noisy_quadratic_low = _nqm(0.1, "low", target=0.06, min_effect=0.003)
noisy_quadratic_high = _nqm(1.0, "high", target=0.6, min_effect=0.01)

r"""The per-tensor β₁ signals of STAM and STAMLite: what β₁ responds to.

Both optimizers take `signal=`:

* `"spec"` (default): the signal of SPEC.md, unchanged since 0.1.0. STAM's
  `z = σ²/τ²` is the residual's mean square over its squared mean absolute
  value: a *shape* statistic of the residual distribution (about π/2 for
  Gaussian residuals, larger for heavy tails), not its size. Since τ (decay
  0.99) follows a change of level faster than σ² (decay 0.999), more noise
  first lowers z and *raises* β₁; less noise lowers β₁. STAMLite's
  `z = (b̂ − â²)/b̂` compares the spread of a tensor's entries with their mean
  square, ≈ 1 unless the entries share one sign, so β₁ stays near
  `b1_base·(1 − α/2)`. See docs/signal.md for the measurements.
* `"energy"`: residual energy against gradient energy. With matched decays,
  `z = EMA(mean r²) / EMA(mean g²)` is the fraction of the gradient's energy
  that the momentum does not predict: near 0 for a clean, steady gradient,
  near 1 for pure noise, above 1 right after the gradients turn against the
  momentum. β₁ falls linearly with it, so more noise (relative to the
  gradient's mean) lowers β₁, less noise raises it, and a sign flip of the
  mean lowers it for as long as the momentum disagrees.

The energy rules, per tensor, in SPEC.md's notation (`d` is STAM's
`tau_decay`, or STAMLite's `moment_decay` ρ, whose `b` is Q)::

  r  = g − μ                                 # residual against old momentum
  P  = d·P + (1−d)·mean(r²)                  # residual energy
  Q  = d·Q + (1−d)·mean(g²)                  # gradient energy (STAMLite: b)
  z  = P / max(Q, tiny)                      # = P̂/Q̂: same decay, same start
  s  = min(z, 1)
  β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)   (b1_base if z is not finite)

Both averages start at 0 and share one decay, so their bias corrections
`1/(1−d^(t+1))` cancel in the ratio: there is no start-up transient. `tiny`
is the smallest normal number of the statistics dtype. STAMLite keeps its lazy
refresh (β₁ recomputed when `t mod k == 0`) and its update direction.

Example:
  >>> import jax.numpy as jnp
  >>> import stam_optimizer as so
  >>> tx = so.scale_by_stam(signal="energy")
  >>> params = {"w": jnp.zeros(4)}
  >>> _, state = tx.update({"w": jnp.array([1.0, -1.0, 2.0, 0.5])}, tx.init(params))
  >>> float(state.beta1[0])  # first step: μ = 0, so r = g and z = 1: β₁ = b1_min
  0.72...

References:
  SPEC.md of stam-optimizer (the "spec" signal); docs/signal.md (measurements
  of both signals on controlled gradient streams, and the candidates compared).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

SIGNALS = ("spec", "energy")


def check_signal(signal: Any) -> str:
    """Returns `signal` if it names a β₁ signal; raises TypeError/ValueError otherwise."""
    if not isinstance(signal, str):
        raise TypeError(f"signal must be a string, one of {', '.join(map(repr, SIGNALS))}; "
                        f"got {type(signal).__name__}")
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(map(repr, SIGNALS))}, "
                         f"got {signal!r}")
    return signal


def energy_ratio(res_energy: jax.Array, grad_energy: jax.Array) -> jax.Array:
    """`z = P / max(Q, tiny)`, per tensor."""
    tiny = jnp.finfo(res_energy.dtype).tiny
    return res_energy / jnp.maximum(grad_energy, tiny)


def energy_beta1(z: jax.Array, b1_base: Any, alpha: Any, b1_min: Any) -> jax.Array:
    """`β₁ = clip(b1_base·(1 − α·min(z, 1)), b1_min, b1_base)`; b1_base where z is not finite."""
    beta1 = jnp.clip(b1_base * (1 - alpha * jnp.minimum(z, 1.0)), b1_min, b1_base)
    return jnp.where(jnp.isfinite(z), beta1, b1_base)


def energy_stam(res_energy: jax.Array, grad_energy: jax.Array, mean_r2: jax.Array,
                mean_g2: jax.Array, decay: Any, b1_base: Any, alpha: Any,
                b1_min: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """STAM's energy rules for all tensors at once: returns new P, Q and β₁."""
    res_energy = decay * res_energy + (1 - decay) * mean_r2
    grad_energy = decay * grad_energy + (1 - decay) * mean_g2
    z = energy_ratio(res_energy, grad_energy)
    return res_energy, grad_energy, energy_beta1(z, b1_base, alpha, b1_min)


def energy_lite(res_energy: jax.Array, b: jax.Array, mean_r2: jax.Array, rho: Any,
                b1_base: Any, alpha: Any, b1_min: Any) -> tuple[jax.Array, jax.Array]:
    """STAMLite's energy rules (with its new `b` as Q): returns new P and the β₁ candidate."""
    res_energy = rho * res_energy + (1 - rho) * mean_r2
    return res_energy, energy_beta1(energy_ratio(res_energy, b), b1_base, alpha, b1_min)


def state_terms(state: Any, signal: str = "spec", moment_decay: float = 0.99,
                eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """The signal's z and s per tensor, recomputed from a state after an update.

    For logging and the signal benchmark. `state` is a `ScaleByStamState` or
    `ScaleByStamLiteState`; STAMLite's "spec" z needs its `moment_decay` and
    `eps` (defaults as the optimizer's).
    """
    check_signal(signal)
    if signal == "energy":
        q = state.grad_energy if hasattr(state, "grad_energy") else state.b
        z = energy_ratio(state.res_energy, q)
        return z, jnp.minimum(z, 1.0)
    if hasattr(state, "sigma2"):
        z = state.sigma2 / (state.tau**2 + 1e-8)
    else:
        bias = 1 - moment_decay ** state.count.astype(state.a.dtype)
        a_hat, b_hat = state.a / bias, state.b / bias
        z = jnp.maximum(b_hat - a_hat**2, 0) / (b_hat + eps)
    return z, z / (1 + z)

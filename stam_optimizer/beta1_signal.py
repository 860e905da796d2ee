r"""The per-tensor β₁ signals of STAM and STAMLite: what β₁ responds to.

Both optimizers take `signal=`:

* `"spec"` (default): the signal of docs/math.md (sections STAM and
  STAMLite), unchanged since 0.1.0. STAM's
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
  mean lowers it for as long as the momentum disagrees. That holds where the
  gradient's mean is resolved per entry (|mean|/std ≳ 0.5). Below, z ≈ 1 and
  β₁ sits at `b1_min`: at the per-entry signal-to-noise ratio of GPT gradients
  mid-training (≈ 0.2, `stam-bench snr`) more noise cannot lower β₁, and less
  noise raises it only after hundreds of steps (docs/signal.md, "At the SNR of
  GPT gradients"). Neither signal follows the noise level there.
* `"relative"` (STAM only, opt-in): the residual energy against its own slow
  average, `z = P̂/P̂ₛ` with fast decay `tau_decay` and slow decay
  `1 − (1 − tau_decay)/10`, `s = z/(1 + z)`. z is 1 while the residual's size
  is steady (β₁ = `b1_base·(1 − α/2)`, 0.81 at the defaults), above 1 after it
  grows and below after it shrinks, whatever the signal-to-noise ratio: the one
  signal here that follows the noise level at GPT SNR, for about the slow
  average's time constant (1000 steps at the defaults) before β₁ settles back.
  It also reads a trend in the gradient's size (warmup, decay) and bursts of
  heavy-tailed noise as changes of the noise level.

The energy rules, per tensor, in docs/math.md's notation (`d` is STAM's
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

Each rule is written once here, as a function from the step's per-tensor
sums and the running statistics to the new statistics and β₁ (`stam_spec`,
`stam_energy`, `stam_relative`, `lite_spec`, `lite_energy`); `stam_rule` and `lite_rule` pick
one by name, with the sums it reads (`StamRule.terms`, `LiteRule.terms`), and
`scale_by_stam` / `scale_by_stam_lite` call it for all tensors at once.

References:
  docs/math.md of stam-optimizer (sections STAM and STAMLite: the "spec"
  signal; section β₁ signal variants); docs/signal.md (measurements of both
  signals on controlled gradient streams, and the candidates compared).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from stam_optimizer._common import one_minus_pow

SIGNALS = ("spec", "energy", "relative")
# Signals STAMLite has (its state holds one running residual energy, not two).
LITE_SIGNALS = ("spec", "energy")

# Added to τ² in STAM's "spec" ratio (docs/math.md: `τ² + 1e-8`); not a user knob.
TAU_EPS = 1e-8


def check_signal(signal: Any, allowed: tuple[str, ...] = SIGNALS) -> str:
    """Returns `signal` if it is one of `allowed` (default: every β₁ signal);
    raises TypeError/ValueError naming the allowed ones otherwise."""
    names = ", ".join(map(repr, allowed))
    if not isinstance(signal, str):
        raise TypeError(f"signal must be a string, one of {names}; got {type(signal).__name__}")
    if signal not in allowed:
        raise ValueError(f"signal must be one of {names}, got {signal!r}")
    return signal


def slow_decay(tau_decay: Any) -> Any:
    """The decay of the "relative" signal's slow average: `1 − (1 − tau_decay)/10`
    (0.999 for the default 0.99): ten times the fast average's time constant."""
    return 1 - (1 - tau_decay) / 10


def default_b1_min(b1_base: Any, adapt_strength: Any) -> Any:
    """The default smallest β₁, `min(b1_base, max(0.5, b1_base·(1−α)))`; works on traced values."""
    return jnp.minimum(b1_base, jnp.maximum(0.5, b1_base * (1.0 - adapt_strength)))


def beta1_of_score(s: jax.Array, b1_base: Any, alpha: Any, b1_min: Any) -> jax.Array:
    """`β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)`, the map shared by every signal."""
    return jnp.clip(b1_base * (1 - alpha * s), b1_min, b1_base)


# --- the ratios z and scores s of each signal ---------------------------------------

def stam_spec_ratio(sigma2: jax.Array, tau: jax.Array) -> jax.Array:
    """STAM's "spec" `z = σ² / (τ² + 1e-8)`."""
    return sigma2 / (tau**2 + TAU_EPS)


def lite_spec_ratio(a_hat: jax.Array, b_hat: jax.Array, eps: Any) -> jax.Array:
    """STAMLite's "spec" `z = max(b̂ − â², 0) / (b̂ + eps)`."""
    return jnp.maximum(b_hat - a_hat**2, 0) / (b_hat + eps)


def spec_score(z: jax.Array) -> jax.Array:
    """The "spec" score `s = z / (1 + z)`."""
    return z / (1 + z)


def energy_ratio(res_energy: jax.Array, grad_energy: jax.Array) -> jax.Array:
    """The "energy" `z = P / max(Q, tiny)`, per tensor."""
    tiny = jnp.finfo(res_energy.dtype).tiny
    return res_energy / jnp.maximum(grad_energy, tiny)


def energy_score(z: jax.Array) -> jax.Array:
    """The "energy" score `s = min(z, 1)`."""
    return jnp.minimum(z, 1.0)


def relative_ratio(fast: jax.Array, slow: jax.Array, t: jax.Array, fast_decay: Any,
                   slow_decay: Any) -> jax.Array:
    """The "relative" `z = P̂ / max(P̂ₛ, tiny)`: the fast and slow averages of
    mean(r²), each divided by its bias correction `1 − decay^(t+1)` (`t` the step
    count before this update), by `one_minus_pow` (exact for a Python-float decay)."""
    dtype = fast.dtype
    step = t.astype(dtype) + 1
    fast_hat = fast / one_minus_pow(fast_decay, step, dtype)
    slow_hat = slow / one_minus_pow(slow_decay, step, dtype)
    return fast_hat / jnp.maximum(slow_hat, jnp.finfo(dtype).tiny)


# --- the per-entry terms whose per-tensor sums the rules read ----------------------

def residual_square(g: jax.Array, mu: jax.Array) -> jax.Array:
    """`r² = (g − μ)²`, μ the momentum before this step."""
    return (g - mu) ** 2


def residual_abs(g: jax.Array, mu: jax.Array) -> jax.Array:
    """`|r| = |g − μ|`."""
    return jnp.abs(g - mu)


def gradient_square(g: jax.Array, mu: jax.Array) -> jax.Array:
    """`g²` (μ unused: the terms of a rule share one signature)."""
    return g**2


# --- STAM -------------------------------------------------------------------------

class StamStats(NamedTuple):
    """STAM's running signal statistics, one per tensor (the state fields of the
    same names): σ² and τ of the "spec" signal, P and Q of the "energy" one."""

    sigma2: jax.Array
    tau: jax.Array
    res_energy: jax.Array
    grad_energy: jax.Array


def stam_spec(stats: StamStats, sums: tuple[jax.Array, jax.Array], size: jax.Array, *,
              b1_base: Any, b2: Any, alpha: Any, tau_decay: Any, b1_min: Any,
              fallback_threshold: Any) -> tuple[StamStats, jax.Array]:
    """STAM's "spec" rule; `sums` are the per-tensor `(Σr², Σ|r|)`, `size` the counts::

      σ² = b2·σ² + (1−b2)·mean(r²)
      τ  = tau_decay·τ + (1−tau_decay)·mean(|r|)
      z  = σ² / (τ² + 1e-8);   s = z / (1 + z)
      β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)
      β₁ = b1_base  if σ² or β₁ is not finite or σ² ≥ fallback_threshold·(τ² + 1e-8)

    Returns the new statistics (P and Q unchanged) and β₁.
    """
    sum_r2, sum_abs_r = sums
    sigma2 = b2 * stats.sigma2 + (1 - b2) * sum_r2 / size
    tau = tau_decay * stats.tau + (1 - tau_decay) * sum_abs_r / size
    beta1 = beta1_of_score(spec_score(stam_spec_ratio(sigma2, tau)), b1_base, alpha, b1_min)
    fallback = ~jnp.isfinite(sigma2) | (sigma2 >= fallback_threshold * (tau**2 + TAU_EPS))
    beta1 = jnp.where(fallback | ~jnp.isfinite(beta1), b1_base, beta1)
    return stats._replace(sigma2=sigma2, tau=tau), beta1


def stam_energy(stats: StamStats, sums: tuple[jax.Array, jax.Array], size: jax.Array, *,
                b1_base: Any, alpha: Any, tau_decay: Any,
                b1_min: Any) -> tuple[StamStats, jax.Array]:
    """STAM's "energy" rule; `sums` are the per-tensor `(Σr², Σg²)`, `d = tau_decay`::

      P  = d·P + (1−d)·mean(r²);   Q = d·Q + (1−d)·mean(g²)
      z  = P / max(Q, tiny);       s = min(z, 1)
      β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)   (b1_base if z is not finite)

    Returns the new statistics (σ² and τ unchanged) and β₁.
    """
    mean_r2, mean_g2 = (total / size for total in sums)
    res_energy = tau_decay * stats.res_energy + (1 - tau_decay) * mean_r2
    grad_energy = tau_decay * stats.grad_energy + (1 - tau_decay) * mean_g2
    z = energy_ratio(res_energy, grad_energy)
    beta1 = beta1_of_score(energy_score(z), b1_base, alpha, b1_min)
    beta1 = jnp.where(jnp.isfinite(z), beta1, b1_base)
    return stats._replace(res_energy=res_energy, grad_energy=grad_energy), beta1


def stam_relative(stats: StamStats, sums: tuple[jax.Array], size: jax.Array, t: jax.Array, *,
                  b1_base: Any, alpha: Any, tau_decay: Any,
                  b1_min: Any) -> tuple[StamStats, jax.Array]:
    """STAM's "relative" rule; `sums` is the per-tensor `(Σr²,)`, `t` the step count
    before this update, `d = tau_decay`, `dₛ = slow_decay(d)`::

      P  = d·P  + (1−d)·mean(r²)                 # fast average (field res_energy)
      Pₛ = dₛ·Pₛ + (1−dₛ)·mean(r²)               # slow average (field grad_energy)
      z  = (P/(1−d^(t+1))) / max(Pₛ/(1−dₛ^(t+1)), tiny);   s = z / (1 + z)
      β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)   (b1_base if z is not finite)

    Returns the new statistics (σ² and τ unchanged) and β₁.
    """
    (sum_r2,) = sums
    mean_r2 = sum_r2 / size
    d_slow = slow_decay(tau_decay)
    fast = tau_decay * stats.res_energy + (1 - tau_decay) * mean_r2
    slow = d_slow * stats.grad_energy + (1 - d_slow) * mean_r2
    z = relative_ratio(fast, slow, t, tau_decay, d_slow)
    beta1 = beta1_of_score(spec_score(z), b1_base, alpha, b1_min)
    beta1 = jnp.where(jnp.isfinite(z), beta1, b1_base)
    return stats._replace(res_energy=fast, grad_energy=slow), beta1


class StamRule(NamedTuple):
    """A β₁ rule of STAM: `terms(g, μ)`, the per-entry terms whose per-tensor sums
    it reads, and `step(stats, sums, size, t) -> (stats, β₁)` (`t` the step count
    before this update)."""

    terms: tuple[Callable[[jax.Array, jax.Array], jax.Array], ...]
    step: Callable[[StamStats, tuple[jax.Array, ...], jax.Array, jax.Array],
                   tuple[StamStats, jax.Array]]


def _without_count(rule: Callable) -> Callable:
    return lambda stats, sums, size, t: rule(stats, sums, size)


def stam_rule(signal: str, *, b1_base: Any, b2: Any, alpha: Any, tau_decay: Any, b1_min: Any,
              fallback_threshold: Any) -> StamRule:
    """STAM's rule for `signal`, with its hyperparameters bound."""
    signal = check_signal(signal)
    if signal == "relative":
        return StamRule((residual_square,), functools.partial(
                stam_relative, b1_base=b1_base, alpha=alpha, tau_decay=tau_decay,
                b1_min=b1_min))
    if signal == "energy":
        return StamRule((residual_square, gradient_square), _without_count(functools.partial(
                stam_energy, b1_base=b1_base, alpha=alpha, tau_decay=tau_decay, b1_min=b1_min)))
    return StamRule((residual_square, residual_abs), _without_count(functools.partial(
            stam_spec, b1_base=b1_base, b2=b2, alpha=alpha, tau_decay=tau_decay,
            b1_min=b1_min, fallback_threshold=fallback_threshold)))


# --- STAMLite ---------------------------------------------------------------------

def lite_spec(res_energy: jax.Array, sums: tuple[()], size: jax.Array, b: jax.Array,
              a_hat: jax.Array, b_hat: jax.Array, *, eps: Any, b1_base: Any, alpha: Any,
              b1_min: Any) -> tuple[jax.Array, jax.Array]:
    """STAMLite's "spec" rule, from its bias-corrected moments â and b̂ alone::

      z    = max(b̂ − â², 0) / (b̂ + eps);   s = z / (1 + z)
      cand = clip(b1_base·(1 − α·s), b1_min, b1_base)    (b1_base if not finite)

    Returns P (unchanged) and the candidate β₁.
    """
    s = spec_score(lite_spec_ratio(a_hat, b_hat, eps))
    cand = beta1_of_score(s, b1_base, alpha, b1_min)
    return res_energy, jnp.where(jnp.isfinite(cand), cand, b1_base)


def lite_energy(res_energy: jax.Array, sums: tuple[jax.Array], size: jax.Array, b: jax.Array,
                a_hat: jax.Array, b_hat: jax.Array, *, rho: Any, b1_base: Any, alpha: Any,
                b1_min: Any) -> tuple[jax.Array, jax.Array]:
    """STAMLite's "energy" rule; `sums` is the per-tensor `(Σr²,)`, and its own
    (already updated) `b` serves as Q::

      P    = ρ·P + (1−ρ)·mean(r²)
      z    = P / max(b, tiny);   s = min(z, 1)      # = P̂/b̂ (same decay, same start)
      cand = clip(b1_base·(1 − α·s), b1_min, b1_base)   (b1_base if z is not finite)

    Returns the new P and the candidate β₁.
    """
    (sum_r2,) = sums
    mean_r2 = sum_r2 / size
    res_energy = rho * res_energy + (1 - rho) * mean_r2
    z = energy_ratio(res_energy, b)
    cand = beta1_of_score(energy_score(z), b1_base, alpha, b1_min)
    return res_energy, jnp.where(jnp.isfinite(z), cand, b1_base)


class LiteRule(NamedTuple):
    """A β₁ rule of STAMLite: `terms(g, μ)`, the per-entry terms whose per-tensor
    sums it reads beyond STAMLite's moments (none: it does not read μ), and
    `step(P, sums, size, b, â, b̂) -> (P, candidate β₁)`."""

    terms: tuple[Callable[[jax.Array, jax.Array], jax.Array], ...]
    step: Callable[..., tuple[jax.Array, jax.Array]]


def lite_rule(signal: str, *, eps: Any, rho: Any, b1_base: Any, alpha: Any,
              b1_min: Any) -> LiteRule:
    """STAMLite's rule for `signal` ("spec" or "energy"), with its hyperparameters bound."""
    if check_signal(signal, LITE_SIGNALS) == "energy":
        return LiteRule((residual_square,), functools.partial(
                lite_energy, rho=rho, b1_base=b1_base, alpha=alpha, b1_min=b1_min))
    return LiteRule((), functools.partial(
            lite_spec, eps=eps, b1_base=b1_base, alpha=alpha, b1_min=b1_min))


# --- logging ----------------------------------------------------------------------

def state_terms(state: Any, signal: str = "spec", moment_decay: float = 0.99,
                eps: float = 1e-8, tau_decay: float = 0.99) -> tuple[jax.Array, jax.Array]:
    """The signal's z and s per tensor, recomputed from a state after an update.

    For logging and the signal benchmark. `state` is a `ScaleByStamState` or
    `ScaleByStamLiteState`; STAMLite's "spec" z needs its `moment_decay` and
    `eps`, STAM's "relative" z its `tau_decay` (defaults as the optimizers').
    """
    check_signal(signal)
    if signal == "relative":
        t = state.count.astype(state.res_energy.dtype) - 1  # the update's own step count
        z = relative_ratio(state.res_energy, state.grad_energy, t, tau_decay,
                           slow_decay(tau_decay))
        return z, spec_score(z)
    if signal == "energy":
        q = state.grad_energy if hasattr(state, "grad_energy") else state.b
        z = energy_ratio(state.res_energy, q)
        return z, energy_score(z)
    if hasattr(state, "sigma2"):
        z = stam_spec_ratio(state.sigma2, state.tau)
    else:
        bias = 1 - moment_decay ** state.count.astype(state.a.dtype)
        z = lite_spec_ratio(state.a / bias, state.b / bias, eps)
    return z, spec_score(z)

"""STAM: AdamW with a per-tensor β₁ that adapts to the residual variance.

Implements the STAM section of docs/math.md. For every tensor (leaf) the residual of
the gradient against the old momentum is summarised by two running scalars: a
variance proxy σ² and a scale τ. Their ratio σ²/τ² maps to a score s ∈ [0, 1)
that lowers β₁. The ratio measures the *shape* of the residual's distribution
(≈ π/2 for Gaussian residuals, more for heavy tails), not its size: with the
default ("spec") signal more noise first raises β₁ and less noise lowers it (measured in
docs/signal.md). `signal="energy"` selects a signal that lowers β₁ when the
residual carries more of the gradient's energy, `signal="relative"` one that
lowers it when the residual's energy rises above its own slow average (see
`beta1_signal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stam_optimizer import beta1_signal
from stam_optimizer._common import (
    count_flagged,
    keep_where_empty,
    leaf_sizes,
    one_minus_pow,
    sanitize,
    stat_dtype,
    vector,
    with_decay_and_lr,
    zeros_like_tree,
)
from stam_optimizer._reductions import tensor_sums
from stam_optimizer._storage import saturating_cast, store_and_read
from stam_optimizer._validation import (
    FLOAT_STATE_DTYPES,
    as_arrays,
    check_b1_min,
    check_learning_rate,
    check_range,
    check_real,
    check_unit_open,
    check_weight_decay,
    grad_leaves,
    resolve_dtype,
)


class ScaleByStamState(NamedTuple):
    """State of `scale_by_stam`.

    Per-tensor scalars are stored as 1-D vectors in the leaf order of
    `jax.tree.leaves(params)`, so they carry no per-parameter sharding.

    Attributes:
      count: step counter `t` (int32, before this update).
      mu: first moment μ, param-shaped.
      nu: second moment ν, param-shaped.
      sigma2: σ², running variance proxy of the residual, one per tensor.
      tau: τ, running mean absolute residual, one per tensor.
      beta1: β₁ used at the last step, one per tensor (read it with `tree_beta1`).
      beta1_prod: Π, running product of the β₁ actually used, one per tensor.
      nonfinite: int32, one per tensor: the number of steps so far at which the
        tensor's gradient had a NaN or ±Inf entry (those entries were used as 0).
        It is read off the residual sums `sum((g−μ)²)`, `sum(|g−μ|)` (no extra
        pass), so a step also counts when every entry is finite but a sum
        overflows the statistics dtype (in float32: an entry with |g−μ| above
        about 1.8e19, whose square is inf, or sums beyond about 3.4e38).
        Saturates at 2³¹−1. Read it with `tree_nonfinite`.
      res_energy: P, EMA of mean(r²), one per tensor, updated under
        `signal="energy"` and "relative" and left at 0 under "spec" (the state
        has the same structure and shapes under every signal, so checkpoints
        move between them).
      grad_energy: Q, EMA of mean(g²), under "energy"; under "relative" Pₛ,
        the slow EMA of mean(r²); 0 under "spec".
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    sigma2: jax.Array
    tau: jax.Array
    beta1: jax.Array
    beta1_prod: jax.Array
    nonfinite: jax.Array
    res_energy: jax.Array
    grad_energy: jax.Array


def _validate(b1_base, b2, eps, adapt_strength, tau_decay, fallback_threshold, b1_min):
    check_unit_open("b1_base", b1_base)
    check_unit_open("b2", b2)
    check_range("eps", eps, 0.0)
    check_range("adapt_strength", adapt_strength, 0.0, 0.5, high_open=False)
    check_unit_open("tau_decay", tau_decay)
    check_range("fallback_threshold", fallback_threshold, 0.0, low_open=True)
    if b1_min is not None:
        check_b1_min(b1_min, b1_base)


def scale_by_stam(
    b1_base: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    adapt_strength: float = 0.2,
    tau_decay: float = 0.99,
    fallback_threshold: float = 100.0,
    b1_min: float | None = None,
    mu_dtype: Any | None = None,
    signal: str = "spec",
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates by STAM's direction `u = μ̂ / (√ν̂ + eps)`.

    Per tensor, with `t` the step count before this update and `g` the gradient
    (non-finite entries replaced by 0, all statistics in float32 or wider)::

      r  = g − μ
      σ² = b2·σ² + (1−b2)·mean(r²)
      τ  = tau_decay·τ + (1−tau_decay)·mean(|r|)
      z  = σ² / (τ² + 1e-8);   s = z / (1 + z)
      β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)
      β₁ = b1_base  if σ² is not finite or σ² ≥ fallback_threshold·(τ² + 1e-8)
      μ  = β₁·μ + (1−β₁)·g;    ν = b2·ν + (1−b2)·g²;    Π = Π·β₁
      u  = (μ / (1−Π)) / (√(ν / (1−b2^(t+1))) + eps)

    With `adapt_strength=0` this is exactly `optax.scale_by_adam(b1_base, b2, eps)`.

    The β₁ lines above are the default `signal="spec"`. With `signal="energy"`
    they become (σ², τ and `fallback_threshold` are then unused)::

      P  = tau_decay·P + (1−tau_decay)·mean(r²)
      Q  = tau_decay·Q + (1−tau_decay)·mean(g²)
      z  = P / max(Q, tiny);   s = min(z, 1)
      β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)   (b1_base if z is not finite)

    z is the share of the gradient's energy the momentum does not predict, so
    β₁ falls with more noise, rises with less, and falls while the gradients
    disagree with the momentum, where the gradient's mean is resolved per entry;
    at GPT gradients' per-entry signal-to-noise ratio (≈ 0.2) β₁ sits at
    `b1_min` (see `beta1_signal` and docs/signal.md).

    With `signal="relative"` (opt-in; σ², τ and `fallback_threshold` unused) the
    residual energy is compared with its own slow average, `dₛ = 1 − (1 −
    tau_decay)/10`::

      P  = tau_decay·P + (1−tau_decay)·mean(r²);   Pₛ = dₛ·Pₛ + (1−dₛ)·mean(r²)
      z  = (P/(1−tau_decay^(t+1))) / max(Pₛ/(1−dₛ^(t+1)), tiny);   s = z / (1 + z)
      β₁ = clip(b1_base·(1 − α·s), b1_min, b1_base)   (b1_base if z is not finite)

    β₁ sits at `b1_base·(1 − α/2)` while the residual's size is steady, falls
    when it grows and rises when it shrinks, at any signal-to-noise ratio, for
    about the slow average's time constant; it also moves with a trend in the
    gradient's size (warmup, decay) and with bursts of heavy-tailed noise.

    Args:
      b1_base: base (and largest) β₁, in (0, 1). Default 0.9.
      b2: decay of ν and σ², in (0, 1). Default 0.999.
      eps: added to √ν̂, ≥ 0. Default 1e-8.
      adapt_strength: α, how far β₁ may drop, in [0, 0.5]. Default 0.2.
      tau_decay: decay of τ, in (0, 1). Default 0.99.
      fallback_threshold: σ²/τ² ratio above which β₁ falls back to b1_base, > 0.
        Default 100.
      b1_min: smallest β₁, in (0, b1_base]. Default
        `min(b1_base, max(0.5, b1_base·(1−α)))`.
      mu_dtype: storage dtype of μ and ν ("float32", "bfloat16", "float16" or a
        dtype); default: each param's own dtype, as `optax.adamw`.
      signal: the β₁ signal, "spec" (default, docs/math.md and 0.1.0), "energy"
        or "relative".

    Returns:
      An `optax.GradientTransformationExtraArgs` whose updates are in the gradients' dtype.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(scale_by_stam(), optax.scale(-1e-3))
      >>> state = tx.init({"w": jnp.zeros(3)})

    References:
      docs/math.md (section STAM) of stam-optimizer; Loshchilov & Hutter, "Decoupled Weight Decay
      Regularization" (2019) for the AdamW part.
    """
    _validate(b1_base, b2, eps, adapt_strength, tau_decay, fallback_threshold, b1_min)
    beta1_signal.check_signal(signal)
    mu_dtype = resolve_dtype("mu_dtype", mu_dtype, FLOAT_STATE_DTYPES)
    alpha = adapt_strength
    if b1_min is None:
        b1_min = beta1_signal.default_b1_min(b1_base, alpha)
    rule = beta1_signal.stam_rule(signal, b1_base=b1_base, b2=b2, alpha=alpha,
                                  tau_decay=tau_decay, b1_min=b1_min,
                                  fallback_threshold=fallback_threshold)

    def init_fn(params):
        params = as_arrays(params)
        check_real("scale_by_stam", params)
        leaves = jax.tree.leaves(params)
        n, dt = len(leaves), stat_dtype(leaves)
        return ScaleByStamState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like_tree(params, mu_dtype),
            nu=zeros_like_tree(params, mu_dtype),
            sigma2=vector(n, 0.0, dt, leaves),
            tau=vector(n, 0.0, dt, leaves),
            beta1=vector(n, b1_base, dt, leaves),
            beta1_prod=vector(n, 1.0, dt, leaves),
            nonfinite=vector(n, 0, jnp.int32, leaves),
            res_energy=vector(n, 0.0, dt, leaves),
            grad_energy=vector(n, 0.0, dt, leaves),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args  # accepted as optax's transformations do (e.g. value=loss)
        treedef, gs = grad_leaves(updates, state.mu)
        check_real("scale_by_stam", gs)
        mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        t, dt = state.count, state.sigma2.dtype
        # The sums of the signal's terms of (g, μ) per tensor: one fused pass each.
        summed = tensor_sums(rule.terms, gs, [mus], dt)
        size, nonempty = leaf_sizes(gs, dt)
        # The scalar rules of docs/math.md, for all tensors at once (leaf order).
        old = beta1_signal.StamStats(state.sigma2, state.tau, state.res_energy,
                                     state.grad_energy)
        stats, beta1 = rule.step(old, summed.sums, size, t)
        beta1 = beta1.astype(dt)
        prod = state.beta1_prod * beta1
        stats = beta1_signal.StamStats(*(keep_where_empty(nonempty, new, before)
                                         for new, before in zip(stats, old)))
        beta1, prod = (keep_where_empty(nonempty, new, before) for new, before in
                       ((beta1, state.beta1), (prod, state.beta1_prod)))
        nu_bias = one_minus_pow(b2, t + 1, dt)

        # 1/(1−Π) per tensor: a scalar divide inside the loop would become a
        # separate small kernel per tensor.
        inv_mu_bias = 1 / (1 - prod)

        def leaf_update(g, mu, nu, beta1, inv_mu_bias):
            g = sanitize(g, dt)
            mu, mu_hat = store_and_read(beta1 * mu.astype(dt) + (1 - beta1) * g, mu.dtype, dt)
            mu_hat = mu_hat * inv_mu_bias  # the stored μ
            new_nu = b2 * nu.astype(dt) + (1 - b2) * g**2
            # A float16 ν is used before storage, which would flush small g² to
            # 0; a bfloat16 one is used as stored, like μ: used before storage,
            # the float32 ν would be one more param-sized temporary.
            if nu.dtype == jnp.bfloat16:
                stored_nu, new_nu = store_and_read(new_nu, nu.dtype, dt)
            else:
                stored_nu = saturating_cast(new_nu, nu.dtype)
            nu_hat = new_nu / nu_bias
            u = mu_hat / (jnp.sqrt(nu_hat) + eps)
            return u, mu, stored_nu

        us, (mus, nus) = summed.map_leaves(leaf_update, [nus], (beta1, inv_mu_bias))
        new_state = ScaleByStamState(optax.safe_increment(t), treedef.unflatten(mus),
                                     treedef.unflatten(nus), stats.sigma2, stats.tau, beta1,
                                     prod, count_flagged(state.nonfinite, summed.flagged),
                                     stats.res_energy, stats.grad_energy)
        return treedef.unflatten(us), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def stam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1_base: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    adapt_strength: float = 0.2,
    tau_decay: float = 0.99,
    fallback_threshold: float = 100.0,
    b1_min: float | None = None,
    mu_dtype: Any | None = None,
    mask: Any | None = None,
    signal: str = "spec",
) -> optax.GradientTransformationExtraArgs:
    r"""STAM optimizer: `scale_by_stam`, decoupled weight decay, learning rate.

    Updates are added to params (optax convention): `θ ← θ − lr·(u + λ·θ)`.
    `b1_base`, `b2`, `eps`, `adapt_strength`, `tau_decay`, `fallback_threshold`,
    `b1_min`, `mu_dtype` and `signal` ("spec" by default, "energy" or
    "relative") are those of `scale_by_stam`.

    Args:
      learning_rate: a float ≥ 0 or an optax schedule `count -> lr`. Default 1e-3.
      weight_decay: λ ≥ 0 (or a schedule). Default 0.01.
      mask: pytree or callable choosing the leaves that decay (optax convention).
        Under `optax.inject_hyperparams` pass `static_args=("mask",)`, or a callable
        mask is taken for a schedule and weight decay is lost (a UserWarning says so).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((3, 2))}
      >>> opt = stam(learning_rate=1e-3)
      >>> state = opt.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    check_learning_rate(learning_rate)
    check_weight_decay(weight_decay)
    return with_decay_and_lr(
        scale_by_stam(b1_base, b2, eps, adapt_strength, tau_decay, fallback_threshold,
                      b1_min, mu_dtype, signal),
        learning_rate, weight_decay, mask,
    )

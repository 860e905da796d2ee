"""STAMLite: one momentum buffer, a tensor-level RMS and a lazily updated β₁.

Implements the STAMLite section of docs/math.md. Per tensor, two running scalars (the
means of g and g²) replace both STAM's residual statistics and Adam's
per-element second moment: the optimizer keeps a single param-shaped buffer μ,
which may be stored in a low-precision dtype.

The default ("spec") signal `z = (b̂ − â²)/b̂` compares the spread of a tensor's entries with
their mean square: it is ≈ 1 unless the entries share one sign, so β₁ stays near
`b1_base·(1 − α/2)` whatever the gradient noise does (measured in
docs/signal.md). `signal="energy"` selects a signal that follows the residual
`g − μ` instead (see `beta1_signal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stam_optimizer import beta1_signal, blockwise, low_bit_codecs, square_int8
from stam_optimizer._common import (
    count_flagged,
    is_boxed,
    keep_where_empty,
    leaf_sizes,
    one_minus_pow,
    sanitize,
    stat_dtype,
    unbox,
    vector,
    with_decay_and_lr,
    zeros_like_tree,
)
from stam_optimizer._reductions import tensor_sums
from stam_optimizer._storage import store_and_read
from stam_optimizer._validation import (
    FLOAT_STATE_DTYPES,
    as_arrays,
    check_b1_min,
    check_bool,
    check_interval_int,
    check_learning_rate,
    check_number,
    check_range,
    check_real,
    check_unit_open,
    check_weight_decay,
    grad_leaves,
    resolve_dtype,
)
from stam_optimizer.blockwise import QuantizedArray

# The storage format of an int8 μ (see `square_int8`).
MOMENTUM_CODEC = square_int8.CODEC
# The storage format of μ per quantised state dtype: the signed square law at
# 8 bits, and its 4-bit form (two codes per byte, `low_bit_codecs`).
MOMENTUM_CODECS = {"int8": MOMENTUM_CODEC, "int4": low_bit_codecs.SIGNED4}


class ScaleByStamLiteState(NamedTuple):
    """State of `scale_by_stam_lite`.

    Per-tensor scalars are 1-D vectors in the leaf order of `jax.tree.leaves(params)`.

    Attributes:
      count: step counter `t` (int32, before this update).
      mu: momentum μ, param-shaped, stored in `state_dtype`.
      a: EMA of mean(g), one per tensor.
      b: EMA of mean(g²), one per tensor.
      beta1: current β₁ (the one used at the last step), one per tensor.
      beta1_prod: Π, running product of the β₁ actually used, one per tensor.
      nonfinite: int32, one per tensor: the number of steps so far at which the
        tensor's gradient had a NaN or ±Inf entry (those entries were used as 0).
        It is read off the sums `sum(g)`, `sum(g²)` (no extra pass), so a step
        also counts when every entry is finite but a sum overflows the
        statistics dtype (in float32: an entry with |g| above about 1.8e19,
        whose square is inf, or sums beyond about 3.4e38). Saturates at
        2³¹−1. Read it with `tree_nonfinite`.
      res_energy: P, EMA of mean((g − μ)²), one per tensor, updated under
        `signal="energy"` and left at 0 under "spec" (same structure and shapes
        under either signal).
    """

    count: jax.Array
    mu: optax.Updates
    a: jax.Array
    b: jax.Array
    beta1: jax.Array
    beta1_prod: jax.Array
    nonfinite: jax.Array
    res_energy: jax.Array


def _validate(b1_base, eps, adapt_strength, moment_decay, beta1_update_interval, b1_min):
    check_unit_open("b1_base", b1_base)
    check_range("eps", eps, 0.0)
    check_range("adapt_strength", adapt_strength, 0.0, 0.5, high_open=False)
    check_unit_open("moment_decay", moment_decay)
    check_interval_int("beta1_update_interval", beta1_update_interval)
    if b1_min is not None:
        check_b1_min(b1_min, b1_base)


def _as_quantized(mu: Any) -> Any:
    """A quantised μ leaf as `QuantizedArray`, also when a container (such as
    `flax.nnx.Optimizer`, which stores it back as a mapping) rebuilt it."""
    if isinstance(mu, QuantizedArray) or isinstance(mu, jax.Array):
        return mu
    if hasattr(mu, "keys") and set(mu.keys()) == set(QuantizedArray._fields):
        return QuantizedArray(*(unbox(mu[f]) for f in QuantizedArray._fields))
    return mu


def _init_momentum(params: Any, dtype: jnp.dtype, quantize_mask: Any, min_quantized_size: int,
                   block_size: int) -> Any:
    """μ = 0, param-shaped in `dtype`; with int8 or int4, a `QuantizedArray` for
    every tensor the mask allows with at least `min_quantized_size` elements."""
    if dtype.name not in MOMENTUM_CODECS:
        return zeros_like_tree(params, dtype)
    codec = MOMENTUM_CODECS[dtype.name]
    mask = quantize_mask(params) if callable(quantize_mask) else quantize_mask
    mask = jax.tree.map(lambda _: True, params, is_leaf=is_boxed) if mask is None else mask

    def leaf(p, m):
        # A flax Variable's sharding metadata fits the param, not the codes:
        # a quantised leaf is returned unboxed.
        x = unbox(p)
        if m and x.ndim and x.size and x.size >= min_quantized_size:
            return blockwise.zeros_like(x, codec, block_size)
        return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=jnp.float32), p)

    return jax.tree.map(leaf, params, mask, is_leaf=is_boxed)


def _mean_term(g: jax.Array, *_: jax.Array) -> jax.Array:
    """The term of `a`: g."""
    return g


def _square_term(g: jax.Array, *_: jax.Array) -> jax.Array:
    """The term of `b`: g²."""
    return g**2


def momentum_update_decoded(mu: QuantizedArray, g: jax.Array, beta1: jax.Array,
                            key: jax.Array | None, dt: jnp.dtype,
                            codec: blockwise.Codec) -> QuantizedArray:
    """`quantize(β₁·dequantize(μ) + (1−β₁)·sanitize(g))` in μ's block layout, for any
    `codec` (int4 STAMLite's update): the float momentum is an intermediate that
    XLA fuses into the encoder; `key` switches on stochastic rounding."""
    n_blocks = mu.codes.shape[-2]
    block = -(-g.shape[-1] // n_blocks)  # μ's layout (see `blockwise.layout`)
    old = blockwise.dequantize(mu, g.shape, codec).astype(dt)
    return blockwise.quantize(beta1 * old + (1 - beta1) * sanitize(g, dt), codec, block, key)


def _leaf_update(g, mu, beta1, factor, index, t, step_key, dt, codec):
    """One tensor: `μ ← β₁·μ + (1−β₁)·g` (stored in μ's dtype, or int8/int4
    codes) and the direction `u = μ·factor`, from the stored μ."""
    if isinstance(mu, QuantizedArray):  # decode, mix, re-encode
        key = None if step_key is None else jax.random.fold_in(step_key, index)
        if codec is square_int8.CODEC:  # int8: the fused update
            mu = square_int8.momentum_update(mu, g, beta1, t, key, dt)
        else:
            mu = momentum_update_decoded(mu, g, beta1, key, dt, codec)
        return blockwise.dequantize(mu, g.shape, codec).astype(dt) * factor, mu
    g = sanitize(g, dt)
    mu, stored = store_and_read(beta1 * mu.astype(dt) + (1 - beta1) * g, mu.dtype, dt)
    return stored * factor, mu


def scale_by_stam_lite(
    b1_base: float = 0.9,
    eps: float = 1e-8,
    adapt_strength: float = 0.2,
    moment_decay: float = 0.99,
    beta1_update_interval: int = 5,
    state_dtype: Any = "float32",
    b1_min: float | None = None,
    *,
    block_size: int = 256,
    min_quantized_size: int = 4096,
    quantize_mask: Any | None = None,
    stochastic_rounding: bool | None = None,
    seed: int = 0,
    signal: str = "spec",
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates by STAMLite's direction `u = μ̂ / (√b̂ + eps)`.

    Per tensor, with `t` the step count before this update, `ρ = moment_decay`,
    `k = beta1_update_interval` and `g` the gradient (non-finite entries replaced
    by 0, statistics in float32 or wider)::

      a = ρ·a + (1−ρ)·mean(g);      b = ρ·b + (1−ρ)·mean(g²)
      â, b̂ = a / (1−ρ^(t+1)), b / (1−ρ^(t+1))
      z = max(b̂ − â², 0) / (b̂ + eps);   s = z / (1 + z)
      cand = clip(b1_base·(1 − α·s), b1_min, b1_base)    (b1_base if not finite)
      β₁ = cand  if t mod k == 0  else the previous β₁
      μ = β₁·μ + (1−β₁)·g;   Π = Π·β₁
      u = (μ / (1−Π)) / (√max(b̂, 0) + eps)

    The z and s lines are the default `signal="spec"`. With `signal="energy"`
    they become (one more running scalar per tensor, one more pass reading g
    and μ)::

      P = ρ·P + (1−ρ)·mean((g − μ)²)
      z = P / max(b, tiny);   s = min(z, 1)      # = P̂/b̂ (same decay, same start)

    and the candidate β₁ is `b1_base` where z is not finite. β₁ then falls with
    more gradient noise, rises with less, and falls while the gradients disagree
    with the momentum, where the gradient's mean is resolved per entry; at GPT
    gradients' per-entry signal-to-noise ratio (≈ 0.2) β₁ sits at `b1_min` (see
    `beta1_signal` and docs/signal.md).

    Args:
      b1_base: base (and largest) β₁, in (0, 1). Default 0.9.
      eps: added to the tensor RMS, ≥ 0. Default 1e-8.
      adapt_strength: α, in [0, 0.5]. Default 0.2.
      moment_decay: ρ, decay of the two tensor moments, in (0, 1). Default 0.99.
      beta1_update_interval: k ≥ 1, β₁ is recomputed every k steps. Default 5.
        May be traced (`optax.inject_hyperparams`).
      state_dtype: storage dtype of μ: "float32" (default), "bfloat16" or
        "float16" (a dtype such as `jnp.bfloat16` is accepted too; under
        `optax.inject_hyperparams` pass a string), stored values saturating at
        the dtype's largest finite value; or blockwise codes, "int8" (the square
        law, 1 byte per element) or "int4" (its 4-bit form, half a byte).
      b1_min: smallest β₁, in (0, b1_base]. Default
        `min(b1_base, max(0.5, b1_base·(1−α)))`.
      block_size: with `state_dtype="int8"` or "int4", the largest number of elements per
        quantisation block (one float32 scale each), ≥ 1. Blocks tile the last
        axis: a last axis of n elements is cut into `ceil(n/block_size)` blocks
        of equal size (`quantize.layout`). Default 256 (int8: 1.016 bytes/param
        when the last axis is a multiple of 256, int4: 0.516; a last axis of
        n < 256 elements gives one block per row, 4/n bytes/param of scales).
      min_quantized_size: with "int8" or "int4", tensors with fewer elements stay float32
        (biases and norms: tiny, and their statistics are the least robust to
        rounding). Default 4096, ≥ 0.
      quantize_mask: with "int8" or "int4", a pytree (or callable params -> pytree) of
        bools; False keeps that tensor in float32 (e.g. embeddings). 0-d and
        empty tensors stay float32.
        Whether a tensor is quantised and its block layout depend only on its
        global shape and these arguments, never on the sharding or on whether
        `init` is jitted. Sharding: the codes are sharded like the param on its
        leading axes, so FSDP (axis 0 of a matrix) keeps every block inside one
        shard and 1/N of the state per device; sharding the last axis over N
        devices (tensor parallelism on axis 1) is aligned when
        `ceil(n/block_size)` is a multiple of N and n a multiple of the block,
        e.g. n = 4096 with N ≤ 16; otherwise that tensor's codes are replicated
        along the mesh axis (see `quantize.codes_spec`).
      stochastic_rounding: with "int8" or "int4", round μ stochastically
        (unbiased), keyed from `seed` and the step count, so runs are
        reproducible. Use it for β₁ close to 1, where nearest rounding can
        freeze small entries of μ. None (default): on with "int4", off
        otherwise. A 4-bit code step is up to 27% of the block maximum, so
        nearest rounding discards most increments `(1−β₁)·(g − μ)`: on the noisy
        quadratic of `tests/test_stam_lite.py` int4 ended at 1.14x (β₁ = 0.9)
        and 1.53x (β₁ = 0.99) the float32 run's loss with nearest rounding,
        1.006x and 1.017x with stochastic rounding (int8: 1.000x either way).
      seed: seed of the stochastic rounding.
      signal: the β₁ signal, "spec" (default, docs/math.md and 0.1.0) or "energy"
        (float state dtypes only: it reads μ in the statistics pass).

    The "int8" and "int4" states keep μ as `quantize.QuantizedArray` (codes as
    uint8, two per byte at 4 bits, plus a float32 scale per block; see
    `quantize` and `low_bit_codecs.SIGNED4`); the update decodes μ to float32,
    mixes in g, re-encodes, and uses the stored value, all in the one step
    (int8 through a fused kernel, `square_int8.momentum_update`; int4 as the
    plain decode → mix → encode, `momentum_update_decoded`). Measured on XLA:CPU
    (2 cores, jax 0.10.2, a 1M-param tree, jitted update, state donated): int4
    takes 1.9x int8's time with nearest rounding and 2.7x with stochastic
    rounding (2.6 and 3.8 ms against 1.4 ms; optax.adamw 5.2 ms), and XLA:CPU
    does not fuse it: the donated update keeps 5.2 bytes/param of float
    temporaries at block 256 (2.2 at block 128) against int8's 0.19.
    Under `optax.inject_hyperparams` list the int8/int4 options in `static_args`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(scale_by_stam_lite(state_dtype="bfloat16"), optax.scale(-1e-3))
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> tx4 = scale_by_stam_lite(state_dtype="int4", min_quantized_size=1)
      >>> tx4.init({"w": jnp.zeros((2, 300))}).mu["w"].codes.shape  # 2 blocks of 150
      (2, 2, 75)
    """
    _validate(b1_base, eps, adapt_strength, moment_decay, beta1_update_interval, b1_min)
    dtype = resolve_dtype("state_dtype", state_dtype, (*FLOAT_STATE_DTYPES, *MOMENTUM_CODECS))
    codec = MOMENTUM_CODECS.get(dtype.name)
    if beta1_signal.check_signal(signal, beta1_signal.LITE_SIGNALS) == "energy" \
            and codec is not None:
        raise ValueError("signal='energy' needs a float state_dtype (float32, bfloat16 or "
                         f"float16), got state_dtype={dtype.name!r}")
    check_interval_int("block_size", block_size)
    check_range("min_quantized_size", min_quantized_size, 0.0)
    if stochastic_rounding is None:
        stochastic_rounding = dtype.name == "int4"
    check_bool("stochastic_rounding", stochastic_rounding)
    check_number("seed", seed)
    alpha, rho, k = adapt_strength, moment_decay, beta1_update_interval
    if b1_min is None:
        b1_min = beta1_signal.default_b1_min(b1_base, alpha)
    rule = beta1_signal.lite_rule(signal, eps=eps, rho=rho, b1_base=b1_base, alpha=alpha,
                                  b1_min=b1_min)

    def init_fn(params):
        params = as_arrays(params)
        check_real("scale_by_stam_lite", params)
        leaves = jax.tree.leaves(params)
        n, dt = len(leaves), stat_dtype(leaves)
        return ScaleByStamLiteState(
            count=jnp.zeros([], jnp.int32),
            mu=_init_momentum(params, dtype, quantize_mask, min_quantized_size, block_size),
            a=vector(n, 0.0, dt, leaves),
            b=vector(n, 0.0, dt, leaves),
            beta1=vector(n, b1_base, dt, leaves),
            beta1_prod=vector(n, 1.0, dt, leaves),
            nonfinite=vector(n, 0, jnp.int32, leaves),
            res_energy=vector(n, 0.0, dt, leaves),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args  # accepted as optax's transformations do (e.g. value=loss)
        treedef, gs = grad_leaves(updates, state.mu, params)
        check_real("scale_by_stam_lite", gs)
        mus = [_as_quantized(mu) for mu in treedef.flatten_up_to(state.mu)]
        t, dt = state.count, state.a.dtype
        # The sums of g and g² per tensor, and of the rule's terms of (g, μ): one
        # fused pass each. μ joins the pass only when the rule reads it.
        read, unread = ([mus], []) if rule.terms else ([], [mus])
        summed = tensor_sums((_mean_term, _square_term, *rule.terms), gs, read, dt)
        sum_g, sum_g2, *rule_sums = summed.sums
        size, nonempty = leaf_sizes(gs, dt)
        # The scalar rules of docs/math.md, for all tensors at once (vectors in leaf order).
        a = rho * state.a + (1 - rho) * sum_g / size
        b = rho * state.b + (1 - rho) * sum_g2 / size
        bias = one_minus_pow(rho, t + 1, dt)
        a_hat, b_hat = a / bias, b / bias
        res_energy, cand = rule.step(state.res_energy, tuple(rule_sums), size, b, a_hat, b_hat)
        res_energy = keep_where_empty(nonempty, res_energy, state.res_energy)
        refresh = t % jnp.asarray(k, jnp.int32) == 0  # lazy β₁: every k steps
        beta1 = jnp.where(refresh, cand, state.beta1).astype(dt)
        prod = state.beta1_prod * beta1
        a, b, beta1, prod = (
            keep_where_empty(nonempty, new, old) for new, old in
            ((a, state.a), (b, state.b), (beta1, state.beta1), (prod, state.beta1_prod)))
        rms = jnp.sqrt(jnp.maximum(b_hat, 0)) + eps

        step_key = jax.random.fold_in(jax.random.PRNGKey(seed), t) if stochastic_rounding \
            else None

        # u = μ / (1−Π) / (√b̂ + eps), as one factor per tensor: a scalar divide
        # inside the loop would become a separate small kernel per tensor.
        factor = 1 / ((1 - prod) * rms)

        def leaf_update(g, mu, beta1, factor, index):
            return _leaf_update(g, mu, beta1, factor, index, t, step_key, dt, codec)

        index = jnp.arange(len(gs), dtype=jnp.int32)
        us, (mus,) = summed.map_leaves(leaf_update, unread, (beta1, factor, index))
        new_state = ScaleByStamLiteState(optax.safe_increment(t), treedef.unflatten(mus),
                                         a, b, beta1, prod,
                                         count_flagged(state.nonfinite, summed.flagged),
                                         res_energy)
        return treedef.unflatten(us), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def stam_lite(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1_base: float = 0.9,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    adapt_strength: float = 0.2,
    moment_decay: float = 0.99,
    beta1_update_interval: int = 5,
    state_dtype: Any = "float32",
    b1_min: float | None = None,
    mask: Any | None = None,
    *,
    block_size: int = 256,
    min_quantized_size: int = 4096,
    quantize_mask: Any | None = None,
    stochastic_rounding: bool | None = None,
    seed: int = 0,
    signal: str = "spec",
) -> optax.GradientTransformationExtraArgs:
    r"""STAMLite optimizer: `scale_by_stam_lite`, decoupled weight decay, learning rate.

    Updates are added to params (optax convention): `θ ← θ − lr·(u + λ·θ)`.
    Optimizer state is one param-shaped buffer (half of AdamW's in float32, a
    quarter in bfloat16, about 1/8 in int8 and 1/16 in int4) plus four float
    scalars and one int32 count per tensor.

    Args:
      learning_rate: a float ≥ 0 or an optax schedule. Default 1e-3.
      weight_decay: λ ≥ 0 (or a schedule). Default 0.01.
      mask: pytree or callable choosing the leaves that decay (optax convention);
        under `optax.inject_hyperparams` pass `static_args=("mask",)`.

    The other arguments (including the int8/int4 options `block_size`,
    `min_quantized_size`, `quantize_mask`, `stochastic_rounding`, `seed`, and
    `signal`: "spec" by default, or "energy") are those of `scale_by_stam_lite`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((3, 2))}
      >>> opt = stam_lite(learning_rate=1e-3, state_dtype="bfloat16")
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    """
    check_learning_rate(learning_rate)
    check_weight_decay(weight_decay)
    return with_decay_and_lr(
        scale_by_stam_lite(b1_base, eps, adapt_strength, moment_decay,
                           beta1_update_interval, state_dtype, b1_min,
                           block_size=block_size, min_quantized_size=min_quantized_size,
                           quantize_mask=quantize_mask,
                           stochastic_rounding=stochastic_rounding, seed=seed,
                           signal=signal),
        learning_rate, weight_decay, mask,
    )

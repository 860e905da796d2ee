"""Helpers shared by the optimizers: the common rules of docs/math.md (decoupled
weight decay and learning rate, exact bias corrections, empty tensors, the
non-finite count) and the per-leaf plumbing of the updates.

Validation and dtypes live in `_validation`, the β₁ rules in `beta1_signal`,
the storage of state buffers in `_storage`, the fused reductions and their
backend tricks in `_reductions`.

Nothing here is public API. Every helper is a pure function; none of them runs
Python control flow on traced values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer._validation import check_mask, concrete_float


def stat_dtype(leaves: list[jax.Array]) -> jnp.dtype:
    """float32, or wider when some leaf is wider (float64 under `jax_enable_x64`)."""
    return functools.reduce(
            jnp.promote_types, [jnp.dtype(x.dtype) for x in leaves], jnp.dtype(jnp.float32)
    )


def sanitize(g: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Common rule (docs/math.md): non-finite gradient entries become 0; returns `g` in `dtype`."""
    g = g.astype(dtype)
    return jnp.where(jnp.isfinite(g), g, jnp.zeros((), dtype))


def stack(scalars: list[jax.Array], dtype: jnp.dtype) -> jax.Array:
    """Stacks per-leaf scalars into the 1-D per-tensor vector (empty trees allowed)."""
    if not scalars:
        return jnp.zeros((0,), dtype)
    return jnp.stack([jnp.asarray(s, dtype) for s in scalars])


def vector(n: int, value: Any, dtype: jnp.dtype, like: list[jax.Array] = ()) -> jax.Array:
    """A length-`n` vector filled with `value`, strongly typed (no weak-type recompile).

    When the params (`like`) are concrete arrays sharded over a mesh, the vector
    is replicated over that mesh, as a jitted step would leave it.
    """
    vec = jnp.full((n,), value, dtype=dtype)
    sharding = next((getattr(x, "sharding", None) for x in like), None)
    if isinstance(sharding, jax.sharding.NamedSharding) and not isinstance(vec, jax.core.Tracer):
        vec = jax.device_put(vec, jax.sharding.NamedSharding(sharding.mesh,
                                                             jax.sharding.PartitionSpec()))
    return vec


def zeros_like_tree(params: Any, dtype: jnp.dtype | None) -> Any:
    """Param-shaped zeros, in `dtype` or in each param's own dtype.

    `zeros_like` keeps each param's sharding (as `optax.adamw` does), so a
    state built from sharded params is sharded the same way.
    """
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype or p.dtype), params)


def map_leaves(
    leaf_fn: Callable[..., tuple],
    gs: list[jax.Array],
    buffers: list[list[jax.Array]],
    vectors: tuple[jax.Array, ...],
) -> tuple[list[jax.Array], list[list[jax.Array]]]:
    """Runs `leaf_fn(g, *buffers_i, *vector_entries_i) -> (u, *new_buffers_i)` per leaf.

    `buffers[k]` is the list of the k-th param-shaped buffer per leaf, `vectors`
    1-D per-tensor vectors in leaf order. The leaves are unrolled in Python
    (their number and shapes are static), so the whole update stays one XLA
    program. Returns the updates (in each gradient's dtype) and new buffers.
    """
    rows = [
        leaf_fn(g, *(b[i] for b in buffers), *(v[i] for v in vectors))
        for i, g in enumerate(gs)
    ]
    us = [row[0].astype(g.dtype) for row, g in zip(rows, gs)]
    new_bufs = [[row[k + 1] for row in rows] for k in range(len(buffers))]
    return us, new_bufs


def leaf_sizes(gs: list[jax.Array], dtype: jnp.dtype) -> tuple[jax.Array, np.ndarray]:
    """Element counts per leaf as a vector (empty leaves count 1) and a static
    boolean mask of the non-empty leaves."""
    sizes = np.array([g.size for g in gs], dtype=np.int64)
    return jnp.asarray(np.maximum(sizes, 1), dtype), sizes > 0


def keep_where_empty(nonempty: np.ndarray, new: jax.Array, old: jax.Array) -> jax.Array:
    """Common rule (docs/math.md): empty leaves leave their statistics unchanged.

    A statistic the step did not change (`new is old`) is returned as it is.
    """
    if nonempty.all() or new is old:
        return new
    return jnp.where(jnp.asarray(nonempty), new, old)


def with_decay_and_lr(
        direction: optax.GradientTransformation,
        learning_rate: optax.ScalarOrSchedule,
        weight_decay: optax.ScalarOrSchedule,
        mask: Any | Callable[[optax.Params], Any] | None,
) -> optax.GradientTransformationExtraArgs:
    """Chains a direction with decoupled weight decay and the learning rate.

    `θ ← θ − lr·(u + λ·θ)`, written as optax updates that are added to params.
    The state always has the three entries of `optax.adamw`'s (direction, decay,
    learning rate), whatever `weight_decay` is; a weight decay that is exactly 0
    is a pass-through with the decay's state, so that `params` is optional then.
    Extra keyword arguments of `update` (such as `value=loss`) are accepted.
    """
    check_mask(mask)
    wd = concrete_float(weight_decay)
    decay = optax.add_decayed_weights(weight_decay, mask)
    needs_params = wd is None or wd != 0.0
    if not needs_params:
        decay = optax.GradientTransformationExtraArgs(
                decay.init, lambda updates, state, params=None, **extra: (updates, state))
    tx = optax.chain(direction, decay, optax.scale_by_learning_rate(learning_rate))

    def update_fn(updates, state, params=None, **extra_args):
        if needs_params and params is None:
            raise ValueError(
                    f"weight_decay={weight_decay!r} needs the current parameters: call"
                    " update(grads, state, params), or set weight_decay=0"
            )
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def one_minus_pow(decay: Any, count: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """`1 − decay^count` without cancellation: `−expm1(count·log1p(−(1−decay)))`.

    With `decay` a Python float, `1 − decay` is formed in double precision before
    any rounding to float32, so the bias correction of b2=0.999 is exact to a few
    ulps; `1 − 0.999**t` in float32 is off by up to 1.3e-5 relative at t=1
    (0.999 is not representable). With a traced decay the error is that of its
    dtype.
    """
    one_minus = jnp.asarray(1 - decay, dtype)
    return -jnp.expm1(count.astype(dtype) * jnp.log1p(-one_minus))


def count_flagged(count: jax.Array, flagged: jax.Array) -> jax.Array:
    """`count + 1` where `flagged` (int32, saturating like `optax.safe_increment`)."""
    big = jnp.iinfo(jnp.int32).max
    return jnp.where(flagged & (count < big), count + 1, count).astype(jnp.int32)


def is_boxed(x: Any) -> bool:
    """True for a flax `nnx.Variable`-like box around an array."""
    return hasattr(x, "get_value") and not isinstance(x, (jax.Array, np.ndarray))


def unbox(x: Any) -> Any:
    """Returns the array inside a flax Variable-like box, or `x` itself."""
    return x.get_value() if is_boxed(x) else x

"""Factored AdamW: Adam's first moment, and a row/column factored second moment
for matrices (Adafactor's, Shazeer & Stern 2018), with decoupled weight decay.

Implements the Factored AdamW section of docs/math.md. Every leaf keeps a
param-shaped first moment μ. A leaf whose last two axes both have at least
`min_dim_to_factor` entries keeps, in place of a param-shaped ν, a running
mean of g² over each row (R) and over each column (C), and uses the rank-one
estimate `ν = R ⊗ C / mean(R)`; every other leaf keeps Adam's ν. The second
moment of a (r, c) matrix then costs r + c numbers instead of r·c, and the
state is about one param-shaped buffer, μ, which a quantised store can shrink
further (the 4-bit Factor recipe of Li, Chen & Zhu 2023).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stam_optimizer._common import (
    count_flagged,
    is_boxed,
    map_leaves,
    one_minus_pow,
    sanitize,
    unbox,
    vector,
    with_decay_and_lr,
    zeros_like_tree,
)
from stam_optimizer._reductions import SANITIZE_CHUNK, nonfinite_sums
from stam_optimizer._storage import store_and_read
from stam_optimizer._validation import (
    FLOAT_STATE_DTYPES,
    as_arrays,
    check_interval_int,
    check_learning_rate,
    check_range,
    check_real,
    check_unit_open,
    check_weight_decay,
    concrete_float,
    grad_leaves,
    resolve_dtype,
)
from stam_optimizer.state_sharding import explicit_sharding, explicitly_sharded

# Adafactor's threshold (optax.adafactor's `min_dim_size_to_factor`): the
# statistics of a factored (r, c) leaf take (r + c)/(r·c) ≤ 2/128 of its size.
DEFAULT_MIN_DIM_TO_FACTOR = 128


class ScaleByFactoredAdamState(NamedTuple):
    """State of `scale_by_factored_adam`.

    `nu_row`, `nu_col` and `nu` are pytrees shaped like the params (one array
    per param leaf, so the state keeps one tree structure whatever is
    factored). A factored leaf of shape `(..., r, c)` has `nu_row` of shape
    `(..., r)`, `nu_col` of shape `(..., c)` and an empty `nu` of shape `(0,)`;
    any other leaf has a param-shaped `nu` and empty `nu_row`, `nu_col`. The
    second-moment buffers are kept in the statistics dtype (float32, or wider
    for a wider param).

    Attributes:
      count: step counter `t` (int32, before this update).
      mu: first moment μ, param-shaped, in `mu_dtype`.
      nu_row: R, running mean of `g² + factored_eps` over the last axis.
      nu_col: C, running mean of `g² + factored_eps` over the second-last axis.
      nu: ν, running mean of g², for the leaves that are not factored.
      nonfinite: int32, one per tensor in the leaf order of
        `jax.tree.leaves(params)`: the number of steps so far at which the
        tensor's gradient had a NaN or ±Inf entry (those entries were used as
        0). Read off `sum(g)`, as for AdamS (see `ScaleByAdamsState`).
        Saturates at 2³¹−1. Read it with `tree_nonfinite`.
    """

    count: jax.Array
    mu: optax.Updates
    nu_row: optax.Updates
    nu_col: optax.Updates
    nu: optax.Updates
    nonfinite: jax.Array


def is_factored(shape: tuple[int, ...], min_dim_to_factor: int) -> bool:
    """Whether a leaf of `shape` gets the factored second moment: two axes or
    more, and the last two each of at least `min_dim_to_factor` entries."""
    return len(shape) >= 2 and min(shape[-2:]) >= min_dim_to_factor


def _without(spec: Any, ndim: int, axis: int) -> jax.sharding.PartitionSpec:
    spec = tuple(spec) + (None,) * (ndim - len(tuple(spec)))
    return jax.sharding.PartitionSpec(*spec[:axis], *spec[axis + 1:])


def _zeros_without_axis(p: Any, axis: int, dtype: jnp.dtype) -> jax.Array:
    """Zeros shaped like `p` without `axis`, sharded like `p` on the other axes
    (as the update's reduction over `axis` leaves them)."""
    axis %= len(p.shape)
    shape = tuple(d for i, d in enumerate(p.shape) if i != axis)
    sharding = getattr(p, "sharding", None)
    if isinstance(p, jax.core.Tracer):
        found = explicit_sharding(p)
        if found is not None:  # an Explicit-axis type (jitted init)
            mesh, spec = found
            return jnp.zeros(shape, dtype, out_sharding=jax.sharding.NamedSharding(
                mesh, _without(spec, len(p.shape), axis)))
    elif isinstance(sharding, jax.sharding.NamedSharding):  # concrete: its own mesh
        return jax.device_put(jnp.zeros(shape, dtype), jax.sharding.NamedSharding(
            sharding.mesh, _without(sharding.spec, len(p.shape), axis)))
    return jnp.zeros(shape, dtype)


def _row_col_sums(g: jax.Array, flagged: jax.Array, dtype: jnp.dtype
                  ) -> tuple[jax.Array, jax.Array]:
    """`sum(g², axis=-1)` and `sum(g², axis=-2)` of the sanitised `g`, in `dtype`.

    The plain statement is `plain()`. Without a non-finite entry (`flagged`
    False: `sum(g)` is finite) it equals `raw()`, whose two reductions each
    read `g` on their own: XLA:CPU would write a shared or sanitised g² out as
    a param-sized temporary first (see `tensor_sums`). With one, `chunked()`
    sanitises whole rows, about `SANITIZE_CHUNK` elements at a time, for the
    same reason; its column sums add the chunks in another order (rounding).
    """
    def raw():
        x = g.astype(dtype)
        rows = jnp.sum(x * x, axis=-1)
        y, rows = jax.lax.optimization_barrier((g, rows))
        y = y.astype(dtype)
        return rows, jnp.sum(y * y, axis=-2)

    def plain():
        x = sanitize(g, dtype)
        x2 = x * x
        return jnp.sum(x2, axis=-1), jnp.sum(x2, axis=-2)

    def chunked():
        x = g.reshape((-1, *g.shape[-2:]))  # (L, r, c): L matrices
        n, r, c = x.shape
        k = max(d for d in range(1, r + 1) if r % d == 0 and (d * c <= SANITIZE_CHUNK or d == 1))
        blocks = r // k

        def body(i, acc):
            rows, cols = acc
            m, j = i // blocks, i % blocks
            y = sanitize(jax.lax.dynamic_slice(x, (m, j * k, 0), (1, k, c)), dtype)
            y2 = y * y
            rows = jax.lax.dynamic_update_slice(rows, jnp.sum(y2, axis=-1), (m, j * k))
            col = jax.lax.dynamic_slice(cols, (m, 0), (1, c)) + jnp.sum(y2, axis=-2)
            return rows, jax.lax.dynamic_update_slice(cols, col, (m, 0))

        # zeros of x's type (a replicated leaf on an Explicit mesh keeps its mesh)
        init = (jnp.zeros_like(x[:, :, 0], dtype), jnp.zeros_like(x[:, 0, :], dtype))
        rows, cols = jax.lax.fori_loop(0, n * blocks, body, init)
        return rows.reshape(g.shape[:-1]), cols.reshape((*g.shape[:-2], c))

    # a leaf sharded on an Explicit-axis mesh is not reshaped (see tensor_sums)
    return jax.lax.cond(flagged, plain if explicitly_sharded(g) else chunked, raw)


def _min_dim(min_dim_to_factor: Any) -> int:
    """`min_dim_to_factor` as an int, for `init`; TypeError when it is traced."""
    value = concrete_float(min_dim_to_factor)
    if value is None:
        raise TypeError(
            "min_dim_to_factor decides the shapes of the state and must be a concrete"
            " integer when init runs; under optax.inject_hyperparams with a jitted init,"
            " list it in static_args (static_args=('min_dim_to_factor',))")
    return int(value)


def scale_by_factored_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    factored_eps: float = 1e-30,
    min_dim_to_factor: int = DEFAULT_MIN_DIM_TO_FACTOR,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates by Adam's direction with a factored second moment.

    Per tensor, with `t` the step count before this update and `g` the gradient
    (non-finite entries replaced by 0, statistics in float32 or wider)::

      μ  = b1·μ + (1−b1)·g
      if factored (ndim ≥ 2, last two axes ≥ min_dim_to_factor; shape (..., r, c)):
        R  = b2·R + (1−b2)·(mean over the last axis of g² + factored_eps)         # (..., r)
        C  = b2·C + (1−b2)·(mean over the second-last axis of g² + factored_eps)  # (..., c)
        ν  = R ⊗ C / mean(R)          # mean over the r entries of R, per leading index
      else:
        ν  = b2·ν + (1−b2)·g²
      u  = (μ / (1−b1^(t+1))) / (√(ν / (1−b2^(t+1))) + eps)

    `ν` is 0 where `mean(R) = 0` (only possible with `factored_eps = 0` before
    any non-zero gradient), and +inf where the formula gives NaN (R or C
    overflowed: a float32 gradient entry beyond about 1.8e19, where Adam's ν
    is infinite too). Leaves that are not factored follow
    `optax.scale_by_adam(b1, b2, eps)` exactly, and so does a factored leaf
    whose g² is one fixed rank-one pattern times a scalar per step, with
    `factored_eps=0`.

    Args:
      b1: decay of μ, in (0, 1). Default 0.9.
      b2: decay of ν, R and C, in (0, 1). Default 0.999.
      eps: added to √ν̂, ≥ 0. Default 1e-8.
      factored_eps: added to g² before the row and column means, ≥ 0; it keeps
        `mean(R)` above 0. Default 1e-30, Adafactor's.
      min_dim_to_factor: a leaf is factored when it has two axes or more and
        its last two each have at least this many entries; an integer ≥ 1.
        Default 128, Adafactor's (`optax.adafactor`'s `min_dim_size_to_factor`):
        R and C then take at most 2/128 of the leaf's size. Read by `init`
        only: the state's shapes keep the choice.
      mu_dtype: storage dtype of μ ("float32", "bfloat16", "float16" or a
        dtype); default: each param's own dtype. ν, R and C are kept in the
        statistics dtype.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose updates are in the gradients' dtype.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(scale_by_factored_adam(min_dim_to_factor=2), optax.scale(-1e-3))
      >>> state = tx.init({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)})
      >>> state[0].nu_row["w"].shape, state[0].nu_col["w"].shape, state[0].nu["w"].shape
      ((3,), (4,), (0,))

    References:
      docs/math.md (section Factored AdamW) of stam-optimizer;
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
      Cost", arXiv:1804.04235 (2018), for the factored second moment;
      Li, Chen & Zhu, "Memory Efficient Optimizers with 4-bit States",
      arXiv:2309.01507 (2023), for its pairing with a (quantised) Adam momentum;
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).
    """
    check_unit_open("b1", b1)
    check_unit_open("b2", b2)
    check_range("eps", eps, 0.0)
    check_range("factored_eps", factored_eps, 0.0)
    check_interval_int("min_dim_to_factor", min_dim_to_factor)
    mu_dtype = resolve_dtype("mu_dtype", mu_dtype, FLOAT_STATE_DTYPES)

    def init_fn(params):
        params = as_arrays(params)
        check_real("scale_by_factored_adam", params)
        leaves = jax.tree.leaves(params)
        min_dim = _min_dim(min_dim_to_factor)

        def stat(p):
            return jnp.promote_types(p.dtype, jnp.float32)

        def empty(p):
            return jnp.zeros((0,), stat(p))

        # R, C and the empty buffers are plain arrays even where a param is a
        # flax Variable, whose sharding metadata names the param's axes.
        def row(p):
            x = unbox(p)
            return _zeros_without_axis(x, -1, stat(x)) if is_factored(x.shape, min_dim) \
                else empty(x)

        def col(p):
            x = unbox(p)
            return _zeros_without_axis(x, -2, stat(x)) if is_factored(x.shape, min_dim) \
                else empty(x)

        def full(p):  # a param-shaped ν keeps the Variable, as μ does
            x = unbox(p)
            return empty(x) if is_factored(x.shape, min_dim) \
                else jax.tree.map(lambda y: jnp.zeros_like(y, dtype=stat(y)), p)

        return ScaleByFactoredAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like_tree(params, mu_dtype),
            nu_row=jax.tree.map(row, params, is_leaf=is_boxed),
            nu_col=jax.tree.map(col, params, is_leaf=is_boxed),
            nu=jax.tree.map(full, params, is_leaf=is_boxed),
            nonfinite=vector(len(leaves), 0, jnp.int32, leaves))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args  # accepted as optax's transformations do (e.g. value=loss)
        treedef, gs = grad_leaves(updates, state.mu)
        check_real("scale_by_factored_adam", gs)
        flagged = nonfinite_sums(gs)
        t = state.count
        buffers = [treedef.flatten_up_to(x) for x in
                   (state.mu, state.nu_row, state.nu_col, state.nu)]

        def leaf_update(g, mu, row, col, nu, flagged):
            dt = jnp.promote_types(jnp.promote_types(g.dtype, jnp.float32), nu.dtype)
            # init chose: a factored leaf has an empty ν (and update needs no
            # min_dim_to_factor, which inject_hyperparams may trace)
            factored = nu.shape != g.shape
            if factored:
                row_sum, col_sum = _row_col_sums(g, flagged, dt)
            g = sanitize(g, dt)
            mu, mu_read = store_and_read(b1 * mu.astype(dt) + (1 - b1) * g, mu.dtype, dt)
            if factored:
                n_row, n_col = g.shape[-1], g.shape[-2]
                row = b2 * row + (1 - b2) * (row_sum / n_row + factored_eps)
                col = b2 * col + (1 - b2) * (col_sum / n_col + factored_eps)
                row_mean = jnp.mean(row, axis=-1, keepdims=True)
                # R / mean(R) first: R_i·C_j of two tiny entries would underflow
                row_scale = jnp.where(row_mean > 0, row / jnp.where(row_mean > 0, row_mean, 1),
                                      0)
                v = row_scale[..., :, None] * col[..., None, :]
                # inf/inf or 0·inf from an overflowed R or C: ν is infinite there,
                # as Adam's ν would be (u = 0)
                v = jnp.where(jnp.isnan(v), jnp.asarray(jnp.inf, v.dtype), v)
                new_row, new_col, new_nu = row.astype(dt), col.astype(dt), nu
            else:
                v = b2 * nu + (1 - b2) * g * g
                new_row, new_col, new_nu = row, col, v
            mu_hat = mu_read / one_minus_pow(b1, t + 1, dt)
            nu_hat = v / one_minus_pow(b2, t + 1, dt)
            u = mu_hat / (jnp.sqrt(nu_hat) + eps)
            return (u, mu, new_row.astype(row.dtype), new_col.astype(col.dtype),
                    new_nu.astype(nu.dtype))

        us, (mus, rows, cols, nus) = map_leaves(leaf_update, gs, buffers, (flagged,))
        return treedef.unflatten(us), ScaleByFactoredAdamState(
            count=optax.safe_increment(t),
            mu=treedef.unflatten(mus),
            nu_row=treedef.unflatten(rows),
            nu_col=treedef.unflatten(cols),
            nu=treedef.unflatten(nus),
            nonfinite=count_flagged(state.nonfinite, flagged))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def factored_adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    factored_eps: float = 1e-30,
    min_dim_to_factor: int = DEFAULT_MIN_DIM_TO_FACTOR,
    mu_dtype: Any | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW with a factored second moment: `scale_by_factored_adam`, decoupled
    weight decay, learning rate.

    Updates are added to params (optax convention): `θ ← θ − lr·(u + λ·θ)`.
    `b1`, `b2`, `eps`, `factored_eps`, `min_dim_to_factor` and `mu_dtype` are
    those of `scale_by_factored_adam`. On leaves that are not factored this is
    `optax.adamw` with the same hyperparameters.

    Args:
      learning_rate: a float ≥ 0 or an optax schedule `count -> lr`. Default 1e-3.
      weight_decay: λ ≥ 0 (or a schedule). Default 0.01, STAM's (and
        `torch.optim.AdamW`'s); `optax.adamw` defaults to 1e-4.
      mask: pytree or callable choosing the leaves that decay (optax convention).
        Under `optax.inject_hyperparams` pass `static_args=("mask",)`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((256, 128)), "b": jnp.zeros(128)}
      >>> opt = factored_adamw(learning_rate=1e-3)
      >>> state = opt.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> state[0].nu_row["w"].shape, state[0].nu_col["w"].shape
      ((256,), (128,))
    """
    check_learning_rate(learning_rate)
    check_weight_decay(weight_decay)
    return with_decay_and_lr(
        scale_by_factored_adam(b1, b2, eps, factored_eps, min_dim_to_factor, mu_dtype),
        learning_rate, weight_decay, mask,
    )

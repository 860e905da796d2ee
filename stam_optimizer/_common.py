"""Helpers shared by the optimizers: validation, dtypes, the SPEC common rules.

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

from stam_optimizer import quantize as qz
from stam_optimizer._validation import (  # noqa: F401 (the check_* helpers live there)
    as_arrays,
    check_b1_min,
    check_bool,
    check_interval_int,
    check_learning_rate,
    check_mask,
    check_number,
    check_range,
    check_unit_open,
    check_weight_decay,
    concrete_float,
    grad_leaves,
    resolve_dtype,
)

# Added to τ² in STAM's variance ratio (SPEC: `τ² + 1e-8`); not a user knob.
TAU_EPS = 1e-8

# XLA:CPU (jax 0.10) sends a sum over ≥ 4096 elements to one fused kernel, but
# splits a smaller one into 3–4 kernels (its producer is written out, then
# reduced in a tree). A leaf under this size gets all its sums from one padded
# (n_sums, ≥ 4096/n_sums) stack instead: 2 kernels where there were 6–8,
# measured to cut the 200-leaf STAM compile by a fifth. Zero padding leaves the
# sums unchanged; leaves under 64 elements are cheap either way and not padded.
SMALL_SUM = 4096

# The NaN-recovery path of `tensor_sums` sanitises a large leaf this many
# elements at a time (a 256 KB temporary in float32).
SANITIZE_CHUNK = 1 << 16

# Storage dtypes accepted by name; values are what `jnp.dtype` understands.
FLOAT_STATE_DTYPES = ("float32", "bfloat16", "float16")


def default_b1_min(b1_base: Any, adapt_strength: Any) -> Any:
    """SPEC default: `min(b1_base, max(0.5, b1_base·(1−α)))`; works on traced values."""
    return jnp.minimum(b1_base, jnp.maximum(0.5, b1_base * (1.0 - adapt_strength)))


def stat_dtype(leaves: list[jax.Array]) -> jnp.dtype:
    """float32, or wider when some leaf is wider (float64 under `jax_enable_x64`)."""
    return functools.reduce(
            jnp.promote_types, [jnp.dtype(x.dtype) for x in leaves], jnp.dtype(jnp.float32)
    )


def sanitize(g: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """SPEC common rule: non-finite gradient entries become 0; returns `g` in `dtype`."""
    g = g.astype(dtype)
    return jnp.where(jnp.isfinite(g), g, jnp.zeros((), dtype))


def tensor_sums(
    fns: tuple[Callable[..., jax.Array], ...],
    gs: list[jax.Array],
    others: list[list[jax.Array]],
    dtype: jnp.dtype,
) -> tuple[tuple[jax.Array, ...], list[jax.Array], list[list[jax.Array]]]:
    """Per-tensor `sum(f(sanitize(g), *others))` for each `f`, as 1-D vectors.

    `gs` holds the gradient leaves and `others[k]` the k-th companion buffer per
    leaf (e.g. μ). On a leaf of `SMALL_SUM` elements or more, each sum is one
    fused pass over memory (smaller leaves: see `SMALL_SUM`): XLA:CPU fuses an
    elementwise producer into a reduction only when the producer has no other
    consumer and contains no select; otherwise it writes the producer to a
    fresh temporary, which costs more than the reduction (measured: 20 ms
    instead of 2.9 ms on 8M floats). So each sum reads the raw inputs on its own
    (an optimization barrier keeps XLA from sharing their producers), and one
    `lax.cond` recomputes all sums from sanitised gradients only when some sum
    comes out non-finite, which any NaN/±Inf gradient entry guarantees.

    Returns the sum vectors (0 for empty leaves), the leaves passed through a
    barrier, for the elementwise update to read, and a boolean vector flagging
    the tensors whose raw sums were not all finite (see `count_flagged`).
    """
    n = len(gs)
    args = [[gs[i], *(o[i] for o in others)] for i in range(n)]
    # A leaf sharded on an Explicit-axis mesh cannot be flattened (or joined to
    # others) freely under the sharding-in-types rules; it is reduced in place.
    flat_ok = [not any(explicitly_sharded(x) for x in a) for a in args]

    def fast_sums():
        cols: list[list[jax.Array]] = [[] for _ in fns]
        for i in range(n):
            if args[i][0].size == 0:
                for col in cols:
                    col.append(jnp.zeros((), dtype))
                continue
            carry = tuple(args[i])
            size = args[i][0].size
            if size < SMALL_SUM and not flat_ok[i]:  # one reduction, over all axes
                rows = [f(*(x.astype(dtype) for x in carry)) for f in fns]
                totals = jnp.sum(jnp.stack(rows), axis=tuple(range(1, carry[0].ndim + 1)))
                for k, col in enumerate(cols):
                    col.append(totals[k])
                continue
            if size < SMALL_SUM:  # all sums of a small leaf in one reduction
                width = size if size < 64 else max(size, -(-SMALL_SUM // len(fns)))
                rows = [jnp.pad(f(*(x.astype(dtype) for x in carry)).reshape(-1),
                                (0, width - size)) for f in fns]
                totals = jnp.sum(jnp.stack(rows), axis=1)
                for k, col in enumerate(cols):
                    col.append(totals[k])
                continue
            for f, col in zip(fns, cols):
                # Cast inside each sum: a cast shared by two sums (or held by
                # the barrier) would be written out as a param-sized temporary.
                total = jnp.sum(f(*(x.astype(dtype) for x in carry)))
                *carry, total = jax.lax.optimization_barrier((*carry, total))
                col.append(total)
        return tuple(stack(col, dtype) for col in cols)

    def chunk_sums(xs):
        xs = [sanitize(xs[0], dtype), *(x.astype(dtype) for x in xs[1:])]
        return jnp.stack([jnp.sum(f(*xs)) for f in fns])

    def leaf_sums(leaf):
        # XLA:CPU writes a sanitised operand out before reducing it; taken in
        # chunks of SANITIZE_CHUNK elements, that temporary stays small instead
        # of one more param-sized buffer in the compiled update.
        flat = [x.reshape(-1) for x in leaf]
        size, full = flat[0].size, flat[0].size // SANITIZE_CHUNK
        totals = jnp.zeros((len(fns),), dtype)
        if full:
            totals = jax.lax.fori_loop(0, full, lambda j, acc: acc + chunk_sums(
                [jax.lax.dynamic_slice_in_dim(x, j * SANITIZE_CHUNK, SANITIZE_CHUNK)
                 for x in flat]), totals)
        if size % SANITIZE_CHUNK:
            totals = totals + chunk_sums([x[full * SANITIZE_CHUNK:] for x in flat])
        return totals

    def sanitized_sums():
        # Rare path. Large leaves: their sums in chunks (see leaf_sums). Small
        # leaves (kept few kernels for the compiler): one flat vector, one
        # segment sum per statistic.
        sums = [[jnp.zeros((), dtype)] * n for _ in fns]
        small = [i for i in range(n) if 0 < args[i][0].size < SMALL_SUM and flat_ok[i]]
        for i in range(n):
            if args[i][0].size and not flat_ok[i]:
                leaf = chunk_sums(args[i])  # not flattened, so not chunked either
                for k in range(len(fns)):
                    sums[k][i] = leaf[k]
            elif args[i][0].size >= SMALL_SUM:
                leaf = leaf_sums(args[i])
                for k in range(len(fns)):
                    sums[k][i] = leaf[k]
        totals = [stack(col, dtype) for col in sums]
        if small:
            flat = [jnp.concatenate([args[i][k].astype(dtype).reshape(-1) for i in small])
                    for k in range(1 + len(others))]
            flat[0] = sanitize(flat[0], dtype)
            # The small leaf of every element, built at run time: as a constant
            # it would be baked into the executable, and XLA would spend
            # seconds folding it (hence the barrier).
            starts = np.cumsum([args[i][0].size for i in small])[:-1]
            marks = jax.lax.optimization_barrier(jnp.zeros(flat[0].shape, jnp.int32))
            ids = jnp.cumsum(marks.at[starts].set(1))
            where = np.array(small)
            totals = [t.at[where].set(jax.ops.segment_sum(f(*flat), ids, len(small),
                                                          indices_are_sorted=True))
                      for t, f in zip(totals, fns)]
        return tuple(totals)

    fast = fast_sums()
    flagged = functools.reduce(jnp.logical_or, [~jnp.isfinite(v) for v in fast])
    totals = jax.lax.cond(~jnp.any(flagged), lambda: fast, sanitized_sums)
    args, totals = jax.lax.optimization_barrier((args, totals))
    return (totals, [a[0] for a in args], [[a[k + 1] for a in args] for k in range(len(others))],
            flagged)


def explicitly_sharded(x: jax.Array) -> bool:
    """True when the type of `x` carries a sharding over an Explicit mesh axis
    (then flattening it, for instance, needs an output sharding)."""
    found = qz.explicit_sharding(x)
    if found is None:
        return False
    mesh, spec = found
    explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types)
                if kind == jax.sharding.AxisType.Explicit}
    return any(name in explicit for entry in spec if entry is not None
               for name in (entry if isinstance(entry, tuple) else (entry,)))


def store(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Casts `x` to a storage dtype, saturating at its largest finite value.

    float16 holds at most 65504; a plain cast would turn a large momentum into
    inf and then every later update into NaN.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).max < jnp.finfo(x.dtype).max:
        big = jnp.finfo(dtype).max.astype(x.dtype)
        x = jnp.clip(x, -big, big)
    return x.astype(dtype)


def read_back(stored: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The freshly stored buffer, as the update must read it: upcast, behind a barrier.

    Without the barrier XLA recomputes the buffer inside the update's fusion from
    the previous one, which the store overwrites in place, and so copies the
    whole previous buffer first (measured 1.8x slower for bfloat16 state). With
    a low-precision state the update therefore uses the rounded buffer, which
    is also what the next step starts from.
    """
    return jax.lax.optimization_barrier(stored).astype(dtype)


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
    """SPEC: empty leaves leave their statistics unchanged."""
    if nonempty.all():
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


def nonfinite_sums(gs: list[jax.Array]) -> jax.Array:
    """Per tensor, whether `sum(g)` (in float32 or wider) is not finite.

    Any NaN or ±Inf entry makes it so (NaN, or +Inf and −Inf, give NaN), and
    so does a sum of finite entries beyond the float32 range (about 3.4e38).
    One fused reduction per tensor and no temporary: a reduction of
    `isfinite(g)` is written out as a bool array first on XLA:CPU.
    """
    return stack([~jnp.isfinite(jnp.sum(g.astype(jnp.promote_types(g.dtype, jnp.float32))))
                  for g in gs], jnp.bool_)


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


def check_real(name: str, tree: Any) -> None:
    """Raises TypeError naming the dtype when `tree` holds a complex leaf.

    The per-tensor statistics and β₁ rules are defined for real tensors; a
    complex one is refused instead of being trained to a wrong point.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                    f"{name}: complex parameters are not supported, got dtype {dtype} at"
                    f" {jax.tree_util.keystr(path) or 'the root'}; optimise the real and"
                    " imaginary parts as two real parameters"
            )

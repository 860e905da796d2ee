"""Fused per-tensor reductions and the backend tricks that make them cheap.

The optimizers need a few sums per tensor (of g, g², (g − μ)², ...). Their plain
statement is `plain_tensor_sums`; `tensor_sums` computes the same numbers in as
few passes over memory as XLA:CPU allows (measured with jax 0.10.x), and a
test checks that the two agree. Everything here is about speed and memory on
the backend, nothing about the math: `docs/math.md` is written in terms of the
plain statement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stam_optimizer._common import map_leaves, sanitize, stack
from stam_optimizer.state_sharding import explicitly_sharded

# XLA:CPU (jax 0.10.x) sends a sum over ≥ 4096 elements to one fused kernel, but
# splits a smaller one into 3–4 kernels (its producer is written out, then
# reduced in a tree). A leaf under this size gets all its sums from one padded
# (n_sums, ≥ 4096/n_sums) stack instead: 2 kernels where there were 6–8,
# measured to cut the 200-leaf STAM compile by a fifth. Zero padding leaves the
# sums unchanged; leaves under 64 elements are cheap either way and not padded.
SMALL_SUM = 4096

# The NaN-recovery path of `tensor_sums` sanitises a large leaf this many
# elements at a time (a 256 KB temporary in float32).
SANITIZE_CHUNK = 1 << 16


class TensorSums:
    """What `tensor_sums` returns: the sums, the flags, and the way to the leaves.

    sums: one 1-D vector per function, the sum over each tensor (0 when empty).
    flagged: per tensor, True when a sum over the raw (unsanitised) inputs was
      not finite, i.e. the gradient had a NaN or ±Inf entry.

    The elementwise update runs through `map_leaves`, which hands it the
    gradients and companion buffers after the optimization barrier that the
    sums passed through: an update that read its own references would let XLA
    fold its reads into the reductions' passes, which then write a param-sized
    temporary. The leaves after the barrier are not exposed otherwise.
    """

    __slots__ = ("_gs", "_others", "flagged", "sums")

    def __init__(self, sums: tuple[jax.Array, ...], flagged: jax.Array,
                 gs: list[jax.Array], others: list[list[jax.Array]]):
        self.sums, self.flagged, self._gs, self._others = sums, flagged, gs, others

    def map_leaves(
        self,
        leaf_fn: Callable[..., tuple],
        buffers: Sequence[list[jax.Array]] = (),
        vectors: tuple[jax.Array, ...] = (),
    ) -> tuple[list[jax.Array], list[list[jax.Array]]]:
        """`_common.map_leaves` over the summed leaves: runs
        `leaf_fn(g, *others_i, *buffers_i, *vector_entries_i) -> (u, *new_others_i,
        *new_buffers_i)` per leaf, with `g` and `others` those given to
        `tensor_sums` and `buffers` more param-shaped buffers that the sums did
        not read. Returns the updates and the new buffers (others first)."""
        return map_leaves(leaf_fn, self._gs, [*self._others, *buffers], vectors)


def plain_tensor_sums(
    fns: tuple[Callable[..., jax.Array], ...],
    gs: list[jax.Array],
    others: list[list[jax.Array]],
    dtype: jnp.dtype,
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """The contract of `tensor_sums`, stated plainly: `(sums, flagged)` with

        sums[k][i] = sum(f_k(sanitize(g_i), *others_i))      (0 for an empty tensor)
        flagged[i] = some sum(f_k(g_i, *others_i)) is not finite

    for every function `f_k` of `fns` and tensor `i`, in `dtype`.
    """
    def sums_of(clean: bool) -> tuple[jax.Array, ...]:
        out = []
        for f in fns:
            out.append(stack([jnp.sum(f(sanitize(g, dtype) if clean else g.astype(dtype),
                                        *(o[i].astype(dtype) for o in others)))
                              for i, g in enumerate(gs)], dtype))
        return tuple(out)

    raw = sums_of(False)
    flagged = functools.reduce(jnp.logical_or, [~jnp.isfinite(v) for v in raw],
                               jnp.zeros((len(gs),), bool))
    return sums_of(True), flagged


def tensor_sums(
    fns: tuple[Callable[..., jax.Array], ...],
    gs: list[jax.Array],
    others: list[list[jax.Array]],
    dtype: jnp.dtype,
) -> TensorSums:
    """Per-tensor `sum(f(sanitize(g), *others))` for each `f`, as 1-D vectors.

    Contract: the same numbers as `plain_tensor_sums` (up to the order of float
    additions), tested against it; what follows is how it gets them fast.

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

    Returns a `TensorSums`: the sums, the flags, and `map_leaves`, through
    which the update reads the leaves after the barrier.
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
    return TensorSums(totals, flagged, [a[0] for a in args],
                      [[a[k + 1] for a in args] for k in range(len(others))])


def nonfinite_sums(gs: list[jax.Array]) -> jax.Array:
    """Per tensor, whether `sum(g)` (in float32 or wider) is not finite.

    Any NaN or ±Inf entry makes it so (NaN, or +Inf and −Inf, give NaN), and
    so does a sum of finite entries beyond the float32 range (about 3.4e38).
    One fused reduction per tensor and no temporary: a reduction of
    `isfinite(g)` is written out as a bool array first on XLA:CPU (jax 0.10.x).
    """
    return stack([~jnp.isfinite(jnp.sum(g.astype(jnp.promote_types(g.dtype, jnp.float32))))
                  for g in gs], jnp.bool_)

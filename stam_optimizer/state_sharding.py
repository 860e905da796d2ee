"""Where blockwise-quantised state lives on a mesh: the partition specs of its
codes and scales, and the queries on a tensor's Explicit-axis sharding.

The codes keep the param's sharding on the leading axes, so sharding along any
axis but the last (FSDP on axis 0 of a matrix) keeps every block inside one
shard and each device holds 1/N of the codes and scales. Sharding the last
axis over N devices (tensor parallelism on axis 1 of a matrix, FSDP of a
vector) is aligned when `n_blocks` is a multiple of N and the row is not
padded (`n` a multiple of `N·block`); otherwise the codes are replicated along
that mesh axis (N times the state of that tensor per device) and XLA moves the
gradient to that layout in every update. The block layout itself is
`blockwise.layout`: a function of the global shape alone, never of the sharding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def explicit_sharding(x: jax.Array) -> tuple[jax.sharding.AbstractMesh, tuple] | None:
    """The mesh and spec of `x` when its type carries an Explicit-axis sharding."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "axis_names", ()):
        return None
    explicit = jax.sharding.AxisType.Explicit
    if not any(t == explicit for t in mesh.axis_types):
        return None
    return mesh, tuple(sharding.spec)


def explicitly_sharded(x: jax.Array) -> bool:
    """True when the type of `x` carries a sharding over an Explicit mesh axis
    (then flattening it, for instance, needs an output sharding)."""
    found = explicit_sharding(x)
    if found is None:
        return False
    mesh, spec = found
    explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types)
                if kind == jax.sharding.AxisType.Explicit}
    return any(name in explicit for entry in spec if entry is not None
               for name in (entry if isinstance(entry, tuple) else (entry,)))


def _axis_size(mesh: jax.sharding.Mesh, entry: str | tuple[str, ...]) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[a] for a in names)


def codes_spec(spec: tuple, mesh: jax.sharding.Mesh, shape: tuple[int, ...],
               blocks: tuple[int, int]) -> jax.sharding.PartitionSpec:
    """Partition spec of the codes `(..., n_blocks, block)` of a tensor of `shape`
    sharded by `spec` over `mesh`, `blocks` being its `(n_blocks, block)`.

    The leading axes keep their entries. The last axis's entry goes to the
    block axis when the blocks tile every shard (`n_blocks` a multiple of the
    entry's devices and no padding); otherwise the codes are replicated along it.
    The scales take the spec without its last entry (`scales_spec`).
    """
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    n_blocks, block = blocks
    last = spec[-1]
    if last is not None and (n_blocks % _axis_size(mesh, last) or n_blocks * block != shape[-1]):
        last = None
    return _trimmed(*spec[:-1], last, None)


def scales_spec(codes: jax.sharding.PartitionSpec, ndim: int) -> jax.sharding.PartitionSpec:
    """Partition spec of the block scales of a `ndim`-D tensor whose codes have `codes`."""
    return _trimmed(*tuple(codes)[:ndim])


def _trimmed(*entries) -> jax.sharding.PartitionSpec:
    """A PartitionSpec without trailing None entries: the form jit gives its outputs,
    so a state placed here and a state a jitted step returns hit one compiled program."""
    entries = list(entries)
    while entries and entries[-1] is None:
        entries.pop()
    return jax.sharding.PartitionSpec(*entries)


def reshape(x: jax.Array, shape: tuple[int, ...],
            spec: jax.sharding.PartitionSpec | None) -> jax.Array:
    """`x.reshape(shape)`, with the result's partition spec `spec` under an Explicit-axis mesh."""
    if spec is None:
        return x.reshape(shape)
    found = explicit_sharding(x)
    if found is not None:  # a NamedSharding works outside `jax.set_mesh` too
        return jnp.reshape(x, shape, out_sharding=jax.sharding.NamedSharding(found[0], spec))
    return jnp.reshape(x, shape, out_sharding=spec)

"""Blockwise 8-bit storage of a momentum buffer (square-law codes, float32 scales).

Blocks tile the last axis. A tensor of shape `(..., n)` is cut, row by row of
its last axis, into `n_blocks = ceil(n / block_size)` blocks of
`block = ceil(n / n_blocks)` elements (each row zero-padded at its end to
`n_blocks·block`, less than `n_blocks` extra elements), so the codes have
shape `(..., n_blocks, block)` and the scales `(..., n_blocks)`: the layout is
a function of the global shape and `block_size` alone (see `layout`). Each
block is stored as one float32 scale `s` (its largest |x|) and one byte
per element. The byte holds an integer q in [-127, 127] as `q + 128` (code 0
is unused) and decodes to `s·sign(q)·(q/127)²`; encoding rounds
`127·sign(x)·√(|x|/s)` to the nearest integer. Zero is exact (code 128), a
block's largest entry is exact (q = ±127 decodes to ±s), an all-zero block has
scale 0 and decodes to zeros, and the padded tail holds zeros. The error is at
most `√(|x|·s)/127 + s/(4·127²)`: 0.8% of the block maximum at the top, finer
towards zero; values below `s/254²` (1.6e-5·s) round to 0.

Sharded tensors (see `codes_spec`): the codes keep the param's sharding on the
leading axes, so sharding along any axis but the last (FSDP on axis 0 of a
matrix) keeps every block inside one shard and each device holds 1/N of the
codes and scales. Sharding the last axis over N devices (tensor parallelism on
axis 1 of a matrix, FSDP of a vector) is aligned when `n_blocks` is a multiple
of N and the row is not padded (`n` a multiple of `N·block`); otherwise the
codes are replicated along that mesh axis (N times the state of that tensor
per device) and XLA moves the gradient to that layout in every update.

The square law keeps more of the small entries than a linear map at the same
8 bits (heavy-tailed momenta lose fewer entries to zero) and costs as little:
decoding is an integer-to-float conversion and two multiplications, encoding a
square root and a rounding. The round-trip errors that chose it over float8
e4m3 and linear int8 are in the documentation (Memory).

Stochastic rounding (optional) rounds up or down to the neighbouring codes with
probabilities that make the stored value unbiased, so a high-β₁ momentum keeps
moving under small increments that nearest rounding would discard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

LEVELS = 127  # largest |q|
OFFSET = 128  # code of q = 0


class QuantizedArray(NamedTuple):
    """8-bit blockwise-quantised tensor of shape `(..., n)`: codes `(..., n_blocks, block)`
    uint8 and scales `(..., n_blocks)` float32 (see `layout`)."""

    codes: jax.Array
    scales: jax.Array


def signed_levels(codes: jax.Array) -> jax.Array:
    """The integers q in [-127, 127] held by `codes`, as float32."""
    return (codes.astype(jnp.int32) - OFFSET).astype(jnp.float32)


def signed_squares(codes: jax.Array) -> jax.Array:
    """`q·|q|` in [-127², 127²] for `codes`: the stored value is `scale·q·|q|/127²`."""
    q = signed_levels(codes)
    return q * jnp.abs(q)


def decode_unit(codes: jax.Array) -> jax.Array:
    """Codes to their values in [-1, 1] (times the block scale gives the stored value)."""
    w = signed_levels(codes) * (1.0 / LEVELS)  # exactly ±1 at q = ±127
    return w * jnp.abs(w)


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms in [0, 1) for stochastic rounding, one per element.

    A counter-based hash of each element's flat index and one 32-bit word drawn
    from `key`: a few integer operations per element that fuse into the
    encoder, where `jax.random.uniform` (threefry) made the int8 update ~5x
    slower on CPU. Reproducible for a given key; 24 random bits per value.
    """
    seed = _mix32(jax.random.bits(key, (), jnp.uint32))
    # seed·size + flat index, built from per-axis iotas starting at the seed: no
    # key-free part is left for XLA to hoist out of a loop and store.
    index = jnp.broadcast_to(seed, shape)
    for axis, n in enumerate(shape):
        index = index * jnp.uint32(n) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    bits = _mix32(index)
    return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def encode_squares(z: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Codes of `z = 127²·value/scale` (|z| ≤ 127², larger values are clipped).

    Nearest rounding picks `q = round(√|z|)`. With `key`, |z| is rounded to one
    of the neighbouring squares `lo²`, `(lo+1)²` with the probabilities that
    make the expected decoded value equal to z. The clipping is done on the
    integer (a NaN z gives some valid code), with the sign applied after.
    """
    a = jnp.abs(z)
    r = jnp.sqrt(a)
    if key is None:
        q = jnp.round(r)
    else:
        lo = jnp.floor(r)
        q = lo + (uniform(key, z.shape) * (2 * lo + 1) < a - lo * lo)
    q = jnp.clip(q.astype(jnp.int32), 0, LEVELS)
    return (jnp.where(z < 0, -q, q) + OFFSET).astype(jnp.uint8)


def layout(shape: tuple[int, ...], block_size: int = 256) -> tuple[int, int]:
    """`(n_blocks, block)` of a tensor of `shape` (at least 1-D): the blocks of each
    row of the last axis, `n_blocks = ceil(n / block_size)`, `block = ceil(n / n_blocks)`.

    >>> layout((64, 512)), layout((8, 600)), layout((1009,)), layout((3, 40))
    ((2, 256), (3, 200), (4, 253), (1, 40))
    """
    if len(shape) == 0:
        raise ValueError("quantize: a 0-d tensor has no last axis to block; reshape it to (1,)")
    n = shape[-1]
    n_blocks = max(1, -(-n // block_size))
    return n_blocks, max(1, -(-n // n_blocks))


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


def _axis_size(mesh: jax.sharding.Mesh, entry: str | tuple[str, ...]) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[a] for a in names)


def codes_spec(spec: tuple, mesh: jax.sharding.Mesh, shape: tuple[int, ...],
               block_size: int = 256, *,
               blocks: tuple[int, int] | None = None) -> jax.sharding.PartitionSpec:
    """Partition spec of the codes of a tensor of `shape` sharded by `spec` over `mesh`.

    The leading axes keep their entries. The last axis's entry goes to the
    block axis when the blocks tile every shard (`n_blocks` a multiple of the
    entry's devices and no padding); otherwise the codes are replicated along it.
    The scales take the spec without its last entry (`scales_spec`). `blocks`:
    the `(n_blocks, block)` of existing codes, instead of `layout(shape, block_size)`.
    """
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    n_blocks, block = layout(shape, block_size) if blocks is None else blocks
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


def _reshape(x: jax.Array, shape: tuple[int, ...], spec: jax.sharding.PartitionSpec | None):
    if spec is None:
        return x.reshape(shape)
    found = explicit_sharding(x)
    if found is not None:  # a NamedSharding works outside `jax.set_mesh` too
        return jnp.reshape(x, shape, out_sharding=jax.sharding.NamedSharding(found[0], spec))
    return jnp.reshape(x, shape, out_sharding=spec)


def blocks(x: jax.Array, block_size: int = 256,
           spec: jax.sharding.PartitionSpec | None = None) -> jax.Array:
    """`x` (at least 1-D) as `(..., n_blocks, block)`, rows zero-padded (see `layout`).

    `spec`: the result's partition spec under an Explicit-axis mesh (`codes_spec`);
    without it, an Explicit-sharded `x` gets the spec `codes_spec` gives it.
    """
    n_blocks, block = layout(x.shape, block_size)
    if spec is None and (found := explicit_sharding(x)) is not None:
        spec = codes_spec(found[1], found[0], x.shape, block_size)
    pad = n_blocks * block - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return _reshape(x, (*x.shape[:-1], n_blocks, block), spec)


def _split(block: int) -> int:
    """Column-group width for `block_absmax`: 16 (measured fastest for blocks of 64
    to 2048), or the whole block when it is narrower."""
    return min(16, block)


def _pairwise_max(parts: list[jax.Array]) -> jax.Array:
    while len(parts) > 1:
        parts = [jnp.maximum(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def block_absmax(columns: Callable[[int, int], jax.Array], block: int) -> jax.Array:
    """Per block, the largest |value|, with `columns(lo, hi)` giving the values of
    block columns lo..hi−1 as (..., n_blocks, hi − lo).

    Same result as `jnp.max(jnp.abs(values), axis=-1)`, NaN included, but built
    from elementwise maxima of column groups, which XLA:CPU compiles into two
    plain vectorised loops: groups first, then the columns of the result. A
    reduction op would go to XLA:CPU's tiled reduction kernel, which pays a
    sweep for every elementwise op fused into it (measured 2x slower here, and
    10x on tensors of ≥ 8M elements when an op follows the reduction). Taking
    the columns from a callable lets the caller build each group from slices of
    its inputs, so that XLA need not materialise the whole `values` array. The
    maxima compare the bit patterns as integers, which orders non-negative
    floats (NaN above +Inf) in one instruction instead of three.
    """
    width = _split(block)

    def bits(x: jax.Array) -> jax.Array:
        x = jnp.abs(x)
        return jax.lax.bitcast_convert_type(x, jnp.dtype(f"int{8 * x.dtype.itemsize}"))

    full = block - block % width
    partial = _pairwise_max([bits(columns(j, j + width)) for j in range(0, full, width)])
    # A block that is not a multiple of the width: its last columns on their own.
    rest = [bits(columns(full, block))] if full < block else []
    top = _pairwise_max([partial[..., j] for j in range(width)]
                        + [r[..., j] for r in rest for j in range(block - full)])
    return jax.lax.bitcast_convert_type(top, jnp.dtype(f"float{8 * top.dtype.itemsize}"))


def safe_scales(scales: jax.Array) -> jax.Array:
    """Block scales with 0 replaced by 1, to divide by (an all-zero block stays zero)."""
    return jnp.where(scales > 0, scales, 1.0)


def encode_blocks(values: jax.Array, scales: jax.Array,
                  key: jax.Array | None = None) -> jax.Array:
    """uint8 codes of `values` (..., n_blocks, block) against the block `scales`."""
    # 1/scale first: 127²/scale would overflow for scales below 5e-35.
    return encode_squares(values * (1 / safe_scales(scales))[..., None] * LEVELS**2, key)


def decode_blocks(q: QuantizedArray) -> jax.Array:
    """float32 values of `q`, as (..., n_blocks, block) with the padded tails."""
    return decode_unit(q.codes) * q.scales[..., None]


def quantize(x: jax.Array, block: int = 256, key: jax.Array | None = None) -> QuantizedArray:
    """Quantises `x` (at least 1-D) blockwise, `block` being the block size limit
    (see `layout`); `key` switches on stochastic rounding.

    >>> import jax.numpy as jnp
    >>> x = jnp.linspace(-1.0, 1.0, 600).reshape(2, 300)
    >>> q = quantize(x)
    >>> q.codes.shape, q.scales.shape
    ((2, 2, 150), (2, 2))
    >>> bool(jnp.max(jnp.abs(dequantize(q, x.shape) - x)) < 0.01)
    True
    """
    values = blocks(x.astype(jnp.float32), block)
    scales = block_absmax(lambda lo, hi: values[..., lo:hi], values.shape[-1])
    return QuantizedArray(encode_blocks(values, scales, key), scales)


def unblock(values: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `blocks`: merges the block axes and drops the padded tails."""
    values = values.reshape(*values.shape[:-2], values.shape[-2] * values.shape[-1])
    if values.shape[-1] != shape[-1]:
        values = values[..., :shape[-1]]
    return values


def dequantize(q: QuantizedArray, shape: tuple[int, ...]) -> jax.Array:
    """float32 values of `q`, of `shape` (the padded tails are dropped)."""
    return unblock(decode_blocks(q), shape)


def zeros(shape: tuple[int, ...], block: int = 256) -> QuantizedArray:
    """The quantised zero tensor of `shape` (at least 1-D)."""
    n_blocks, width = layout(shape, block)
    return QuantizedArray(jnp.full((*shape[:-1], n_blocks, width), OFFSET, jnp.uint8),
                          jnp.zeros((*shape[:-1], n_blocks), jnp.float32))


def zeros_like(x: jax.Array, block: int = 256) -> QuantizedArray:
    """The quantised zero tensor for parameter `x` (at least 1-D), sharded like `x`.

    The layout is `zeros(x.shape, block)`'s whatever the sharding. When `x` is
    sharded (a concrete array with a `NamedSharding`, or a traced one of an
    Explicit-axis mesh), the codes and scales are placed by `codes_spec`; under
    a jitted `init` on an Auto-axis mesh, XLA places them.
    """
    sharding = getattr(x, "sharding", None)
    found = explicit_sharding(x)
    if found is None and isinstance(sharding, jax.sharding.NamedSharding) \
            and not isinstance(x, jax.core.Tracer):
        found = sharding.mesh, tuple(sharding.spec)
    if found is None:
        return zeros(x.shape, block)
    mesh, spec = found
    spec = codes_spec(spec, mesh, x.shape, block)
    scale_spec = scales_spec(spec, x.ndim)
    if explicit_sharding(x) is not None:
        codes = jnp.full_like(blocks(jnp.zeros_like(x, dtype=jnp.uint8), block, spec), OFFSET)
        return QuantizedArray(codes, jnp.zeros_like(codes[..., 0], dtype=jnp.float32))
    q = zeros(x.shape, block)
    return QuantizedArray(
            jax.device_put(q.codes, jax.sharding.NamedSharding(mesh, spec)),
            jax.device_put(q.scales, jax.sharding.NamedSharding(mesh, scale_spec)))


# --- the int8 momentum update ------------------------------------------------------

def momentum_update_plain(mu: QuantizedArray, g: jax.Array, beta1: jax.Array,
                          key: jax.Array | None, dt: jnp.dtype) -> QuantizedArray:
    """`quantize(β₁·dequantize(μ) + (1−β₁)·sanitize(g))` with `μ`'s block layout:
    the plain statement of `momentum_update`."""
    block = mu.codes.shape[-1]
    old = dequantize(mu, g.shape).astype(dt)
    g = g.astype(dt)
    mix = beta1 * old + (1 - beta1) * jnp.where(jnp.isfinite(g), g, 0)
    mix_blocks = blocks(mix, block)
    scales = jnp.max(jnp.abs(mix_blocks), axis=-1)
    return QuantizedArray(encode_blocks(mix_blocks, scales, key), scales.astype(jnp.float32))


def momentum_update(mu: QuantizedArray, g: jax.Array, beta1: jax.Array, count: jax.Array,
                    key: jax.Array | None, dt: jnp.dtype) -> QuantizedArray:
    """The int8 momentum `β₁·μ + (1−β₁)·g` (g sanitised), re-encoded in place.

    Contract: `momentum_update_plain`, the same statement written directly (the
    two agree to one code step; tested). What follows is how this one is fast.

    Three passes over the tensor, each a single vectorised XLA:CPU loop: block
    maxima of the mix (`quantize.block_absmax`, from slices of codes and g, no
    reduction op), the new codes, written over the old ones, and later the
    caller's update, which decodes the new codes. The mix is
    `k·q·|q| + (1−β₁)·g` with `k = β₁·scale/127²` per block.

    The work runs as the body of a `while_loop` that XLA cannot prove runs
    once. Written plainly, XLA fuses the encoder into every consumer of the new
    codes as well (on CPU, fusion ignores optimization barriers): the update
    would then re-read the old codes and g, and the old codes would be copied
    before being overwritten. The loop boundary makes the update read the
    stored codes instead (measured 10–30% faster than the plain form). β₁ rides in
    the loop carry, changed by a no-op `where`, so that XLA does not hoist the
    g term out of the loop into a full-size temporary; the rounding key rides
    along the same way, or the random numbers would be hoisted out as well.
    """
    block = mu.codes.shape[-1]
    g_blocks = blocks(g, block)  # the layout of `block` is mu's (see `quantize.layout`)

    def body(carry):
        i, codes, scales, b, key = carry
        k = (b / LEVELS**2 * scales.astype(dt))[..., None]

        def mix(codes, g_blocks):
            g_part = (1 - b) * g_blocks.astype(dt)  # finite iff g is (β₁ < 1)
            return (k * signed_squares(codes).astype(dt)
                    + jnp.where(jnp.isfinite(g_part), g_part, 0))

        new = block_absmax(lambda lo, hi: mix(codes[..., lo:hi], g_blocks[..., lo:hi]), block)
        codes = encode_blocks(mix(codes, g_blocks), new, key)
        return (i + 1, codes, new.astype(jnp.float32), jnp.where(i < 0, 2 * b, b),
                None if key is None else jnp.where(i < 0, key + 1, key))

    once = (count >= 0).astype(jnp.int32)  # 1 (the step count is never negative)
    _, codes, scales, _, _ = jax.lax.while_loop(lambda carry: carry[0] < once, body,
                                                (jnp.int32(0), mu.codes, mu.scales, beta1, key))
    return QuantizedArray(codes, scales)

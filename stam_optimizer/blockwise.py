"""Blockwise low-bit storage of a tensor: the block layout, the container of codes
and scales, and the codec interface that every storage format plugs into.

Blocks tile the last axis. A tensor of shape `(..., n)` is cut, row by row of
its last axis, into `n_blocks = ceil(n / block_size)` blocks of
`block = ceil(n / n_blocks)` elements (each row zero-padded at its end to
`n_blocks·block`, less than `n_blocks` extra elements), so the codes have
shape `(..., n_blocks, block)` and the scales `(..., n_blocks)`: the layout is
a function of the global shape and `block_size` alone (see `layout`). Each
block is stored as one float32 scale `s`, its largest |x|, and one code per
element for its value in units of `s`. How a value in [-1, 1] becomes a code
and back is a `Codec`; `square_int8.CODEC` (square-law, 8 bits) is the one
STAMLite's int8 state uses. Where the codes and scales of a sharded tensor
live is `state_sharding`'s.

`block_absmax` (the block scales) is written for XLA:CPU; its plain statement
is `plain_block_absmax`, and a test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from stam_optimizer import state_sharding


class QuantizedArray(NamedTuple):
    """Blockwise-quantised tensor of shape `(..., n)`: codes `(..., n_blocks, block)`
    uint8 and scales `(..., n_blocks)` float32 (see `layout`)."""

    codes: jax.Array
    scales: jax.Array


class Codec(NamedTuple):
    """A storage format for blockwise-quantised values: the values of a block,
    divided by its scale (so in [-1, 1]), to uint8 codes and back.

    Attributes:
      name: what the format is called (e.g. "square-int8").
      encode: `(unit_values, key) -> codes`, unit values of shape
        `(..., n_blocks, block)`; `key` (or None) switches on stochastic rounding.
      decode: `codes -> unit_values`, the inverse up to rounding.
      zero: the code of 0 (the padded tails and an all-zero block hold it).
      per_byte: codes per byte: 1, or 2 for 4-bit codes packed in pairs, whose
        `encode` gives `(..., n_blocks, ceil(block/2))` bytes and whose `decode`
        gives `(..., n_blocks, 2·ceil(block/2))` values (the padding dropped by
        `dequantize`). Default 1.
    """

    name: str
    encode: Callable[[jax.Array, jax.Array | None], jax.Array]
    decode: Callable[[jax.Array], jax.Array]
    zero: int
    per_byte: int = 1


def code_bytes(codec: Codec, block: int) -> tuple[int, int]:
    """`(width, byte)`: the bytes per block of `codec`'s codes, and the byte that
    holds its zero code in every slot."""
    if codec.per_byte == 1:
        return block, codec.zero
    return -(-block // 2), codec.zero | (codec.zero << 4)


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


def codes_spec(spec: tuple, mesh: jax.sharding.Mesh, shape: tuple[int, ...],
               block_size: int = 256, *,
               blocks: tuple[int, int] | None = None) -> jax.sharding.PartitionSpec:
    """Partition spec of the codes of a tensor of `shape` sharded by `spec` over `mesh`.

    The leading axes keep their entries. The last axis's entry goes to the
    block axis when the blocks tile every shard (`n_blocks` a multiple of the
    entry's devices and no padding); otherwise the codes are replicated along it.
    The scales take the spec without its last entry (`state_sharding.scales_spec`).
    `blocks`: the `(n_blocks, block)` of existing codes, instead of
    `layout(shape, block_size)`.
    """
    return state_sharding.codes_spec(spec, mesh, shape,
                                     layout(shape, block_size) if blocks is None else blocks)


def blocks(x: jax.Array, block_size: int = 256,
           spec: jax.sharding.PartitionSpec | None = None) -> jax.Array:
    """`x` (at least 1-D) as `(..., n_blocks, block)`, rows zero-padded (see `layout`).

    `spec`: the result's partition spec under an Explicit-axis mesh (`codes_spec`);
    without it, an Explicit-sharded `x` gets the spec `codes_spec` gives it.
    """
    n_blocks, block = layout(x.shape, block_size)
    if spec is None and (found := state_sharding.explicit_sharding(x)) is not None:
        spec = codes_spec(found[1], found[0], x.shape, block_size)
    pad = n_blocks * block - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return state_sharding.reshape(x, (*x.shape[:-1], n_blocks, block), spec)


def unblock(values: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `blocks`: merges the block axes and drops the padded tails."""
    values = values.reshape(*values.shape[:-2], values.shape[-2] * values.shape[-1])
    if values.shape[-1] != shape[-1]:
        values = values[..., :shape[-1]]
    return values


# --- block scales ------------------------------------------------------------------

def plain_block_absmax(values: jax.Array) -> jax.Array:
    """The contract of `block_absmax`, stated plainly: per block, the largest |value|
    of `values` (..., n_blocks, block), NaN when the block holds one."""
    return jnp.max(jnp.abs(values), axis=-1)


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
    """`plain_block_absmax` of the values whose block columns lo..hi−1 are
    `columns(lo, hi)`, as (..., n_blocks, hi − lo).

    Contract: `plain_block_absmax(values)`, NaN included (tested). What
    follows is how this one is fast on XLA:CPU (measured with jax 0.10.x; on
    another backend or version the plain statement may be as fast, and this
    function can then return it). The maxima are built from elementwise maxima
    of column groups, which XLA:CPU compiles into two plain vectorised loops:
    groups first, then the columns of the result. A reduction op would go to
    XLA:CPU's tiled reduction kernel, which pays a sweep for every elementwise
    op fused into it (measured 2x slower here, and 10x on tensors of ≥ 8M
    elements when an op follows the reduction). Taking the columns from a
    callable lets the caller build each group from slices of its inputs, so
    that XLA need not materialise the whole `values` array. The maxima compare
    the bit patterns as integers, which orders non-negative floats (NaN above
    +Inf) in one instruction instead of three.
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


# --- stochastic rounding -----------------------------------------------------------

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
    slower on XLA:CPU (jax 0.10.x). Reproducible for a given key; 24 random
    bits per value.
    """
    seed = _mix32(jax.random.bits(key, (), jnp.uint32))
    # seed·size + flat index, built from per-axis iotas starting at the seed: no
    # key-free part is left for XLA to hoist out of a loop and store.
    index = jnp.broadcast_to(seed, shape)
    for axis, n in enumerate(shape):
        index = index * jnp.uint32(n) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    bits = _mix32(index)
    return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


# --- any codec: encode, decode, the zero tensor ------------------------------------

def encode_blocks(values: jax.Array, scales: jax.Array, codec: Codec,
                  key: jax.Array | None = None) -> jax.Array:
    """The `codec`'s codes of `values` (..., n_blocks, block) against the block `scales`."""
    # 1/scale first: a codec's large factor over the scale could overflow for tiny scales.
    # Above 2¹⁰⁰ both sides are brought down by 2⁻⁶⁴ first, or 1/scale would be a
    # subnormal that XLA:CPU flushes to 0 (every code would then be 0's).
    scales = safe_scales(scales)
    down = jnp.where(scales > 2.0**100, 2.0**-64, 1.0).astype(scales.dtype)
    return codec.encode((values * down[..., None]) * (1 / (scales * down))[..., None], key)


def decode_blocks(q: QuantizedArray, codec: Codec) -> jax.Array:
    """float32 values of `q`, as (..., n_blocks, block) with the padded tails."""
    return codec.decode(q.codes) * q.scales.astype(jnp.float32)[..., None]


def round_up_scales(scales: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Non-negative float32 block `scales` stored in `dtype`: each the smallest
    `dtype` value at or above it, so that every |x| of its block stays within the
    stored scale (a bfloat16 scale is at most 2⁻⁷ above the float32 one). A scale
    beyond `dtype`'s largest finite value saturates there (the block's largest
    entries are then clipped to it); +Inf and NaN stay as they are (the block
    decodes to non-finite values, as in float32). float32 returns `scales`.
    (bfloat16 has float32's exponent range: a float32 subnormal scale, which
    XLA:CPU flushes to 0 anyway, stays 0.)"""
    dtype = jnp.dtype(dtype)
    if dtype == scales.dtype:
        return scales
    big = jnp.finfo(dtype).max
    finite = jnp.minimum(scales, big.astype(scales.dtype))
    nearest = jnp.where(jnp.isinf(scales), scales, finite).astype(dtype)
    bits = jax.lax.bitcast_convert_type(nearest, jnp.dtype(f"uint{8 * dtype.itemsize}"))
    up = jax.lax.bitcast_convert_type(bits + 1, dtype)
    return jnp.where(nearest.astype(scales.dtype) < jnp.minimum(scales, big), up, nearest)


def quantize(x: jax.Array, codec: Codec, block: int = 256, key: jax.Array | None = None,
             scale_dtype: jnp.dtype = jnp.float32) -> QuantizedArray:
    """Quantises `x` (at least 1-D) blockwise with `codec`, `block` being the block
    size limit (see `layout`); `key` switches on stochastic rounding; the scales are
    stored in `scale_dtype` (`round_up_scales`)."""
    values = blocks(x.astype(jnp.float32), block)
    scales = round_up_scales(block_absmax(lambda lo, hi: values[..., lo:hi], values.shape[-1]),
                             scale_dtype)
    return QuantizedArray(encode_blocks(values, scales.astype(jnp.float32), codec, key), scales)


def dequantize(q: QuantizedArray, shape: tuple[int, ...], codec: Codec) -> jax.Array:
    """float32 values of `q`, of `shape` (the padded tails are dropped)."""
    values = decode_blocks(q, codec)
    block = -(-shape[-1] // values.shape[-2]) if shape[-1] else values.shape[-1]
    if values.shape[-1] != block:  # packed codes: a padding code per odd block
        values = values[..., :block]
    return unblock(values, shape)


def zeros(shape: tuple[int, ...], codec: Codec, block: int = 256) -> QuantizedArray:
    """The quantised zero tensor of `shape` (at least 1-D)."""
    n_blocks, width = layout(shape, block)
    width, byte = code_bytes(codec, width)
    return QuantizedArray(jnp.full((*shape[:-1], n_blocks, width), byte, jnp.uint8),
                          jnp.zeros((*shape[:-1], n_blocks), jnp.float32))


def zeros_like(x: jax.Array, codec: Codec, block: int = 256) -> QuantizedArray:
    """The quantised zero tensor for parameter `x` (at least 1-D), sharded like `x`.

    The layout is `zeros(x.shape, codec, block)`'s whatever the sharding. When
    `x` is sharded (a concrete array with a `NamedSharding`, or a traced one of
    an Explicit-axis mesh), the codes and scales are placed by `codes_spec`;
    under a jitted `init` on an Auto-axis mesh, XLA places them.
    """
    sharding = getattr(x, "sharding", None)
    found = state_sharding.explicit_sharding(x)
    if found is None and isinstance(sharding, jax.sharding.NamedSharding) \
            and not isinstance(x, jax.core.Tracer):
        found = sharding.mesh, tuple(sharding.spec)
    if found is None:
        return zeros(x.shape, codec, block)
    mesh, spec = found
    spec = codes_spec(spec, mesh, x.shape, block)
    scale_spec = state_sharding.scales_spec(spec, x.ndim)
    if state_sharding.explicit_sharding(x) is not None:
        codes = blocks(jnp.zeros_like(x, dtype=jnp.uint8), block, spec)
        width, byte = code_bytes(codec, codes.shape[-1])
        codes = jnp.full_like(codes[..., :width], byte)
        return QuantizedArray(codes, jnp.zeros_like(codes[..., 0], dtype=jnp.float32))
    q = zeros(x.shape, codec, block)
    return QuantizedArray(
            jax.device_put(q.codes, jax.sharding.NamedSharding(mesh, spec)),
            jax.device_put(q.scales, jax.sharding.NamedSharding(mesh, scale_spec)))

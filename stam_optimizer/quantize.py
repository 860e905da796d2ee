"""Blockwise 8-bit storage of a momentum buffer (float8 e4m3 codes, float32 scales).

A tensor is flattened, padded to whole blocks of `block` elements, and each
block stored as one float32 scale (its largest |x|) and one byte per element:
the element divided by the scale, times 448 (the largest e4m3 value), cast to
float8 e4m3 and kept as its uint8 bit pattern. Zero is exact, a block's largest
entry is exact, an all-zero block has scale 0 and decodes to zeros. Relative
rounding error is at most 2⁻⁴ (3 mantissa bits), absolute at most
scale·2⁻¹⁰/448 near zero (e4m3 subnormals).

Stochastic rounding (optional) rounds up or down to the neighbouring codes with
probabilities that make the stored value unbiased, so a high-β₁ momentum keeps
moving under small increments that nearest rounding would discard.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

E4M3_MAX = 448.0


class QuantizedArray(NamedTuple):
    """8-bit blockwise-quantised tensor: codes (n_blocks, block) uint8, scales (n_blocks,)."""

    codes: jax.Array
    scales: jax.Array


def _e4m3_ulp(y: jax.Array) -> jax.Array:
    """Spacing of the e4m3 grid at |y| (normals: 2^(e−3); subnormals: 2⁻⁹)."""
    e = jnp.floor(jnp.log2(jnp.maximum(jnp.abs(y), 2.0**-6)))
    return jnp.exp2(e - 3)


def quantize(x: jax.Array, block: int = 256, key: jax.Array | None = None) -> QuantizedArray:
    """Quantises `x` (any shape) blockwise; `key` switches on stochastic rounding."""
    flat = x.reshape(-1).astype(jnp.float32)
    pad = (-flat.size) % block
    blocks = jnp.pad(flat, (0, pad)).reshape(-1, block)
    scales = jnp.max(jnp.abs(blocks), axis=1)
    safe = jnp.where(scales > 0, scales, 1.0)
    y = blocks / safe[:, None] * E4M3_MAX
    if key is not None:
        ulp = _e4m3_ulp(y)
        lower = jnp.floor(y / ulp) * ulp  # a grid point at or below y
        y = lower + ulp * (jax.random.uniform(key, y.shape) < (y - lower) / ulp)
        y = jnp.clip(y, -E4M3_MAX, E4M3_MAX)
    codes = jax.lax.bitcast_convert_type(y.astype(jnp.float8_e4m3fn), jnp.uint8)
    return QuantizedArray(codes, scales)


def dequantize(q: QuantizedArray, shape: tuple[int, ...]) -> jax.Array:
    """float32 values of `q`, reshaped to `shape` (the padded tail is dropped)."""
    y = jax.lax.bitcast_convert_type(q.codes, jnp.float8_e4m3fn).astype(jnp.float32)
    flat = (y / E4M3_MAX * q.scales[:, None]).reshape(-1)  # the block maximum decodes exactly
    return flat[:math.prod(shape)].reshape(shape)


def zeros(shape: tuple[int, ...], block: int = 256) -> QuantizedArray:
    """The quantised zero tensor of `shape`."""
    n_blocks = -(-math.prod(shape) // block)
    return QuantizedArray(jnp.zeros((n_blocks, block), jnp.uint8),
                          jnp.zeros((n_blocks,), jnp.float32))

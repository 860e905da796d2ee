"""STAMLite's int8 momentum storage: the public names.

`state_dtype="int8"` keeps each large enough momentum tensor as a
`QuantizedArray`: blocks tiling the last axis (`layout`), one float32 scale per
block (its largest |x|) and one byte per element in the square-law code
(decodes to `s·sign(q)·(q/127)²` for q in [-127, 127]; at most 0.8% of the block
maximum off at the top, finer towards zero). Sharded tensors keep the param's
sharding on the leading axes (`codes_spec`, `scales_spec`).

This module gathers what users and checkpointing code need, with the square-law
codec bound. The pieces live in their own modules: the block layout, the codes
container and the `Codec` interface in `blockwise`, the square-law codec and its
fused momentum update in `square_int8`, and the partition specs in
`state_sharding`.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.linspace(-1.0, 1.0, 600).reshape(2, 300)
  >>> q = quantize(x)
  >>> q.codes.shape, q.scales.shape
  ((2, 2, 150), (2, 2))
  >>> bool(jnp.max(jnp.abs(dequantize(q, x.shape) - x)) < 0.01)
  True
"""

from __future__ import annotations

import jax

from stam_optimizer import blockwise, square_int8
from stam_optimizer.blockwise import QuantizedArray, codes_spec, layout
from stam_optimizer.state_sharding import scales_spec

__all__ = ["QuantizedArray", "codes_spec", "dequantize", "layout", "quantize", "scales_spec",
           "zeros", "zeros_like"]


def quantize(x: jax.Array, block: int = 256, key: jax.Array | None = None) -> QuantizedArray:
    """Quantises `x` (at least 1-D) blockwise in the square-law int8 code, `block`
    being the block size limit (see `layout`); `key` switches on stochastic rounding."""
    return blockwise.quantize(x, square_int8.CODEC, block, key)


def dequantize(q: QuantizedArray, shape: tuple[int, ...]) -> jax.Array:
    """float32 values of the square-law int8 `q`, of `shape` (padded tails dropped)."""
    return blockwise.dequantize(q, shape, square_int8.CODEC)


def zeros(shape: tuple[int, ...], block: int = 256) -> QuantizedArray:
    """The square-law int8 zero tensor of `shape` (at least 1-D)."""
    return blockwise.zeros(shape, square_int8.CODEC, block)


def zeros_like(x: jax.Array, block: int = 256) -> QuantizedArray:
    """The square-law int8 zero tensor for parameter `x`, sharded like `x`
    (see `blockwise.zeros_like`)."""
    return blockwise.zeros_like(x, square_int8.CODEC, block)

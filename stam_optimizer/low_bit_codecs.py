"""8-bit and 4-bit codecs for blockwise optimizer state: signed power maps for
moments that change sign, and non-negative maps without a zero code for second
moments.

Every codec plugs into `blockwise.Codec`: it stores a block's values divided by
the block scale `s` (their largest |x|, so in [-1, 1]) and decodes them back.

Signed maps (`signed(bits, power)`), for first moments. With `L = 2^(bits−1) − 1`
(127 at 8 bits, 7 at 4 bits), a value `x` is stored as the integer
`q = round(L·sign(x)·|x/s|^(1/p))` in [−L, L] and decodes to

    x̂ = s·sign(q)·(|q|/L)^p.

Zero is exact, the block maximum is exact, and the error is at most half a
code step: `|x̂ − x| ≤ s·(p/2)·(r + ½)^(p−1)/L^p` with `r = L·|x/s|^(1/p)` — at
most about `s·p/(2L)` at the top, finer towards zero. `SIGNED8 = signed(8, 2)` is
`square_int8.CODEC` (STAMLite's int8 μ); `SIGNED4 = signed(4, 2)` is its 4-bit
form. Values below `s/(2L)^p` round to 0 (a first moment may: it is not
divided by).

Non-negative maps (`nonnegative(bits, power)`), for second moments `v ≥ 0`
that an update divides by. With `L = 2^bits` (256 or 16) levels, `v` is stored
as `q = round(L·(v/s)^(1/p) − 1)` in [0, L−1] and decodes to

    v̂ = s·((q + 1)/L)^p,

so no code of a block with `s > 0` decodes to 0: the smallest value is
`s/L^p`, and a positive `v` below it is stored as that (a smaller step, never a
division by ~0). A map with a zero code rounds tiny positive `v` to 0, which
turns `m/(√v̂ + ε)` into `m/ε` — the zero-point problem that Li et al. (2023)
found behind most low-bit Adam divergences. Only an all-zero block (scale 0)
decodes to zeros. `NONNEG8 = nonnegative(8, 4)`, `NONNEG4 = nonnegative(4, 4)`:
with p = 4, √v̂ = √s·((q+1)/L)² is the signed square law on √v, which keeps
the small entries that `1/√v̂` — what Adam's update divides by — is most
sensitive to (measured: half the error in `1/(√v + ε)` of p = 2 at either
width, docs/memory.md). The error is at most `s·(p/2)·(r + ½)^(p−1)/L^p` with
`r = L·(v/s)^(1/p)` (half a code step, by the mean value theorem), plus
`s/L^p` for the entries below the smallest level.

4-bit codes are packed two per byte: the first half of a block's codes in the
low nibbles, the second half in the high ones (an odd block gets one padding
code), so a block of `b` elements takes `ceil(b/2)` bytes.

Stochastic rounding (optional, `key` not None) picks one of the two
neighbouring codes with the probabilities that make the decoded value unbiased,
the random numbers coming from `blockwise.uniform`.

The maps and block sizes were chosen by measured round-trip error on momentum
and second-moment tensors of a small GPT trained with AdamW (docs/memory.md,
`tools/low_bit_codec_table.py`).

References:
  Dettmers et al. 2022, 8-bit Optimizers via Block-wise Quantization, arXiv:2110.02861.
  Li et al. 2023, Memory Efficient Optimizers with 4-bit States, arXiv:2309.01507.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stam_optimizer import square_int8
from stam_optimizer.blockwise import Codec, uniform

__all__ = ["BLOCK_SIZE", "NONNEG4", "NONNEG8", "SIGNED4", "SIGNED8", "codec", "nonnegative",
           "pack4", "signed", "unpack4", "unpack4_plain"]


def _check_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")


def pack4(codes: jax.Array) -> jax.Array:
    """4-bit codes `(..., b)` (values < 16) as bytes `(..., ceil(b/2))`: the first
    half in the low nibbles, the second half in the high ones (an odd `b` is padded
    with a code 0 at the end)."""
    b = codes.shape[-1]
    w = -(-b // 2)
    lo, hi = codes[..., :w], codes[..., w:]
    if hi.shape[-1] < w:
        hi = jnp.concatenate([hi, jnp.zeros_like(lo[..., :1])], axis=-1)
    return lo | (hi << 4)


def unpack4_plain(packed: jax.Array) -> jax.Array:
    """The contract of `unpack4`, stated plainly: the low nibbles, then the high ones."""
    return jnp.concatenate([packed & 15, packed >> 4], axis=-1)


def unpack4(packed: jax.Array) -> jax.Array:
    """The codes `(..., 2w)` of bytes `(..., w)` packed by `pack4` (with the padding code).

    Contract: `unpack4_plain` (tested). Written as a broadcast to `(..., 2, w)`,
    a shift by 0 or 4 and a reshape, which XLA:CPU fuses into the decoder's
    consumers; the concatenation is not fused there and materialises the unpacked
    codes, one byte an element per moment (measured on XLA:CPU, jax 0.10.2).
    The price is speed: each consumer unpacks again, with reshape index arithmetic
    (`quantized_state(adamw, 4)` update on `stam-bench speed --trees square8`:
    ~72 → ~94 ms, 7.5 → 10.2 times optax.adamw; 8-bit is unaffected).
    """
    shifts = jnp.array([[0], [4]], jnp.uint8)
    both = (packed[..., None, :] >> shifts) & 15
    return both.reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def _root(a: jax.Array, power: float) -> jax.Array:
    """`a ** (1/power)` for `a` ≥ 0, by square roots where `power` is 2 or 4: a general
    `pow` is an exp and a log per element, which made the non-negative encoder the
    slowest part of `quantized_state`'s update (8 bits: 1.9x AdamW's update time,
    0.6x with the roots; XLA:CPU, jax 0.10.2). The results agree to float32
    rounding; the codecs' error bounds are stated for this function."""
    if power == 1:
        return a
    if power == 2:
        return jnp.sqrt(a)
    if power == 4:
        return jnp.sqrt(jnp.sqrt(a))
    return a ** (1.0 / power)


def _round(r: jax.Array, levels_value, key: jax.Array | None, a: jax.Array) -> jax.Array:
    """Integer level of `r` (the value in level units, ≥ 0): nearest, or with `key`
    stochastic between `floor(r)` and `floor(r)+1` so that the decoded value
    `levels_value(q)` is unbiased for `a`."""
    if key is None:
        return jnp.round(r)
    lo = jnp.floor(r)
    v_lo, v_hi = levels_value(lo), levels_value(lo + 1)
    return lo + (uniform(key, r.shape) * (v_hi - v_lo) < a - v_lo)


def signed(bits: int, power: float) -> Codec:
    """The signed power map `x̂ = s·sign(q)·(|q|/L)^power`, `L = 2^(bits−1) − 1`,
    code `q + L + 1` (code 0 unused); 4-bit codes are packed two per byte."""
    _check_bits(bits)
    if bits == 8 and power == 2:
        return square_int8.CODEC
    levels, offset = 2 ** (bits - 1) - 1, 2 ** (bits - 1)

    def level_value(q):
        return (q * (1.0 / levels)) ** power

    def encode(unit: jax.Array, key: jax.Array | None = None) -> jax.Array:
        a = jnp.minimum(jnp.abs(unit), 1.0)
        q = _round(levels * _root(a, power), level_value, key, a)
        q = jnp.clip(q.astype(jnp.int32), 0, levels)  # a NaN gives some valid code
        codes = (jnp.where(unit < 0, -q, q) + offset).astype(jnp.uint8)
        return pack4(codes) if bits == 4 else codes

    def decode(codes: jax.Array) -> jax.Array:
        codes = unpack4(codes) if bits == 4 else codes
        q = (codes.astype(jnp.int32) - offset).astype(jnp.float32)
        return jnp.sign(q) * level_value(jnp.abs(q))

    return Codec(name=f"signed{bits}-p{power:g}", encode=encode, decode=decode, zero=offset,
                 per_byte=8 // bits)


def nonnegative(bits: int, power: float) -> Codec:
    """The non-negative map `v̂ = s·((q+1)/L)^power`, `L = 2^bits`, code q in [0, L−1]:
    no code decodes to 0 in a block of scale > 0; negative inputs are stored as the
    smallest level. 4-bit codes are packed two per byte."""
    _check_bits(bits)
    levels = 2**bits

    def level_value(q):  # q counted from 1 (the code + 1)
        return (q * (1.0 / levels)) ** power

    def encode(unit: jax.Array, key: jax.Array | None = None) -> jax.Array:
        a = jnp.clip(unit, 0.0, 1.0)
        q = _round(levels * _root(a, power), level_value, key, a)
        q = jnp.clip(q.astype(jnp.int32), 1, levels) - 1
        codes = q.astype(jnp.uint8)
        return pack4(codes) if bits == 4 else codes

    def decode(codes: jax.Array) -> jax.Array:
        codes = unpack4(codes) if bits == 4 else codes
        return level_value(codes.astype(jnp.float32) + 1)

    return Codec(name=f"nonneg{bits}-p{power:g}", encode=encode, decode=decode, zero=0,
                 per_byte=8 // bits)


SIGNED8 = signed(8, 2)
SIGNED4 = signed(4, 2)
NONNEG8 = nonnegative(8, 4)
NONNEG4 = nonnegative(4, 4)

# Default block size per width (largest elements per float32 scale): see docs/memory.md
# (lower round-trip error than 256, and at 256 XLA:CPU materialises the float state
# in `quantized_state`'s update instead of fusing it).
BLOCK_SIZE = {8: 128, 4: 128}


def codec(kind: str, bits: int) -> Codec:
    """The default codec of `kind` ("signed" or "nonnegative") at `bits` (4 or 8)."""
    _check_bits(bits)
    if kind == "signed":
        return SIGNED8 if bits == 8 else SIGNED4
    if kind == "nonnegative":
        return NONNEG8 if bits == 8 else NONNEG4
    raise ValueError(f"codec kind must be 'signed' or 'nonnegative', got {kind!r}")

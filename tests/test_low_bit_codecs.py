"""The 8- and 4-bit codecs of `low_bit_codecs` against a float64 NumPy reference.

Reference (`_ref_roundtrip`): the maps of the module docstring evaluated in
float64, nearest rounding (signed p = 2, non-negative p = 4). Stated bounds, per
element of a block of scale s, with r the value in level units (`L·|x/s|^(1/p)`,
|q − r| ≤ ½):

* |x̂ − x| = s·|q^p − r^p|/L^p ≤ s·(p/2)·(r + ½)^(p−1)/L^p (mean value theorem);
* non-negative: below the smallest level (r < ½) v̂ = s/L^p (never 0), so
  add s/L^p; v̂ ≥ s/L^p > 0 whenever s > 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stam_optimizer import blockwise, low_bit_codecs, square_int8
from stam_optimizer.blockwise import Codec

SIGNED = {"signed8": (low_bit_codecs.SIGNED8, 8), "signed4": (low_bit_codecs.SIGNED4, 4)}
NONNEG = {"nonneg8": (low_bit_codecs.NONNEG8, 8), "nonneg4": (low_bit_codecs.NONNEG4, 4)}


def _levels(bits: int, signed: bool) -> int:
    return 2 ** (bits - 1) - 1 if signed else 2**bits


def _ref_roundtrip(x: np.ndarray, bits: int, signed: bool, block: int) -> np.ndarray:
    """float64 reference: blocks of the last axis (`blockwise.layout`), scale = max|x|,
    power-2 map, nearest rounding."""
    x = np.asarray(x, np.float64)
    n_blocks, width = blockwise.layout(x.shape, block)
    pad = n_blocks * width - x.shape[-1]
    xb = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], n_blocks, width)
    s = np.max(np.abs(xb), axis=-1, keepdims=True)
    safe = np.where(s > 0, s, 1.0)
    L = _levels(bits, signed)
    if signed:
        q = np.clip(np.round(L * np.sqrt(np.abs(xb) / safe)), 0, L)
        out = s * np.sign(xb) * (q / L) ** 2
    else:
        q = np.clip(np.round(L * (np.clip(xb, 0, None) / safe) ** 0.25), 1, L)
        out = s * (q / L) ** 4
    return out.reshape(*x.shape[:-1], -1)[..., :x.shape[-1]]


def _roundtrip(x, codec: Codec, block: int, key=None) -> np.ndarray:
    x = jnp.asarray(x, jnp.float32)
    q = blockwise.quantize(x, codec, block, key)
    return np.asarray(blockwise.dequantize(q, x.shape, codec), np.float64)


def _scales(x: np.ndarray, block: int) -> np.ndarray:
    """Each element's block scale, element-shaped."""
    n_blocks, width = blockwise.layout(x.shape, block)
    pad = n_blocks * width - x.shape[-1]
    xb = np.pad(np.abs(x), [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    xb = xb.reshape(*x.shape[:-1], n_blocks, width)
    s = np.broadcast_to(np.max(xb, axis=-1, keepdims=True), xb.shape)
    return s.reshape(*x.shape[:-1], -1)[..., :x.shape[-1]]


def _bound(x: np.ndarray, s: np.ndarray, L: int, signed: bool) -> np.ndarray:
    p = 2 if signed else 4
    r = L * (np.abs(x) / np.where(s > 0, s, 1)) ** (1 / p)
    return s * (p / 2) * (r + 0.5) ** (p - 1) / L**p + (0 if signed else s / L**p)


def _tensor(shape, seed=0, heavy=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, size=shape) if heavy else rng.normal(size=shape)
    return (x * np.exp(rng.normal(size=shape[:-1] + (1,)))).astype(np.float32)


@pytest.mark.parametrize("block", [32, 256])
@pytest.mark.parametrize("name", [*SIGNED, *NONNEG])
def test_codec_matches_float64_reference_within_its_bound(name, block):
    codec, bits = {**SIGNED, **NONNEG}[name]
    signed = name in SIGNED
    x = _tensor((6, 999))  # odd last axis: padded rows, odd blocks
    x = x if signed else x**2
    got = _roundtrip(x, codec, block)
    ref = _ref_roundtrip(x, bits, signed, block)
    x64 = x.astype(np.float64)
    s = _scales(x64, block)
    bound = _bound(x64, s, _levels(bits, signed), signed)
    assert np.all(np.abs(got - x64) <= bound * (1 + 1e-5) + 1e-30)
    # The same codes as the float64 reference, but at float32 ties of the rounding.
    same = np.isclose(got, ref, rtol=1e-5, atol=0)
    assert same.mean() > 0.999, same.mean()
    # Block maxima are exact.
    top = np.abs(x64) == s
    np.testing.assert_allclose(got[top], x64[top], rtol=1e-6)


def test_signed8_is_the_int8_square_law():
    assert low_bit_codecs.SIGNED8 is square_int8.CODEC


@pytest.mark.parametrize("name", [*SIGNED, *NONNEG])
def test_all_zero_blocks_and_padding_decode_to_zero(name):
    codec, _ = {**SIGNED, **NONNEG}[name]
    x = np.zeros((3, 301), np.float32)
    x[1, :100] = np.linspace(0.1, 1.0, 100)  # one nonzero block; the rest all-zero
    got = _roundtrip(x, codec, 128)
    assert np.all(got[0] == 0) and np.all(got[2] == 0) and np.all(got[1, 128:] == 0)
    zeros = blockwise.zeros((3, 301), codec, 128)
    assert zeros.codes.shape[-1] == (101 if codec.per_byte == 1 else 51)  # blocks of 101
    np.testing.assert_array_equal(np.asarray(blockwise.dequantize(zeros, (3, 301), codec)), 0)


@pytest.mark.parametrize("n", [1, 7, 129])
def test_4bit_codes_are_packed_two_per_byte(n):
    codes = jnp.asarray(np.random.default_rng(n).integers(0, 16, (3, 2, n)), jnp.uint8)
    packed = low_bit_codecs.pack4(codes)
    assert packed.shape == (3, 2, -(-n // 2)) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(low_bit_codecs.unpack4(packed))[..., :n],
                                  np.asarray(codes))
    # Through a codec: a tensor of an odd last axis round-trips at half a byte an element.
    x = jnp.linspace(-1.0, 1.0, 3 * n).reshape(3, n)
    q = blockwise.quantize(x, low_bit_codecs.SIGNED4, 64)
    assert q.codes.shape == (3, *blockwise.layout((3, n), 64)[:1], -(-blockwise.layout((3, n),
                                                                                     64)[1] // 2))
    assert blockwise.dequantize(q, x.shape, low_bit_codecs.SIGNED4).shape == x.shape


@pytest.mark.parametrize("shape", [(1,), (3, 2, 64), (5, 7, 1), (4, 33)])
def test_unpack4_is_its_plain_statement(shape):
    packed = jnp.asarray(np.random.default_rng(len(shape)).integers(0, 256, shape), jnp.uint8)
    for f in (lambda p: p, jax.jit):
        got = f(low_bit_codecs.unpack4)(packed)
        assert got.dtype == jnp.uint8
        np.testing.assert_array_equal(np.asarray(got),
                                      np.asarray(low_bit_codecs.unpack4_plain(packed)))


@pytest.mark.parametrize("name", [*SIGNED, *NONNEG])
def test_huge_and_tiny_values(name):
    codec, bits = {**SIGNED, **NONNEG}[name]
    signed = name in SIGNED
    for top in (3e38, 1e30, 1e-30, 1e-38, 1e-44):  # the last two are float32 subnormal
        x = (np.linspace(0.0, 1.0, 256) * np.float32(top)).astype(np.float32)
        x = np.where(np.arange(256) % 2, -x, x) if signed else x
        got = _roundtrip(x[None], codec, 256)[0]
        assert np.all(np.isfinite(got)), top
        x64 = x.astype(np.float64)
        s = np.max(np.abs(x64))
        bound = _bound(x64, s, _levels(bits, signed), signed)
        if top >= 1e-30:  # normal scales: the stated bound
            assert np.all(np.abs(got - x64) <= bound * (1 + 1e-5)), top
        else:  # subnormal scales lose relative precision in 1/s: still finite, ≤ s
            assert np.all(np.abs(got) <= s * (1 + 1e-6)), top


def _no_zero_point(codec: Codec, block: int = 128) -> None:
    """Asserts that no positive value decodes to 0 next to a block maximum up to
    1e12 times larger (the zero-point property a divided-by second moment needs)."""
    v = np.logspace(-12, 0, 128).astype(np.float32)[None]
    got = _roundtrip(v, codec, block)
    assert np.all(got > 0), f"{codec.name}: {np.sum(got <= 0)} positive values decode to 0"


@pytest.mark.parametrize("name", NONNEG)
def test_second_moment_maps_never_decode_a_positive_value_to_zero(name):
    _no_zero_point(NONNEG[name][0])


def test_zero_point_check_fails_on_a_linear_map_with_a_zero_code():
    # A deliberately broken second-moment codec: linear 4-bit with code 0 = 0.
    broken = Codec("linear4-with-zero",
                   encode=lambda u, key=None: jnp.round(jnp.clip(u, 0, 1) * 15).astype(jnp.uint8),
                   decode=lambda c: c.astype(jnp.float32) / 15, zero=0)
    with pytest.raises(AssertionError, match="decode to 0"):
        _no_zero_point(broken)
    with pytest.raises(AssertionError, match="decode to 0"):  # the signed maps have one too
        _no_zero_point(low_bit_codecs.SIGNED4)


@pytest.mark.parametrize("name", [*SIGNED, *NONNEG])
def test_stochastic_rounding_is_unbiased(name):
    codec, bits = {**SIGNED, **NONNEG}[name]
    x = np.concatenate([[1.0], np.linspace(0.05, 0.95, 63)]).astype(np.float32)[None]
    x = np.where(np.arange(64) % 3 == 1, -x, x) if name in SIGNED else x
    n = 400
    draw = jax.jit(jax.vmap(lambda k: blockwise.dequantize(
        blockwise.quantize(jnp.asarray(x), codec, 64, k), x.shape, codec)[0]))
    runs = np.asarray(draw(jax.vmap(jax.random.PRNGKey)(jnp.arange(n))), np.float64)
    # Each element rounds to one of two codes `gap` apart: the mean of n draws has
    # a standard deviation of at most gap/(2√n); allow 4 of them.
    p, L = (2, _levels(bits, True)) if name in SIGNED else (4, _levels(bits, False))
    r = np.floor(L * np.abs(x[0].astype(np.float64)) ** (1 / p))
    gap = ((r + 1) ** p - r**p) / L**p
    err_sr = np.abs(runs.mean(0) - x[0])
    assert np.all(err_sr <= 4 * gap / (2 * np.sqrt(n)) + 1e-6)
    nearest = _roundtrip(x, codec, 64)[0]
    assert np.mean(err_sr) < 0.5 * np.mean(np.abs(nearest - x[0]))


def test_bits_are_validated():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        low_bit_codecs.signed(2, 2)
    with pytest.raises(ValueError, match="codec kind"):
        low_bit_codecs.codec("positive", 8)


def test_bfloat16_scales_are_the_smallest_bfloat16_at_or_above_the_float32_scale():
    rng = np.random.default_rng(3)
    s = np.concatenate([rng.lognormal(0.0, 20.0, 4000), [0.0, 1.0, 1e-38, 3.0e38, 3.4e38]])
    s = s.astype(np.float32)
    got = np.asarray(blockwise.round_up_scales(jnp.asarray(s), jnp.bfloat16), np.float64)
    big = float(jnp.finfo(jnp.bfloat16).max)
    want = np.minimum(s.astype(np.float64), big)
    tiny = float(jnp.finfo(jnp.float32).tiny)
    want[want < tiny] = 0.0  # XLA:CPU flushes float32 subnormals to zero
    assert np.all(got >= want)
    # the next bfloat16 down (one ulp less) would be below the scale: smallest at or above
    below = np.asarray(jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(jnp.asarray(got, jnp.bfloat16), jnp.uint16) - 1,
        jnp.bfloat16), np.float64)
    pos = want > 0
    assert np.all(below[pos] < want[pos])
    assert np.all(got <= want * (1 + 2.0**-7))
    assert np.all(got[want == 0] == 0.0)
    odd = blockwise.round_up_scales(jnp.asarray([np.nan, np.inf], jnp.float32), jnp.bfloat16)
    assert np.isnan(np.asarray(odd[0], np.float32)) and np.asarray(odd[1], np.float32) == np.inf


def test_bfloat16_scales_never_clip_a_block():
    """Every value of a block decodes within the codec's bound of its own scale: the
    stored bfloat16 scale is never below the block's largest |x|."""
    x = jnp.asarray(np.random.default_rng(4).normal(size=(16, 256)) * 1.37, jnp.float32)
    q = blockwise.quantize(x, low_bit_codecs.SIGNED8, 128, scale_dtype=jnp.bfloat16)
    assert q.scales.dtype == jnp.bfloat16
    top = jnp.max(jnp.abs(x.reshape(16, 2, 128)), axis=-1)
    assert bool(jnp.all(q.scales.astype(jnp.float32) >= top))
    back = blockwise.dequantize(q, x.shape, low_bit_codecs.SIGNED8)
    err = np.abs(np.asarray(back, np.float64) - np.asarray(x, np.float64))
    s = np.repeat(np.asarray(q.scales, np.float64), 128, axis=-1)
    bound = np.sqrt(np.abs(np.asarray(x, np.float64)) * s) / 127 + s / (4 * 127**2)
    assert np.all(err <= bound * (1 + 1e-6))

"""The 8-bit blockwise momentum storage and STAMLite with state_dtype="int8" (and its
4-bit form, "int4")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stam_optimizer as so
from stam_optimizer import blockwise, quantize, square_int8
from stam_optimizer.stam_lite import MOMENTUM_CODECS


def _x(shape=(1000, 37), seed=0, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


def _layout(n, block_size):
    """Blocks of one row of n elements: an independent restatement of the documented
    rule (ceil(n / block_size) blocks of equal size, the row padded at its end)."""
    n_blocks = -(-n // block_size)
    return n_blocks, -(-n // n_blocks)


def _reference(x, block_size, levels=127):
    """Independent float64 model of the square-law map with nearest rounding, L =
    `levels` (127: int8, 7: int4).

    Returns the decoded values, `r = L·√(|x|/s)` (whose rounding gives |q|)
    and the block scale `s` of every entry of `x` (flattened in C order, padding
    dropped). Blocks tile each row of the last axis.
    """
    x = np.asarray(x, np.float64)
    x = x.reshape(-1, x.shape[-1] if x.ndim else 1)
    n = x.shape[1]
    n_blocks, block = _layout(n, block_size)
    b = np.concatenate([x, np.zeros((x.shape[0], n_blocks * block - n))], axis=1)
    b = b.reshape(x.shape[0], n_blocks, block)
    s = np.abs(b).max(axis=2, keepdims=True)
    y = np.divide(b, s, out=np.zeros_like(b), where=s > 0)
    r = levels * np.sqrt(np.abs(y))
    back = s * np.sign(y) * (np.round(r) / levels) ** 2

    def rows(v):
        return v.reshape(x.shape[0], n_blocks * block)[:, :n].reshape(-1)

    return rows(back), rows(r), rows(np.broadcast_to(s, b.shape))


def _assert_matches_reference(back, x, block):
    """`back` is the reference decoding of `x`, except where float32 rounding may
    flip a tie (r within 1e-3 of k + 1/2), and always within the error bound
    |x̂ − x| ≤ √(|x|·s)/127 + s/(4·127²)."""
    back = np.asarray(back, np.float64).reshape(-1)
    ref, r, s = _reference(x, block)
    x = np.asarray(x, np.float64).reshape(-1)
    tie = np.abs(r - np.floor(r) - 0.5) < 1e-3
    np.testing.assert_allclose(back[~tie], ref[~tie], rtol=2e-6, atol=0)
    bound = (np.sqrt(np.abs(x) * s) / 127 + s / (4 * 127**2)) * (1 + 1e-5)
    assert np.all(np.abs(back - x) <= bound)


@pytest.mark.parametrize("scale", [1e-20, 1e-3, 1.0, 1e20])
@pytest.mark.parametrize("shape,block", [((1000, 37), 256), ((37, 1000), 256), ((37, 1000), 100),
                                         ((1000, 37), 7), ((2, 3, 517), 256), ((4099,), 256)])
def test_round_trip_matches_float64_reference(scale, shape, block):
    x = _x(shape, scale=scale)
    q = quantize.quantize(x, block)
    _assert_matches_reference(quantize.dequantize(q, x.shape), x, block)
    n_blocks, width = _layout(shape[-1], block)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (*shape[:-1], n_blocks, width)
    assert q.scales.shape == (*shape[:-1], n_blocks)
    assert width <= block and n_blocks * width - shape[-1] < n_blocks  # padding < a block
    tail = np.asarray(q.codes).reshape(-1, n_blocks * width)[:, shape[-1]:]
    assert np.all(tail == square_int8.OFFSET)  # the padded tails hold zeros


def test_layout_depends_on_the_last_axis_only():
    assert quantize.layout((64, 512)) == (2, 256) and quantize.layout((3, 512)) == (2, 256)
    assert quantize.layout((8, 600)) == (3, 200) and quantize.layout((600,)) == (3, 200)
    assert quantize.layout((5, 40)) == (1, 40) and quantize.layout((1009,)) == (4, 253)
    assert quantize.layout((8, 4096), 64) == (64, 64)
    with pytest.raises(ValueError, match="0-d"):
        quantize.layout(())


@pytest.mark.parametrize("shape", [(5, 3, 97), (4, 1, 16), (2, 2, 7), (3, 250), (3, 4, 33)])
def test_block_absmax_matches_a_max_reduction(shape):
    # Block widths that are, and are not, multiples of the 16-column groups.
    x = jax.random.normal(jax.random.PRNGKey(0), shape).at[..., -1].set(9.0)
    x = x.at[0, ..., 0].set(jnp.nan)  # NaN wins, as in jnp.max
    got = blockwise.block_absmax(lambda lo, hi: x[..., lo:hi], shape[-1])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(blockwise.plain_block_absmax(x)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.max(jnp.abs(x), axis=-1)))


def test_code_map_table():
    codes = jnp.arange(256, dtype=jnp.int32).astype(jnp.uint8)[1:]  # code 0 is unused
    q = np.arange(-127, 128, dtype=np.float64)
    ref = np.sign(q) * (q / 127) ** 2
    values = np.asarray(square_int8.decode_unit(codes), np.float64)
    np.testing.assert_allclose(values, ref, rtol=1e-6, atol=0)
    assert values[127] == 0 and values[0] == -1 and values[-1] == 1  # exact 0 and ±1
    np.testing.assert_array_equal(np.asarray(square_int8.signed_squares(codes)), q * np.abs(q))
    # Every code value re-encodes to itself, under any block scale.
    for s in (1e-30, 0.37, 3e30):
        blocks = jnp.tile(square_int8.decode_unit(codes)[None] * s, (2, 1)).astype(jnp.float32)
        scales = jnp.full((2,), s, jnp.float32)
        np.testing.assert_array_equal(
                blockwise.encode_blocks(blocks, scales, square_int8.CODEC)[0], codes)


def test_zeros_maxima_idempotence_and_zero_blocks():
    x = _x().at[0, :5].set(0.0)
    x = x.at[100:110].set(0.0)  # whole zero rows: some blocks are all zero
    q = quantize.quantize(x)
    back = quantize.dequantize(q, x.shape)
    assert bool(jnp.all(back[0, :5] == 0)) and bool(jnp.all(back[100:110] == 0))
    assert bool(jnp.all(jnp.isfinite(back)))
    # (1000, 37): every row of 37 is one block
    top = jnp.argmax(jnp.abs(x), axis=1)
    rows = jnp.arange(x.shape[0])
    np.testing.assert_array_equal(back[rows, top], x[rows, top])  # maxima exact
    q2 = quantize.quantize(back)
    np.testing.assert_array_equal(q2.codes, q.codes)
    np.testing.assert_array_equal(q2.scales, q.scales)
    z = quantize.quantize(jnp.zeros((300,)))
    assert bool(jnp.all(quantize.dequantize(z, (300,)) == 0)) and bool(jnp.all(z.scales == 0))


def test_stochastic_rounding_is_unbiased():
    # Every block has maximum 1, so 0.3 (√0.3·127 ≈ 69.56) lies between the
    # codes 69 and 70 everywhere.
    x = jnp.tile(jnp.full((256,), 0.3).at[0].set(1.0), 64)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    rest = np.arange(x.size) % 256 != 0
    draws = np.stack([np.asarray(quantize.dequantize(quantize.quantize(x, key=k), x.shape))[rest]
                      for k in keys])
    neighbours = np.float32([(69 / 127) ** 2, (70 / 127) ** 2])
    assert np.all(np.isclose(draws[..., None], neighbours, rtol=1e-6).any(-1))
    nearest = float(jnp.mean(quantize.dequantize(quantize.quantize(x), x.shape)[rest]))
    assert abs(draws.mean() - 0.3) < 1e-4 < abs(nearest - 0.3)


def test_rounding_uniforms_are_uniform_reproducible_and_keyed():
    from scipy import stats
    key = jax.random.PRNGKey(3)
    u = np.asarray(blockwise.uniform(key, (64, 256)), np.float64)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    np.testing.assert_array_equal(u, np.asarray(blockwise.uniform(key, (64, 256))))
    other = np.asarray(blockwise.uniform(jax.random.PRNGKey(4), (64, 256)), np.float64)
    assert abs(stats.pearsonr(u.ravel(), other.ravel()).statistic) < 0.02
    # Neighbouring elements are not correlated either.
    assert abs(stats.pearsonr(u.ravel()[:-1], u.ravel()[1:]).statistic) < 0.02


def _mixed_params():
    return {"w": jnp.zeros((64, 128)), "b": jnp.zeros((128,)), "emb": jnp.zeros((100, 64))}


def test_int8_state_layout_and_bytes():
    params = _mixed_params()
    tx = so.stam_lite(1e-3, state_dtype="int8", quantize_mask={"w": True, "b": True, "emb": False})
    mu = tx.init(params)[0].mu
    assert isinstance(mu["w"], quantize.QuantizedArray)
    assert mu["b"].dtype == jnp.float32  # under min_quantized_size
    assert mu["emb"].dtype == jnp.float32  # masked out
    w_bytes = sum(x.nbytes for x in jax.tree.leaves(mu["w"]))
    assert w_bytes / params["w"].size == pytest.approx(1 + 4 / 128)  # one block per row
    wide = so.stam_lite(1e-3, state_dtype="int8").init({"w": jnp.zeros((16, 1024))})[0].mu
    assert sum(x.nbytes for x in jax.tree.leaves(wide["w"])) / (16 * 1024) == \
        pytest.approx(1 + 4 / 256)


@pytest.mark.parametrize("sr", [False, True])
def test_int8_trains_like_float32_and_compiles_once(sr):
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (64, 128)) * 0.1}
    target = jax.random.normal(jax.random.PRNGKey(1), (64, 128))
    loss = lambda p: jnp.mean((p["w"] - target) ** 2)  # noqa: E731
    traces = 0

    def make_step(tx):
        def step(p, s):
            nonlocal traces
            traces += 1
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s
        return jax.jit(step, donate_argnums=(0, 1))

    results = {}
    optimizers = {"f32": so.stam_lite(3e-2),
                  "int8": so.stam_lite(3e-2, state_dtype="int8", stochastic_rounding=sr)}
    for name, tx in optimizers.items():
        traces = 0
        step, p = make_step(tx), jax.tree.map(jnp.copy, params)
        s = tx.init(p)
        for _ in range(150):
            p, s = step(p, s)
            if name == "int8":
                assert s[0].mu["w"].codes.dtype == jnp.uint8
        assert traces == 1
        results[name] = float(loss(p))
    start = float(loss(params))
    assert results["int8"] < 0.05 * start and results["f32"] < 0.05 * start


def test_stuck_momentum_needs_stochastic_rounding():
    # In one block, half the entries see gradient 1 (they set the block scale),
    # half see 0.5 and then 0.4, with β₁ = 0.995 fixed. After the switch the
    # small entries should decay from 0.5 to 0.4, but each step moves them by
    # (1−β₁)·0.1 ≈ 5e-4, far below half a code step there (≈ 0.018): nearest
    # rounding freezes them, stochastic rounding follows float32 on average.
    # Each row of 16 is one block: its first 8 entries are the large ones.
    params = {"w": jnp.zeros((16, 16))}
    phase = [jnp.tile(jnp.concatenate([jnp.ones(8), jnp.full((8,), v)]), (16, 1))
             for v in (0.5, 0.4)]
    kw = dict(b1_base=0.995, adapt_strength=0.0, min_quantized_size=0)
    runs = {"f32": so.scale_by_stam_lite(**kw),
            "nearest": so.scale_by_stam_lite(state_dtype="int8", **kw),
            "stochastic": so.scale_by_stam_lite(state_dtype="int8", stochastic_rounding=True,
                                                **kw)}
    small = {}
    for name, tx in runs.items():
        s = tx.init(params)
        step = jax.jit(tx.update)
        for t in range(1000):
            _, s = step({"w": phase[t >= 400]}, s)
        mu = s.mu["w"]
        mu = quantize.dequantize(mu, (16, 16)) if isinstance(mu, quantize.QuantizedArray) else mu
        small[name] = float(jnp.mean(mu[:, 8:]))
    assert abs(small["nearest"] - small["f32"]) > 0.03  # stuck
    assert abs(small["stochastic"] - small["f32"]) < 0.005


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_quantised_checkpoint_round_trip_is_bit_identical(tmp_path, state_dtype):
    tx = so.stam_lite(1e-2, state_dtype=state_dtype, stochastic_rounding=True,
                      min_quantized_size=0)
    params = {"w": jnp.ones((32, 32)), "b": jnp.ones((32,))}
    grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.PRNGKey(i), p.shape),
                          params) for i in range(8)]
    step = jax.jit(tx.update)
    s = tx.init(params)
    for g in grads[:4]:
        _, s = step(g, s, params)
    leaves, treedef = jax.tree.flatten(s)
    np.savez(tmp_path / "s.npz", *[np.asarray(x) for x in leaves])
    with np.load(tmp_path / "s.npz") as f:
        s2 = jax.tree.unflatten(treedef, [jnp.asarray(f[f"arr_{i}"]) for i in range(len(leaves))])
    for g in grads[4:]:
        u1, s = step(g, s, params)
        u2, s2 = step(g, s2, params)
        for a, b in zip(jax.tree.leaves((u1, s)), jax.tree.leaves((u2, s2)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_quantised_nan_gradients_and_tree_beta1(state_dtype):
    """Non-finite gradient entries are used as 0 (as in float32): no block's scale
    or code becomes NaN, and every update stays finite."""
    params = {"w": jnp.ones((64, 128))}
    tx = so.stam_lite(1e-2, state_dtype=state_dtype)
    s = tx.init(params)
    g = {"w": jnp.ones((64, 128)).at[0, 0].set(jnp.nan).at[3, 3].set(jnp.inf)}
    u, s = tx.update(g, s, params)
    assert bool(jnp.all(jnp.isfinite(u["w"])))
    codec = MOMENTUM_CODECS[state_dtype]
    mu = blockwise.dequantize(s[0].mu["w"], (64, 128), codec)
    assert bool(jnp.all(jnp.isfinite(mu))) and float(mu[0, 0]) == 0.0
    assert 0.5 <= float(so.tree_beta1(s, params)["w"]) <= 0.9


def test_int8_steps_match_float64_reference():
    # β₁ fixed (α = 0); a 20x257 leaf has 2 blocks of 129 per row, padded by 1, and
    # zero rows give all-zero blocks. Each step must store the reference
    # quantisation of β₁·μ + (1−β₁)·g (μ as stored before) and return the
    # stored μ / (1−Π) / (√b̂ + eps).
    b1, rho, eps = 0.9, 0.99, 1e-8
    tx = so.scale_by_stam_lite(b1_base=b1, adapt_strength=0.0, moment_decay=rho, eps=eps,
                               state_dtype="int8", min_quantized_size=0)
    params = {"w": jnp.zeros((20, 257))}
    s = tx.init(params)
    step = jax.jit(tx.update)
    mu, b, prod = np.zeros(20 * 257), 0.0, 1.0
    for t in range(3):
        g = jax.random.normal(jax.random.PRNGKey(t), (20, 257)) * 10.0**t
        g = g.at[:8].set(0.0).at[20, 3].set(0.0)
        u, s = step({"w": g}, s)
        g = np.asarray(g, np.float64).reshape(-1)
        stored = np.asarray(quantize.dequantize(s.mu["w"], (20, 257)), np.float64).reshape(-1)
        _assert_matches_reference(stored, np.float32(b1 * mu + (1 - b1) * g).reshape(20, 257),
                                  256)
        assert np.all(np.asarray(s.mu["w"].codes).reshape(20, 258)[:, 257:] == square_int8.OFFSET)
        assert np.all(stored[: 8 * 257] == 0)
        b = rho * b + (1 - rho) * np.mean(g**2)
        prod *= b1
        expected = stored / (1 - prod) / (np.sqrt(b / (1 - rho ** (t + 1))) + eps)
        np.testing.assert_allclose(np.asarray(u["w"]).reshape(-1), expected, rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())
        mu = stored


def test_int4_steps_match_float64_reference():
    # As the int8 test: β₁ fixed, a 20x257 leaf (2 blocks of 129 per row: an odd
    # block, so each packs a padding code), zero rows (all-zero blocks). Each step
    # stores the reference 4-bit quantisation of β₁·μ + (1−β₁)·g (μ as stored),
    # within the map's bound |x̂ − x| ≤ s·(r + ½)/49, and returns the stored
    # μ / (1−Π) / (√b̂ + eps).
    b1, rho, eps = 0.9, 0.99, 1e-8
    tx = so.scale_by_stam_lite(b1_base=b1, adapt_strength=0.0, moment_decay=rho, eps=eps,
                               state_dtype="int4", min_quantized_size=0,
                               stochastic_rounding=False)
    params = {"w": jnp.zeros((20, 257))}
    s = tx.init(params)
    assert s.mu["w"].codes.shape == (20, 2, 65) and s.mu["w"].codes.dtype == jnp.uint8
    step = jax.jit(tx.update)
    mu, b, prod = np.zeros(20 * 257), 0.0, 1.0
    for t in range(3):
        g = jax.random.normal(jax.random.PRNGKey(t), (20, 257)) * 10.0**t
        g = g.at[:8].set(0.0)
        u, s = step({"w": g}, s)
        g = np.asarray(g, np.float64).reshape(-1)
        stored = np.asarray(blockwise.dequantize(s.mu["w"], (20, 257), MOMENTUM_CODECS["int4"]),
                            np.float64).reshape(-1)
        want = np.float32(b1 * mu + (1 - b1) * g).reshape(20, 257)
        ref, r, scale = _reference(want, 256, levels=7)
        tie = np.abs(r - np.floor(r) - 0.5) < 1e-4
        np.testing.assert_allclose(stored[~tie], ref[~tie], rtol=2e-6, atol=0)
        err = np.abs(stored - want.reshape(-1))
        assert np.all(err <= scale * (r + 0.5) / 49 * (1 + 1e-5))
        assert np.all(stored[: 8 * 257] == 0)
        b = rho * b + (1 - rho) * np.mean(g**2)
        prod *= b1
        expected = stored / (1 - prod) / (np.sqrt(b / (1 - rho ** (t + 1))) + eps)
        np.testing.assert_allclose(np.asarray(u["w"]).reshape(-1), expected, rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())
        mu = stored


def test_int4_state_layout_and_bytes():
    params = _mixed_params()
    mu = so.stam_lite(1e-3, state_dtype="int4").init(params)[0].mu
    assert mu["b"].dtype == jnp.float32  # under min_quantized_size
    assert mu["w"].codes.shape == (64, 1, 64)  # one block of 128 per row, two codes a byte
    assert sum(x.nbytes for x in jax.tree.leaves(mu["w"])) / params["w"].size == \
        pytest.approx(0.5 + 4 / 128)
    wide = so.stam_lite(1e-3, state_dtype="int4").init({"w": jnp.zeros((16, 1024))})[0].mu
    assert sum(x.nbytes for x in jax.tree.leaves(wide["w"])) / (16 * 1024) == \
        pytest.approx(0.5 + 4 / 256)
    # the layout (blocks, scales) is int8's: only the codes' bytes differ
    int8 = so.stam_lite(1e-3, state_dtype="int8").init({"w": jnp.zeros((16, 1024))})[0].mu
    assert int8["w"].scales.shape == wide["w"].scales.shape == (16, 4)
    assert int8["w"].codes.shape == (16, 4, 256) and wide["w"].codes.shape == (16, 4, 128)


def test_int8_option_validation():
    with pytest.raises(ValueError, match="block_size"):
        so.stam_lite(state_dtype="int8", block_size=0)
    with pytest.raises(ValueError, match="min_quantized_size"):
        so.stam_lite(state_dtype="int8", min_quantized_size=-1)


@pytest.mark.parametrize("shape", [(300, 256), (7, 1000), (4097,)])
@pytest.mark.parametrize("bad", [False, True])
def test_momentum_update_keeps_the_plain_contract(shape, bad):
    """The fused int8 momentum update = `momentum_update_plain`, to one code step
    (both round β₁·μ + (1−β₁)·g, computed in a different order, to the nearest code)."""
    rng = np.random.default_rng(sum(shape))
    mu = quantize.quantize(jnp.asarray(rng.standard_normal(shape), jnp.float32))
    g = rng.standard_normal(shape).astype(np.float32) * 0.3
    if bad:
        g.reshape(-1)[::97] = np.nan
        g.reshape(-1)[5] = np.inf
    g = jnp.asarray(g)
    beta1 = jnp.float32(0.85)
    fast = jax.jit(lambda m, g: square_int8.momentum_update(m, g, beta1, jnp.int32(3), None,
                                                   jnp.float32))(mu, g)
    plain = square_int8.momentum_update_plain(mu, g, beta1, None, jnp.float32)
    np.testing.assert_allclose(fast.scales, plain.scales, rtol=1e-6)
    step = np.asarray(fast.codes, np.int32) - np.asarray(plain.codes, np.int32)
    assert np.abs(step).max() <= 1 and np.mean(step != 0) < 1e-3
    # and the plain statement is what it says, against float64
    old = np.asarray(quantize.dequantize(mu, shape), np.float64)
    g64 = np.nan_to_num(np.asarray(g, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    want = 0.85 * old + 0.15 * g64
    got = np.asarray(quantize.dequantize(plain, shape), np.float64)
    block_max = np.abs(want).max()
    assert np.abs(got - want).max() <= 0.008 * block_max  # the code map's error bound

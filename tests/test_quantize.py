"""The 8-bit blockwise momentum storage and STAMLite with state_dtype="int8"."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stam_optimizer as so
from stam_optimizer import quantize as qz


def _x(shape=(1000, 37), seed=0, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("scale", [1e-20, 1e-3, 1.0, 1e20])
@pytest.mark.parametrize("block", [256, 100, 7])
def test_round_trip_error_bound(scale, block):
    x = _x(scale=scale)
    q = qz.quantize(x, block)
    back = np.asarray(qz.dequantize(q, x.shape), np.float64).reshape(-1)
    x = np.asarray(x, np.float64).reshape(-1)
    pad = (-x.size) % block
    absmax = np.repeat(np.asarray(q.scales, np.float64), block)[: x.size + pad][: x.size]
    bound = np.maximum(np.abs(x) * 2.0**-4, absmax / 448 * 2.0**-10) * (1 + 1e-6)
    assert np.all(np.abs(back - x) <= bound)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == ((x.size + pad) // block, block)


def test_zeros_maxima_idempotence_and_zero_blocks():
    x = _x().at[0, :5].set(0.0)
    x = x.at[100:110].set(0.0)  # whole zero rows: some blocks are all zero
    q = qz.quantize(x)
    back = qz.dequantize(q, x.shape)
    assert bool(jnp.all(back[0, :5] == 0)) and bool(jnp.all(back[100:110] == 0))
    assert bool(jnp.all(jnp.isfinite(back)))
    flat = jnp.pad(x.reshape(-1), (0, (-x.size) % 256)).reshape(-1, 256)
    top = jnp.argmax(jnp.abs(flat), axis=1)
    decoded = jnp.pad(back.reshape(-1), (0, (-x.size) % 256)).reshape(-1, 256)
    rows = jnp.arange(flat.shape[0])
    np.testing.assert_array_equal(decoded[rows, top], flat[rows, top])  # maxima exact
    q2 = qz.quantize(back)
    np.testing.assert_array_equal(q2.codes, q.codes)
    np.testing.assert_array_equal(q2.scales, q.scales)
    z = qz.quantize(jnp.zeros((300,)))
    assert bool(jnp.all(qz.dequantize(z, (300,)) == 0)) and bool(jnp.all(z.scales == 0))


def test_stochastic_rounding_is_unbiased():
    x = jnp.full((256 * 64,), 0.3).at[0].set(1.0)  # 0.3·448 lies between two codes
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    means = [float(jnp.mean(qz.dequantize(qz.quantize(x, key=k), x.shape)[1:])) for k in keys]
    nearest = float(jnp.mean(qz.dequantize(qz.quantize(x), x.shape)[1:]))
    assert abs(np.mean(means) - 0.3) < 1e-4 < abs(nearest - 0.3)


def _mixed_params():
    return {"w": jnp.zeros((64, 128)), "b": jnp.zeros((128,)), "emb": jnp.zeros((100, 64))}


def test_int8_state_layout_and_bytes():
    params = _mixed_params()
    tx = so.stam_lite(1e-3, state_dtype="int8", quantize_mask={"w": True, "b": True, "emb": False})
    mu = tx.init(params)[0].mu
    assert isinstance(mu["w"], qz.QuantizedArray)
    assert mu["b"].dtype == jnp.float32  # under min_quantized_size
    assert mu["emb"].dtype == jnp.float32  # masked out
    w_bytes = sum(x.nbytes for x in jax.tree.leaves(mu["w"]))
    assert w_bytes / params["w"].size == pytest.approx(1 + 4 / 256)


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
    n = 256
    params = {"w": jnp.zeros((16, 16))}
    phase = [jnp.concatenate([jnp.ones(n // 2), jnp.full((n // 2,), v)]).reshape(16, 16)
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
        mu = qz.dequantize(mu, (16, 16)) if isinstance(mu, qz.QuantizedArray) else mu
        small[name] = float(jnp.mean(mu.reshape(-1)[n // 2:]))
    assert abs(small["nearest"] - small["f32"]) > 0.03  # stuck
    assert abs(small["stochastic"] - small["f32"]) < 0.005


def test_int8_checkpoint_round_trip_is_bit_identical(tmp_path):
    tx = so.stam_lite(1e-2, state_dtype="int8", stochastic_rounding=True, min_quantized_size=0)
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


def test_int8_nan_gradients_and_tree_beta1():
    params = {"w": jnp.ones((64, 128))}
    tx = so.stam_lite(1e-2, state_dtype="int8")
    s = tx.init(params)
    g = {"w": jnp.ones((64, 128)).at[0, 0].set(jnp.nan).at[3, 3].set(jnp.inf)}
    u, s = tx.update(g, s, params)
    assert bool(jnp.all(jnp.isfinite(u["w"])))
    assert bool(jnp.all(jnp.isfinite(qz.dequantize(s[0].mu["w"], (64, 128)))))
    assert 0.5 <= float(so.tree_beta1(s, params)["w"]) <= 0.9


def test_int8_option_validation():
    with pytest.raises(ValueError, match="block_size"):
        so.stam_lite(state_dtype="int8", block_size=0)
    with pytest.raises(ValueError, match="min_quantized_size"):
        so.stam_lite(state_dtype="int8", min_quantized_size=-1)

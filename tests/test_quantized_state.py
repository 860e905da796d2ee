"""`quantized_state` on each inner optimizer: parity with the float optimizer on a
noisy quadratic, which leaves it quantises, the float <-> low-bit converters, the
layout under eager/jit/abstract init, non-finite gradients, bytes per param."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stam_optimizer as so
from stam_optimizer import blockwise, low_bit_codecs
from stam_optimizer.blockwise import QuantizedArray

INNERS = {
    "adamw": lambda: optax.adamw(1e-2),
    "adam": lambda: optax.adam(1e-2),
    "lion": lambda: optax.lion(1e-3),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
    "muon": lambda: optax.contrib.muon(1e-2),
    "adafactor_momentum": lambda: optax.adafactor(1e-2, momentum=0.9),
    "stam": lambda: so.stam(1e-2),
    "adams": lambda: so.adams(1e-2),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0),
                                 optax.adamw(optax.cosine_decay_schedule(1e-2, 200))),
}
SHAPES = {"w": (16, 256), "v": (24, 100), "b": (32,)}
T = 200


def _problem():
    rng = np.random.default_rng(0)
    h = {k: jnp.asarray(10 ** rng.uniform(-1, 1, s), jnp.float32) for k, s in SHAPES.items()}
    theta = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    noise = {k: jnp.asarray(rng.normal(size=(T, *s)), jnp.float32) for k, s in SHAPES.items()}
    return h, theta, noise


def _run(opt):
    """T steps on ½Σh·θ² with gradient noise 0.3·ξ (the same ξ for every run):
    final params, the path length Σ‖Δθ‖ and the mean loss of the last 50 steps."""
    h, theta, noise = _problem()

    def body(carry, n):
        p, s = carry
        g = jax.tree.map(lambda h, p, n: h * p + 0.3 * n, h, p, n)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        loss = sum(jnp.sum(0.5 * h[k] * p[k] ** 2) for k in p)
        return (p, s), (loss, optax.tree.norm(u))

    run = jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), noise))
    (p, _), (loss, step) = run(theta)
    return p, float(jnp.sum(step)), float(jnp.mean(loss[-50:]))


# One code step at the top of a block, relative to the block maximum (square law).
Q8 = (127**2 - 126**2) / 127**2  # 0.0156


@pytest.mark.parametrize("name", INNERS)
def test_parity_with_float_on_a_noisy_quadratic(name):
    """8 bits, nearest rounding: ‖θ_q − θ_f‖ ≤ 4·Q8·Σ_t‖Δθ_t‖ (Lion: loss within 1%).

    Bound. Both runs see the same noise; they differ by the rounding of the
    state. Each stored moment is off by at most half a code step of its block,
    ≤ Q8/2 of the block maximum, and an update m/√v (or m, or NS(m)) is
    Lipschitz in the state with relative constant 1 in m and ½ in v: each
    step's update differs by ≤ (½ + ¼)·Q8 of its size from rounding at that
    step. The moments are EMAs, so earlier steps' rounding persists: nearest
    rounding errors of successive steps are not of one sign (they would be only
    for a frozen entry), and we allow them to add up to 4/3 of one step's: in
    all ≤ Q8 relative per step. On a convex quadratic, a difference of params
    is contracted, not amplified, by the gradient; so the distance is at most
    Q8 times the path length. We allow 4x that (0.0625); measured: at most
    0.044 (adafactor), 0.035 Adam. Lion's sign makes the update discontinuous
    in the state: a rounding can flip an entry's step, so it is held to the
    outcome instead: its mean loss over the last 50 steps within 1% (measured
    0.2%).

    4 bits, stochastic rounding (the default at 4 bits): a 4-bit code step is 0.27 of the block
    maximum, so the bound above says nothing; we check the outcome, the mean
    loss of the last 50 steps at most 1.5x the float run's (measured ≤ 1.33x,
    Adam; nearest rounding reaches 4.4x here, where the curvatures inside one
    block span 100x).
    """
    pf, path, loss_f = _run(INNERS[name]())
    pq, _, loss_q = _run(so.quantized_state(INNERS[name](), 8, min_size=1))
    dist = float(optax.tree.norm(jax.tree.map(jnp.subtract, pq, pf)))
    if name == "lion":
        assert abs(loss_q - loss_f) <= 0.01 * loss_f, (loss_q, loss_f)
    else:
        assert dist <= 4 * Q8 * path, (dist / path)
    _, _, loss_4 = _run(so.quantized_state(INNERS[name](), 4, min_size=1))
    assert loss_4 <= 1.5 * loss_f, (loss_4, loss_f)


def test_nearest_rounding_freezes_slow_emas_at_4_bits():
    """Why 4 bits round stochastically by default: with nearest rounding AdamW's
    β₂ = 0.999 EMA freezes on the noisy quadratic (measured 4.4x the float loss;
    we require > 2x); the default gives the stochastic run bit for bit, and 8 bits
    default to nearest rounding (bit for bit `stochastic_rounding=False`)."""
    _, _, loss_f = _run(INNERS["adamw"]())
    _, _, nearest = _run(so.quantized_state(INNERS["adamw"](), 4, min_size=1,
                                            stochastic_rounding=False))
    assert nearest > 2 * loss_f, (nearest, loss_f)
    params = {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(16, 256)}
    for bits, explicit in ((4, True), (8, False)):
        states = []
        for sr in (None, explicit):
            opt = so.quantized_state(optax.adamw(1e-2), bits, **({} if sr is None else
                                                                 {"stochastic_rounding": sr}))
            s, step = opt.init(params), jax.jit(opt.update)
            for t in range(3):
                _, s = step(jax.tree.map(lambda p, t=t: jnp.sin(7 * p + t), params), s, params)
            states.append(jax.tree.leaves(s))
        assert all(bool(jnp.all(a == b)) for a, b in zip(states[0], states[1], strict=True))


def _kinds(state):
    """path -> codec name of each quantised leaf (None for a float one)."""
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(
        state.inner, is_leaf=lambda x: isinstance(x, QuantizedArray))[0]
    for path, leaf in flat:
        out[jax.tree_util.keystr(path)] = (leaf.codes.shape if isinstance(leaf, QuantizedArray)
                                           else None)
    return out


def test_which_leaves_are_quantised():
    params = {"w": jnp.zeros((64, 128)), "b": jnp.zeros((128,)), "s": jnp.zeros(())}
    adam = _kinds(so.quantized_state(optax.adamw(1e-3), 4, min_size=1000).init(params))
    assert adam["[0].mu['w']"] == (64, 1, 64)  # one block of 128 per row, two codes a byte
    assert adam["[0].nu['w']"] == (64, 1, 64)
    assert adam["[0].mu['b']"] is None and adam["[0].count"] is None  # < min_size; int
    # adafactor's row/column statistics are not param-shaped; its momentum is
    fac = _kinds(so.quantized_state(optax.adafactor(1e-3, momentum=0.9), 8,
                                    min_size=1).init(params))
    assert fac["[0].v_row['w']"] is None and fac["[4].ema['w']"] == (64, 1, 128)
    # muon's Newton–Schulz coefficients are not param positions, even where a param
    # has their shape
    muon = _kinds(so.quantized_state(optax.contrib.muon(1e-3), 8, min_size=1).init(
        {"w": jnp.zeros((8, 16)), "c": jnp.zeros((3,))}))
    assert all(v is None for k, v in muon.items() if "ns_coeffs" in k)
    # the codec of each: nu non-negative, mu signed (decoding a code 0 of each)
    st = so.quantized_state(optax.adam(1e-3), 8, min_size=1).init(params)
    assert int(st.inner[0].nu["w"].codes[0, 0, 0]) == low_bit_codecs.NONNEG8.zero
    assert int(st.inner[0].mu["w"].codes[0, 0, 0]) == low_bit_codecs.SIGNED8.zero


def test_codec_for_overrides_the_rule():
    params = {"w": jnp.zeros((8, 64)), "e": jnp.zeros((8, 64)) + 1}

    def rule(path, leaf):
        return None if "'e'" in jax.tree_util.keystr(path) else "auto"

    kinds = _kinds(so.quantized_state(optax.adam(1e-3), 8, min_size=1,
                                      codec_for=rule).init(params))
    assert kinds["[0].mu['e']"] is None and kinds["[0].mu['w']"] is not None
    with pytest.raises(ValueError, match="codec_for must return"):
        so.quantized_state(optax.adam(1e-3), codec_for=lambda p, x: "int4").init(params)


@pytest.mark.parametrize(("kw", "match"), [({"bits": 2}, "bits must be 4 or 8"),
                                           ({"min_size": 0}, "min_size must be"),
                                           ({"block_size": 0}, "block_size must be"),
                                           ({"stochastic_rounding": 1}, "stochastic_rounding")])
def test_arguments_are_validated(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        so.quantized_state(optax.adam(1e-3), **kw)


def test_layout_is_the_same_eager_jitted_and_abstract():
    params = {"w": jnp.ones((5, 1000)), "b": jnp.ones((7,))}
    opt = so.quantized_state(optax.adamw(1e-3), 4, min_size=1)
    shapes = [[(x.shape, x.dtype) for x in jax.tree.leaves(s)] for s in
              (opt.init(params), jax.jit(opt.init)(params), jax.eval_shape(opt.init, params))]
    assert shapes[0] == shapes[1] == shapes[2]
    n_blocks, block = blockwise.layout((5, 1000), 128)
    assert opt.init(params).inner[0].mu["w"].codes.shape == (5, n_blocks, -(-block // 2))
    # an eager update gives the jitted one's numbers
    g = jax.tree.map(lambda p: jnp.sin(3 * p), params)
    eager = opt.update(g, opt.init(params), params)
    jitted = jax.jit(opt.update)(g, opt.init(params), params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [8, 4])
def test_switching_to_low_bit_state_at_a_checkpoint(bits):
    """A float AdamW run switched to the wrapper after K steps (`quantize_state`) goes
    on like the wrapped run's own steps: the switched state decodes to the float one
    within one code step (`dequantize_state`), and the next M steps stay as close to
    the uninterrupted float run as the parity bound allows."""
    K, M = 20, 20
    inner = optax.adamw(1e-2)
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(16, 256)), jnp.float32)}
    grads = [jax.tree.map(lambda p, t=t: p + jnp.sin(t * p), params) for t in range(K + M)]
    state = inner.init(params)
    p = params
    for g in grads[:K]:
        u, state = inner.update(g, state, p)
        p = optax.apply_updates(p, u)
    q = so.quantize_state(state, inner, p, bits, min_size=1)
    back = so.dequantize_state(q, inner, p, bits, min_size=1)
    L = 127 if bits == 8 else 7
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 2 * np.max(np.abs(b)) / L + 1e-12
    wrapped = so.quantized_state(inner, bits, min_size=1)
    step = jax.jit(wrapped.update)
    pf, pq, sf = p, p, state
    path = 0.0
    for g in grads[K:]:
        u, q = step(g, q, pq)
        pq = optax.apply_updates(pq, u)
        u, sf = inner.update(g, sf, pf)
        pf = optax.apply_updates(pf, u)
        path += float(optax.tree.norm(u))
    dist = float(optax.tree.norm(jax.tree.map(jnp.subtract, pq, pf)))
    assert dist <= (4 * Q8 if bits == 8 else 4 * 13 / 49) * path, dist / path
    assert int(q.count) == M


def test_nonfinite_gradient_stays_in_its_block():
    """A NaN gradient entry: optax.adam carries it into its moments, as in float;
    the wrapper confines it to that entry's block (its scale is NaN), every other
    block and leaf keeps finite state and updates. Behind optax.zero_nans nothing
    becomes NaN."""
    params = {"w": jnp.ones((4, 512)), "v": jnp.ones((8, 256))}
    g = jax.tree.map(jnp.ones_like, params)
    g["w"] = g["w"].at[1, 3].set(jnp.nan)
    for bits in (8, 4):
        opt = so.quantized_state(optax.adam(1e-3), bits, min_size=1, block_size=256)
        step = jax.jit(opt.update)
        _, s = step(g, opt.init(params), params)
        mu = s.inner[0].mu
        bad = ~np.isfinite(np.asarray(mu["w"].scales))
        assert bad[1, 0] and bad.sum() == 1  # only the block of entry (1, 3)
        assert np.all(np.isfinite(np.asarray(mu["v"].scales)))
        # the next step, with a finite gradient: that block's updates are NaN, no other
        u, s = step(jax.tree.map(jnp.ones_like, params), s, params)
        finite = np.isfinite(np.asarray(u["w"]))
        assert not finite[1, :256].any() and finite[1, 256:].all() and finite[[0, 2, 3]].all()
        assert np.all(np.isfinite(np.asarray(u["v"])))
        safe = so.quantized_state(optax.chain(optax.zero_nans(), optax.adam(1e-3)), bits,
                                  min_size=1)
        u, s = jax.jit(safe.update)(g, safe.init(params), params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, s)))


def _state_bytes(state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def test_adamw_state_bytes_per_param_on_a_transformer_like_tree():
    # vocab 8000, d 256, 2 layers: embeddings, attention and MLP matrices, norms
    d, vocab, layers = 256, 8000, 2
    shapes = {"embed": (vocab, d), "unembed": (d, vocab)}
    for i in range(layers):
        shapes |= {f"qkv{i}": (d, 3 * d), f"out{i}": (d, d), f"up{i}": (d, 4 * d),
                   f"down{i}": (4 * d, d), f"ln{i}": (d,), f"bias{i}": (4 * d,)}
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    n = sum(int(np.prod(s)) for s in shapes.values())
    per_param = {bits: _state_bytes(jax.eval_shape(
        so.quantized_state(optax.adamw(1e-3), bits).init, params)) / n for bits in (8, 4)}

    def moment_bytes(shape, bits):  # codes, one bfloat16 scale per block of 128
        if int(np.prod(shape)) < 4096:
            return 4 * int(np.prod(shape))
        n_blocks, block = blockwise.layout(shape, 128)
        rows = int(np.prod(shape[:-1]))
        return rows * n_blocks * (block * bits // 8 + block * bits % 8 // 4 + 2)

    for bits in (8, 4):
        want = 2 * sum(moment_bytes(s, bits) for s in shapes.values())
        assert per_param[bits] == pytest.approx(want / n, abs=16 / n), bits  # + the count
    # the documented figures: 2 x (1 + 2/128) and 2 x (1/2 + 2/128), plus the small
    # float32 leaves (0.2% of the params here)
    assert 2.03 <= per_param[8] <= 2.05 and 1.03 <= per_param[4] <= 1.05, per_param
    assert _state_bytes(jax.eval_shape(optax.adamw(1e-3).init, params)) / n >= 8.0


@pytest.mark.parametrize("bits", [8, 4])
def test_update_keeps_no_float_copy_of_the_state(bits):
    """The compiled update's temporaries stay below one float32 moment (4 bytes a
    param; Adam's float state is 8): the decoded and new moments are fused into
    the encoder, not materialised. Measured on XLA:CPU, jax 0.10.2, default
    block 128: 2.625 bytes/param at 8 bits, 1.625 at 4 bits (a copy of each
    moment's old codes, which the update reads after the new codes overwrite
    them, and 0.5 for the block maxima's column groups; before `unpack4` was
    fused, 4 bits also materialised the unpacked codes, 2.625; at block 256 XLA
    materialises the new moments, 10 bytes/param; optax.adam's own update keeps 4)."""
    params = {"w": jnp.ones((1024, 1024))}
    opt = so.quantized_state(optax.adam(1e-3), bits)
    compiled = jax.jit(opt.update, donate_argnums=(1,)).lower(
        params, opt.init(params), params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < {8: 3, 4: 2}[bits] * 1024 * 1024, temp / (1024 * 1024)


@pytest.mark.parametrize("bits", [8, 4])
def test_switching_to_low_bit_state_on_a_resumed_run(bits, tmp_path):
    """A float AdamW run saved with orbax after K steps, restored, switched with
    `quantize_state` and continued M steps with the wrapper: the same params, bit
    for bit, as switching in memory without the checkpoint (orbax round trips
    exactly), and within the parity bound of the uninterrupted float run
    (‖θ_q − θ_f‖ ≤ 4·Q·Σ‖Δθ‖, Q the top code step: (127² − 126²)/127² or
    (7² − 6²)/7²). The low-bit state then saves and restores too: continuing from
    the restored copy gives the same params and state, bit for bit."""
    from stam_optimizer import checkpoint

    K, M = 10, 10
    inner = optax.adamw(1e-2)
    wrapped = so.quantized_state(inner, bits, min_size=1)
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(16, 256)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(32,)), jnp.float32)}
    grads = [jax.tree.map(lambda p, t=t: p + jnp.sin(t * p), params) for t in range(K + M)]
    float_step, low_step = jax.jit(inner.update), jax.jit(wrapped.update)

    def run(step, p, s, gs):
        for g in gs:
            u, s = step(g, s, p)
            p = optax.apply_updates(p, u)
        return p, s

    p, s = run(float_step, params, inner.init(params), grads[:K])
    checkpoint.save(tmp_path / "float", p, s)
    p_r, s_r = checkpoint.restore(tmp_path / "float", inner, params)
    resumed, q_resumed = run(low_step, p_r, so.quantize_state(s_r, inner, p_r, bits, min_size=1),
                             grads[K:])
    in_memory, _ = run(low_step, p, so.quantize_state(s, inner, p, bits, min_size=1), grads[K:])
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(in_memory), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # against the uninterrupted float run
    pf, sf, path = p, s, 0.0
    for g in grads[K:]:
        u, sf = float_step(g, sf, pf)
        pf = optax.apply_updates(pf, u)
        path += float(optax.tree.norm(u))
    dist = float(optax.tree.norm(jax.tree.map(jnp.subtract, resumed, pf)))
    assert dist <= (4 * Q8 if bits == 8 else 4 * 13 / 49) * path, dist / path
    # the low-bit state through orbax
    checkpoint.save(tmp_path / "low", resumed, q_resumed)
    p2, q2 = checkpoint.restore(tmp_path / "low", wrapped, params)
    assert jax.tree.structure(q2) == jax.tree.structure(q_resumed)
    a = run(low_step, resumed, q_resumed, grads[:3])
    b = run(low_step, p2, q2, grads[:3])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

"""STAM against the float64 NumPy reference and against optax.adamw."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_stream, make_params, max_rel_err, run_against_reference
from reference import StamRef

import stam_optimizer as so

LR, WD = 1e-2, 0.05
F32_RTOL = 1e-5
BF16_RTOL = 3 * 2.0**-8  # three bfloat16 roundings: cast of u, + λθ, × lr


@pytest.mark.parametrize("threshold", [100.0, 2.0])
def test_matches_float64_reference(threshold):
    # threshold=2.0 makes the fallback branch fire on early steps (z ≈ 15 at t=0).
    refs = []

    def factory(shape):
        refs.append(StamRef(shape, LR, WD, threshold=threshold))
        return refs[-1]

    tx = so.stam(LR, weight_decay=WD, fallback_threshold=threshold, mu_dtype="float32")
    pairs, betas = run_against_reference(tx, factory, steps=120, lr=LR)
    for leaf, triples in pairs.items():
        rtol = BF16_RTOL if leaf == "half" else F32_RTOL
        assert max_rel_err(triples) <= rtol, leaf
    for leaf, bp in betas.items():
        ours, ref = np.array(bp).T
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=leaf)
    fallbacks = sum(r.fallbacks for r in refs)
    assert (fallbacks > 0) == (threshold == 2.0)
    used = np.concatenate([np.array(bp)[:, 1] for bp in betas.values()])
    assert np.ptp(used) > 0.05, "the stream should move β₁ well away from b1_base"


def _run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(params)
    return out


@pytest.mark.parametrize("b1", [0.9, 0.81])
def test_alpha_zero_is_adamw_float64(b1):
    with jax.enable_x64(True):
        dt = {k: jnp.float64 for k in make_params()}
        params = make_params(dtypes=dt)
        grads = gradient_stream(100, dtypes={k: jnp.float32 for k in dt})
        grads = [jax.tree.map(lambda x: x.astype(jnp.float64), g) for g in grads]
        ours = _run(so.stam(1e-2, b1_base=b1, adapt_strength=0.0, weight_decay=WD),
                    params, grads)
        ref = _run(optax.adamw(1e-2, b1=b1, b2=0.999, eps=1e-8, weight_decay=WD),
                   params, grads)
        for a, b in zip(ours, ref):
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("b1", [0.9, 0.81])
def test_alpha_zero_direction_is_adam_float32(b1):
    # optax forms 1 − 0.999**t in float32, 1.3e-5 off at t=1 (0.999 is not a
    # float32); we form it without cancellation. So in float32 the two agree to
    # optax's own error, and exactly in float64 (test above).
    params = make_params(dtypes={k: jnp.float32 for k in make_params()})
    ours_tx = so.scale_by_stam(b1_base=b1, adapt_strength=0.0)
    ref_tx = optax.scale_by_adam(b1=b1, b2=0.999, eps=1e-8)
    s1, s2 = ours_tx.init(params), ref_tx.init(params)
    ours, ref = jax.jit(ours_tx.update), jax.jit(ref_tx.update)
    for g in gradient_stream(100, dtypes={k: jnp.float32 for k in params}):
        u1, s1 = ours(g, s1, params)
        u2, s2 = ref(g, s2, params)
        for k in params:
            # normwise per tensor: elements where μ cancels carry the same
            # absolute error as their neighbours
            err = float(jnp.max(jnp.abs(u1[k] - u2[k]), initial=0.0))
            assert err <= 2e-5 * float(jnp.max(jnp.abs(u2[k]), initial=0.0)), k
    np.testing.assert_array_equal(np.asarray(s1.beta1), np.float32(b1))


def test_beta1_stays_in_bounds_and_moves():
    params = make_params()
    tx = so.stam(LR, adapt_strength=0.5)
    state = tx.init(params)
    lo = min(0.9, max(0.5, 0.9 * 0.5))
    seen = []
    step = jax.jit(tx.update)
    for g in gradient_stream(60):
        _, state = step(g, state, params)
        b = np.asarray(state[0].beta1)
        assert np.all(b >= lo - 1e-7) and np.all(b <= 0.9 + 1e-7)
        seen.append(b)
    assert np.ptp(np.array(seen)) > 0.1


@pytest.mark.parametrize("mu_dtype", ["bfloat16", jnp.float16, "float32"])
def test_mu_dtype_is_kept(mu_dtype):
    params = make_params()
    tx = so.stam(LR, mu_dtype=mu_dtype)
    state = tx.init(params)
    want = jnp.dtype(mu_dtype)
    for g in gradient_stream(3):
        u, state = jax.jit(tx.update)(g, state, params)
        for leaf in jax.tree.leaves(state[0].mu) + jax.tree.leaves(state[0].nu):
            assert leaf.dtype == want
        for k in params:
            assert u[k].dtype == params[k].dtype
            assert bool(jnp.all(jnp.isfinite(u[k])))

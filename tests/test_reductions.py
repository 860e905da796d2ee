"""`_reductions.tensor_sums` keeps the contract of `plain_tensor_sums`: the same
per-tensor sums (up to the order of float additions) and the same non-finite
flags, eager and jitted, on leaves of every size class it treats apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stam_optimizer import _reductions as red

# empty, tiny (< 64, not padded), small (padded stack), at the SMALL_SUM edge,
# large (one fused pass each), and large with a tail beyond SANITIZE_CHUNK
SHAPES = [(0,), (1,), (7, 9), (100,), (63, 65), (red.SMALL_SUM - 1,), (red.SMALL_SUM,),
          (40, 130), (red.SANITIZE_CHUNK + 1000,), (3, 17, 11)]
FNS = {
    "stam": (lambda g, m: (g - m) ** 2, lambda g, m: jnp.abs(g - m)),
    "lite": (lambda g: g, lambda g: g**2),
    "lite_energy": (lambda g, m: g, lambda g, m: g**2, lambda g, m: (g - m) ** 2),
}


def _leaves(seed: int, bad: dict[int, float]):
    rng = np.random.default_rng(seed)
    gs, mus = [], []
    for i, shape in enumerate(SHAPES):
        g = rng.standard_normal(shape).astype(np.float32) * (1 + i)
        if i in bad and g.size:
            g.reshape(-1)[rng.integers(g.size)] = bad[i]
        gs.append(jnp.asarray(g))
        mus.append(jnp.asarray(rng.standard_normal(shape).astype(np.float32)))
    return gs, mus


@pytest.mark.parametrize("fns", list(FNS))
@pytest.mark.parametrize("bad", [{}, {1: np.nan, 5: np.inf, 6: -np.inf, 8: np.nan}])
@pytest.mark.parametrize("jit", [False, True])
def test_tensor_sums_keep_the_plain_contract(fns, bad, jit):
    fs = FNS[fns]
    gs, mus = _leaves(len(bad), bad)
    others = [mus] if fs[0].__code__.co_argcount == 2 else []

    def fast(gs, others):
        return red.tensor_sums(fs, gs, others, jnp.float32)

    got = (jax.jit(fast) if jit else fast)(gs, others)
    want_sums, want_flags = red.plain_tensor_sums(fs, gs, others, jnp.float32)
    np.testing.assert_array_equal(got.flagged, want_flags)
    assert list(np.flatnonzero(np.asarray(want_flags))) == sorted(bad)
    for k, (a, b) in enumerate(zip(got.sums, want_sums)):
        assert np.all(np.isfinite(a)), k  # sanitised: every sum is finite
        scale = np.asarray([max(1.0, float(jnp.sum(jnp.abs(fs[k](*([red.sanitize(g, jnp.float32)]
                            + [o[i] for o in others])))))) for i, g in enumerate(gs)])
        # float32 sums of up to 66k terms added in another order: the difference is a
        # few ulps of sum|f| per addition level (measured up to 1.2e-6 here)
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-5,
                                   err_msg=f"sum {k}")
    # the leaves handed back are the inputs, unchanged
    for x, y in zip(got.gs, gs):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for row, want in zip(got.others, others):
        for x, y in zip(row, want):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_plain_contract_against_float64_numpy():
    gs, mus = _leaves(3, {4: np.nan})
    sums, flags = red.plain_tensor_sums(FNS["stam"], gs, [mus], jnp.float32)
    for i, (g, m) in enumerate(zip(gs, mus)):
        g64 = np.nan_to_num(np.asarray(g, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        m64 = np.asarray(m, np.float64)
        np.testing.assert_allclose(float(sums[0][i]), np.sum((g64 - m64) ** 2), rtol=1e-5)
        np.testing.assert_allclose(float(sums[1][i]), np.sum(np.abs(g64 - m64)), rtol=1e-5)
        assert bool(flags[i]) == (i == 4)


def test_nonfinite_sums_flags_exactly_the_bad_tensors():
    gs, _ = _leaves(0, {2: np.nan, 7: -np.inf})
    np.testing.assert_array_equal(red.nonfinite_sums(gs),
                                  [i in (2, 7) for i in range(len(SHAPES))])


@pytest.mark.parametrize("store_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("b1", [0.1, 0.9, 0.999])
def test_momentum_and_previous_keep_the_plain_contract(store_dtype, b1):
    rng = np.random.default_rng(3)
    m_prev = jnp.asarray(rng.standard_normal((64, 33)) * 3, store_dtype)
    g = jnp.asarray(rng.standard_normal((64, 33)), jnp.float32)
    b = jnp.float32(b1)
    fast = jax.jit(red.momentum_and_previous, static_argnums=3)(m_prev, g, b, jnp.float32)
    plain = jax.jit(red.plain_momentum_and_previous, static_argnums=3)(m_prev, g, b,
                                                                       jnp.float32)
    # the stored and read-back momentum are the same computation
    np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(plain[0]))
    np.testing.assert_array_equal(np.asarray(fast[1]), np.asarray(plain[1]))
    # the recovered m_prev: one rounding of the stored buffer (half its eps,
    # relative) and a few float32 roundings of the recovery, divided by b1
    m_new, gg = np.asarray(plain[1], np.float64), np.asarray(g, np.float64)
    bound = (0.5 * float(jnp.finfo(store_dtype).eps) * np.abs(m_new)
             + 4 * float(jnp.finfo(jnp.float32).eps) * (np.abs(m_new) + np.abs(gg))) / b1
    err = np.abs(np.asarray(fast[2], np.float64) - np.asarray(plain[2], np.float64))
    assert (err <= bound + 1e-30).all(), float((err - bound).max())

"""`_reductions.tensor_sums` keeps the contract of `plain_tensor_sums`: the same
per-tensor sums (up to the order of float additions) and the same non-finite
flags, eager and jitted, on leaves of every size class it treats apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stam_optimizer import _reductions
from stam_optimizer._common import sanitize

# empty, tiny (< 64, not padded), small (padded stack), at the SMALL_SUM edge,
# large (one fused pass each), and large with a tail beyond SANITIZE_CHUNK
SMALL, CHUNK = _reductions.SMALL_SUM, _reductions.SANITIZE_CHUNK
SHAPES = [(0,), (1,), (7, 9), (100,), (63, 65), (SMALL - 1,), (SMALL,), (40, 130),
          (CHUNK + 1000,), (3, 17, 11)]
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
        summed = _reductions.tensor_sums(fs, gs, others, jnp.float32)
        # the update's way to the leaves: map_leaves hands over g and the others
        back, rows = summed.map_leaves(lambda g, *o: (g, *o))
        return summed.sums, summed.flagged, back, rows

    got_sums, got_flagged, got_gs, got_others = (jax.jit(fast) if jit else fast)(gs, others)
    want_sums, want_flags = _reductions.plain_tensor_sums(fs, gs, others, jnp.float32)
    np.testing.assert_array_equal(got_flagged, want_flags)
    assert list(np.flatnonzero(np.asarray(want_flags))) == sorted(bad)
    for k, (a, b) in enumerate(zip(got_sums, want_sums)):
        assert np.all(np.isfinite(a)), k  # sanitised: every sum is finite
        scale = np.asarray([max(1.0, float(jnp.sum(jnp.abs(fs[k](*([sanitize(g, jnp.float32)]
                            + [o[i] for o in others])))))) for i, g in enumerate(gs)])
        # float32 sums of up to 66k terms added in another order: the difference is a
        # few ulps of sum|f| per addition level (measured up to 1.2e-6 here)
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-5,
                                   err_msg=f"sum {k}")
    # the leaves handed back are the inputs, unchanged
    for x, y in zip(got_gs, gs):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert len(got_others) == len(others)
    for row, want in zip(got_others, others):
        for x, y in zip(row, want):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_plain_contract_against_float64_numpy():
    gs, mus = _leaves(3, {4: np.nan})
    sums, flags = _reductions.plain_tensor_sums(FNS["stam"], gs, [mus], jnp.float32)
    for i, (g, m) in enumerate(zip(gs, mus)):
        g64 = np.nan_to_num(np.asarray(g, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        m64 = np.asarray(m, np.float64)
        np.testing.assert_allclose(float(sums[0][i]), np.sum((g64 - m64) ** 2), rtol=1e-5)
        np.testing.assert_allclose(float(sums[1][i]), np.sum(np.abs(g64 - m64)), rtol=1e-5)
        assert bool(flags[i]) == (i == 4)


def test_nonfinite_sums_flags_exactly_the_bad_tensors():
    gs, _ = _leaves(0, {2: np.nan, 7: -np.inf})
    np.testing.assert_array_equal(_reductions.nonfinite_sums(gs),
                                  [i in (2, 7) for i in range(len(SHAPES))])


def test_map_leaves_passes_the_extra_buffers_and_vectors_in_order():
    gs, mus = _leaves(1, {})
    nus = [m + 1 for m in mus]
    vec = jnp.arange(len(gs), dtype=jnp.float32)
    summed = _reductions.tensor_sums(FNS["stam"], gs, [mus], jnp.float32)
    us, (new_mus, new_nus) = summed.map_leaves(
        lambda g, mu, nu, v: (g + v, mu * 2, nu - v), [nus], (vec,))
    for i in range(len(gs)):
        np.testing.assert_array_equal(us[i], gs[i] + i)
        np.testing.assert_array_equal(new_mus[i], mus[i] * 2)
        np.testing.assert_array_equal(new_nus[i], nus[i] - i)

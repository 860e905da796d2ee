"""Factored AdamW against the float64 NumPy reference of docs/math.md (section
Factored AdamW), its identities with optax.adamw, the common rules, and the size
of its state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import make_params, max_rel_err, run_against_reference
from reference import FactoredAdamWRef

import stam_optimizer as so
from stam_optimizer.factored_adam import is_factored

LR, WD = 1e-2, 0.05


def _inner(state):
    """The `ScaleByFactoredAdamState` of an alias's chain."""
    return state[0]


@pytest.mark.parametrize("min_dim,factored", [
    (4, {"conv", "dense", "half"}),  # (3, 4, 5): three 4×5 matrices; (16, 8); (6, 4)
    (5, {"dense"}),                  # conv's 4 rows and half's 4 columns are too short
    (128, set()),                    # the default: nothing this small is factored
])
def test_matches_float64_reference(min_dim, factored):
    tx = so.factored_adamw(LR, weight_decay=WD, min_dim_to_factor=min_dim,
                           mu_dtype="float32")
    params = make_params()
    state = _inner(tx.init(params))
    for k, p in params.items():
        assert is_factored(p.shape, min_dim) == (k in factored), k
        if k in factored:
            assert state.nu_row[k].shape == p.shape[:-1]
            assert state.nu_col[k].shape == p.shape[:-2] + p.shape[-1:]
            assert state.nu[k].shape == (0,)
        else:
            assert state.nu[k].shape == p.shape
            assert state.nu_row[k].shape == state.nu_col[k].shape == (0,)
    pairs, _ = run_against_reference(
        tx, lambda shape: FactoredAdamWRef(shape, LR, WD, min_dim=min_dim), steps=120, lr=LR)
    for leaf, triples in pairs.items():
        rtol = 3 * 2.0**-8 if leaf == "half" else 1e-5
        assert max_rel_err(triples) <= rtol, leaf


def _adamw_steps(ours, params, grads):
    """Updates of `ours` and of optax.adamw (same b1, b2, eps, λ) on a gradient list."""
    ref = optax.adamw(1e-2, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.05,
                      mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    s1, s2, out = ours.init(params), ref.init(params), []
    for g in grads:
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        out.append((u1, u2))
        params = optax.apply_updates(params, u1)
    return out


def _ours(**kw):
    return so.factored_adamw(1e-2, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.05,
                             mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p), **kw)


def test_unfactored_leaves_are_optax_adamw():
    # float64, where optax's bias correction does not differ from ours
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        shapes = {"w": (6, 8), "b": (8,), "s": (), "t": (2, 3, 4)}
        params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
        grads = [{k: jnp.asarray(rng.normal(size=s) * 10.0 ** rng.uniform(-3, 1))
                  for k, s in shapes.items()} for _ in range(30)]
        for u1, u2 in _adamw_steps(_ours(), params, grads):
            for k in shapes:
                assert u1[k].dtype == jnp.float64
                np.testing.assert_allclose(np.asarray(u1[k]), np.asarray(u2[k]),
                                           rtol=1e-12, atol=1e-16)


def test_rank_one_squared_gradients_make_the_factored_leaf_adamw():
    # g_t = s_t · (x ⊗ y) with random signs: g² = s_t²·(x² ⊗ y²), one rank-one
    # pattern, so with factored_eps = 0 the factored ν is Adam's ν (docs/math.md)
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        shapes = {"w": (6, 8), "t": (3, 5, 7)}
        params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
        pattern = {k: np.einsum("...i,...j->...ij", rng.normal(size=s[:-1]),
                                rng.normal(size=s[:-2] + s[-1:])) for k, s in shapes.items()}
        grads = [{k: jnp.asarray(rng.lognormal() * pattern[k] * rng.choice([-1, 1], size=s))
                  for k, s in shapes.items()} for _ in range(30)]
        tx = _ours(min_dim_to_factor=2, factored_eps=0.0)
        assert _inner(tx.init(params)).nu["w"].shape == (0,)  # factored indeed
        for u1, u2 in _adamw_steps(tx, params, grads):
            for k in shapes:
                np.testing.assert_allclose(np.asarray(u1[k]), np.asarray(u2[k]),
                                           rtol=1e-10, atol=1e-16)


def test_factored_second_moment_is_rank_one_with_the_running_row_and_column_means():
    # after any steps, ν's row and column means are R and C (bias-corrected alike)
    rng = np.random.default_rng(2)
    tx = so.scale_by_factored_adam(min_dim_to_factor=2, factored_eps=0.0, eps=0.0)
    params = {"w": jnp.zeros((5, 7))}
    state = tx.init(params)
    for _ in range(4):
        g = {"w": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)}
        _, state = tx.update(g, state)
    row, col = np.asarray(state.nu_row["w"], np.float64), np.asarray(state.nu_col["w"], np.float64)
    nu = np.outer(row, col) / row.mean()
    np.testing.assert_allclose(nu.mean(axis=1), row, rtol=1e-6)
    np.testing.assert_allclose(nu.mean(axis=0), col, rtol=1e-6)
    np.testing.assert_allclose(row.mean(), col.mean(), rtol=1e-6)


def test_tiny_gradients_do_not_underflow_the_factored_second_moment():
    # g ~ 1e-15 in float32: R, C ~ 1e-33, R_i·C_j ~ 1e-66 would flush to 0 and
    # the update to inf; ν is formed as (R / mean(R)) ⊗ C instead (docs/math.md)
    rng = np.random.default_rng(3)
    shape = (6, 8)
    tx = so.factored_adamw(LR, weight_decay=0.0, eps=0.0, factored_eps=0.0,
                           min_dim_to_factor=2)
    ref = FactoredAdamWRef(shape, LR, 0.0, eps=0.0, factored_eps=0.0, min_dim=2)
    params = {"w": jnp.zeros(shape)}
    state = tx.init(params)
    for _ in range(3):
        g = (1e-15 * rng.normal(size=shape)).astype(np.float32)
        u, state = tx.update({"w": jnp.asarray(g)}, state, params)
        want, _, _ = ref.step(g.astype(np.float64), np.zeros(shape))
        assert np.isfinite(np.asarray(u["w"])).all()
        np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=0,
                                   atol=1e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize("shape", [(40, 3000), (2, 37, 5000), (3, 7, 9)])
def test_nan_path_row_and_column_sums_are_the_plain_ones(shape):
    # the chunked sums of a gradient with NaN entries against the plain statement
    from stam_optimizer.factored_adam import _row_col_sums

    rng = np.random.default_rng(5)
    g = rng.normal(size=shape).astype(np.float32)
    g.reshape(-1)[::97] = np.nan
    clean = np.where(np.isfinite(g), g, 0.0).astype(np.float64) ** 2
    rows, cols = jax.jit(_row_col_sums, static_argnums=2)(jnp.asarray(g), jnp.asarray(True),
                                                          jnp.float32)
    np.testing.assert_allclose(np.asarray(rows), clean.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(cols), clean.sum(-2), rtol=1e-5)


def test_zero_gradients_with_no_floor_give_a_zero_update():
    # factored_eps = 0 and g = 0: mean(R) = 0, where ν is 0 (not 0/0)
    tx = so.scale_by_factored_adam(min_dim_to_factor=2, factored_eps=0.0)
    params = {"w": jnp.zeros((3, 4))}
    u, state = tx.update({"w": jnp.zeros((3, 4))}, tx.init(params))
    np.testing.assert_array_equal(np.asarray(u["w"]), 0.0)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_overflowing_squares_give_a_zero_update_as_adam():
    # float32 g = 1e20: g² = inf, so R and C are inf and R/mean(R) is inf/inf;
    # ν is +inf there (docs/math.md), as Adam's ν, and u = 0 as in optax.adam
    params = {"w": jnp.zeros((3, 4))}
    g = {"w": jnp.full((3, 4), 1e20, jnp.float32).at[0, 0].set(1.0)}
    want, _ = optax.scale_by_adam().update(g, optax.scale_by_adam().init(params))
    for min_dim in (2, 5):  # factored, and not
        tx = so.scale_by_factored_adam(min_dim_to_factor=min_dim)
        u, _ = tx.update(g, tx.init(params))
        assert np.isfinite(np.asarray(u["w"])).all()
        np.testing.assert_array_equal(np.asarray(u["w"])[1:], np.asarray(want["w"])[1:])
        # [0, 0] (g = 1): its row and column overflowed when factored, not in Adam
        # (optax's float32 bias correction is off by ~1e-5 at the first step)
        assert float(u["w"][0, 0]) == pytest.approx(
            0.0 if min_dim == 2 else float(want["w"][0, 0]), rel=2e-5)


def test_nonfinite_gradient_entries_are_used_as_zero_and_counted():
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
              "t": jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
    tx = so.factored_adamw(LR, weight_decay=WD, min_dim_to_factor=4)
    update = jax.jit(tx.update)
    s_bad, s_clean = tx.init(params), tx.init(params)
    planted = [{"w": [(3, np.nan)], "b": [(0, np.inf)]}, {},
               {"t": [(7, -np.inf), (11, np.nan)], "w": [(0, np.inf)]}]
    for bad in planted:
        g = {k: rng.normal(size=p.shape).astype(np.float32) for k, p in params.items()}
        clean = {k: v.copy() for k, v in g.items()}
        for k, entries in bad.items():
            for i, value in entries:
                g[k].reshape(-1)[i] = value
                clean[k].reshape(-1)[i] = 0.0
        u_bad, s_bad = update(jax.tree.map(jnp.asarray, g), s_bad, params)
        u_clean, s_clean = update(jax.tree.map(jnp.asarray, clean), s_clean, params)
        # the NaN path sums a factored leaf's columns in another order (rounding)
        same = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=0)
        jax.tree.map(same, u_bad, u_clean)
        for name in ("mu", "nu_row", "nu_col", "nu"):
            jax.tree.map(same, getattr(_inner(s_bad), name), getattr(_inner(s_clean), name))
    counts = {k: int(v) for k, v in so.tree_nonfinite(s_bad, params).items()}
    assert counts == {"w": 2, "t": 1, "b": 1}
    assert {k: int(v) for k, v in so.tree_nonfinite(s_clean, params).items()} == \
        {"w": 0, "t": 0, "b": 0}


def test_jit_and_eager_agree():
    params = make_params()
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)).astype(p.dtype), params)
             for i in range(5)]
    tx = so.factored_adamw(LR, weight_decay=WD, min_dim_to_factor=4)
    update = jax.jit(tx.update)
    s_eager = s_jit = tx.init(params)
    for g in grads:
        u_eager, s_eager = tx.update(g, s_eager, params)
        u_jit, s_jit = update(g, s_jit, params)
        for a, b in zip(jax.tree.leaves((u_eager, s_eager)), jax.tree.leaves((u_jit, s_jit)),
                        strict=True):
            # XLA fuses the jitted update differently: float32 rounding apart,
            # measured against the leaf's largest entry
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.max(np.abs(a - b), initial=0.0) <= 1e-5 * np.max(np.abs(b), initial=0.0)


@pytest.mark.parametrize("kwargs,message", [
    ({"min_dim_to_factor": 0}, "min_dim_to_factor must be an integer >= 1"),
    ({"min_dim_to_factor": 2.5}, "min_dim_to_factor must be an integer >= 1"),
    ({"factored_eps": -1e-30}, "factored_eps must be in [0, inf)"),
    ({"b1": 1.0}, "b1 must be in (0, 1)"),
    ({"b2": 0.0}, "b2 must be in (0, 1)"),
    ({"eps": -1.0}, "eps must be in [0, inf)"),
    ({"weight_decay": -0.1}, "weight_decay must be in [0, inf)"),
    ({"mu_dtype": "int8"}, "mu_dtype must be one of float32, bfloat16, float16"),
])
def test_validation_names_the_argument_and_its_range(kwargs, message):
    with pytest.raises(ValueError) as info:
        so.factored_adamw(**kwargs)
    assert message in str(info.value)


def test_inject_hyperparams_reads_min_dim_to_factor_at_init():
    params = {"w": jnp.ones((4, 4))}
    grads = {"w": jnp.full((4, 4), 0.5)}
    plain = so.factored_adamw(1e-2, min_dim_to_factor=2)
    want, _ = plain.update(grads, plain.init(params), params)
    injected = optax.inject_hyperparams(so.factored_adamw)(learning_rate=1e-2,
                                                           min_dim_to_factor=2)
    state = injected.init(params)  # concrete here; update traces it and needs it not
    assert state.inner_state[0].nu["w"].shape == (0,)
    u, _ = jax.jit(injected.update)(grads, state, params)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(want["w"]), rtol=1e-6)
    # a jitted init traces it: then it must be static, and the error says so
    with pytest.raises(TypeError, match=r"static_args=\('min_dim_to_factor',\)"):
        jax.jit(injected.init)(params)
    static = optax.inject_hyperparams(so.factored_adamw, static_args=("min_dim_to_factor",))(
        learning_rate=1e-2, min_dim_to_factor=2)
    u, _ = jax.jit(static.update)(grads, jax.jit(static.init)(params), params)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(want["w"]), rtol=1e-6)


def _transformer_like(d=256, ff=1024, vocab=4096, layers=2):
    """A decoder's parameter tree (float32): embedding, per layer attention,
    MLP, norms and biases."""
    def layer():
        return {"ln1": jnp.zeros(d), "ln2": jnp.zeros(d),
                "q": jnp.zeros((d, d)), "k": jnp.zeros((d, d)), "v": jnp.zeros((d, d)),
                "o": jnp.zeros((d, d)), "up": jnp.zeros((d, ff)), "up_b": jnp.zeros(ff),
                "down": jnp.zeros((ff, d)), "down_b": jnp.zeros(d)}
    return {"embed": jnp.zeros((vocab, d)), "final_ln": jnp.zeros(d),
            "layers": [layer() for _ in range(layers)]}


def _nbytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_state_bytes_per_param():
    params = _transformer_like()
    n = sum(x.size for x in jax.tree.leaves(params))
    state = _inner(so.factored_adamw(1e-3).init(params))
    assert _nbytes(state.mu) == 4 * n  # μ: one float32 per parameter
    second = _nbytes((state.nu_row, state.nu_col, state.nu))
    # every matrix is factored: ν only for the vectors, R and C O(r + c) per matrix
    vectors = sum(x.size for x in jax.tree.leaves(params) if x.ndim == 1)
    sides = sum(sum(x.shape) for x in jax.tree.leaves(params) if x.ndim == 2)
    assert second == 4 * (vectors + sides)
    assert second / n < 0.03  # bytes per parameter besides μ (0.027 here)
    other = _nbytes(state) - _nbytes(state.mu) - second  # count and per-tensor counts
    assert other == 4 * (1 + len(jax.tree.leaves(params)))
    # against AdamW's 8 bytes per parameter
    assert _nbytes(state) / n < 4.03 and _nbytes(optax.adamw(1e-3).init(params)) / n > 8


def test_factored_statistics_are_rows_plus_columns():
    state = _inner(so.factored_adamw(1e-3).init({"w": jnp.zeros((384, 512), jnp.bfloat16)}))
    assert state.mu["w"].dtype == jnp.bfloat16  # μ in the param's dtype by default
    assert state.nu_row["w"].shape == (384,) and state.nu_col["w"].shape == (512,)
    assert state.nu_row["w"].dtype == state.nu_col["w"].dtype == jnp.float32
    assert state.nu["w"].size == 0

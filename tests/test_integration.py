"""The optimizers inside the JAX/optax machinery users combine them with."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_stream, make_params
from optimizers_under_test import ALIASES, HARNESS, QUANTIZED_STATE

import stam_optimizer as so
from stam_optimizer import _reductions

FACTORIES = {n: ALIASES[n] for n in HARNESS}  # tests/optimizers_under_test.py
# What the library's own optimizers guarantee beyond optax's (non-finite gradient
# entries used as 0, float16 state that saturates, params optional at weight
# decay 0): so.quantized_state(optax.adamw) does what optax.adamw does there.
OWN = [name for name in HARNESS if name not in QUANTIZED_STATE]


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_trees_close(a, b, rtol=1e-6):
    """Normwise per tensor: max|x − y| ≤ rtol·max|y|.

    Injected hyperparameters are float32 arrays, so `1 − b2` is formed in float32
    rather than in Python; elements where the momentum cancels then differ by the
    same absolute amount as their neighbours, not the same relative amount.
    """
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if y.size:
            assert np.max(np.abs(x - y)) <= rtol * np.max(np.abs(y)), (x, y)


@pytest.mark.parametrize("name", FACTORIES)
def test_jit_with_donation_compiles_once(name):
    tx = FACTORIES[name]()
    traces = 0

    def step(params, state, grads):
        nonlocal traces
        traces += 1
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params = make_params()
    state = tx.init(params)
    dtypes = jax.tree.map(lambda x: x.dtype, (params, state))
    for g in gradient_stream(4):
        params, state = step(params, state, g)
    assert traces == 1
    assert jax.tree.map(lambda x: x.dtype, (params, state)) == dtypes


@pytest.mark.parametrize("name", ["stam", "stam_lite", "adams"])
def test_inject_hyperparams_gives_the_same_results(name):
    kwargs = {"stam": dict(adapt_strength=0.3, b2=0.99),
              "stam_lite": dict(adapt_strength=0.3, beta1_update_interval=3),
              "adams": dict(b2=0.9)}[name]
    factory = {"stam": so.stam, "stam_lite": so.stam_lite, "adams": so.adams}[name]
    plain = factory(learning_rate=1e-2, **kwargs)
    injected = optax.inject_hyperparams(factory)(learning_rate=1e-2, **kwargs)
    # float32 params: optax casts injected values to one dtype for the whole tree
    f32 = {n: jnp.float32 for n in make_params()}
    params = make_params(dtypes=f32)
    s1, s2 = plain.init(params), injected.init(params)
    step1, step2 = jax.jit(plain.update), jax.jit(injected.update)
    for g in gradient_stream(12, dtypes=f32):
        u1, s1 = step1(g, s1, params)
        u2, s2 = step2(g, s2, params)
        _assert_trees_close(u1, u2, rtol=1e-5)
    if name != "adams":
        _assert_trees_close(so.tree_beta1(s1, params), so.tree_beta1(s2, params), rtol=1e-6)
    # the injected hyperparameters are live: halving the learning rate halves the step
    s2.hyperparams["learning_rate"] = jnp.asarray(5e-3)
    g = gradient_stream(1, seed=7, dtypes=f32)[0]
    u_half, _ = step2(g, s2, params)
    u_full, _ = step1(g, s1, params)
    np.testing.assert_allclose(u_half["dense"], 0.5 * u_full["dense"], rtol=1e-5)


def test_inject_hyperparams_with_static_callable_mask():
    mask = lambda p: {k: k != "bias" for k in p}  # noqa: E731
    tx = optax.inject_hyperparams(so.stam, static_args=("mask",))(
        learning_rate=1.0, weight_decay=0.5, mask=mask)
    params = make_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    u, _ = tx.update(zero, state, params)
    np.testing.assert_allclose(u["dense"], -0.5 * params["dense"], rtol=1e-6)
    np.testing.assert_array_equal(u["bias"], 0.0)


@pytest.mark.parametrize("name", FACTORIES)
def test_multisteps_equals_averaged_gradients(name):
    k = 3
    tx = FACTORIES[name]()
    multi = optax.MultiSteps(FACTORIES[name](), every_k_schedule=k)
    params = make_params(dtypes={n: jnp.float32 for n in make_params()})
    grads = gradient_stream(3 * k, dtypes={n: jnp.float32 for n in params})
    s, sm = tx.init(params), multi.init(params)
    p1 = p2 = params
    for i in range(0, len(grads), k):
        mean = jax.tree.map(lambda *g: sum(g) / k, *grads[i:i + k])
        u, s = tx.update(mean, s, p1)
        p1 = optax.apply_updates(p1, u)
        for g in grads[i:i + k]:
            u, sm = multi.update(g, sm, p2)
            p2 = optax.apply_updates(p2, u)
    _assert_trees_close(p1, p2, rtol=2e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_apply_if_finite_skips_a_bad_step(name):
    tx = optax.apply_if_finite(FACTORIES[name](), max_consecutive_errors=3)
    params = make_params()
    state = tx.init(params)
    step = jax.jit(tx.update)
    g0, g1 = gradient_stream(2)
    _, state = step(g0, state, params)
    bad = dict(g1, dense=g1["dense"].at[0, 0].set(jnp.nan))
    u, state_after = step(bad, state, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    _assert_trees_equal(state.inner_state, state_after.inner_state)
    u, state = step(g1, state_after, params)
    assert bool(jnp.any(u["dense"] != 0)) and int(state.notfinite_count) == 0


@pytest.mark.parametrize("name", FACTORIES)
def test_chain_with_clipping(name):
    chained = optax.chain(optax.clip_by_global_norm(1.0), FACTORIES[name]())
    plain = FACTORIES[name]()
    params = make_params(dtypes={n: jnp.float32 for n in make_params()})
    s1, s2 = chained.init(params), plain.init(params)
    for g in gradient_stream(5, dtypes={n: jnp.float32 for n in params}):
        norm = optax.tree.norm(g)
        factor = jnp.minimum(1.0, 1.0 / norm)
        clipped = jax.tree.map(lambda x, f=factor: x * f, g)
        u1, s1 = chained.update(g, s1, params)
        u2, s2 = plain.update(clipped, s2, params)
        _assert_trees_close(u1, u2, rtol=1e-5)


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_param_dtypes(name, dtype):
    params = make_params(dtypes={n: dtype for n in make_params()})
    tx = FACTORIES[name]()
    state = tx.init(params)
    step = jax.jit(tx.update)
    state_dtypes = jax.tree.map(lambda x: x.dtype, state)
    for g in gradient_stream(5, dtypes={n: jnp.float32 for n in params}):
        g = jax.tree.map(lambda x: x.astype(dtype), g)
        u, state = step(g, state, params)
        assert jax.tree.map(lambda x: x.dtype, state) == state_dtypes
        for k in params:
            assert u[k].dtype == dtype
            assert bool(jnp.all(jnp.isfinite(u[k])))
        params = optax.apply_updates(params, u)
    for s in so.find_states(state):
        assert s.beta1.dtype == jnp.float32


@pytest.mark.parametrize("name", OWN)
def test_non_finite_gradient_entries_never_reach_the_state(name):
    tx = FACTORIES[name]()
    # "big" is summed on its own in the recovery path, in one chunk of
    # SANITIZE_CHUNK elements and a tail (a NaN in each), the small leaves together.
    assert 300 * 256 // _reductions.SANITIZE_CHUNK == 1 and 300 * 256 % _reductions.SANITIZE_CHUNK
    rng = np.random.default_rng(5)
    params = dict(make_params(), big=jnp.asarray(rng.normal(size=(300, 256)), jnp.float32))
    g0, g1, g2 = (dict(g, big=jnp.asarray(rng.normal(size=(300, 256)), jnp.float32))
                  for g in gradient_stream(3))
    bad = dict(g1)
    bad["dense"] = g1["dense"].at[0, 0].set(jnp.nan).at[1, 1].set(jnp.inf).at[2, 2].set(-jnp.inf)
    bad["scalar"] = jnp.asarray(jnp.nan, jnp.float32)
    bad["big"] = g1["big"].at[3, 7].set(jnp.nan).at[290, 1].set(-jnp.inf)
    zeroed = dict(g1)
    zeroed["dense"] = g1["dense"].at[0, 0].set(0).at[1, 1].set(0).at[2, 2].set(0)
    zeroed["scalar"] = jnp.asarray(0.0, jnp.float32)
    zeroed["big"] = g1["big"].at[3, 7].set(0).at[290, 1].set(0)
    s = tx.init(params)
    _, s = tx.update(g0, s, params)
    u_bad, s_bad = tx.update(bad, s, params)
    u_zero, s_zero = tx.update(zeroed, s, params)
    # The bad step is recorded in the count of non-finite steps, and only there.
    assert {k: int(v) for k, v in so.tree_nonfinite(s_bad, params).items()} == {
        k: int(k in ("dense", "scalar", "big")) for k in params}
    assert all(int(v) == 0 for v in jax.tree.leaves(so.tree_nonfinite(s_zero, params)))
    s_bad_uncounted = jax.tree.map(
        lambda x: x._replace(nonfinite=jnp.zeros_like(x.nonfinite))
        if hasattr(x, "nonfinite") else x, s_bad, is_leaf=lambda x: hasattr(x, "nonfinite"))
    # The tensor sums of a gradient with non-finite entries are recomputed from
    # the sanitised gradient (small tensors in one segment sum), in another
    # summation order than the clean path's: equal up to float32 summation
    # rounding, not bit for bit.
    _assert_trees_close(s_bad_uncounted, s_zero, rtol=1e-6)
    _assert_trees_close(u_bad, u_zero, rtol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s_bad))
    u, s_next = tx.update(g2, s_bad, params)  # training goes on normally
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, s_next)))
    assert bool(jnp.any(u["dense"] != u_bad["dense"]))


@pytest.mark.parametrize("name", FACTORIES)
def test_empty_and_scalar_leaves(name):
    params = {"empty": jnp.zeros((0,)), "also_empty": jnp.zeros((3, 0)), "s": jnp.asarray(1.0)}
    tx = FACTORIES[name]()
    state = tx.init(params)
    for _ in range(3):
        g = {"empty": jnp.zeros((0,)), "also_empty": jnp.zeros((3, 0)), "s": jnp.asarray(0.5)}
        u, state = jax.jit(tx.update)(g, state, params)
    assert u["empty"].shape == (0,) and u["also_empty"].shape == (3, 0)
    assert bool(jnp.isfinite(u["s"])) and float(u["s"]) != 0.0
    for s in so.find_states(state):
        fields = s._asdict()
        for key in ("sigma2", "tau", "a", "b"):
            if key in fields:  # the empty leaves (first two in leaf order) never moved
                assert np.all(np.asarray(fields[key])[:2] == 0.0)
        assert np.all(np.asarray(s.beta1_prod)[:2] == 1.0)
    assert so.tree_beta1(so.stam().init({}), {}) == {}
    u, _ = so.stam().update({}, so.stam().init({}), {})
    assert u == {}


@pytest.mark.parametrize("name", OWN)
def test_params_are_required_for_weight_decay(name):
    tx = FACTORIES[name]()
    params = make_params()
    with pytest.raises(ValueError, match="weight_decay"):
        tx.update(gradient_stream(1)[0], tx.init(params))
    no_decay = FACTORIES[name](weight_decay=0.0)
    u, _ = no_decay.update(gradient_stream(1)[0], no_decay.init(params))
    assert jax.tree.structure(u) == jax.tree.structure(params)


@pytest.mark.parametrize("name", FACTORIES)
def test_checkpoint_round_trip_continues_bit_identically(name, tmp_path):
    tx = FACTORIES[name]()
    step = jax.jit(tx.update)
    params = make_params()
    grads = gradient_stream(10)
    state = tx.init(params)
    p = params
    for g in grads[:5]:
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
    leaves, treedef = jax.tree.flatten((p, state))
    # raw bytes plus dtype names: numpy's .npz cannot name bfloat16 itself
    raw = {f"leaf{i}": np.asarray(x).reshape(-1).view(np.uint8) for i, x in enumerate(leaves)}
    meta = [(str(x.dtype), x.shape) for x in leaves]
    np.savez(tmp_path / "ckpt.npz", **raw)
    with np.load(tmp_path / "ckpt.npz") as f:
        restored = [jnp.asarray(f[f"leaf{i}"].view(jnp.dtype(dt)).reshape(shape))
                    for i, (dt, shape) in enumerate(meta)]
    p2, state2 = jax.tree.unflatten(treedef, restored)
    for g in grads[5:]:
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
        u2, state2 = step(g, state2, p2)
        p2 = optax.apply_updates(p2, u2)
    _assert_trees_equal((p, state), (p2, state2))


def test_learning_rate_schedule_and_tree_beta1_in_chain():
    sched = optax.linear_schedule(1e-2, 0.0, 10)
    tx = optax.chain(optax.clip_by_global_norm(1.0), so.stam(sched))
    params = make_params()
    state = tx.init(params)
    for g in gradient_stream(10):
        u, state = tx.update(g, state, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tx.update(g, state, params)[0]))
    b1 = so.tree_beta1(state, params)
    assert jax.tree.structure(b1) == jax.tree.structure(params)
    assert 0.5 <= float(b1["dense"]) <= 0.9

"""tree_beta1 finds the adaptive β₁ wherever the state is nested."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_stream, make_params

import stam_optimizer as so


def _last_beta1(state):
    (found,) = so.find_states(state)
    return np.asarray(found.beta1)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda tx: tx,
        lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx),
        lambda tx: optax.MultiSteps(tx, every_k_schedule=1),
        lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=2),
        lambda tx: optax.inject_hyperparams(lambda learning_rate: tx)(learning_rate=1e-3),
    ],
    ids=["plain", "chain", "multisteps", "apply_if_finite", "inject"],
)
@pytest.mark.parametrize("factory", [so.stam, so.stam_lite])
def test_tree_beta1_through_wrappers(wrap, factory):
    params = make_params()
    tx = wrap(factory(1e-2, adapt_strength=0.5))
    state = tx.init(params)
    b0 = so.tree_beta1(state, params)
    assert all(float(v) == pytest.approx(0.9) for v in jax.tree.leaves(b0))
    for g in gradient_stream(6):
        _, state = tx.update(g, state, params)
    b1 = so.tree_beta1(state, params)
    assert jax.tree.structure(b1) == jax.tree.structure(params)
    flat = [float(v) for v in jax.tree.leaves(b1)]  # leaf order = the vector's order
    np.testing.assert_allclose(flat, _last_beta1(state), rtol=0)
    assert min(flat) < 0.9  # β₁ did adapt on some leaf


def test_masked_leaves_read_nan_and_multi_transform_merges():
    params = make_params()
    labels = {k: ("lite" if k in ("bias", "scalar") else "full") for k in params}
    tx = optax.multi_transform({"full": so.stam(1e-2), "lite": so.stam_lite(1e-2)}, labels)
    state = tx.init(params)
    for g in gradient_stream(3):
        _, state = tx.update(g, state, params)
    b1 = so.tree_beta1(state, params)
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(b1))

    masked = optax.masked(so.stam(1e-2), {k: k != "bias" for k in params})
    state = masked.init(params)
    _, state = masked.update(gradient_stream(1)[0], state, params)
    b1 = so.tree_beta1(state, params)
    assert np.isnan(float(b1["bias"])) and np.isfinite(float(b1["dense"]))


def test_clear_errors():
    params = make_params()
    with pytest.raises(ValueError, match="no STAM or STAMLite state"):
        so.tree_beta1(optax.adamw(1e-3).init(params), params)
    state = so.stam().init(params)
    with pytest.raises(ValueError, match="covers 6 leaves but params has 1"):
        so.tree_beta1(state, {"w": jnp.zeros(2)})


def test_unique_field_name_for_optax_tree_get():
    params = make_params()
    tx = so.stam(optax.linear_schedule(1e-2, 0.0, 10))  # two `count` fields in the chain
    state = tx.init(params)
    vec = optax.tree.get(state, "beta1")
    assert vec.shape == (len(jax.tree.leaves(params)),)


# --- the count of steps with non-finite gradient entries ---------------------------

COUNTED = {
    "stam": lambda: so.stam(1e-2),
    "stam_bf16": lambda: so.stam(1e-2, mu_dtype="bfloat16"),
    "stam_lite": lambda: so.stam_lite(1e-2),
    "stam_lite_bf16": lambda: so.stam_lite(1e-2, state_dtype="bfloat16"),
    "stam_lite_f16": lambda: so.stam_lite(1e-2, state_dtype="float16"),
    "stam_lite_int8": lambda: so.stam_lite(1e-2, state_dtype="int8", min_quantized_size=16),
    "adams": lambda: so.adams(1e-2),
}

# Per step: the non-finite entries to plant, as (leaf, flat index, value).
PLANTED = [
    [("dense", 3, np.nan)],
    [],
    [("dense", 0, np.inf), ("dense", 5, -np.inf), ("conv", 7, np.nan)],
    [("bias", 1, -np.inf), ("scalar", 0, np.nan)],
    [("dense", 2, np.nan), ("dense", 9, np.nan), ("half", 0, np.inf)],
]


def _planted_stream():
    grads, expected = [], {k: 0 for k in make_params()}
    for g, bad in zip(gradient_stream(len(PLANTED)), PLANTED):
        g = {k: np.array(v) for k, v in g.items()}
        for leaf, i, value in bad:
            g[leaf].reshape(-1)[i] = value
        for leaf in {leaf for leaf, _, _ in bad}:
            expected[leaf] += 1
        grads.append({k: jnp.asarray(v) for k, v in g.items()})
    return grads, expected


def _counted_state(state):
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "nonfinite"))
             if hasattr(s, "nonfinite")]
    (inner,) = found
    return inner


@pytest.mark.parametrize("name", COUNTED)
def test_nonfinite_steps_are_counted_per_tensor(name):
    params = make_params()
    tx = COUNTED[name]()
    state = tx.init(params)
    assert all(int(v) == 0 for v in jax.tree.leaves(so.tree_nonfinite(state, params)))
    grads, expected = _planted_stream()
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(g, state, params)
        assert all(np.isfinite(np.asarray(u, np.float32)).all()
                   for u in jax.tree.leaves(updates))
    counts = so.tree_nonfinite(state, params)
    assert {k: int(v) for k, v in counts.items()} == expected
    assert expected["empty"] == 0 and expected["dense"] == 3  # the stream's own check
    inner = _counted_state(state)
    # one int32 per tensor, whatever the arguments
    assert "nonfinite" in inner._fields
    assert inner.nonfinite.dtype == jnp.int32
    assert inner.nonfinite.shape == (len(jax.tree.leaves(params)),)


def test_nonfinite_count_through_wrappers_and_masks():
    params = make_params()
    grads, expected = _planted_stream()
    decays = {k: k != "bias" for k in params}
    for tx in [
        optax.chain(optax.scale(2.0), so.stam(1e-2, mask=decays)),
        optax.inject_hyperparams(so.stam_lite)(learning_rate=1e-2),
        optax.multi_transform({"a": so.stam(1e-2), "b": so.adams(1e-2)},
                              {k: "a" if k in ("dense", "conv") else "b" for k in params}),
    ]:
        state = tx.init(params)
        for g in grads:
            _, state = tx.update(g, state, params)
        counts = so.tree_nonfinite(state, params)
        assert {k: int(v) for k, v in counts.items()} == expected

    masked = optax.masked(so.adams(1e-2), {k: k != "bias" for k in params})
    state = masked.init(params)
    for g in grads:
        _, state = masked.update(g, state, params)
    counts = so.tree_nonfinite(state, params)
    assert int(counts["bias"]) == -1  # no optimizer of ours handles it
    assert {k: int(v) for k, v in counts.items() if k != "bias"} == {
        k: v for k, v in expected.items() if k != "bias"}


@pytest.mark.parametrize("factory", [so.stam, so.stam_lite, so.adams])
def test_large_finite_gradients_are_not_counted(factory):
    # What the state docstrings promise: finite entries count only when a
    # statistic overflows float32 (|g| ≳ 1.8e19 squared, or a sum ≳ 3.4e38).
    params = {"w": jnp.zeros(4), "v": jnp.zeros(4)}
    tx = factory(1e-3)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full(4, 1e15), "v": jnp.full(4, -1e15)}, state, params)
    counts = so.tree_nonfinite(state, params)
    assert int(counts["w"]) == 0 and int(counts["v"]) == 0
    big = 1e20 if factory is not so.adams else 3e38
    _, state = tx.update({"w": jnp.full(4, big), "v": jnp.ones(4)}, state, params)
    counts = so.tree_nonfinite(state, params)
    assert int(counts["w"]) == 1 and int(counts["v"]) == 0


def test_nonfinite_count_saturates():
    params = {"w": jnp.ones(3)}
    for tx in (so.stam(), so.stam_lite(), so.adams()):
        state = tx.init(params)
        big = jnp.full_like(state[0].nonfinite, jnp.iinfo(jnp.int32).max)
        state = (state[0]._replace(nonfinite=big), *state[1:])  # chain: direction first
        _, state = tx.update({"w": jnp.array([jnp.nan, 1.0, 1.0])}, state, params)
        assert int(_counted_state(state).nonfinite[0]) == jnp.iinfo(jnp.int32).max


def test_tree_nonfinite_clear_errors():
    params = make_params()
    with pytest.raises(ValueError, match="no STAM, STAMLite, AdamS or factored AdamW"):
        so.tree_nonfinite(optax.adamw(1e-3).init(params), params)
    with pytest.raises(ValueError, match="covers 6 leaves but params has 1"):
        so.tree_nonfinite(so.adams().init(params), {"w": jnp.zeros(2)})


def test_docstring_examples_run():
    import doctest

    from stam_optimizer import diagnostics

    result = doctest.testmod(diagnostics, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0, result

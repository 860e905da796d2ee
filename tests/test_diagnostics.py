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

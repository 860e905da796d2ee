"""The 0.1.0 Quick Start runs unchanged; the classes mirror the optax aliases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stam_optimizer as so


def _training_loop(get_params, steps=50):
    """Yields gradients of a least-squares loss at the loop's current params."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 10)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)  # noqa: E731
    for _ in range(steps):
        yield jax.grad(loss)(get_params())
    yield None  # marker for the final loss below


def _loss(params):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 10)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
    return float(jnp.mean((x @ params["w"] + params["b"] - y) ** 2))


def test_quick_start_stam_unchanged():
    ns = {}
    training_loop = (g for g in _training_loop(lambda: ns["params"]) if g is not None)
    # --- the 0.1.0 Quick Start, verbatim from here ---
    from stam_optimizer import STAM  # noqa: I001  (kept in the Quick Start's order)
    import jax  # noqa: F811

    # Initialize optimizer
    optimizer = STAM(
        learning_rate=1e-3,
        b1_base=0.9,           # base momentum
        b2=0.999,              # second moment decay
        weight_decay=0.01,     # decoupled weight decay
        adapt_strength=0.2     # adaptation strength [0, 0.5]
    )

    # Initialize state
    params = {'w': jax.numpy.zeros((10, 5)), 'b': jax.numpy.zeros(5)}
    ns["params"] = params
    state = optimizer.init(params)

    # Training loop
    for grads in training_loop:
        updates, state = optimizer.update(grads, state, params)
        params = jax.tree_util.tree_map(lambda p, u: p - u, params, updates)
        ns["params"] = params  # (test harness: lets the loop see the new params)
    # --- end of Quick Start ---
    assert _loss(params) < _loss({'w': jnp.zeros((10, 5)), 'b': jnp.zeros(5)})


def test_quick_start_stam_lite_unchanged():
    ns = {}
    training_loop = (g for g in _training_loop(lambda: ns["params"]) if g is not None)
    from stam_optimizer import STAMLite  # noqa: I001
    import jax  # noqa: F811

    optimizer = STAMLite(
        learning_rate=1e-3,
        b1_base=0.9,
        weight_decay=0.01,
        adapt_strength=0.2
    )

    params = {'w': jax.numpy.zeros((10, 5)), 'b': jax.numpy.zeros(5)}
    ns["params"] = params
    state = optimizer.init(params)

    for grads in training_loop:
        updates, state = optimizer.update(grads, state, params)
        params = jax.tree_util.tree_map(lambda p, u: p - u, params, updates)
        ns["params"] = params
    assert _loss(params) < _loss({'w': jnp.zeros((10, 5)), 'b': jnp.zeros(5)})


@pytest.mark.parametrize(
    "cls,alias,kwargs",
    [
        (so.STAM, so.stam, dict(adapt_strength=0.3, tau_decay=0.95, b2=0.99)),
        (so.STAMLite, so.stam_lite, dict(moment_decay=0.9, beta1_update_interval=2,
                                          state_dtype=jnp.bfloat16)),
    ],
)
def test_class_updates_are_the_negated_alias_updates(cls, alias, kwargs):
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    opt, tx = cls(learning_rate=1e-2, **kwargs), alias(learning_rate=1e-2, **kwargs)
    s1, s2 = opt.init(params), tx.init(params)
    for i in range(5):
        value = (-1.0) ** i * (i + 1)
        g = jax.tree.map(lambda p, v=value: jnp.full_like(p, v), params)
        u1, s1 = opt.update(g, s1, params)
        u2, s2 = tx.update(g, s2, params)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_allclose(a, -b, rtol=1e-6)
        params = jax.tree.map(lambda p, u: p - u, params, u1)
    assert optax.tree.get(s1, "beta1").shape == (2,)


def test_class_validates_like_the_alias():
    with pytest.raises(ValueError, match="adapt_strength"):
        so.STAM(adapt_strength=0.7)
    with pytest.raises(ValueError, match="beta1_update_interval"):
        so.STAMLite(beta1_update_interval=0)

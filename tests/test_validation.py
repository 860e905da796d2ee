"""Invalid hyperparameters raise ValueError naming the argument and the range."""

import jax
import jax.numpy as jnp
import optax
import pytest

import stam_optimizer as so

CASES = [
    (so.stam, "b1_base", [0.0, 1.0, 1.5, -0.1, float("nan")], "(0, 1)"),
    (so.stam, "b2", [0.0, 1.0, 2.0], "(0, 1)"),
    (so.stam, "eps", [-1e-8], "[0, inf)"),
    (so.stam, "weight_decay", [-0.01], "[0, inf)"),
    (so.stam, "adapt_strength", [-0.1, 0.51, 1.0], "[0, 0.5]"),
    (so.stam, "tau_decay", [0.0, 1.0], "(0, 1)"),
    (so.stam, "fallback_threshold", [0.0, -1.0], "(0, inf)"),
    (so.stam, "learning_rate", [-1e-3], "[0, inf)"),
    (so.stam, "b1_min", [0.95, 0.0], "(0, b1_base]"),
    (so.stam, "mu_dtype", ["int8", "float64", "bogus"], "float32, bfloat16, float16"),
    (so.stam_lite, "b1_base", [0.0, 1.0], "(0, 1)"),
    (so.stam_lite, "eps", [-1.0], "[0, inf)"),
    (so.stam_lite, "weight_decay", [-1.0], "[0, inf)"),
    (so.stam_lite, "adapt_strength", [0.6], "[0, 0.5]"),
    (so.stam_lite, "moment_decay", [0.0, 1.0], "(0, 1)"),
    (so.stam_lite, "beta1_update_interval", [0, -3, 2.5], "integer >= 1"),
    (so.stam_lite, "state_dtype", ["int4", "float64", "nope", jnp.int32],
     "float32, bfloat16, float16"),
    (so.stam_lite, "b1_min", [0.91], "(0, b1_base]"),
    (so.adams, "b1", [0.0, 1.0], "(0, 1)"),
    (so.adams, "b2", [1.0, -0.5], "(0, 1)"),
    (so.adams, "eps", [-1.0], "[0, inf)"),
    (so.adams, "weight_decay", [-1.0], "[0, inf)"),
]


@pytest.mark.parametrize("factory,arg,bad_values,allowed", CASES,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in CASES])
def test_invalid_values_raise(factory, arg, bad_values, allowed):
    for bad in bad_values:
        with pytest.raises(ValueError) as info:
            factory(**{arg: bad})
        msg = str(info.value)
        assert arg in msg and allowed in msg, msg


@pytest.mark.parametrize("factory", [so.stam, so.stam_lite, so.adams])
def test_defaults_and_edges_are_accepted(factory):
    factory()
    factory(eps=0.0, weight_decay=0.0, learning_rate=0.0)
    factory(learning_rate=optax.cosine_decay_schedule(1e-3, 100))


def test_edges_of_adaptation_ranges_are_accepted():
    so.stam(adapt_strength=0.0)
    so.stam(adapt_strength=0.5, b1_min=0.9)
    so.stam_lite(beta1_update_interval=1, state_dtype=jnp.dtype("bfloat16"))


def test_validation_stands_aside_for_traced_values():
    # inject_hyperparams re-calls the factory with tracers inside update
    for factory in (so.stam, so.stam_lite, so.adams):
        tx = optax.inject_hyperparams(factory)(learning_rate=1e-3)
        params = {"w": jnp.ones(3)}
        state = tx.init(params)
        jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)

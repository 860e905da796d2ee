"""Property tests: finite updates and β₁ bounds over 40 orders of magnitude."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optimizers_under_test import ADAPTIVE, ALIASES, QUANTIZED_STATE, alias

import stam_optimizer as so

SHAPES = {"m": (7, 5), "v": (11,), "s": ()}
ALPHA = 0.5
B1_BASE = 0.9
B1_MIN = min(B1_BASE, max(0.5, B1_BASE * (1 - ALPHA)))


@functools.cache
def _runner(name):
    """One compiled program per optimizer: 12 steps under lax.scan."""
    kwargs = {"adapt_strength": ALPHA} if name in ADAPTIVE else {}
    if name in ("stam_lite", "stam_lite_energy"):
        kwargs["beta1_update_interval"] = 2
    tx = alias(name, 1e-3, **kwargs)

    @jax.jit
    def run(params, grads):
        def step(state, g):
            u, state = tx.update(g, state, params)
            beta = [s.beta1 for s in so.find_states(state)]
            return state, (u, beta)

        return jax.lax.scan(step, tx.init(params), grads)[1]

    return run


@settings(max_examples=25, deadline=None)
@given(
    log_scale=st.floats(min_value=-20, max_value=20),
    seed=st.integers(0, 2**31 - 1),
    offset=st.floats(min_value=-3, max_value=3),
)
# The β₁ rules' property (built with adapt_strength): not the wrapped optax.adamw's.
@pytest.mark.parametrize("name", [n for n in ALIASES if n not in QUANTIZED_STATE])
def test_finite_updates_and_beta1_bounds(name, log_scale, seed, offset):
    rng = np.random.default_rng(seed)
    scale = 10.0**log_scale
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    grads = {k: jnp.asarray(scale * (offset + rng.normal(size=(12, *s))), jnp.float32)
             for k, s in SHAPES.items()}
    updates, betas = _runner(name)(params, grads)
    for u in jax.tree.leaves(updates):
        assert bool(jnp.all(jnp.isfinite(u)))
    for b in betas:
        b = np.asarray(b)
        assert np.all(b >= np.float32(B1_MIN)) and np.all(b <= np.float32(B1_BASE))

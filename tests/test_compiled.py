"""Properties of the compiled update program itself (not of its numbers)."""

import math
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import stam_optimizer as so

FACTORIES = {
    "stam": lambda: so.stam(1e-3),
    "stam_lite": lambda: so.stam_lite(1e-3),
    "stam_lite_int8": lambda: so.stam_lite(1e-3, state_dtype="int8"),
    "adams": lambda: so.adams(1e-3),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_no_constant_grows_with_the_parameters(name):
    # A per-element constant (e.g. segment ids of the NaN path) would be baked
    # into the executable and cost seconds of compile on large models.
    params = {"w": jnp.ones((512, 600)), "v": jnp.ones((40, 30)), "b": jnp.ones((7,))}
    tx = FACTORIES[name]()

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    text = jax.jit(step).lower(params, tx.init(params), params).compile().as_text()
    sizes = [math.prod(int(d) for d in dims.split(",") if d)
             for dims in re.findall(r"= \w+\[([\d,]*)\]\S* constant\(", text)]
    assert sizes and max(sizes) < 1000, max(sizes)

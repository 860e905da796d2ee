"""AdamS against the float64 NumPy reference of docs/math.md (section AdamS)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params, max_rel_err, run_against_reference
from reference import AdamsRef

import stam_optimizer as so

LR, WD = 1e-2, 0.05


@pytest.mark.parametrize("b1,b2", [(0.9, 0.95), (0.8, 0.99)])
def test_matches_float64_reference(b1, b2):
    tx = so.adams(LR, b1=b1, b2=b2, weight_decay=WD, mu_dtype="float32")
    pairs, _ = run_against_reference(
        tx, lambda shape: AdamsRef(shape, LR, WD, b1=b1, b2=b2), steps=120, lr=LR)
    for leaf, triples in pairs.items():
        rtol = 3 * 2.0**-8 if leaf == "half" else 1e-5
        assert max_rel_err(triples) <= rtol, leaf


def test_uses_momentum_before_the_step():
    # One element, m_prev = 0 after init: v = (1−b2)·g², m = (1−b1)·g.
    tx = so.scale_by_adams(b1=0.9, b2=0.95, eps=0.0)
    state = tx.init({"w": jnp.zeros(())})
    u, state = tx.update({"w": jnp.asarray(2.0)}, state)
    np.testing.assert_allclose(u["w"], 0.1 * 2.0 / np.sqrt(0.05 * 4.0), rtol=1e-6)
    u, state = tx.update({"w": jnp.asarray(-1.0)}, state)
    m_prev = 0.2
    v = 0.95 * m_prev**2 + 0.05 * 1.0
    m = 0.9 * m_prev + 0.1 * -1.0
    np.testing.assert_allclose(u["w"], m / np.sqrt(v), rtol=1e-6)


def test_state_is_one_buffer():
    params = make_params()
    state = so.adams().init(params)
    n_state = sum(x.size for x in jax.tree.leaves(state))
    # one param-shaped buffer, plus one int32 count of non-finite steps per tensor
    assert n_state == sum(x.size for x in jax.tree.leaves(params)) + len(params)

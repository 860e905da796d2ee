"""signal="energy" of STAM and STAMLite against the float64 NumPy reference;
the `signal` argument's validation; the SPEC state carries its energy fields at 0."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_stream, make_params, max_rel_err, run_against_reference
from reference import StamLiteRef, StamRef

import stam_optimizer as so

LR, WD = 1e-2, 0.05
F32_RTOL = 1e-5
BF16_RTOL = 3 * 2.0**-8  # three bfloat16 roundings: cast of u, + λθ, × lr


def _check(pairs, betas, rtols):
    for leaf, triples in pairs.items():
        assert max_rel_err(triples) <= rtols.get(leaf, F32_RTOL), leaf
    for leaf, bp in betas.items():
        ours, ref = np.array(bp).T
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=leaf)
    used = np.concatenate([np.array(bp)[:, 1] for bp in betas.values() if bp])
    assert np.ptp(used) > 0.05, "the stream should move β₁ well away from b1_base"


def test_stam_energy_matches_float64_reference():
    tx = so.stam(LR, weight_decay=WD, mu_dtype="float32", signal="energy")
    pairs, betas = run_against_reference(
        tx, lambda shape: StamRef(shape, LR, WD, signal="energy"), steps=120, lr=LR)
    _check(pairs, betas, {"half": BF16_RTOL})


def test_stam_relative_matches_float64_reference():
    tx = so.stam(LR, weight_decay=WD, mu_dtype="float32", signal="relative")
    pairs, betas = run_against_reference(
        tx, lambda shape: StamRef(shape, LR, WD, signal="relative"), steps=120, lr=LR)
    _check(pairs, betas, {"half": BF16_RTOL})


def test_stam_lite_energy_matches_float64_reference():
    tx = so.stam_lite(LR, weight_decay=WD, adapt_strength=0.5, beta1_update_interval=3,
                      signal="energy")
    pairs, betas = run_against_reference(
        tx, lambda shape: StamLiteRef(shape, LR, WD, alpha=0.5, k=3, signal="energy"),
        steps=120, lr=LR)
    # the 0-d tensor: b̂ − â² cancels in the update's scale as for the SPEC signal
    # (see test_stam_lite.SCALAR_RTOL)
    _check(pairs, betas, {"half": BF16_RTOL, "scalar": 1e-4})


@pytest.mark.parametrize("factory", [so.stam, so.stam_lite, so.scale_by_stam,
                                     so.scale_by_stam_lite])
def test_signal_is_validated(factory):
    with pytest.raises(ValueError, match=r"signal must be one of 'spec', 'energy'.*'bogus'"):
        factory(signal="bogus")
    with pytest.raises(TypeError, match="signal must be a string"):
        factory(signal=1)


@pytest.mark.parametrize("factory", [so.stam_lite, so.scale_by_stam_lite])
def test_stam_lite_refuses_the_relative_signal(factory):
    with pytest.raises(ValueError, match="signal must be one of 'spec', 'energy', got 'relative'"):
        factory(signal="relative")


def test_energy_needs_a_float_state_dtype():
    with pytest.raises(ValueError, match="signal='energy' needs a float state_dtype"):
        so.stam_lite(state_dtype="int8", signal="energy")


@pytest.mark.parametrize("factory,fields", [(so.scale_by_stam, ("res_energy", "grad_energy")),
                                            (so.scale_by_stam_lite, ("res_energy",))])
def test_energy_fields_stay_zero_under_spec_and_fill_under_energy(factory, fields):
    params = make_params()
    grads = gradient_stream(3)
    states = {}
    for signal in ("spec", "energy"):
        tx = factory(signal=signal)
        state = tx.init(params)
        for g in grads:
            _, state = tx.update(g, state, params)
        states[signal] = state
    empty = sorted(params).index("empty")  # leaf order of a dict: sorted keys
    for f in fields:
        # same shapes under both signals (a checkpoint restores into either); zeros
        # under SPEC, and no zero-size array for a checkpointer to refuse
        unused = np.asarray(getattr(states["spec"], f))
        assert unused.shape == (len(params),) and np.all(unused == 0), unused
        filled = np.asarray(getattr(states["energy"], f))
        assert filled[empty] == 0 and np.all(np.delete(filled, empty) > 0), filled
    assert np.any(np.asarray(states["spec"].beta1) != np.asarray(states["energy"].beta1))


def test_energy_under_inject_hyperparams():
    tx = optax.inject_hyperparams(so.stam_lite)(learning_rate=1e-3, signal="energy")
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    u, state = jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)
    assert bool(jnp.all(jnp.isfinite(u["w"])))

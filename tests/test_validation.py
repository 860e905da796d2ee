"""Bad input: hyperparameters (TypeError for a wrong type, ValueError for a bad
value, naming the argument), Python and NumPy scalars as params, gradients whose
tree or shapes differ from the state's."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
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
    (so.stam_lite, "state_dtype", ["int16", "float64", "nope", jnp.int32],
     "float32, bfloat16, float16, int8, int4"),
    (so.stam_lite, "b1_min", [0.91], "(0, b1_base]"),
    (so.adams, "b1", [0.0, 1.0], "(0, 1)"),
    (so.adams, "b2", [1.0, -0.5], "(0, 1)"),
    (so.adams, "eps", [-1.0], "[0, inf)"),
    (so.adams, "weight_decay", [-1.0], "[0, inf)"),
    (so.factored_adamw, "b1", [0.0, 1.0], "(0, 1)"),
    (so.factored_adamw, "b2", [1.0, -0.5], "(0, 1)"),
    (so.factored_adamw, "eps", [-1.0], "[0, inf)"),
    (so.factored_adamw, "factored_eps", [-1e-30], "[0, inf)"),
    (so.factored_adamw, "min_dim_to_factor", [0, -2, 2.5], "integer >= 1"),
    (so.factored_adamw, "weight_decay", [-1.0], "[0, inf)"),
    (so.factored_adamw, "mu_dtype", ["int8", "float64"], "float32, bfloat16, float16"),
]


@pytest.mark.parametrize("factory,arg,bad_values,allowed", CASES,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in CASES])
def test_invalid_values_raise(factory, arg, bad_values, allowed):
    for bad in bad_values:
        with pytest.raises(ValueError) as info:
            factory(**{arg: bad})
        msg = str(info.value)
        assert arg in msg and allowed in msg, msg


@pytest.mark.parametrize("factory", [so.stam, so.stam_lite, so.adams, so.factored_adamw])
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
    for factory in (so.stam, so.stam_lite, so.adams, so.factored_adamw):
        tx = optax.inject_hyperparams(factory)(learning_rate=1e-3)
        params = {"w": jnp.ones(3)}
        state = tx.init(params)
        jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)


# --- Python scalars, types, injected hyperparameters, gradient trees ---------------

ALL_OPTIMIZERS = {
    "stam": lambda **kw: so.stam(**kw),
    "stam_lite": lambda **kw: so.stam_lite(**kw),
    "stam_lite_bf16": lambda **kw: so.stam_lite(state_dtype="bfloat16", **kw),
    "stam_lite_f16": lambda **kw: so.stam_lite(state_dtype="float16", **kw),
    "stam_lite_int8": lambda **kw: so.stam_lite(state_dtype="int8", min_quantized_size=4, **kw),
    "stam_lite_int4": lambda **kw: so.stam_lite(state_dtype="int4", min_quantized_size=4, **kw),
    "adams": lambda **kw: so.adams(**kw),
    "factored_adamw": lambda **kw: so.factored_adamw(min_dim_to_factor=2, **kw),
    "scale_by_stam": lambda **kw: so.scale_by_stam(**kw),
    "scale_by_stam_lite": lambda **kw: so.scale_by_stam_lite(**kw),
    "scale_by_adams": lambda **kw: so.scale_by_adams(**kw),
    "scale_by_factored_adam": lambda **kw: so.scale_by_factored_adam(min_dim_to_factor=2, **kw),
    "STAM": lambda **kw: so.STAM(**kw),
    "STAMLite": lambda **kw: so.STAMLite(**kw),
}


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_python_scalar_params_and_grads(name):
    # optax.adamw accepts {"s": 1.0}; so must every optimizer here.
    tx = ALL_OPTIMIZERS[name]()
    params = {"s": 1.0, "v": [2.0, -1.0]}
    state = tx.init(params)
    updates, state = tx.update({"s": 0.5, "v": [0.25, 1.0]}, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u in jax.tree.leaves(updates):
        assert u.dtype == jnp.float32 and np.isfinite(np.asarray(u)).all()
    updates, _ = tx.update({"s": 0.5, "v": [0.25, 1.0]}, state, params)  # a second step


def test_python_scalar_stam_matches_adamw():
    # exact in float64 (in float32 optax's bias correction is off by 1e-5)
    with jax.enable_x64(True):
        params, grads = {"s": 1.0}, [{"s": 0.5}, {"s": -2.0}]
        ours, ref = so.stam(1e-2, adapt_strength=0.0), optax.adamw(1e-2, weight_decay=0.01)
        s1, s2 = ours.init(params), ref.init(params)
        for g in grads:
            u1, s1 = ours.update(g, s1, params)
            u2, s2 = ref.update(g, s2, params)
            assert u1["s"].dtype == jnp.float64
            np.testing.assert_allclose(float(u1["s"]), float(u2["s"]), rtol=1e-12)


def _float_hyperparameters(factory):
    """Names of the arguments of `factory` whose default is a number (or b1_min)."""
    sig = inspect.signature(factory)
    names = [p.name for p in sig.parameters.values()
             if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)]
    return names + (["b1_min"] if "b1_min" in sig.parameters else [])


FACTORIES = [so.stam, so.stam_lite, so.adams, so.scale_by_stam, so.scale_by_stam_lite,
             so.scale_by_adams, so.STAM, so.STAMLite, so.factored_adamw,
             so.scale_by_factored_adam]
NUMERIC_CASES = [(f, arg) for f in FACTORIES for arg in _float_hyperparameters(
    f.__init__ if isinstance(f, type) else f)]


@pytest.mark.parametrize("factory,arg", NUMERIC_CASES,
                         ids=[f"{f.__name__}-{a}" for f, a in NUMERIC_CASES])
def test_wrong_types_raise_type_error_naming_the_argument(factory, arg):
    bad_values = ["0.9", "fast", [0.9], (0.9,), True, None, 1j, jnp.ones(2), np.ones((1,)),
                  jnp.array(True), {"x": 0.9}]
    if arg not in ("learning_rate", "weight_decay"):
        bad_values.append(lambda count: 0.9)  # schedules only where optax takes them
    if arg == "b1_min":
        bad_values.remove(None)  # None means the default
    for bad in bad_values:
        with pytest.raises(TypeError) as info:
            factory(**{arg: bad})
        assert arg in str(info.value), (bad, str(info.value))


def test_type_error_messages_read_well():
    with pytest.raises(TypeError, match=r"learning_rate must be a number or a schedule.*'fast'"):
        so.stam(learning_rate="fast")
    with pytest.raises(TypeError, match=r"learning_rate=1e-3 without quotes"):
        so.stam(learning_rate="1e-3")  # used to be accepted, then failed inside update
    with pytest.raises(TypeError, match=r"b1_base must be a number, got '0.9' \(str\)"):
        so.stam(b1_base="0.9")
    with pytest.raises(TypeError, match="schedules are accepted for learning_rate and"):
        so.adams(b2=optax.constant_schedule(0.9))


@pytest.mark.parametrize("factory,arg,bad", [
    (so.stam, "mu_dtype", 3), (so.adams, "mu_dtype", [jnp.float32]),
    (so.stam_lite, "state_dtype", 8), (so.stam_lite, "stochastic_rounding", "yes"),
    (so.stam_lite, "stochastic_rounding", 1), (so.stam_lite, "seed", "0"),
    (so.scale_by_stam_lite, "seed", 0.5j),
])
def test_wrong_types_of_other_arguments(factory, arg, bad):
    with pytest.raises(TypeError, match=arg):
        factory(**{arg: bad})


@pytest.mark.parametrize("convert", [np.float64, np.asarray, jnp.asarray,
                                     lambda x: jnp.asarray(x, jnp.float32)],
                         ids=["numpy_scalar", "numpy_0d", "jax", "jax_f32"])
@pytest.mark.parametrize("factory", [so.stam, so.stam_lite, so.adams, so.factored_adamw])
def test_numbers_of_every_kind_are_accepted(factory, convert):
    sig = inspect.signature(factory)
    kwargs = {}
    for name in _float_hyperparameters(factory):
        default = sig.parameters[name].default
        if name == "b1_min":
            default = 0.7
        if isinstance(default, int):
            kwargs[name] = np.int64(default) if convert is np.float64 else jnp.asarray(default)
        else:
            kwargs[name] = convert(default)
    tx = factory(**kwargs)
    params = {"w": jnp.ones((3, 2))}
    updates, _ = tx.update({"w": jnp.full((3, 2), 0.1)}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["w"])).all()


def test_injected_bfloat16_hyperparameter_names_the_rounding():
    tx = optax.inject_hyperparams(so.stam)(learning_rate=1e-3)
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError) as info:
        tx.init(params)
    msg = str(info.value)
    assert "b2 must be in (0, 1)" in msg and "rounded" in msg, msg
    assert "hyperparam_dtype=jnp.float32" in msg and "inject_hyperparams" in msg, msg
    # the remedy the message names works
    tx = optax.inject_hyperparams(so.stam, hyperparam_dtype=jnp.float32)(learning_rate=1e-3)
    state = tx.init(params)
    tx.update(params, state, params)


def test_float32_out_of_range_message_has_no_rounding_hint():
    with pytest.raises(ValueError) as info:
        so.stam(b2=1.0)
    assert "rounded" not in str(info.value)


def _decay_mask(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


def test_callable_mask_taken_for_a_schedule_warns():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = optax.inject_hyperparams(so.stam)(learning_rate=1e-3, mask=_decay_mask)
    with pytest.warns(UserWarning, match=r"static_args=\('mask',\)"):
        tx.init(params)


def test_callable_mask_declared_static_decays_without_warning():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = jax.tree.map(jnp.zeros_like, params)  # the update is the weight decay alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for factory in (so.stam, so.stam_lite, so.adams, so.factored_adamw):
            plain = factory(1e-1, weight_decay=0.5, mask=_decay_mask)
            tx = optax.inject_hyperparams(factory, static_args=("mask",))(
                learning_rate=1e-1, weight_decay=0.5, mask=_decay_mask)
            for t in (plain, tx):
                u, _ = t.update(grads, t.init(params), params)
                np.testing.assert_allclose(u["w"], -0.05 * np.ones((2, 2)), rtol=1e-6)
                np.testing.assert_array_equal(u["b"], 0.0)


def test_gradient_shape_mismatch_names_the_leaf_and_both_shapes():
    params = {"layer": {"w": jnp.ones((2, 3))}, "b": jnp.ones(2)}
    grads = {"layer": {"w": jnp.ones((3, 2))}, "b": jnp.ones(2)}
    for name, make in ALL_OPTIMIZERS.items():
        tx = make()
        with pytest.raises(ValueError) as info:
            tx.update(grads, tx.init(params), params)
        msg = str(info.value)
        assert "['layer']['w']" in msg and "(3, 2)" in msg and "(2, 3)" in msg, (name, msg)
        assert msg.index("(3, 2)") < msg.index("(2, 3)"), msg  # got ..., expects ...


@pytest.mark.parametrize("state_dtype", ["int8", "int4"])
def test_quantised_gradient_of_the_wrong_size_is_caught(state_dtype):
    params = {"w": jnp.ones((64, 64))}
    tx = so.stam_lite(state_dtype=state_dtype)
    state = tx.init(params)
    assert isinstance(state[0].mu["w"], so.quantize.QuantizedArray)
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(64, 66\)"):
        tx.update({"w": jnp.ones((64, 66))}, state, params)
    # without params, the codes' layout is what the gradient is checked against
    inner = so.scale_by_stam_lite(state_dtype=state_dtype)
    state = inner.init(params)
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(64, 300\)"):
        inner.update({"w": jnp.ones((64, 300))}, state)
    # compiled: an eager int4 update once crashed an xdist worker (XLA:CPU, jax 0.10.2)
    jax.jit(inner.update)({"w": jnp.ones((64, 64))}, state)


def test_gradient_tree_mismatch_names_both_structures():
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(2)}
    for name, make in ALL_OPTIMIZERS.items():
        tx = make()
        state = tx.init(params)
        for grads, missing, extra in [
            ({"a": jnp.ones((2, 3)), "c": jnp.ones(2)}, "['b']", "['c']"),
            ({"a": jnp.ones((2, 3))}, "['b']", None),
            ({"a": {"x": jnp.ones((2, 3))}, "b": jnp.ones(2)}, "['a']", "['a']['x']"),
            ({"a": [jnp.ones(3), jnp.ones(3)], "b": jnp.ones(2)}, "['a']", "['a'][0]"),
        ]:
            with pytest.raises(ValueError) as info:
                tx.update(grads, state, params)
            msg = str(info.value)
            expected = msg.index("expected (state)")
            assert msg.index("got (grads)") > expected, (name, msg)
            assert f"missing from grads: {missing}" in msg, (name, msg)
            if extra:
                assert f"not in the state: {extra}" in msg, (name, msg)


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_numpy_float64_params_raise_no_warnings(name):
    params = {"w": np.ones((3, 2)), "b": np.zeros(2), "s": np.float64(1.0)}
    grads = {"w": np.full((3, 2), 0.5), "b": np.ones(2), "s": np.float64(0.1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx = ALL_OPTIMIZERS[name](learning_rate=1e-3) if "scale_by" not in name \
            else ALL_OPTIMIZERS[name]()
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        tx.update(grads, state, params)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))

"""optax's generic optimizer tests, run on every optimizer and state dtype of the library.

Our own port of the checks optax 0.2.8 applies to each of its optimizers
(`optax/_src/alias_test.py`, `optax/contrib/_common_test.py`,
`optax/_src/float64_test.py`), with optax's step counts, learning rates and
tolerances. Where an algorithm cannot meet a check as optax wrote it, the test
says why in one line and checks what does hold instead.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizers_under_test import (
    ALIASES,
    QUANTIZED_STATE,
    SPECS,
    STATIC_ARGS,
    TRANSFORMS,
    alias,
    transform,
)

import stam_optimizer as so


def _dtype(x):
    return x.dtype


ALL = {**{k: ("alias", k) for k in ALIASES}, **{k: ("transform", k) for k in TRANSFORMS}}


def _build(name: str, learning_rate=1e-1, **kw) -> optax.GradientTransformationExtraArgs:
    """An alias at `learning_rate`, or a `scale_by_*` chained with `optax.scale(-lr)`."""
    kind, key = ALL[name]
    if kind == "alias":
        return alias(key, learning_rate, **kw)
    return optax.chain(transform(key, **kw), optax.scale_by_learning_rate(learning_rate))


# Targets of optax's tests: initial params, minimiser, objective.
def _parabola(dtype):
    init = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
    final = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
    if jnp.iscomplexobj(init):
        final = final * (1 + 1j)
    return init, final, lambda p: jnp.sum(jnp.abs(p - final) ** 2)


def _rosenbrock(dtype):
    a, b = (1.0 + 1j if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0), 100.0
    init = jnp.array([0.0, 0.0], dtype=dtype)
    final = jnp.array([a, a**2], dtype=dtype)
    return init, final, lambda p: jnp.abs(a - p[0]) ** 2 + b * jnp.abs(p[1] - p[0] ** 2) ** 2


def _matrix_parabola(dtype):
    final = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype=dtype)
    return jnp.zeros((2, 2), dtype), final, lambda p: jnp.sum(jnp.abs(p - final) ** 2)


def _mixed_tensors(dtype):
    final = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))
    init = (jnp.zeros((3,), dtype), jnp.zeros((2, 2), dtype))
    return init, final, lambda p: sum(jnp.sum(jnp.abs(x - f) ** 2) for x, f in zip(p, final))


TARGETS = {"parabola": _parabola, "rosenbrock": _rosenbrock,
           "matrix_parabola": _matrix_parabola, "mixed_tensors": _mixed_tensors}
STEPS = 10_000  # optax's alias_test
LR = 1e-1  # optax's learning rate for adam / adamw in alias_test


def _run(opt, init, objective, steps):
    """`steps` optimizer steps from `init`; returns the params and the number of
    times the step was traced while running two plain jitted steps and a scan."""
    traces = 0

    def step(params, state):
        nonlocal traces
        traces += 1
        grads = jax.grad(objective)(params)
        grads = jax.tree.map(jnp.conj, grads)  # optax's convention for complex params
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step)
    state = opt.init(init)
    state = optax.tree.map_params(opt, lambda v: v, state)  # a no-op map works
    params, state = jitted(init, state)
    params, state = jitted(params, state)
    assert traces == 1, "the update recompiles on its second call"
    run = jax.jit(lambda c: jax.lax.scan(lambda c, _: (step(*c), None), c, length=steps - 2)[0])
    params, state = run((params, state))
    return params


# AdamS's steps are self-normalised (m / √(b2·m_prev² + (1−b2)·g²) stays near 1
# in size), so like optax's sign_sgd it circles a minimum at a constant lr 0.1
# instead of settling; it needs a decaying learning rate.
SELF_NORMALISED = ("adams", "scale_by_adams")
COSINE = optax.cosine_decay_schedule(LR, STEPS)  # lr 0.1 decayed to 0 over the same steps


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ALIASES)
def test_optimization(name, target):
    init, final, objective = TARGETS[target](jnp.float32)
    lr = LR
    if target == "rosenbrock":
        # Cannot meet optax's test: at a constant lr 0.1 our default decoupled weight
        # decay (0.01, AdamS 0.1) moves the fixed point off (1, 1), as it does for
        # optax.adamw(weight_decay=0.01). What holds: the same 10000 steps with lr
        # 0.1 cosine-decayed to 0 converge within optax's tolerance.
        lr = COSINE
    elif name in SELF_NORMALISED and target != "parabola":
        lr = COSINE  # cannot settle at a constant lr (see SELF_NORMALISED); with decay it does
    params = _run(alias(name, lr), init, objective, STEPS)
    for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(final)):
        np.testing.assert_allclose(np.asarray(p), np.asarray(f), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_optimization(name):
    init, final, objective = _parabola(jnp.float32)
    # scale_by_adams: no weight decay damps it here; see SELF_NORMALISED
    lr = COSINE if name in SELF_NORMALISED else LR
    params = _run(_build(name, lr), init, objective, STEPS)
    np.testing.assert_allclose(np.asarray(params), np.asarray(final), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("target", ["parabola", "rosenbrock"])
@pytest.mark.parametrize("name", ALL)
def test_complex_params_are_refused_naming_the_dtype(name, target):
    # optax's test_optimization also runs complex64 targets. Our per-tensor
    # statistics and β₁ rules are defined for real tensors: every optimizer
    # refuses complex params (init) and gradients (update) with a TypeError.
    init, _, objective = TARGETS[target](jnp.complex64)
    opt = _build(name, LR)
    if name in QUANTIZED_STATE:
        # so.quantized_state(optax.adamw) accepts what adamw accepts: complex
        # moments are not quantised (the codecs are real), they stay as they are.
        state = opt.init(init)
        assert not any(isinstance(x, so.quantize.QuantizedArray) for x in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, so.quantize.QuantizedArray)))
        updates, _ = jax.jit(opt.update)(jax.tree.map(jnp.conj, jax.grad(objective)(init)),
                                         state, init)
        assert jnp.iscomplexobj(updates) and bool(jnp.all(jnp.isfinite(updates)))
        return
    with pytest.raises(TypeError, match="complex64"):
        opt.init(init)
    real_state = opt.init(jnp.real(init))
    with pytest.raises(TypeError, match="complex64"):
        opt.update(jax.grad(objective)(init), real_state, init)


@pytest.mark.parametrize("name", ALL)
def test_optimizers_accept_extra_args(name):
    opt = _build(name, 1e-3)
    init, _, objective = _rosenbrock(jnp.float32)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(objective)(params)
        updates, state = opt.update(grads, state, params, value=value,
                                    unexpected_extra_args_your_optimizer_doesnt_expect=1)
        return optax.apply_updates(params, updates), state

    params, state = init, opt.init(init)
    for _ in range(2):
        params, state = step(params, state)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    assert bool(jnp.all(jnp.isfinite(params))) and not np.allclose(params, init)


@pytest.mark.parametrize("name", ALIASES)
def test_optimizers_can_be_wrapped_in_inject_hyperparams(name):
    factory, fixed = SPECS[name]
    # As optax's contrib test: options that cannot be traced are listed static.
    static = tuple(k for k in STATIC_ARGS if k in inspect.signature(factory).parameters)
    opt = factory(1e-1, **fixed)
    injected = optax.inject_hyperparams(factory, static_args=static)(learning_rate=1e-1, **fixed)
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
    updates, new_state = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    updates_inj, new_state_inj = jax.jit(injected.update)(
        grads, jax.jit(injected.init)(params), params)
    for a, b in zip(jax.tree.leaves(updates_inj), jax.tree.leaves(updates), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-3)
    assert jax.tree.structure(new_state_inj.inner_state) == jax.tree.structure(new_state)
    for a, b in zip(jax.tree.leaves(new_state_inj.inner_state), jax.tree.leaves(new_state),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", ALL)
def test_preserve_dtype(name, dtype):
    opt = _build(name, 1e-1)
    params = jnp.array([1.0, 2.0], dtype=dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    assert updates.dtype == grads.dtype


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", ALL)
def test_gradient_accumulation(name, dtype):
    opt = optax.MultiSteps(_build(name, 1e-1), every_k_schedule=4)
    params = jnp.array([1.0, 2.0], dtype=dtype)
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    np.testing.assert_array_equal(np.asarray(updates, np.float32), np.zeros(2, np.float32))
    assert updates.dtype == params.dtype


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", ALL)
def test_state_shape_dtype_shard_stability(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        opt = _build(name, 1e-1)
        init, _, objective = _parabola(jnp.dtype(dtype))

        @jax.jit
        def step(params, state):
            grads = jax.grad(objective)(params)
            # Both branches of a cond must agree in shape, dtype and sharding.
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            updates, state = jax.lax.cond(cond, lambda: opt.update(grads, state, params),
                                          lambda: (params, state))
            return optax.apply_updates(params, updates), state

        params, state = init, opt.init(init)
        for _ in range(2):
            params, new_state = step(params, state)
            assert params.dtype == jnp.dtype(dtype)
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            state = jax.lax.cond(cond, lambda s=state: s, lambda s=new_state: s)
        assert jax.tree.map(_dtype, state) == jax.tree.map(_dtype, opt.init(init))


@pytest.mark.parametrize("name", ALIASES)
def test_optimizers_accept_learning_rate_schedule(name):
    init, _, objective = _parabola(jnp.float32)
    with_schedule = alias(name, optax.constant_schedule(1e-3))
    with_lr = alias(name, 1e-3)

    def step(opt, params, state):
        updates, state = opt.update(jax.grad(objective)(params), state, params)
        return optax.apply_updates(params, updates), state

    p1, s1, p2, s2 = init, with_schedule.init(init), init, with_lr.init(init)
    for _ in range(10):
        p1, s1 = step(with_schedule, p1, s1)
        p2, s2 = step(with_lr, p2, s2)
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p2), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(p1), np.asarray(init))


@pytest.mark.parametrize("name", ALL)
def test_mixed_dtype_input_outputs(name):
    # optax float64_test: a float32 and a float64 leaf under jax_enable_x64.
    with jax.enable_x64(True):
        params = (jnp.array([1.0, 2.0], jnp.float32), jnp.array([3.0, 4.0], jnp.float64))
        grads = (jnp.array([10.0, 21.0], jnp.float32), jnp.array([33.0, 42.0], jnp.float64))
        opt = _build(name, 1e-1)
        state = jax.jit(opt.init)(params)
        updates, new_state = jax.jit(opt.update)(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        assert jax.tree.map(_dtype, new_state) == jax.tree.map(_dtype, state)
        assert jax.tree.map(_dtype, new_params) == jax.tree.map(_dtype, params)


@pytest.mark.parametrize("name", ALL)
def test_init_with_abstract_input(name):
    # optax sharding_test: init on a ShapeDtypeStruct (as jax.eval_shape does).
    opt = _build(name, 1.0)
    params = jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32)
    state = opt.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(opt.init(jnp.zeros((2, 4, 8))))
    shapes = jax.eval_shape(opt.init, params)
    assert [x.shape for x in jax.tree.leaves(shapes)] == \
        [x.shape for x in jax.tree.leaves(opt.init(jnp.zeros((2, 4, 8))))]


@pytest.mark.parametrize("name", ALIASES)
def test_state_structure_does_not_depend_on_weight_decay(name):
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    states = [alias(name, 1e-2, weight_decay=wd).init(params) for wd in (0.0, 0.01)]
    reference = optax.adamw(1e-2).init(params)
    # the wrapper holds adamw's state (and a count)
    inner = [s.inner for s in states] if name in QUANTIZED_STATE else states
    assert len(inner[0]) == len(inner[1]) == len(reference) == 3
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
    masked = [alias(name, 1e-2, weight_decay=wd, mask={"w": True, "b": False}).init(params)
              for wd in (0.0, 0.01)]
    assert jax.tree.structure(masked[0]) == jax.tree.structure(masked[1])
    # weight decay 0 keeps params optional, and its updates are those without decay
    # (not optax.adamw's guarantee: it asks for params whatever the decay)
    grads = jax.tree.map(jnp.ones_like, params)
    opt = alias(name, 1e-2, weight_decay=0.0)
    if name not in QUANTIZED_STATE:
        u0, _ = opt.update(grads, opt.init(params))
        u1, _ = opt.update(grads, opt.init(params), params)
        assert jax.tree.map(lambda a, b: bool(jnp.all(a == b)), u0, u1) == {"w": True, "b": True}
    # a state written with one weight decay restores into the other (same leaves)
    other = alias(name, 1e-2, weight_decay=0.01)
    u2, _ = other.update(grads, states[0], params)
    assert jax.tree.structure(u2) == jax.tree.structure(params)


def test_stam_without_adaptation_is_adamw_through_extra_args():
    # STAM with adapt_strength=0 is optax.adamw, also when update gets a value;
    # float64, where optax's float32 bias correction does not differ from ours.
    with jax.enable_x64(True):
        params = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float64).reshape(3, 4)}
        ours, ref = so.stam(1e-2, adapt_strength=0.0), optax.adamw(1e-2, weight_decay=0.01)
        s1, s2 = ours.init(params), ref.init(params)
        for t in range(5):
            g = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)), params)
            u1, s1 = ours.update(g, s1, params, value=jnp.float64(t))
            u2, s2 = ref.update(g, s2, params, value=jnp.float64(t))
            np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-12,
                                       atol=1e-15)
            params = optax.apply_updates(params, u1)

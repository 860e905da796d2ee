"""flax.nnx.Optimizer with every optimizer and state dtype: the checks flax's own
optimizer tests make of an optax optimizer (update with and without `value`,
`nnx.jit`, state sharding from `nnx.with_partitioning`, `tree_map_params`,
masked transforms), plain and on a model partitioned over an 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from optimizers_under_test import ADAPTIVE, HARNESS, QUANTIZED, QUANTIZED_STATE, alias

import stam_optimizer as so
from stam_optimizer import quantize


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, partitioned: bool):
        init = nnx.initializers.lecun_normal()
        k1 = nnx.with_partitioning(init, (None, "fsdp")) if partitioned else init
        k2 = nnx.with_partitioning(init, ("fsdp", None)) if partitioned else init
        self.l1 = nnx.Linear(8, 16, kernel_init=k1, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, kernel_init=k2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def _data():
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
    return x, jnp.sin(x[:, :4])


def _mlp_loss(model):
    x, y = _data()
    return jnp.mean((model(x) - y) ** 2)


def _param_loss(model):
    """A quadratic in the params alone: no matmul, whose sharded contraction an
    Explicit mesh would ask the model to resolve."""
    return sum(jnp.sum((p - 0.5) ** 2) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _train(model, opt, steps=30, with_value=False, objective=_mlp_loss):

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(objective)(model)
        if with_value:
            opt.update(model, grads, value=loss)
        else:
            opt.update(model, grads)
        return loss

    return [float(step(model, opt)) for _ in range(steps)]


def _buffer(opt_state):
    """The param-shaped buffer (μ, or AdamS's m) of an optimizer state, as arrays;
    inside a `quantized_state` state, its inner optimizer's μ."""
    def has_buffer(x):
        return isinstance(x, tuple) and (hasattr(x, "mu") or hasattr(x, "m"))

    pure = nnx.as_pure(opt_state)
    (inner,) = [s for s in jax.tree.leaves(pure, is_leaf=has_buffer) if has_buffer(s)]
    return inner.mu if hasattr(inner, "mu") else inner.m


def _width(name, block):
    """Bytes per block of `block` codes: one per code, two codes a byte at 4 bits."""
    return -(-block // 2) if name in ("stam_lite_int4", "adamw_q4") else block


@pytest.mark.parametrize("with_value", [False, True])
@pytest.mark.parametrize("name", HARNESS)
def test_nnx_optimizer_trains(name, with_value):
    model = MLP(nnx.Rngs(0), partitioned=False)
    opt = nnx.Optimizer(model, alias(name), wrt=nnx.Param)
    losses = _train(model, opt, with_value=with_value)
    assert losses[-1] < 0.5 * losses[0]
    if name in ADAPTIVE:
        b1 = so.tree_beta1(opt.opt_state, nnx.state(model, nnx.Param))
        values = [float(v) for v in jax.tree.leaves(b1)]
        assert len(values) == 4 and all(0.5 <= v <= 0.9 + 1e-6 for v in values)
    if name in QUANTIZED:  # the kernels stay quantised through the updates
        buf = _buffer(opt.opt_state)
        for layer in ("l1", "l2"):
            q = _quantized(buf[layer]["kernel"])
            # STAMLite's scales are float32; quantized_state's bfloat16 (its default)
            assert q.codes.dtype == jnp.uint8
            assert q.scales.dtype == (jnp.bfloat16 if name in QUANTIZED_STATE else jnp.float32)


@pytest.mark.parametrize("name", HARNESS)
def test_nnx_optimizer_eager_update_matches_jitted(name):
    # flax's tests call update outside jit too; both must give the same params.
    x, y = _data()
    models = [MLP(nnx.Rngs(0), partitioned=False) for _ in range(2)]
    opts = [nnx.Optimizer(m, alias(name), wrt=nnx.Param) for m in models]

    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads, value=loss)

    jitted = nnx.jit(step)
    for _ in range(3):
        step(models[0], opts[0])
        jitted(models[1], opts[1])
    a = jax.tree.leaves(nnx.state(models[0], nnx.Param))
    b = jax.tree.leaves(nnx.state(models[1], nnx.Param))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", HARNESS)
def test_nnx_tree_map_params_and_masked(name):
    model = MLP(nnx.Rngs(0), partitioned=False)
    params = nnx.state(model, nnx.Param)
    tx = alias(name)
    state = tx.init(nnx.as_pure(params))
    # a no-op tree_map_params keeps the structure
    mapped = optax.tree.map_params(tx, lambda v: v, state)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    # optax.masked: only the kernels get our optimizer (the biases' gradients pass
    # through it untouched and are zeroed by a second mask), so the biases keep
    # their values and tree_beta1 finds the kernels' β₁
    kernels = jax.tree.map(lambda p: p.ndim == 2, nnx.as_pure(params))
    others = jax.tree.map(lambda m: not m, kernels)
    opt = nnx.Optimizer(model, optax.chain(optax.masked(tx, kernels),
                                           optax.masked(optax.set_to_zero(), others)),
                        wrt=nnx.Param)
    biases = [np.asarray(model.l1.bias[...]), np.asarray(model.l2.bias[...])]
    kernel = np.asarray(model.l1.kernel[...])
    _train(model, opt, steps=3, with_value=True)
    np.testing.assert_array_equal(np.asarray(model.l1.bias[...]), biases[0])
    np.testing.assert_array_equal(np.asarray(model.l2.bias[...]), biases[1])
    assert not np.allclose(np.asarray(model.l1.kernel[...]), kernel)
    if name in ADAPTIVE:
        b1 = so.tree_beta1(opt.opt_state, nnx.state(model, nnx.Param))
        assert np.isnan(float(b1["l1"]["bias"])) and 0.5 <= float(b1["l1"]["kernel"]) <= 0.9


def _quantized(leaf):
    """An int8 μ leaf as QuantizedArray (nnx may hand it back as a mapping)."""
    if isinstance(leaf, quantize.QuantizedArray):
        return leaf
    return quantize.QuantizedArray(leaf["codes"], leaf["scales"])


def _per_device_fraction(arr):
    return arr.addressable_shards[0].data.size / arr.size


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("name", HARNESS)
def test_nnx_optimizer_on_a_partitioned_model_under_a_mesh(name, axis_type):
    assert jax.device_count() == 8, "conftest.py asks XLA for 8 CPU devices"
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):

        @nnx.jit
        def create():
            model = MLP(nnx.Rngs(0), partitioned=True)
            state = nnx.state(model)
            nnx.update(model, jax.lax.with_sharding_constraint(
                state, nnx.get_partition_spec(state)))
            return model

        model = create()
        opt = nnx.Optimizer(model, alias(name), wrt=nnx.Param)
        objective = _mlp_loss if axis_type == AxisType.Auto else _param_loss
        losses = _train(model, opt, with_value=True, objective=objective)
    assert losses[-1] < 0.5 * losses[0]
    assert model.l1.kernel[...].sharding.spec == P(None, "fsdp")
    buf = _buffer(opt.opt_state)
    k1, k2 = buf["l1"]["kernel"], buf["l2"]["kernel"]
    if name in QUANTIZED:
        # (16, 4) sharded on rows: the codes (16, 1, 4) follow, 1/8 per device;
        # (8, 16) sharded on its last axis, one block per row: replicated codes on
        # an Explicit mesh (on an Auto mesh XLA may split the blocks further).
        k1, k2 = _quantized(k1), _quantized(k2)
        assert k2.codes.shape == (16, 1, _width(name, 4))
        assert _per_device_fraction(k2.codes) == 1 / 8
        assert _per_device_fraction(k2.scales) == 1 / 8
        assert k1.codes.shape == (8, 1, _width(name, 16))
        if axis_type == AxisType.Explicit:
            assert _per_device_fraction(k1.codes) == 1
    else:
        assert k1.sharding.spec == P(None, "fsdp")  # per-parameter state follows params
        assert _per_device_fraction(k1) == 1 / 8 and _per_device_fraction(k2) == 1 / 8
    for s in so.find_states(nnx.as_pure(opt.opt_state)):
        assert s.beta1.sharding.is_fully_replicated  # per-tensor scalars: replicated


@pytest.mark.parametrize("name", ["stam", "stam_lite_int8"])
def test_partitioned_matches_unpartitioned(name):
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    plain = MLP(nnx.Rngs(0), partitioned=False)
    losses_plain = _train(plain, nnx.Optimizer(plain, alias(name), wrt=nnx.Param), 20)
    with jax.set_mesh(mesh):
        sharded = nnx.jit(lambda: MLP(nnx.Rngs(0), partitioned=True))()
        losses_sharded = _train(sharded, nnx.Optimizer(sharded, alias(name), wrt=nnx.Param), 20)
    np.testing.assert_allclose(losses_sharded, losses_plain, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded.l1.kernel[...]),
                               np.asarray(plain.l1.kernel[...]), rtol=1e-5, atol=1e-6)


def test_optax_adamw_reference_point():
    # the same harness with optax.adamw, so a failure above is ours, not the harness's
    model = MLP(nnx.Rngs(0), partitioned=False)
    losses = _train(model, nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param),
                    with_value=True)
    assert losses[-1] < 0.5 * losses[0]

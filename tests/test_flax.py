"""flax.nnx.Optimizer, plain and with a model partitioned over an 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import stam_optimizer as so

OPTIMIZERS = {
    "stam": lambda: so.stam(1e-2),
    "stam_lite": lambda: so.stam_lite(1e-2),
    "stam_lite_bf16": lambda: so.stam_lite(1e-2, state_dtype="bfloat16"),
    "adams": lambda: so.adams(1e-2),
}


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, partitioned: bool):
        init = nnx.initializers.lecun_normal()
        k1 = nnx.with_partitioning(init, (None, "fsdp")) if partitioned else init
        k2 = nnx.with_partitioning(init, ("fsdp", None)) if partitioned else init
        self.l1 = nnx.Linear(8, 16, kernel_init=k1, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, kernel_init=k2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def _train(model, opt, steps=30):
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
    y = jnp.sin(x[:, :4])

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss

    return [float(step(model, opt)) for _ in range(steps)]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_nnx_optimizer_trains(name):
    model = MLP(nnx.Rngs(0), partitioned=False)
    opt = nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)
    losses = _train(model, opt)
    assert losses[-1] < 0.5 * losses[0]
    if name != "adams":
        b1 = so.tree_beta1(opt.opt_state, nnx.state(model, nnx.Param))
        values = [float(v) for v in jax.tree.leaves(b1)]
        assert len(values) == 4 and all(0.5 <= v <= 0.9 + 1e-6 for v in values)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_nnx_optimizer_on_a_partitioned_model_under_a_mesh(name):
    assert jax.device_count() == 8, "conftest.py asks XLA for 8 CPU devices"
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):

        @nnx.jit
        def create():
            model = MLP(nnx.Rngs(0), partitioned=True)
            state = nnx.state(model)
            nnx.update(model, jax.lax.with_sharding_constraint(
                state, nnx.get_partition_spec(state)))
            return model

        model = create()
        opt = nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)
        losses = _train(model, opt)
    assert losses[-1] < 0.5 * losses[0]
    assert model.l1.kernel[...].sharding.spec == P(None, "fsdp")
    (inner,) = [s for s in jax.tree.leaves(
        opt.opt_state, is_leaf=lambda x: isinstance(x, tuple) and hasattr(x, "_fields"))
        if hasattr(s, "mu") or hasattr(s, "m")]
    buf = inner.mu if hasattr(inner, "mu") else inner.m
    kernel_buf = buf["l1"]["kernel"][...]
    assert kernel_buf.sharding.spec == P(None, "fsdp")  # per-parameter state follows params
    # each device holds 1/8 of the buffer
    assert kernel_buf.addressable_shards[0].data.size == kernel_buf.size // 8
    for s in so.find_states(opt.opt_state):
        assert s.beta1[...].sharding.is_fully_replicated  # per-tensor scalars: replicated


def test_partitioned_matches_unpartitioned():
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    plain = MLP(nnx.Rngs(0), partitioned=False)
    losses_plain = _train(plain, nnx.Optimizer(plain, so.stam(1e-2), wrt=nnx.Param), 20)
    with jax.set_mesh(mesh):
        sharded = nnx.jit(lambda: MLP(nnx.Rngs(0), partitioned=True))()
        losses_sharded = _train(sharded, nnx.Optimizer(sharded, so.stam(1e-2),
                                                       wrt=nnx.Param), 20)
    np.testing.assert_allclose(losses_sharded, losses_plain, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded.l1.kernel[...]),
                               np.asarray(plain.l1.kernel[...]), rtol=1e-5, atol=1e-6)


def test_optax_adamw_reference_point():
    # the same harness with optax.adamw, so a failure above is ours, not the harness's
    model = MLP(nnx.Rngs(0), partitioned=False)
    losses = _train(model, nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param))
    assert losses[-1] < 0.5 * losses[0]

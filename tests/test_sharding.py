"""Sharded (FSDP over 8 simulated devices) training equals single-device training.

Tensor-level statistics are means over whole tensors, which is exactly what a
sharded tensor makes collective: these tests show the optimizers stay correct
and memory-proportional under `NamedSharding`, in one process and in two.
"""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import stam_optimizer as so
from stam_optimizer import quantize as qz

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"w1": (16, 12), "w2": (24, 40), "emb": (40, 8), "b": (13,), "odd": (5, 3), "s": ()}
FACTORIES = {
    "stam": lambda: so.stam(1e-2),
    "stam_lite": lambda: so.stam_lite(1e-2),
    "stam_lite_bf16": lambda: so.stam_lite(1e-2, state_dtype="bfloat16"),
    "stam_lite_f16": lambda: so.stam_lite(1e-2, state_dtype="float16"),
    "adams": lambda: so.adams(1e-2),
}


def _mesh():
    assert jax.device_count() == 8, "conftest.py asks XLA for 8 CPU devices"
    return jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))


def _spec(shape):
    return P("fsdp") if shape and shape[0] % 8 == 0 else P()


def _stream(dtype, steps=20):
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grads = [{k: (rng.normal(size=s) + 0.5).astype(dtype) for k, s in SHAPES.items()}
             for _ in range(steps)]
    return params, grads


def _train(tx, params, grads, place):
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)), donate_argnums=(0, 1))
    params = place(params)
    state = tx.init(params)
    for g in grads:
        params, state = step(params, state, place(g))
    return params, state


def _run_both(name, dtype, factory=None):
    factory = factory or FACTORIES[name]
    mesh = _mesh()
    params, grads = _stream(dtype)
    single = _train(factory(), params, grads, lambda t: jax.tree.map(jnp.asarray, t))
    sharded = _train(factory(), params, grads, lambda t: {
        k: jax.device_put(v, NamedSharding(mesh, _spec(v.shape))) for k, v in t.items()})
    return single, sharded


@pytest.mark.parametrize("name", FACTORIES)
def test_sharded_matches_single_device_float32(name):
    (p1, _), (p2, _) = _run_both(name, np.float32)
    for k in SHAPES:
        a, b = np.asarray(p1[k], np.float64), np.asarray(p2[k], np.float64)
        # per-tensor sums add shard partials in another order: float32 rounding
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)), k


@pytest.mark.parametrize("name", ["stam", "stam_lite", "adams"])
def test_sharded_matches_single_device_float64(name):
    with jax.enable_x64(True):
        (p1, _), (p2, _) = _run_both(name, np.float64)
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(p2[k]), np.asarray(p1[k]), rtol=1e-12,
                                       atol=1e-14, err_msg=k)


@pytest.mark.parametrize("name", FACTORIES)
def test_state_is_sharded_like_params_and_scalars_replicated(name):
    _, (params, state) = _run_both(name, np.float32)
    bufs = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields"))
            if hasattr(s, "_fields") and ("mu" in s._fields or "m" in s._fields)]
    (inner,) = bufs
    buf = inner.mu if "mu" in inner._fields else inner.m
    for k, shape in SHAPES.items():
        leaf = buf[k]
        assert leaf.sharding.spec == _spec(shape), k
        shard_bytes = leaf.addressable_shards[0].data.nbytes
        if _spec(shape) == P("fsdp"):
            assert shard_bytes * 8 == leaf.nbytes, k  # 1/8 per device
        else:
            assert shard_bytes == leaf.nbytes, k  # replicated
    for s in so.find_states(state):
        for vec in (s.beta1, s.beta1_prod):
            assert vec.sharding.is_fully_replicated


def test_two_processes_match_one_process(tmp_path):
    """2 processes x 4 devices on loopback == 1 process x 8 devices, bit for bit."""
    script = ROOT / "examples" / "scale_out.py"
    one = tmp_path / "one"
    two = tmp_path / "two"
    common = ["--devices", "8", "--steps", "6", "--optimizer", "stam_full"]
    r1 = subprocess.run([sys.executable, str(script), *common, "--out", str(one)],
                        capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([sys.executable, str(script), *common, "--processes", "2",
                         "--timeout", "500", "--out", str(two)],
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    ref = np.load(f"{one}.0.npz")
    outs = [np.load(f"{two}.{i}.npz") for i in range(2)]
    assert len(ref.files) > 5
    # Gradients are all-reduced over processes (gloo) in another order than
    # inside one process, and Adam-type steps normalise small gradient
    # differences, so the runs agree to a fraction of the distance any
    # parameter can travel (|u| ≲ 1 per step: lr·steps), not bit for bit.
    travel = 3e-3 * 6
    for key in ref.files:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])  # identical in every process
        a, b = ref[key].astype(np.float64), outs[0][key].astype(np.float64)
        assert np.max(np.abs(a - b)) <= 1e-3 * travel, key
    assert "loss" in r1.stdout and "optimizer state" in r1.stdout


INT8_LEAVES = {  # shape, spec, the expected μ layout: block size, or None for float32
    "w": ((64, 256), P("fsdp"), 256),  # shards of 2048 elements: blocks of 256
    "v": ((800, 60), P("fsdp"), 250),  # shards of 6000: largest divisor <= 256
    "c": ((64, 128), P(None, "fsdp"), None),  # columns sharded: stays float32
    "t": ((8, 600), P("fsdp"), 200),  # shards of 600: blocks of 200
    "s": ((8 * 1009,), P("fsdp"), None),  # shards of 1009 (prime): float32
    "b": ((1200,), P(), 256),  # replicated: the plain layout, replicated
}


def _int8(block=256):
    return so.stam_lite(1e-2, state_dtype="int8", min_quantized_size=1000, block_size=block)


def test_int8_blocks_tile_shards_and_match_single_device():
    mesh = _mesh()
    rng = np.random.default_rng(1)
    params = {k: rng.normal(size=s).astype(np.float32) for k, (s, _, _) in INT8_LEAVES.items()}
    grads = [{k: (rng.normal(size=v.shape) + 0.3).astype(np.float32) for k, v in params.items()}
             for _ in range(12)]

    def place(tree):
        return {k: jax.device_put(v, NamedSharding(mesh, INT8_LEAVES[k][1]))
                for k, v in tree.items()}

    tx = _int8()
    (mu0,) = [s.mu for s in so.find_states(tx.init(place(params)))]
    sharded, state = _train(tx, params, grads, place)
    (mu,) = [s.mu for s in so.find_states(state)]
    for k, (_, spec, block) in INT8_LEAVES.items():
        for leaf in (mu0[k], mu[k]):  # as built by init, and after 12 donated steps
            if block is None:
                assert leaf.dtype == jnp.float32 and leaf.sharding.spec == spec, k
                continue
            assert isinstance(leaf, qz.QuantizedArray), k
            assert leaf.codes.dtype == jnp.uint8 and leaf.codes.shape[1] == block, k
            for arr in leaf:
                per_device = arr.addressable_shards[0].data.nbytes
                assert per_device * (8 if spec == P("fsdp") else 1) == arr.nbytes, k
                assert arr.sharding.is_fully_replicated == (spec == P()), k
        # Tensors are independent in STAMLite: one leaf alone on one device, in the
        # same layout, is the reference.
        alone, _ = _train(_int8(block or 256) if block else so.stam_lite(1e-2),
                          {k: params[k]}, [{k: g[k]} for g in grads],
                          lambda t: jax.tree.map(jnp.asarray, t))
        a, b = np.asarray(alone[k], np.float64), np.asarray(sharded[k], np.float64)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)), k

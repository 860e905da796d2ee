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
from helpers import shifted_stream
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from optimizers_under_test import (
    ALIASES,
    BASE,
    HARNESS,
    QUANTIZED_STATE,
    TRANSFORMS,
    alias,
    transform,
)

import stam_optimizer as so
from stam_optimizer import quantize

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"w1": (16, 12), "w2": (24, 40), "emb": (40, 8), "b": (13,), "odd": (5, 3), "s": ()}
FACTORIES = {n: ALIASES[n] for n in HARNESS}  # tests/optimizers_under_test.py


def _mesh():
    assert jax.device_count() == 8, "conftest.py asks XLA for 8 CPU devices"
    return jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))


def _spec(shape):
    return P("fsdp") if shape and shape[0] % 8 == 0 else P()


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
    params, grads = shifted_stream(SHAPES, dtype, 20, 0.5)
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


@pytest.mark.parametrize("name", BASE)  # float64 state: the float32-buffer optimizers
def test_sharded_matches_single_device_float64(name):
    with jax.enable_x64(True):
        (p1, _), (p2, _) = _run_both(name, np.float64)
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(p2[k]), np.asarray(p1[k]), rtol=1e-12,
                                       atol=1e-14, err_msg=k)


@pytest.mark.parametrize("name", FACTORIES)
def test_state_is_sharded_like_params_and_scalars_replicated(name):
    _, (params, state) = _run_both(name, np.float32)

    def has_buffer(x):
        return hasattr(x, "_fields") and ("mu" in x._fields or "m" in x._fields)

    bufs = [s for s in jax.tree.leaves(state, is_leaf=has_buffer) if has_buffer(s)]
    (inner,) = bufs
    buf = inner.mu if "mu" in inner._fields else inner.m
    for k, shape in SHAPES.items():
        leaf = buf[k]
        if isinstance(leaf, quantize.QuantizedArray):  # the codes, laid out by the param
            leaf = leaf.codes
            n_blocks, block = quantize.layout(shape, 128 if name in QUANTIZED_STATE else 256)
            width = -(-block // 2) if name.endswith("4") else block
            assert leaf.shape == (*shape[:-1], n_blocks, width), k
            assert _norm(leaf.sharding.spec, 3) == _norm(_spec(shape), 3), k
        else:
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


# shape, spec, and the codes' spec the global layout gives (None: stays float32).
# Blocks tile the last axis (quantize.layout), so sharding a leading axis is
# always aligned, and sharding the last axis is aligned when its blocks split
# evenly over the devices without padding.
INT8_LEAVES = {
    "w": ((64, 256), P("fsdp"), P("fsdp", None, None)),  # FSDP: rows of 1 block
    "v": ((800, 60), P("fsdp"), P("fsdp", None, None)),  # FSDP: rows of 1 block of 60
    "t": ((8, 600), P("fsdp"), P("fsdp", None, None)),  # FSDP: 3 blocks of 200 per row
    "tp": ((8, 4096), P(None, "fsdp"), P(None, "fsdp", None)),  # TP: 16 blocks, 2 per device
    "e": ((2048,), P("fsdp"), P("fsdp", None)),  # a vector: 8 blocks of 256, 1 per device
    "c": ((64, 128), P(None, "fsdp"), P(None, None, None)),  # TP, 1 block/row: replicated
    "s": ((8 * 1009,), P("fsdp"), P(None, None)),  # 32 blocks of 253, padded: replicated
    "b": ((1200,), P(), P(None, None)),  # replicated param: replicated codes
    "small": ((8, 8), P("fsdp"), None),  # under min_quantized_size: float32, like the param
}


def _int8(block=256):
    return so.stam_lite(1e-2, state_dtype="int8", min_quantized_size=100, block_size=block)


def _norm(spec, n):
    """`spec` with trailing None entries, to compare equivalent specs."""
    return tuple(spec) + (None,) * (n - len(tuple(spec)))


def _codes_fraction(spec):
    """Fraction of the codes each of the 8 devices holds under `spec`."""
    return 1 / 8 if "fsdp" in tuple(spec) else 1


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_int8_layout_is_global_and_blocks_tile_shards(axis_type):
    assert jax.device_count() == 8, "conftest.py asks XLA for 8 CPU devices"
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(axis_type,))
    rng = np.random.default_rng(1)
    params = {k: rng.normal(size=s).astype(np.float32) for k, (s, _, _) in INT8_LEAVES.items()}
    grads = [{k: (rng.normal(size=v.shape) + 0.3).astype(np.float32) for k, v in params.items()}
             for _ in range(12)]

    def place(tree):
        return {k: jax.device_put(v, NamedSharding(mesh, INT8_LEAVES[k][1]))
                for k, v in tree.items()}

    tx = _int8()
    plain = tx.init(jax.tree.map(jnp.asarray, params))  # one device, unsharded
    with jax.set_mesh(mesh):
        eager = tx.init(place(params))
        jitted = jax.jit(tx.init)(place(params))
        sharded, state = _train(tx, params, grads, place)
    # The same layout whatever the sharding and whether init is traced.
    for other in (eager, jitted, state):
        assert jax.tree.structure(other) == jax.tree.structure(plain)
        assert [x.shape for x in jax.tree.leaves(other)] == \
            [x.shape for x in jax.tree.leaves(plain)]
    mus = [so.find_states(x)[0].mu for x in (eager, jitted, state)]
    for k, (shape, _spec, codes_spec) in INT8_LEAVES.items():
        for which, mu in zip(("eager", "jitted", "trained"), mus):
            leaf = mu[k]
            if codes_spec is None:
                assert leaf.dtype == jnp.float32 and leaf.shape == shape, k
                continue
            assert isinstance(leaf, quantize.QuantizedArray), k
            assert leaf.codes.shape == (*shape[:-1], *quantize.layout(shape)), k
            per_device = leaf.codes.addressable_shards[0].data.nbytes
            scales = leaf.scales.addressable_shards[0].data.nbytes
            if which == "jitted" and axis_type == AxisType.Auto:
                continue  # placed by XLA (as optax's own states are): layout checked only
            if which == "trained" and axis_type == AxisType.Auto:
                # XLA places the outputs of a jitted step on an Auto mesh; starting
                # from init's placement it may shard further (within blocks), never less.
                assert per_device <= leaf.codes.nbytes * _codes_fraction(codes_spec), k
                continue
            assert _norm(leaf.codes.sharding.spec, 3) == _norm(codes_spec, 3), (k, which)
            assert per_device == leaf.codes.nbytes * _codes_fraction(codes_spec), (k, which)
            assert scales == leaf.scales.nbytes * _codes_fraction(codes_spec), (k, which)
    # Tensors are independent in STAMLite, and the layout is global: the
    # unsharded run on one device is the reference.
    single, _ = _train(tx, params, grads, lambda t: jax.tree.map(jnp.asarray, t))
    for k in INT8_LEAVES:
        a, b = np.asarray(single[k], np.float64), np.asarray(sharded[k], np.float64)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)), k


# optax's sharding_test, on both mesh axis types: the state's types (shape,
# dtype, sharding) are the same from init and from update, eagerly and jitted.
ALL = {**{k: (lambda k=k: alias(k, 1.0)) for k in HARNESS},
       **{k: (lambda k=k: transform(k)) for k in TRANSFORMS}}


def _types(tree):
    return jax.tree.map(jax.typeof, tree)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("name", ALL)
def test_state_sharding_type_init_match_update(name, axis_type):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, P(None, "x"))
    opt = ALL[name]()
    with jax.set_mesh(mesh):
        params = jax.device_put(jnp.zeros((2, 8, 4), dtype=jnp.float16), sharding)
        state0 = opt.init(params)
        _, state1 = opt.update(params, state0, params)
        assert _types(state0) == _types(state1)
        state2 = jax.jit(opt.init)(params)
        assert _types(state2) == _types(state0)
        _, state3 = jax.jit(opt.update)(params, state0, params)
        assert _types(state3) == _types(state1)
    if axis_type == AxisType.Explicit:
        # the types carry the shardings: the param-shaped buffers are sharded like
        # the param (int8 codes: (2, 8, 1, 4), whose sharded axis is a leading one)
        specs = {tuple(t.sharding.spec)[:2] for t in jax.tree.leaves(_types(state0))
                 if t.ndim >= 3}
        assert specs == {(None, "x")}, specs


# A param sharded along its last axis (tensor parallelism) of an Explicit-axis
# mesh, a small one sharded the same way, a vector sharded on its only axis,
# and a replicated one; the NaN path (a NaN gradient entry) too.
EXPLICIT_LEAVES = {"w": ((512, 512), P(None, "x")), "c": ((8, 64), P(None, "x")),
                   "v": ((64,), P("x")), "r": ((3, 5), P())}


@pytest.mark.parametrize("name", HARNESS)
def test_explicit_mesh_with_non_leading_sharded_axes(name):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(3)
    params = {k: rng.normal(size=s).astype(np.float32) for k, (s, _) in EXPLICIT_LEAVES.items()}
    grads = [{k: (rng.normal(size=v.shape) + 0.2).astype(np.float32) for k, v in params.items()}
             for _ in range(4)]
    grads[2]["w"][3, 7] = np.nan
    grads[2]["c"][1, 1] = np.inf

    def place(tree):
        return {k: jax.device_put(v, NamedSharding(mesh, EXPLICIT_LEAVES[k][1]))
                for k, v in tree.items()}

    single, _ = _train(FACTORIES[name](), params, grads, lambda t: jax.tree.map(jnp.asarray, t))
    with jax.set_mesh(mesh):
        sharded, state = _train(FACTORIES[name](), params, grads, place)
    # optax.adamw carries a NaN/Inf gradient into its moments (as in float);
    # quantized_state confines it to that entry's block (of 128 along the last
    # axis): w[3, :128] and c[1, :] become NaN, nothing else does.
    poisoned = {k: np.zeros(s, bool) for k, (s, _) in EXPLICIT_LEAVES.items()}
    if name in QUANTIZED_STATE:
        poisoned["w"][3, :128] = poisoned["c"][1, :] = True
    for k in EXPLICIT_LEAVES:
        assert sharded[k].sharding.spec == EXPLICIT_LEAVES[k][1] or \
            _norm(sharded[k].sharding.spec, 2) == _norm(EXPLICIT_LEAVES[k][1], 2), k
        a, b = np.asarray(single[k], np.float64), np.asarray(sharded[k], np.float64)
        np.testing.assert_array_equal(~np.isfinite(a), poisoned[k], err_msg=k)
        np.testing.assert_array_equal(~np.isfinite(b), poisoned[k], err_msg=k)
        a, b = a[~poisoned[k]], b[~poisoned[k]]
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)), k

"""Checkpoints move between meshes: save on 8 devices, restore on 8, 4, 2, 1 and 2x4.

Every case trains K steps on an 8-device FSDP mesh, saves params and optimizer
state with `stam_optimizer.checkpoint`, and trains M more steps (the
uninterrupted run). The checkpoint is then restored onto another mesh, trained
the same M steps, and compared with the uninterrupted run.

Run as a script (`--worker`), this file is one process of the 2-process restore.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # worker process: import the package of this tree
    sys.path.insert(0, str(ROOT))

import stam_optimizer as so  # noqa: E402
from stam_optimizer import checkpoint, quantize  # noqa: E402

K, M = 3, 3  # steps before the checkpoint, steps after it
LR = 1e-2
# FSDP-sharded leaves whose shards are not whole int8 blocks, one replicated bias
# (under min_quantized_size) and a scalar.
MIXED = {"w1": (16, 12), "w2": (24, 40), "b": (13,), "s": ()}
# Every shard of these holds a multiple of 256 elements on 8, 4, 2 and 1 devices.
ALIGNED = {"w": (64, 32), "v": (32, 64), "b": (13,)}


def _int8() -> optax.GradientTransformation:
    return so.stam_lite(LR, state_dtype="int8", min_quantized_size=64)


CASES = {  # name: (optimizer factory, parameter shapes)
    "stam": (lambda: so.stam(LR), MIXED),
    "stam_bf16": (lambda: so.stam(LR, mu_dtype="bfloat16"), MIXED),
    "stam_lite": (lambda: so.stam_lite(LR), MIXED),
    "stam_lite_bf16": (lambda: so.stam_lite(LR, state_dtype="bfloat16"), MIXED),
    "stam_lite_f16": (lambda: so.stam_lite(LR, state_dtype="float16"), MIXED),
    "stam_energy": (lambda: so.stam(LR, signal="energy"), MIXED),
    "stam_lite_energy": (lambda: so.stam_lite(LR, signal="energy"), MIXED),
    "stam_lite_int8": (_int8, MIXED),
    "stam_lite_int8_aligned": (_int8, ALIGNED),
    "stam_lite_int4": (lambda: so.stam_lite(LR, state_dtype="int4", min_quantized_size=64),
                       MIXED),
    "adamw_q4": (lambda: so.quantized_state(optax.adamw(LR), 4, min_size=64), MIXED),
    "adams": (lambda: so.adams(LR), MIXED),
}


def _mesh(n: int) -> jax.sharding.Mesh:
    return jax.make_mesh((n,), ("fsdp",), devices=jax.devices()[:n],
                         axis_types=(AxisType.Auto,))


def _spec(shape: tuple[int, ...], n: int) -> P:
    return P("fsdp") if shape and shape[0] % n == 0 else P()


def _abstract_params(shapes: dict, mesh: jax.sharding.Mesh) -> dict:
    n = mesh.devices.size
    return {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, _spec(s, n)))
            for k, s in shapes.items()}


def _initial_params(shapes: dict, mesh: jax.sharding.Mesh) -> dict:
    rng = np.random.default_rng(0)
    host = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    return {k: jax.make_array_from_callback(a.shape, a.sharding, lambda i, k=k: host[k][i])
            for k, a in _abstract_params(shapes, mesh).items()}


def _noise(shape: tuple[int, ...], t: jax.Array, i: int) -> jax.Array:
    """Deterministic, sharding-independent "noise" in [-1, 1] per element and step."""
    flat = jnp.zeros(shape, jnp.float32)
    for axis in range(len(shape)):
        stride = int(np.prod(shape[axis + 1:]))
        flat = flat + jax.lax.broadcasted_iota(jnp.float32, shape, axis) * stride
    return jnp.sin(1.7 * flat + 0.9 * t.astype(jnp.float32) * (i + 1) + i)


def _loss(params: dict, t: jax.Array) -> jax.Array:
    """A noisy quadratic: the gradient is `p − 0.5 + 0.3·noise_t`."""
    total = 0.0
    for i, (_, p) in enumerate(sorted(params.items())):
        total = total + jnp.sum(0.5 * (p - 0.5) ** 2 + 0.3 * _noise(p.shape, t, i) * p)
    return total


@functools.cache
def _step(name: str):
    tx = CASES[name][0]()

    def step(params, state, t):
        grads = jax.grad(_loss)(params, t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _train(name: str, params, state, start: int, steps: int):
    step = _step(name)
    for t in range(start, start + steps):
        params, state = step(params, state, jnp.int32(t))
    return params, state


def _host(tree) -> dict:
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return {k: np.asarray(v) for k, v in tree.items()}


_RUNS: dict = {}


def _saved_run(name: str, root: Path) -> tuple[Path, dict]:
    """Trains `name` on 8 devices, saves after K steps; returns the path and the
    params after K + M uninterrupted steps."""
    if name not in _RUNS:
        factory, shapes = CASES[name]
        params = _initial_params(shapes, _mesh(8))
        tx = factory()
        # eager init, as a user would call it, then the scalars replicated over the mesh
        # (as a restore lays them out): the step compiles once for both.
        state = jax.device_put(tx.init(params), checkpoint.state_shardings(tx, params))
        params, state = _train(name, params, state, 0, K)
        path = root / name
        checkpoint.save(path, params, state)
        final, _ = _train(name, params, state, K, M)
        assert _step(name)._cache_size() == 1  # one program for all K + M steps
        _RUNS[name] = (path, _host(final))
    return _RUNS[name]


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


def _restore_and_continue(name: str, path: Path, n: int):
    factory, shapes = CASES[name]
    mesh = _mesh(n)
    params, state = checkpoint.restore(path, factory(), _abstract_params(shapes, mesh))
    return params, state, _train(name, params, state, K, M)[0]


# Largest |difference| / max|uninterrupted| allowed when the mesh changes. Per-tensor
# sums add their shard partials in another order, so the statistics differ in the
# last float32 bits (~1e-7 relative) and the params by a few float32 ulps. A stored
# low-precision μ can round the other way at a tie-near value: one bfloat16 ulp
# (2⁻⁸ relative) or one int8 code step changes that element's update by at most lr·2⁻⁷
# per step (μ̂ is normalised to ≲ 1), so those cases allow lr·2⁻⁷·M.
F32_TOL = 1e-6
LOWP_TOL = LR * 2**-7 * M
# At 4 bits a code step is up to (7² − 6²)/7² of the block maximum (the signed
# map; the non-negative one's 1 − (15/16)⁴ moves u by half as much).
INT4_TOL = LR * (7**2 - 6**2) / 7**2 * M


def _tolerance(name: str) -> float:
    if any(k in name for k in ("int4", "q4")):
        return INT4_TOL
    return LOWP_TOL if any(k in name for k in ("bf16", "f16", "int8")) else F32_TOL


def _case_params():
    out = []
    for name in CASES:
        for n in (8, 4, 2, 1):
            out.append(pytest.param(name, n, id=f"{name}-{n}dev"))
    return out


@pytest.mark.parametrize(("name", "n"), _case_params())
def test_restore_onto_mesh_continues_like_uninterrupted(name, n, ckpt_root):
    path, reference = _saved_run(name, ckpt_root)
    params, state, final = _restore_and_continue(name, path, n)
    # The restored state has the layout a fresh init on this mesh has.
    fresh = CASES[name][0]().init(params)
    assert jax.tree.structure(state) == jax.tree.structure(fresh)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(fresh)):
        assert got.shape == want.shape and got.dtype == want.dtype
        if isinstance(want.sharding, NamedSharding):
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding,
                                                                           want.sharding)
    final = _host(final)
    diff = max(float(np.max(np.abs(final[k].astype(np.float64) - reference[k]), initial=0))
               for k in reference)
    scale = max(float(np.max(np.abs(reference[k]), initial=0)) for k in reference)
    print(f"{name} 8 -> {n} devices: max |diff| = {diff:.3g} ({diff / scale:.3g} relative)")
    if n == 8:  # same mesh, same program: bit for bit
        assert _step(name)._cache_size() == 1
        for k in reference:
            np.testing.assert_array_equal(final[k], reference[k], err_msg=k)
    else:
        assert diff <= _tolerance(name) * scale, (name, n, diff / scale)


def test_state_shardings_follow_params():
    mesh = _mesh(4)
    shapes = {"w": (64, 32), "c": (8, 64), "b": (13,)}
    params = _abstract_params(shapes, mesh)
    params["c"] = jax.ShapeDtypeStruct((8, 64), jnp.float32,
                                       sharding=NamedSharding(mesh, P(None, "fsdp")))
    rep = NamedSharding(mesh, P())
    st = checkpoint.state_shardings(so.stam(LR), params)
    (inner,) = so.find_states(st)
    for k in shapes:
        assert inner.mu[k] == params[k].sharding and inner.nu[k] == params[k].sharding, k
    for vec in (inner.count, inner.sigma2, inner.tau, inner.beta1, inner.beta1_prod):
        assert vec == rep
    (lite,) = so.find_states(checkpoint.state_shardings(_int8(), params))
    along = NamedSharding(mesh, P("fsdp"))  # the blocks axis, as the params' first axis
    assert lite.mu["w"] == quantize.QuantizedArray(along, along)
    assert lite.mu["c"] == quantize.QuantizedArray(rep, rep)  # not sharded along axis 0
    assert lite.mu["b"] == params["b"].sharding  # under min_quantized_size: float32
    assert lite.a == rep


def test_save_does_not_overwrite_unless_forced(tmp_path):
    params = {"w": jnp.ones((4, 3))}
    tx = so.stam_lite(LR)
    state = tx.init(params)
    checkpoint.save(tmp_path / "c", params, state)
    with pytest.raises(ValueError):
        checkpoint.save(tmp_path / "c", {"w": jnp.zeros((4, 3))}, state)
    p, _ = checkpoint.restore(tmp_path / "c", tx, params)
    np.testing.assert_array_equal(np.asarray(p["w"]), 1.0)
    checkpoint.save(tmp_path / "c", {"w": jnp.zeros((4, 3))}, state, force=True)
    p, _ = checkpoint.restore(tmp_path / "c", tx, params)
    np.testing.assert_array_equal(np.asarray(p["w"]), 0.0)


def test_core_imports_without_orbax_and_names_the_extra():
    code = ("import sys; sys.modules['orbax'] = None; sys.modules['orbax.checkpoint'] = None\n"
            "import jax.numpy as jnp, stam_optimizer as so\n"
            "from stam_optimizer import checkpoint\n"
            "assert 'orbax' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
            "checkpoint.state_shardings(so.stam(), {'w': jnp.ones(3)})\n"
            "try:\n"
            "    checkpoint.save('/nonexistent/x', {}, {})\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stam-optimizer[checkpoint]" in r.stdout


# --- 2 processes x 4 devices --------------------------------------------------------

TWO_PROCESS_GROUPS = [
    pytest.param([n for n in CASES if n != "stam_lite_int8"], id="all-but-int8-unaligned"),
    pytest.param(["stam_lite_int8"], id="int8-unaligned"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("names", TWO_PROCESS_GROUPS)
def test_restore_onto_two_processes(names, ckpt_root, tmp_path):
    """2 processes x 4 devices restore the 8-device checkpoint and continue."""
    runs = {name: _saved_run(name, ckpt_root) for name in names}
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", str(i), "--port", str(port),
         "--root", str(ckpt_root), "--out", str(tmp_path / f"out{i}.npz"),
         "--cases", ",".join(names)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    deadline = time.monotonic() + 300
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("2-process restore timed out")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    outs = [np.load(tmp_path / f"out{i}.npz") for i in range(2)]
    for name, (_, reference) in runs.items():
        scale = max(float(np.max(np.abs(v), initial=0)) for v in reference.values())
        diff = 0.0
        for k in reference:
            key = f"{name}/{k}"
            np.testing.assert_array_equal(outs[0][key], outs[1][key])  # same in both
            diff = max(diff, float(np.max(np.abs(outs[0][key].astype(np.float64)
                                                 - reference[k]), initial=0)))
        print(f"{name} 8 -> 2x4 devices: max |diff| = {diff:.3g} ({diff / scale:.3g} relative)")
        assert diff <= _tolerance(name) * scale, (name, diff / scale)
    assert json.loads(logs[0].strip().splitlines()[-1])["devices"] == 8


def _worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", required=True)
    args = ap.parse_args(argv)
    addr = f"127.0.0.1:{args.port}"
    jax.distributed.initialize(coordinator_address=addr, coordinator_bind_address=addr,
                               num_processes=2, process_id=args.worker,
                               initialization_timeout=120)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    result = {}
    for name in args.cases.split(","):
        _, _, final = _restore_and_continue(name, Path(args.root) / name, 8)
        result.update({f"{name}/{k}": v for k, v in _host(final).items()})
    np.savez(args.out, **result)
    print(json.dumps({"devices": jax.device_count(), "process": jax.process_index()}))
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))

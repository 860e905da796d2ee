"""Same state layout and same numbers on any mesh: 1, 2, 4 and 8 devices, with
FSDP sharding (axis 0), tensor parallelism (axis 1), a 2-D mesh and replicated
params, against one unsharded device, for every optimizer and state dtype.

Tolerance. The only difference a mesh makes is the order in which a tensor's
sums (STAM's Σr², Σ|r|; STAMLite's Σg, Σg²) are added: per-shard partials,
then an all-reduce. Two orders of a float32 sum of n terms differ by about
√n·ε relative (ε = 2⁻²⁴; n ≤ 16384 here: 8e-6 at the very worst, ~1e-6
typically), and each update is a ratio of such statistics, so u differs by a
few of those per step. 20 steps of `θ += −lr·u` then differ by at most
20·lr·|u|·1e-5 = 2e-6·|u| with lr = 1e-2, and |u| ≲ 1 for these
normalised updates: we allow 1e-5·(1 + max|θ|) per tensor, five times that.
In float64, ε is 2⁻⁵³: the same reasoning gives 1e-13; we allow 1e-12.
(AdamS has no tensor sums; it is held to the same bounds.)

A low-precision μ (bfloat16, float16, int8, int4) rounds each step's value to
its grid: where the float32 value lies within those ~1e-6 of a rounding
boundary, the two runs store neighbouring values, one grid step q apart
(relative to the element for bfloat16 2⁻⁸ and float16 2⁻¹¹, to the block
maximum for int8 (127² − 126²)/127² ≈ 0.016 and int4 (7² − 6²)/7² ≈ 0.27).
That changes that element's u by at most q·|u| in that step, so 20 steps move θ
apart by at most 20·lr·q·|u|: we allow 20·lr·q·(1 + max|θ|). int4 rounds
stochastically; its random numbers hash each element's global index, so they
are the same on every mesh. The layout itself is compared exactly (shapes).

`so.quantized_state(optax.adamw)` (adamw_q8, adamw_q4) has no sum whose order
a mesh changes (AdamW is elementwise, block scales are maxima, the layout and
the stochastic rounding's random numbers depend on global shapes and indices
alone), but it is not bit for bit the same: the per-shard programs round some
elements' float32 arithmetic differently (measured: 1 ulp of a param after one
of the 8-device runs). Such an ulp can move a stored moment across a rounding
boundary, so they get the int8 and int4 bounds (the signed map's top code step;
the non-negative map's, 1 − (255/256)⁴ ≈ 0.016 and 1 − (15/16)⁴ ≈ 0.23, moves u
by half of that). They run on 2 and 8 devices (8: every layout, 2-D included;
1 device is the reference, 4 repeats the layouts of 2 and 8), to keep the time
of this file in check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import shifted_stream
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from optimizers_under_test import ALIASES, BASE, QUANTIZED, alias

from stam_optimizer import quantize

# (8, 2048): 8 blocks of 256 per row, aligned for tensor parallelism over ≤ 8
# devices; (16, 256): 1 block per row, misaligned under tensor parallelism
# (replicated codes); (64,) a vector; () a scalar.
SHAPES = {"wide": (8, 2048), "w": (16, 256), "bias": (64,), "s": ()}
STEPS, LR = 20, 1e-2


def _meshes(n):
    """(name, mesh, spec function) for the layouts tested on n devices (jax.make_mesh
    gives Explicit axes by default: the sharding is part of every type)."""
    devices = jax.devices()[:n]
    line = jax.make_mesh((n,), ("x",), devices=devices)
    out = [("fsdp", line, lambda s: P("x") if s else P())]
    if n == 1:  # on one device every layout is the same placement
        return out
    out += [("tp", line, lambda s: P(None, "x") if len(s) == 2 else P()),
            ("replicated", line, lambda s: P())]
    if n >= 4:
        grid = jax.make_mesh((2, n // 2), ("x", "y"), devices=devices)
        out.append(("2d", grid, lambda s: P("x", "y") if len(s) == 2 else
                    (P(("x", "y")) if s else P())))
    return out


def _train(tx, params, grads, place):
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    params = place(params)
    state = tx.init(params)
    structure = (jax.tree.structure(state), [x.shape for x in jax.tree.leaves(state)])
    for g in grads:
        params, state = step(params, state, place(g))
    return params, state, structure


Q8, Q4 = (127**2 - 126**2) / 127**2, (7**2 - 6**2) / 7**2
GRID = {"stam_lite_bf16": 2.0**-8, "stam_lite_f16": 2.0**-11,
        "stam_lite_int8": Q8, "stam_lite_int4": Q4, "adamw_q8": Q8, "adamw_q4": Q4}
WRAPPED = ("adamw_q8", "adamw_q4")


def _bound(name):
    return STEPS * LR * GRID[name] if name in GRID else 1e-5


def _factory(name):
    return lambda: alias(name, LR)


def _check(name, n, dtype, bound):
    params, grads = shifted_stream(SHAPES, dtype, STEPS, 0.3)
    ref, ref_state, ref_structure = _train(_factory(name)(), params, grads,
                                           lambda t: jax.tree.map(jnp.asarray, t))
    for layout, mesh, spec in _meshes(n):
        def place(tree, mesh=mesh, spec=spec):
            return {k: jax.device_put(v, NamedSharding(mesh, spec(np.shape(v))))
                    for k, v in tree.items()}

        out, state, structure = _train(_factory(name)(), params, grads, place)
        assert structure == ref_structure, (layout, n)
        assert jax.tree.structure(state) == jax.tree.structure(ref_state), (layout, n)
        for k in SHAPES:
            a, b = np.asarray(ref[k], np.float64), np.asarray(out[k], np.float64)
            assert np.max(np.abs(a - b)) <= bound * (1 + np.max(np.abs(a))), (layout, n, k)
    if name in QUANTIZED:  # the quantised layout is the global one
        mu = ref_state.inner[0].mu if name in WRAPPED else ref_state[0].mu
        block_size = 128 if name in WRAPPED else 256
        for k, shape in SHAPES.items():
            if shape:
                n_blocks, block = quantize.layout(shape, block_size)
                width = -(-block // 2) if name.endswith("4") else block
                assert mu[k].codes.shape == (*shape[:-1], n_blocks, width), k


# The members with blockwise codes run on 8 devices only (every layout of SHAPES,
# the 2-D one included, has a sharded axis there; CI time), int8 STAMLite on 2 as
# well (a line of 2 devices whose shards hold several blocks); the others on 1, 2,
# 4 and 8.
@pytest.mark.parametrize(("name", "n"), [(name, n) for name in ALIASES for n in (1, 2, 4, 8)
                                         if name not in QUANTIZED or n == 8
                                         or (name == "stam_lite_int8" and n == 2)])
def test_same_layout_and_params_on_any_mesh_float32(name, n):
    assert jax.device_count() == 8, "conftest.py asks XLA for 8 CPU devices"
    _check(name, n, np.float32, _bound(name))


@pytest.mark.parametrize("name", BASE)  # the optimizers whose buffers follow a float64 param
def test_same_params_on_any_mesh_float64(name):
    with jax.enable_x64(True):
        _check(name, 8, np.float64, 1e-12)

"""Shared test fixtures: a mixed-shape parameter tree and gradient streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

SHAPES = {
    "conv": (3, 4, 5),
    "dense": (16, 8),
    "bias": (8,),
    "scalar": (),
    "half": (6, 4),  # stored in bfloat16
    "empty": (0, 3),
}
DTYPES = {name: (jnp.bfloat16 if name == "half" else jnp.float32) for name in SHAPES}


def make_params(seed: int = 0, dtypes=None) -> dict:
    """A parameter dict with the shapes above."""
    dtypes = dtypes or DTYPES
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=s), dtypes[k]) for k, s in SHAPES.items()}


def gradient_stream(steps: int, seed: int = 1, dtypes=None) -> list[dict]:
    """Noisy gradients whose mean jumps every 40 steps (exercises β₁ adaptation).

    Each leaf has its own scale (1e-3 .. 10) and noise level, so the per-tensor
    statistics differ between leaves. Values are exactly representable in the
    leaf dtype, so a float64 reference sees the same numbers.
    """
    dtypes = dtypes or DTYPES
    rng = np.random.default_rng(seed)
    scales = {k: 10.0 ** rng.uniform(-3, 1) for k in SHAPES}
    noise = {k: rng.uniform(0.1, 3.0) for k in SHAPES}
    means = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    out = []
    for t in range(steps):
        if t % 40 == 0 and t:
            means = {k: rng.normal(size=s) for k, s in SHAPES.items()}
        g = {}
        for k, s in SHAPES.items():
            x = scales[k] * (means[k] + noise[k] * rng.normal(size=s))
            np_dtype = ml_dtypes.bfloat16 if dtypes[k] == jnp.bfloat16 else np.float32
            g[k] = jnp.asarray(np.asarray(x).astype(np_dtype))
        out.append(g)
    return out


def to64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def run_against_reference(tx, ref_factory, steps: int, lr: float, params=None):
    """Runs `tx` (jitted) and per-leaf references on the same gradient stream.

    Returns a dict leaf -> list of (ours, reference, term scale) per step in
    float64, and the β₁ pairs per leaf where the reference reports one.
    """
    from stam_optimizer import tree_beta1

    params = make_params() if params is None else params
    state = tx.init(params)
    refs = {k: ref_factory(np.shape(v)) for k, v in params.items()}
    update = jax.jit(tx.update)
    pairs = {k: [] for k in params}
    beta_pairs = {k: [] for k in params}
    for g in gradient_stream(steps):
        u, state = update(g, state, params)
        has_beta = True
        try:
            b1 = tree_beta1(state, params)
        except ValueError:
            has_beta = False
        for k in params:
            ref_u, ref_b1, scale = refs[k].step(to64(g[k]), to64(params[k]))
            pairs[k].append((to64(u[k]), ref_u, scale))
            if has_beta and ref_b1 is not None:
                beta_pairs[k].append((float(b1[k]), ref_b1))
        params = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, u)
    return pairs, beta_pairs


def max_rel_err(triples) -> float:
    """Largest per-step max|ours − ref| / (size of the update's terms) of one leaf.

    Float rounding of `−lr·(u + λ·θ)` is bounded relative to the magnitude of
    the terms summed, not to the (possibly cancelling) result.
    """
    worst = 0.0
    for ours, ref, scale in triples:
        if ref.size and scale > 0:
            worst = max(worst, float(np.max(np.abs(ours - ref))) / scale)
    return worst


def shifted_stream(shapes: dict, dtype, steps: int, offset: float) -> tuple[dict, list[dict]]:
    """Seeded params and `steps` gradients of `shapes`: standard normal entries, the
    gradients shifted by `offset` (so every tensor has a mean to follow)."""
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: (rng.normal(size=s) + offset).astype(dtype) for k, s in shapes.items()}
             for _ in range(steps)]
    return params, grads

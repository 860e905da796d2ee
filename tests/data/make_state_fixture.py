"""Writes `states_v0_2.npz`: optimizer states and their next step, for tests/test_state_fixture.py.

The file holds, for each case of `CASES`, the state of the whole optimizer
(`so.stam(...)`, `so.stam_lite(...)`, `so.adams(...)`) after `STEPS` updates,
the gradient of the next step, and the updates and state that step gave. It
was written once by the code of 0.2.0.dev0 (commit 2093d11) and is kept as it
is: a later version must restore those states and continue them to the same
numbers, bit for bit. Do not regenerate it to make that test pass.

Run from the repository root: `PYTHONPATH=. python tests/data/make_state_fixture.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import stam_optimizer as so

STEPS = 5  # the step after them is t = 5: a STAMLite β₁ refresh (every 5 steps)
SHAPES = {"w": ((4, 24), jnp.float32), "b": ((5,), jnp.float32),
          "h": ((2, 6), jnp.bfloat16), "e": ((0, 3), jnp.float32)}
CASES = {
    "stam": lambda: so.stam(1e-2),
    "stam_energy": lambda: so.stam(1e-2, signal="energy"),
    "stam_bf16": lambda: so.stam(1e-2, mu_dtype="bfloat16"),
    "stam_lite": lambda: so.stam_lite(1e-2),
    "stam_lite_energy": lambda: so.stam_lite(1e-2, signal="energy"),
    "stam_lite_bf16": lambda: so.stam_lite(1e-2, state_dtype="bfloat16"),
    "stam_lite_int8": lambda: so.stam_lite(1e-2, state_dtype="int8", min_quantized_size=64,
                                           block_size=16, stochastic_rounding=True),
    "adams": lambda: so.adams(1e-2),
}
PATH = Path(__file__).with_name("states_v0_2.npz")


def params() -> dict:
    rng = np.random.default_rng(0)
    return {k: jnp.asarray(rng.normal(size=s), d) for k, (s, d) in SHAPES.items()}


def grads(step: int) -> dict:
    """Noisy gradients around a mean that flips sign at step 3; one NaN at step 2."""
    rng = np.random.default_rng(100 + step)
    mean = 0.5 if step < 3 else -0.5
    out = {k: jnp.asarray(mean + rng.normal(size=s), d) for k, (s, d) in SHAPES.items()}
    if step == 2:
        out["w"] = out["w"].at[1, 2].set(jnp.nan)
    return out


def encode(tree) -> tuple[np.ndarray, list]:
    """The leaves of `tree` as one byte string and a manifest of `[key path, dtype, shape]`
    (one array per tree keeps the file small; npz has no bfloat16 either)."""
    chunks, manifest = [], []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(leaf)
        chunks.append(x.tobytes())
        manifest.append([jax.tree_util.keystr(path), x.dtype.name, list(x.shape)])
    return np.frombuffer(b"".join(chunks), np.uint8), manifest


def main() -> None:
    arrays, manifest = {}, {}
    for name, make in CASES.items():
        tx, p = make(), params()
        state = tx.init(p)
        for step in range(STEPS):
            updates, state = tx.update(grads(step), state, p)
            p = jax.tree.map(lambda x, u: (x + u).astype(x.dtype), p, updates)
        g = grads(STEPS)
        updates, new_state = tx.update(g, state, p)
        for part, tree in (("params", p), ("state", state), ("grads", g),
                           ("updates", updates), ("next_state", new_state)):
            arrays[f"{name}/{part}"], manifest[f"{name}/{part}"] = encode(tree)
    arrays["manifest"] = np.array(json.dumps(manifest))
    np.savez_compressed(PATH, **arrays)
    print(f"{PATH}: {PATH.stat().st_size} bytes, {len(arrays)} arrays")


if __name__ == "__main__":
    main()

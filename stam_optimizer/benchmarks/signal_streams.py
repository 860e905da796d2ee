"""Controlled gradient streams, and β₁ traced through them in one compiled program.

Each stream is a (steps, n) float32 array of "gradients" for one tensor of n
entries, drawn from a seeded NumPy generator. Gradients are a fixed random mean
`m` (one value per entry, standard normal) plus noise; at step `steps // 2`
(the change) one property of the stream changes. The streams ask the question
of the 0.1.0 README ("high variance → lower β₁; low variance → higher β₁";
β₁ drops when gradients disagree with the momentum) one property at a time.

`trace` runs an optimizer over a stream with `lax.scan` inside one `jit` and
returns β₁, and the signal's z and s, after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer import beta1_signal
from stam_optimizer.diagnostics import find_states

# name -> (what changes at the change step, what the 0.1.0 description promises)
STREAMS: dict[str, tuple[str, str]] = {
    "stationary": ("nothing: mean m + noise of std 1 throughout", "constant"),
    "noise_up": ("noise std 1 → 5", "falls"),
    "noise_down": ("noise std 1 → 0.2", "rises"),
    "sign_flip": ("mean m → −m (noise std 0.1)", "falls"),
    "rotation": ("mean turns from m towards an independent m′ by 90° over the second half "
                 "(noise std 0.1)", "falls"),
    "heavy_tails": ("Gaussian noise → Student-t (3 dof) noise of the same std 1", "constant"),
    "one_sign": ("mean m → |m|: every entry's mean has one sign (noise std 1)", "constant"),
    "warmup": ("gradient scale grows ×10 (geometric) over the second half", "constant"),
    "decay": ("gradient scale shrinks ÷10 (geometric) over the second half", "constant"),
}
PROMISE_WORDS = {
    "constant": "no change (the signal-to-noise ratio is unchanged)",
    "falls": "β₁ falls (more variance, or gradients disagree with the momentum)",
    "rises": "β₁ rises (less variance)",
}


def make_stream(name: str, n: int, steps: int, seed: int = 0) -> np.ndarray:
    """The gradients of stream `name` for a tensor of `n` entries, (steps, n) float32."""
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; choose from {', '.join(STREAMS)}")
    if steps < 4 or n < 1:
        raise ValueError(f"need steps >= 4 and n >= 1, got steps={steps}, n={n}")
    rng = np.random.default_rng(seed)
    c = steps // 2
    t = np.arange(steps)[:, None]
    after = t >= c
    m = rng.normal(size=(1, n))
    xi = rng.normal(size=(steps, n))
    mean = np.broadcast_to(m, (steps, n))
    noise = xi
    scale = np.ones((steps, 1))
    if name == "noise_up":
        noise = np.where(after, 5.0, 1.0) * xi
    elif name == "noise_down":
        noise = np.where(after, 0.2, 1.0) * xi
    elif name == "sign_flip":
        mean, noise = np.where(after, -m, m), 0.1 * xi
    elif name == "rotation":
        m2 = rng.normal(size=(1, n))
        angle = np.clip(t - c, 0, None) / max(steps - c, 1) * (np.pi / 2)
        mean, noise = np.cos(angle) * m + np.sin(angle) * m2, 0.1 * xi
    elif name == "heavy_tails":
        dof = 3.0
        student = rng.standard_t(dof, size=(steps, n)) / np.sqrt(dof / (dof - 2))
        noise = np.where(after, student, xi)
    elif name == "one_sign":
        mean = np.where(after, np.abs(m), m)
    elif name in ("warmup", "decay"):
        end = 10.0 if name == "warmup" else 0.1
        scale = end ** (np.clip(t - c, 0, None) / max(steps - 1 - c, 1))
    return (scale * (mean + noise)).astype(np.float32)


def _terms(state, signal: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """β₁, z and s of the first tensor of the first STAM-family state in `state`."""
    s = find_states(state)[0]
    z, score = beta1_signal.state_terms(s, signal)
    return s.beta1[0], z[0], score[0]


def tracer(tx: optax.GradientTransformation, signal: str = "spec") -> Callable:
    """A jitted `grads (steps, n) -> (β₁, z, s)` per step for `tx` on one tensor.

    Every call with the same shape reuses one compiled program.
    """

    @jax.jit
    def run(grads):
        params = {"w": jnp.zeros(grads.shape[1:], grads.dtype)}
        state = tx.init(params)

        def step(state, g):
            _, state = tx.update({"w": g}, state, params)
            return state, _terms(state, signal)

        return jax.lax.scan(step, state, grads)[1]

    return run


def trace(tx: optax.GradientTransformation, grads: np.ndarray,
          signal: str = "spec") -> dict[str, np.ndarray]:
    """β₁, z and s of `tx` after every step of `grads` (one tensor), as NumPy arrays."""
    beta1, z, s = jax.device_get(tracer(tx, signal)(jnp.asarray(grads)))
    return {"beta1": np.asarray(beta1), "z": np.asarray(z), "s": np.asarray(s)}


def response(beta1: np.ndarray, change: int, window: int) -> dict[str, float]:
    """β₁ just before the change, at `change + window` and the extreme in between.

    `delta` is the largest move away from the value before the change within
    the window (signed: negative when β₁ fell), `steps` the number of steps after
    the change at which that extreme was reached.
    """
    before = float(beta1[change - 1])
    seg = np.asarray(beta1[change:change + window + 1], np.float64) - before
    i = int(np.argmax(np.abs(seg))) if seg.size else 0
    return {"before": before, "after": float(beta1[min(change + window, len(beta1) - 1)]),
            "delta": float(seg[i]) if seg.size else 0.0, "steps": i}

"""Controlled gradient streams, and β₁ traced through them in one compiled program.

Each stream is a (steps, n) float32 array of "gradients" for one tensor of n
entries, drawn from a seeded NumPy generator. Gradients are a fixed random mean
`m` (one value per entry, standard normal) plus noise; at step `steps // 2`
(the change) one property of the stream changes. The streams ask the question
of the 0.1.0 README ("high variance → lower β₁; low variance → higher β₁";
β₁ drops when gradients disagree with the momentum) one property at a time.

`trace` runs an optimizer over a stream with `lax.scan` inside one `jit` and
returns β₁, and the signal's z and s, after every step. `run_suite` is
`stam-bench run signal`: every adaptive optimizer of the registry on every
stream, written to `signal.json` for the report.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer import beta1_signal
from stam_optimizer.diagnostics import find_states

# Per-entry signal-to-noise ratio |mean|/std of minibatch gradients of the
# one-Chinchilla GPTs half-way through training with AdamW (`stam-bench snr`,
# docs/results/snr_cpu.json: medians 0.22 and 0.23; 0.5 on the short gpt task
# d64 at step 100, 0.75–1.1 at initialisation).
GPT_SNR = 0.2

# name -> (what changes at the change step, what the 0.1.0 description promises)
STREAMS: dict[str, tuple[str, str]] = {
    "stationary": ("nothing: mean m + noise of std 1 throughout", "constant"),
    "noise_up": ("noise std 1 → 5", "falls"),
    "noise_down": ("noise std 1 → 0.2", "rises"),
    "sign_flip": ("mean m → −m (noise std 0.1)", "falls"),
    "rotation": ("mean turns from m towards an independent m′ by 90° over the second half "
                 "(noise std 0.1)", "falls"),
    "heavy_tails": ("Gaussian noise → Student-t (3 dof) noise of the same std 1", "constant"),
    "one_sign": ("mean m → abs(m): every entry's mean has one sign (noise std 1)", "constant"),
    "warmup": ("gradient scale grows ×10 (geometric) over the second half", "constant"),
    "decay": ("gradient scale shrinks ÷10 (geometric) over the second half", "constant"),
    "noise_up_low_snr": (f"mean {GPT_SNR:g}·m (per-entry SNR {GPT_SNR:g}, as gpt gradients "
                         "mid-training); noise std 1 → 5", "falls"),
    "noise_down_low_snr": (f"mean {GPT_SNR:g}·m (per-entry SNR {GPT_SNR:g}); noise std 1 → 0.2",
                           "rises"),
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
    if name.endswith("_low_snr"):
        mean = GPT_SNR * mean
    if name.startswith("noise_up"):
        noise = np.where(after, 5.0, 1.0) * xi
    elif name.startswith("noise_down"):
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


# --- the signal suite ------------------------------------------------------------------

GRADUAL = ("rotation", "warmup", "decay")  # judged over the whole second half
TOLERANCE = 0.01  # a move of β₁ smaller than this counts as "no change"
SEED = 0
START = 100  # the stationary stream is judged from this step on


def adaptive_optimizers(size: str) -> list[str]:
    """Registry optimizers with an adaptive β₁ (`registry.Entry.signal`) that the suite
    traces at `size`: all of them at full size, those with float32 state below."""
    from stam_optimizer.benchmarks.programme import registry

    return [n for n, e in registry.ENTRIES.items() if e.signal is not None and e.full
            and (size == "full" or e.storage == "float32")]


def response_window(stream: str, steps: int, window: int) -> tuple[int, int]:
    """(first step, number of steps) over which a stream's response is read.

    Abrupt changes: `window` steps from the change. Gradual ones (rotation,
    warmup, decay): the whole second half. The stationary stream has no change:
    its response is the drift of β₁ from step `START` to the end, after the
    first steps in which every running average fills up.
    """
    change = steps // 2
    if stream == "stationary":
        start = min(START, change)
        return start, steps - start - 1
    return change, steps - change - 1 if stream in GRADUAL else window


def judge(promise: str, delta: float, tol: float = TOLERANCE) -> str:
    """"yes" if a response of `delta` matches `promise`, else "no (...)"."""
    if promise == "constant":
        return "yes" if abs(delta) < tol else "no"
    sign = -1 if promise == "falls" else 1
    if sign * delta >= tol:
        return "yes"
    return "no (opposite)" if sign * delta <= -tol else "no (too small)"


def _kept_steps(steps: int, change: int) -> np.ndarray:
    """Steps stored in the record: the first 100, the change and 200 after, every 10th."""
    keep = set(range(min(100, steps))) | set(range(max(change - 5, 0), min(change + 201, steps)))
    keep |= set(range(0, steps, 10)) | {steps - 1}
    return np.array(sorted(keep))


def _round(a: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(f"{v:.6g}") for v in np.asarray(a, float)]


def run_suite(out_path: str, size: str, optimizers: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Traces β₁, z and s of every adaptive registry optimizer through every stream.

    Writes `signal.json` (see docs/benchmark_format.md) atomically and returns it.
    """
    from stam_optimizer.benchmarks.programme import records, registry
    from stam_optimizer.benchmarks.programme.sizes import get as get_size

    chosen = get_size(size)
    steps, sizes, window = chosen.signal_steps, chosen.signal_sizes, chosen.signal_window
    change = steps // 2
    names = [n for n in (optimizers or adaptive_optimizers(size))
             if registry.entry(n).signal is not None]
    kept = _kept_steps(steps, change)
    runs = []
    for n in sizes:
        tracers = {name: tracer(registry.get(name, 1e-3), registry.entry(name).signal)
                   for name in names}  # each compiles once for this n
        for stream in STREAMS:
            grads = jnp.asarray(make_stream(stream, n, steps, SEED))  # one stream in memory
            for name, run in tracers.items():
                signal = registry.entry(name).signal
                beta1, z, s = (np.asarray(x) for x in jax.device_get(run(grads)))
                promise = STREAMS[stream][1]
                start, w = response_window(stream, steps, window)
                r = response(beta1, start, w)
                r |= {"start": start, "window": w, "promise": promise,
                      "matches": judge(promise, r["delta"])}
                if stream == "stationary":
                    r["levels"] = {str(t): float(beta1[t]) for t in (10, 100, 1000, steps - 1)
                                   if t < steps}
                runs.append({"optimizer": name, "signal": signal, "n": n, "stream": stream,
                             "response": r, "beta1": _round(beta1[kept]), "z": _round(z[kept]),
                             "s": _round(s[kept])})
            log(f"signal: {stream}, n={n}: {len(tracers)} optimizers")
    rec = {"schema": 1, "kind": "signal", "size": size, "steps": steps, "change": change,
           "sizes": list(sizes), "seed": SEED, "tolerance": TOLERANCE,
           "streams": {k: {"description": d, "promise": p} for k, (d, p) in STREAMS.items()},
           "promise_words": PROMISE_WORDS, "eval_steps": kept.tolist(), "runs": runs,
           "environment": records.environment()}
    records.write_json(out_path, rec)
    return rec

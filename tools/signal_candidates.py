"""Measures candidate β₁ signals on the controlled gradient streams.

Simulates, for one tensor, only what a β₁ signal sees: the momentum recurrence
`μ = β₁·μ + (1−β₁)·g` and each candidate's per-tensor scalars (ν and the
update direction do not feed back into β₁). The "spec" and "spec_lite" rows
are the "spec" signals of docs/math.md, as `stam_optimizer.beta1_signal`
implements them (the library's responses on these streams are pinned by
tests/test_signal_response.py); the others are the candidates of docs/signal.md.

    PYTHONPATH=. python tools/signal_candidates.py [--n 4096] [--steps 3000]
        [--output docs/results/signal/candidates.json]

Prints a markdown table: per candidate and stream, β₁ before the change →
extreme within the window (signed change, steps to it), and whether the
direction matches the 0.1.0 description.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from stam_optimizer.benchmarks.measure import signal_streams as ss
from stam_optimizer.benchmarks.programme.records import write_json

B1, ALPHA, B1_MIN = 0.9, 0.2, 0.72


def _beta(s):
    return jnp.clip(B1 * (1 - ALPHA * s), B1_MIN, B1)


def _bc(x, decay, t):
    return x / (1 - decay ** (t + 1.0))


# Each rule: (stats carry, sums, t) -> (new carry, β₁ candidate, z)
def spec(c, m, t):
    sig2 = 0.999 * c["sig2"] + 0.001 * m["r2"]
    tau = 0.99 * c["tau"] + 0.01 * m["abs_r"]
    z = sig2 / (tau**2 + 1e-8)
    b = jnp.where(sig2 >= 100 * (tau**2 + 1e-8), B1, _beta(z / (1 + z)))
    return c | {"sig2": sig2, "tau": tau}, b, z


def spec_bc(c, m, t):
    sig2 = 0.999 * c["sig2"] + 0.001 * m["r2"]
    tau = 0.99 * c["tau"] + 0.01 * m["abs_r"]
    z = _bc(sig2, 0.999, t) / (_bc(tau, 0.99, t) ** 2 + 1e-8)
    return c | {"sig2": sig2, "tau": tau}, _beta(z / (1 + z)), z


def spec_lite(c, m, t):
    a = 0.99 * c["a"] + 0.01 * m["g"]
    b = 0.99 * c["b"] + 0.01 * m["g2"]
    ah, bh = _bc(a, 0.99, t), _bc(b, 0.99, t)
    z = jnp.maximum(bh - ah**2, 0) / (bh + 1e-8)
    return c | {"a": a, "b": b}, _beta(z / (1 + z)), z


def _energy(c, m, d):
    p = d * c["p"] + (1 - d) * m["r2"]
    q = d * c["q"] + (1 - d) * m["g2"]
    return c | {"p": p, "q": q}, p / (q + 1e-30)  # matched decays: bias corrections cancel


def energy(c, m, t, d=0.99):
    c, z = _energy(c, m, d)
    return c, _beta(z / (1 + z)), z


def energy_lin(c, m, t, d=0.99):
    c, z = _energy(c, m, d)
    return c, _beta(jnp.minimum(z, 1.0)), z


def energy_lin_95(c, m, t):
    return energy_lin(c, m, t, 0.95)


def energy_lin_90(c, m, t):
    return energy_lin(c, m, t, 0.9)


def change(c, m, t):
    pf = 0.9 * c["pf"] + 0.1 * m["r2"]
    ps = 0.99 * c["ps"] + 0.01 * m["r2"]
    z = _bc(pf, 0.9, t) / (_bc(ps, 0.99, t) + 1e-30)
    return c | {"pf": pf, "ps": ps}, _beta(jnp.clip(z - 1, 0, 1)), z


def _change(c, m, t, fast, slow):
    pf = fast * c["pf"] + (1 - fast) * m["r2"]
    ps = slow * c["ps"] + (1 - slow) * m["r2"]
    return c | {"pf": pf, "ps": ps}, _bc(pf, fast, t) / (_bc(ps, slow, t) + 1e-30)


def change_sym(c, m, t):
    c, z = _change(c, m, t, 0.9, 0.99)
    return c, _beta(z / (1 + z)), z


def change_sym_slow(c, m, t):
    c, z = _change(c, m, t, 0.99, 0.999)
    return c, _beta(z / (1 + z)), z


# name -> (rule, β₁ refresh interval k, description)
CANDIDATES = {
    "spec": (spec, 1, "SPEC STAM: z = σ²/τ², σ² decay 0.999, τ decay 0.99, no bias correction"),
    "spec_bc": (spec_bc, 1, "SPEC STAM with σ² and τ bias-corrected"),
    "energy": (energy, 1, "z = EMA(mean r²)/EMA(mean g²), both decay 0.99; s = z/(1+z)"),
    "energy_lin": (energy_lin, 1, "same z; s = min(z, 1)"),
    "energy_lin_95": (energy_lin_95, 1, "energy_lin with both decays 0.95"),
    "energy_lin_90": (energy_lin_90, 1, "energy_lin with both decays 0.9"),
    "change": (change, 1, "z = fast/slow EMA(mean r²) (0.9 / 0.99, bias-corrected); "
                          "s = clip(z − 1, 0, 1)"),
    "change_sym": (change_sym, 1, "same z; s = z/(1+z) (β₁ 0.81 in steady state, up when "
                                  "the residual energy falls)"),
    "change_sym_slow": (change_sym_slow, 1, "change_sym with decays 0.99 / 0.999"),
    "spec_lite": (spec_lite, 5, "SPEC STAMLite: z = (b̂ − â²)/b̂, ρ 0.99, k 5"),
    "energy_lite": (energy, 5, "energy with STAMLite's lazy refresh (k 5)"),
    "energy_lin_lite": (energy_lin, 5, "energy_lin with k 5"),
    "energy_lin_95_lite": (energy_lin_95, 5, "energy_lin_95 with k 5"),
}
ZERO = {"sig2": 0.0, "tau": 0.0, "a": 0.0, "b": 0.0, "p": 0.0, "q": 0.0, "pf": 0.0, "ps": 0.0}


def simulate(rule, k: int, grads: np.ndarray) -> np.ndarray:
    @jax.jit
    def run(grads):
        carry0 = (jnp.zeros(grads.shape[1:]), {n: jnp.float32(v) for n, v in ZERO.items()},
                  jnp.float32(B1))

        def step(carry, x):
            mu, c, b1 = carry
            g, t = x
            r = g - mu
            sums = {"r2": jnp.mean(r * r), "abs_r": jnp.mean(jnp.abs(r)),
                    "g": jnp.mean(g), "g2": jnp.mean(g * g)}
            c, cand, z = rule(c, sums, t)
            b1 = jnp.where(t % k == 0, cand, b1)
            return (b1 * mu + (1 - b1) * g, c, b1), (b1, z)

        ts = jnp.arange(grads.shape[0], dtype=jnp.float32)
        return jax.lax.scan(step, carry0, (grads, ts))[1]

    return np.asarray(jax.device_get(run(jnp.asarray(grads)))[0])


def measure(n: int, steps: int, window: int) -> dict:
    c = steps // 2
    out = {"n": n, "steps": steps, "change": c, "window": window, "candidates": {}}
    for name, (rule, k, desc) in CANDIDATES.items():
        rows = {}
        for stream, (_, promise) in ss.STREAMS.items():
            b = simulate(rule, k, ss.make_stream(stream, n, steps, ss.SEED))
            start, w = ss.response_window(stream, steps, window)
            r = ss.response(b, start, w)
            r["promise"] = promise
            r["matches"] = ss.judge(promise, r["delta"])
            if stream == "stationary":
                r["levels"] = {str(t): float(b[t]) for t in (10, 100, 1000, steps - 1)}
            rows[stream] = r
        out["candidates"][name] = {"description": desc, "k": k, "streams": rows}
    return out


def table(res: dict) -> str:
    lines = [f"n = {res['n']}, {res['steps']} steps, change at {res['change']}; window "
             f"{res['window']} steps (rotation, warmup, decay: the whole second half; "
             f"stationary: step {ss.START} to the end, with β₁ at steps 10/100/1000). "
             "Cell: β₁ before → extreme (signed change, steps after the change); ✓ if the "
             "direction matches the 0.1.0 description.", "",
             "| candidate | " + " | ".join(ss.STREAMS) + " | matches |",
             "|---|" + "---|" * (len(ss.STREAMS) + 1)]
    for name, cand in res["candidates"].items():
        cells, ok = [], 0
        for stream in ss.STREAMS:
            r = cand["streams"][stream]
            mark = "✓" if r["matches"] == "yes" else "✗"
            ok += r["matches"] == "yes"
            if stream == "stationary":
                lv = r["levels"]
                cells.append(f"{lv['10']:.3f}/{lv['100']:.3f}/{lv['1000']:.3f} "
                             f"({r['delta']:+.3f}) {mark}")
            else:
                cells.append(f"{r['before']:.3f}→{r['before'] + r['delta']:.3f} "
                             f"({r['delta']:+.3f}, {r['steps']}) {mark}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {ok}/{len(ss.STREAMS)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 64])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--only", default=None, help="comma-separated candidates")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    if args.only:
        keep = args.only.split(",")
        for name in list(CANDIDATES):
            if name not in keep:
                del CANDIDATES[name]
    results = [measure(n, args.steps, args.window) for n in args.n]
    for res in results:
        print(table(res) + "\n")
    if args.output:
        write_json(args.output, {"results": results, "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Round-trip error of candidate 8/4-bit codecs on real AdamW moments.

Trains the gpt suite's gpt_d64 (quick size, character-level docstring corpus) with
optax.adamw for STEPS steps, takes the first (mu) and second (nu) moments of every
tensor of at least 4096 entries, and tabulates, per map x bits x block size:

* signed maps on mu: relative L2 error ‖m̂ − m‖/‖m‖;
* non-negative maps on nu: relative L2 error of v, relative L2 error of
  1/(√v + 1e-8) (what Adam's update divides by), and the fraction of entries with
  v > 0 decoded to 0.

Usage: python tools/low_bit_codec_table.py [--steps 300]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer import blockwise, low_bit_codecs
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.tasks import gpt


def _moments(steps: int):
    task = gpt.make(Config(size="quick", steps=steps), gpt.Variant(64))
    params = task.init(jax.random.key(0))
    tx = optax.adamw(1e-3, weight_decay=0.1)
    state = tx.init(params)

    @jax.jit
    def step(params, state, i):
        g = jax.grad(task.loss)(params, task.batch(jax.random.key(1), i))
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    for i in range(steps):
        params, state = step(params, state, i)
    mu = [x for x in jax.tree.leaves(state[0].mu) if x.size >= 4096]
    nu = [x for x in jax.tree.leaves(state[0].nu) if x.size >= 4096]
    return mu, nu


def _roundtrip(x, codec, block):
    return blockwise.dequantize(blockwise.quantize(x, codec, block), x.shape, codec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    mu, nu = _moments(args.steps)
    print(f"{sum(x.size for x in mu)} entries in {len(mu)} tensors, {args.steps} AdamW steps")
    blocks = (32, 64, 128, 256)
    print("\nmu, signed maps: relative L2 error (%) per block size", blocks)
    for bits in (8, 4):
        for p in (1, 2, 3):
            c = low_bit_codecs.signed(bits, p)
            errs = []
            for b in blocks:
                num = sum(float(jnp.sum((_roundtrip(x, c, b) - x) ** 2)) for x in mu)
                errs.append(100 * np.sqrt(num / sum(float(jnp.sum(x**2)) for x in mu)))
            cells = "  ".join(f"{e:6.2f}" for e in errs)
            print(f"  {bits}-bit x̂ = s·sign(q)·(|q|/L)^{p}: {cells}")
    print("\nnu, non-negative maps: rel. L2 error of v (%) / of 1/(√v+1e-8) (%) / "
          "v>0 decoded to 0 (%), per block size", blocks)
    for bits in (8, 4):
        cands = [(f"v̂ = s·((q+1)/L)^{p}", low_bit_codecs.nonnegative(bits, p)) for p in (1, 2, 4)]
        cands.append(("v̂ = s·(q/L)^2 (zero code)", low_bit_codecs.signed(bits, 2)))
        for label, c in cands:
            cells = []
            for b in blocks:
                ev = ei = zero = pos = 0.0
                for x in nu:
                    y = _roundtrip(x, c, b)
                    ev += float(jnp.sum((y - x) ** 2))
                    inv, inv_y = 1 / (jnp.sqrt(x) + 1e-8), 1 / (jnp.sqrt(y) + 1e-8)
                    ei += float(jnp.sum((inv_y - inv) ** 2)) / float(jnp.sum(inv**2)) * x.size
                    zero += float(jnp.sum((x > 0) & (y <= 0)))
                    pos += float(jnp.sum(x > 0))
                n = sum(x.size for x in nu)
                ev = 100 * np.sqrt(ev / sum(float(jnp.sum(x**2)) for x in nu))
                cells.append(f"{ev:5.2f}/{100 * np.sqrt(ei / n):7.2f}/{100 * zero / pos:5.2f}")
            print(f"  {bits}-bit {label}: " + "  ".join(cells))


if __name__ == "__main__":
    main()

"""Train one small MLP with STAM, STAMLite and AdamW side by side.

Same initialisation, same mini-batches, same learning rate for every optimizer;
the task is a synthetic 10-class problem (inputs from a random teacher network)
whose labels are remapped half-way through, to show a distribution shift.
Prints training and held-out loss every few hundred steps.

    python examples/side_by_side.py [--steps 1200] [--lr 3e-3] [--seed 0]

This is a demonstration, not evidence: the benchmark suite runs tuned
learning rates, several seeds and confidence intervals.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import stam_optimizer as so


def make_data(key, n, dim=20, classes=10):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (n, dim))
    w1 = jax.random.normal(k2, (dim, 64)) / jnp.sqrt(dim)
    w2 = jax.random.normal(k3, (64, classes)) / 8.0
    y = jnp.argmax(jnp.tanh(x @ w1) @ w2, axis=-1)
    return x, y


def init_mlp(key, sizes=(20, 128, 128, 10)):
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append({"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)})
    return params


def loss_fn(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, params, batches_x, batches_y, x_val, y_val):
    """Runs all steps in one compiled `lax.scan`; returns per-step train and val loss."""

    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (loss, loss_fn(params, x_val, y_val))

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), (batches_x, batches_y))[1])
    return run(params)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200, help="training steps (>= 2)")
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate for every optimizer")
    ap.add_argument("--batch", type=int, default=64, help="batch size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2")

    key = jax.random.PRNGKey(args.seed)
    kd, kp, kb, kv = jax.random.split(key, 4)
    x, y = make_data(kd, 20_000)
    x_val, y_val = x[-2000:], y[-2000:]
    idx = jax.random.randint(kb, (args.steps, args.batch), 0, 18_000)
    by = y[idx]
    shift = args.steps // 2  # labels are permuted from here on: a distribution shift
    perm = jax.random.permutation(kv, 10)
    by = by.at[shift:].set(perm[by[shift:]])
    bx = x[idx]
    params = init_mlp(kp)

    optimizers = {
        "stam": so.stam(args.lr),
        "stam_lite": so.stam_lite(args.lr),
        "adamw": optax.adamw(args.lr, weight_decay=0.01),
    }
    log_every = max(1, args.steps // 8)
    curves = {}
    for name, tx in optimizers.items():
        t0 = time.perf_counter()
        train_loss, val_loss = jax.block_until_ready(
            train(tx, params, bx, by, x_val, y_val))
        curves[name] = (train_loss, val_loss)
        print(f"{name:>10}: trained {args.steps} steps in {time.perf_counter() - t0:.1f}s")

    print(f"\ntraining loss by step (the labels are permuted at step {shift})")
    header = "  step  " + "".join(f"{n + ' train':>18}" for n in optimizers)
    print(header)
    for t in list(range(0, args.steps, log_every)) + [args.steps - 1]:
        row = "".join(f"{float(curves[n][0][t]):18.4f}" for n in optimizers)
        print(f"{t:6d}  {row}")
    print("\nheld-out loss just before the shift (original labels):")
    for n in optimizers:
        print(f"{n:>10}: {float(curves[n][1][shift - 1]):.4f}")
    print("mean train loss over the last 10% of steps (after the shift):")
    tail = max(1, args.steps // 10)
    for n in optimizers:
        print(f"{n:>10}: {float(curves[n][0][-tail:].mean()):.4f}")


if __name__ == "__main__":
    main()

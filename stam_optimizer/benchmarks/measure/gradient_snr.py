"""Per-entry signal-to-noise ratio of minibatch gradients on the gpt tasks.

The β₁ signals of STAM read the residual `g − μ` of a tensor's gradients
against its momentum. Whether a signal can see a change of the noise depends on
how much of each entry's gradient is noise. This module measures it where the
benchmark's language models train: at parameters θ, it draws `batches`
independent minibatches of the task's training stream, takes their gradients
g₁ … g_K, and gives for every entry

    SNR = |ḡ| / s,   ḡ = mean_k g_k,   s = std_k g_k  (ddof 1)

summarised per tensor (median and quartiles over its entries) and over the
whole model (median over every entry). With K batches, pure noise reads as
about 0.8/√K (the median of |t|/√K for a Student-t with K − 1 degrees of
freedom), so `noise_floor` is given next to the values: a median near it means
the entries' means are not resolved at all.

Two points per task: the initial parameters, and the parameters after training
with AdamW at the task's own recipe (half its steps, at the peak learning rate
`lr`), where a run spends most of its time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from stam_optimizer.benchmarks.programme.task import Task

BATCHES = 64


def noise_floor(batches: int) -> float:
    """Median of |ḡ|/s over entries that are pure noise, with `batches` samples:
    the median of |t_{K−1}|/√K."""
    return float(scipy.stats.t.ppf(0.75, batches - 1) / np.sqrt(batches))


def gradients(task: Task, params: Any, key: jax.Array, batches: int) -> Any:
    """The gradients of `task.loss` at `params` on `batches` independent training
    batches, stacked on a leading axis."""
    keys = jax.random.split(key, batches)

    def one(k):
        return jax.grad(task.loss)(params, task.batch(k, 0))

    return jax.lax.map(one, keys)


def summarise(grads: Any) -> dict:
    """Per tensor (leaf path) and overall: median and quartiles of |ḡ|/s."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    rows, every = {}, []
    for path, g in flat:
        g = np.asarray(g, np.float64)
        mean, sd = g.mean(0), g.std(0, ddof=1)
        snr = np.abs(mean[sd > 0]) / sd[sd > 0]
        if snr.size == 0:
            continue
        name = jax.tree_util.keystr(path)
        q1, med, q3 = np.quantile(snr, [0.25, 0.5, 0.75])
        rows[name] = {"entries": int(snr.size), "median": float(med), "q1": float(q1),
                      "q3": float(q3)}
        every.append(snr)
    allv = np.concatenate(every)
    q1, med, q3 = np.quantile(allv, [0.25, 0.5, 0.75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "tensors": rows}


def trained(task: Task, lr: float, steps: int, seed: int = 0) -> Any:
    """Parameters after `steps` steps of AdamW at the task's recipe and peak `lr`."""
    tx = task.make_optimizer("adamw", lr) if task.make_optimizer else optax.adamw(lr)
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = task.init(k_init)

    def step(carry, t):
        params, state = carry
        b = task.batch(k_data if task.seed_batches else jax.random.fold_in(k_data, t), t)
        g = jax.grad(task.loss)(params, b)
        u, state = tx.update(g, state, params)
        return (optax.apply_updates(params, u), state), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)),
                                                     jnp.arange(steps)))(params)
    return params


def measure(task: Task, lr: float = 1e-2, batches: int = BATCHES, seed: int = 0) -> dict:
    """SNR of `task`'s gradients at its initial parameters and after half its steps
    of AdamW at peak learning rate `lr`."""
    if batches < 3:
        raise ValueError(f"batches must be >= 3, got {batches}")
    key = jax.random.key(seed + 1000)
    init = task.init(jax.random.split(jax.random.key(seed))[0])
    half = task.steps // 2
    points = {"init": init, f"after {half} AdamW steps": trained(task, lr, half, seed)}
    out = {"task": task.name, "batch_size": task.batch_size, "batches": batches,
           "noise_floor": noise_floor(batches), "adamw_lr": lr, "points": {}}
    grad_fn = jax.jit(lambda p: gradients(task, p, key, batches))
    for name, params in points.items():
        out["points"][name] = summarise(jax.device_get(grad_fn(params)))
    return out


def table(results: list[dict]) -> str:
    """Markdown: per task and point, the median SNR and its quartiles, all entries."""
    from stam_optimizer.benchmarks.report.markdown import table as markdown_table

    rows = [[r["task"], str(r["batch_size"]), point, f"{v['median']:.3f}",
             f"{v['q1']:.3f} – {v['q3']:.3f}", f"{r['noise_floor']:.3f}"]
            for r in results for point, v in r["points"].items()]
    return "\n".join(markdown_table(["task", "batch", "parameters at", "median SNR",
                                     "quartiles", "noise floor"], rows)).rstrip()

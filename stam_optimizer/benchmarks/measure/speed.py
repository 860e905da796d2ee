"""Timing of optimizer updates and whole train steps, measured fairly.

Method (for every number): one jitted program per optimizer with params and
state donated; compile time measured apart; warm-up steps excluded;
`block_until_ready` after every step; optimizers interleaved A B A B ... so that
machine noise hits all of them alike; medians reported with min–max, and ratios
to `optax.adamw` taken per round (paired) before the median.

Next to each update time stands the traffic of its compiled program, read from
the HLO (`hlo_traffic`): how many kernels XLA runs and how many bytes they read
and write per parameter. Its ratio to AdamW's is the time ratio to expect if
both ran at the same bandwidth; a measured ratio well above it means the
update is bound by arithmetic or per-kernel overhead rather than memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer.benchmarks.measure import hlo_traffic
from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.benchmarks.programme.records import environment, write_json
from stam_optimizer.benchmarks.tasks import models


def update_optimizers() -> list[str]:
    """The optimizers of the update timing: the registry entries that count the bytes
    one update moves (`registry.Entry.update_bytes`), and every entry that stores a
    float parent's state differently, with that parent (`ratio_to_parent`)."""
    names = [n for n, e in registry.ENTRIES.items() if e.update_bytes or e.parent]
    parents = [registry.ENTRIES[n].parent for n in names if registry.ENTRIES[n].parent]
    return names + [p for p in dict.fromkeys(parents) if p not in names]


TREES = ("small200", "square8", "large64", "single16")


def make_tree(name: str) -> dict:
    """The three parameter trees of the speed issue, and one tensor (float32)."""
    if name == "small200":  # ~1M params in 200 leaves of varied shapes
        rng = np.random.default_rng(0)
        shapes = [(int(rng.integers(40, 100)), int(rng.integers(40, 100))) for _ in range(200)]
        return {f"p{i:03d}": jnp.full(s, 0.1, jnp.float32) for i, s in enumerate(shapes)}
    if name == "square8":  # ~8.4M params: 8 square layers with biases
        tree = {}
        for i in range(8):
            tree[f"w{i}"] = jnp.full((1024, 1024), 0.1, jnp.float32)
            tree[f"b{i}"] = jnp.full((1024,), 0.1, jnp.float32)
        return tree
    if name == "large64":  # ~64M params in four large leaves
        return {f"w{i}": jnp.full((4096, 4096), 0.1, jnp.float32) for i in range(4)}
    if name == "single16":  # one large64 leaf: kernels of one tensor, for profiles
        return {"w": jnp.full((4096, 4096), 0.1, jnp.float32)}
    raise ValueError(f"unknown tree {name!r}; choose from {', '.join(TREES)}")


def _compiled_runner(step: Callable, params, state, extra: tuple, warmup: int):
    """Compiles `step(params, state, *extra) -> (params, state, *rest)` with params
    and state donated, runs the warm-up, and returns a runner that does one
    blocking step, the compile time, and the box holding the live values (and,
    under "hlo", the kernels and bytes of the compiled program)."""
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, *extra).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    box = {"p": params, "s": state, "rest": (), "hlo": hlo_traffic.traffic(text),
           "hlo_text": text}

    def run():
        box["p"], box["s"], *box["rest"] = compiled(box["p"], box["s"], *extra)
        jax.block_until_ready((box["p"], box["s"]))

    for _ in range(warmup):
        run()
    return run, compile_s, box


def interleave(runners: dict[str, Callable[[], None]], steps: int) -> dict[str, np.ndarray]:
    """Runs every runner once per round, in turn, for `steps` rounds; the seconds
    of each run, per runner (A/B interleaving: machine noise hits all alike)."""
    times = {k: [] for k in runners}
    for _ in range(steps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in times.items()}


def _summary(times: dict[str, np.ndarray], baseline: str) -> dict[str, dict]:
    """Median, min and max seconds per optimizer; the median of the per-round ratios
    to `baseline` and, for a storage variant, to its float parent
    (`registry.Entry.parent`) when that was timed in the same rounds."""
    out = {}
    for k, t in times.items():
        out[k] = {
            "median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()),
            "ratio_to_adamw": float(np.median(t / times[baseline])) if baseline in times else None,
        }
        found = registry.ENTRIES.get(k)
        if found is not None and found.parent in times:
            out[k]["parent"] = found.parent
            out[k]["ratio_to_parent"] = float(np.median(t / times[found.parent]))
    return out


def copy_bandwidth(n_floats: int, steps: int = 20) -> float:
    """Bytes/s of an in-place read+write of `n_floats` float32 (donated buffer)."""
    f = jax.jit(lambda x: x * 1.0000001, donate_argnums=0)
    x = jax.block_until_ready(f(jnp.ones((n_floats,), jnp.float32)))
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x = jax.block_until_ready(f(x))
        ts.append(time.perf_counter() - t0)
    return 2 * 4 * n_floats / float(np.median(ts))


def update_grads(tree: dict) -> dict:
    """The gradients every update timing feeds: 1% of the params."""
    return jax.tree.map(lambda x: x * 0.01, tree)


def update_runner(name: str, tree: dict, grads: dict, warmup: int):
    """`_compiled_runner` for the update (plus `apply_updates`) of registry
    optimizer `name` on a fresh copy of `tree`."""
    tx = registry.get(name)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.copy, tree)
    return _compiled_runner(step, params, tx.init(params), (grads,), warmup)


def time_updates(tree_name: str, names: list[str], steps: int, warmup: int,
                 log: Callable[[str], None]) -> dict:
    """Optimizer update alone (plus `apply_updates`), donated, interleaved."""
    tree = make_tree(tree_name)
    n = sum(x.size for x in jax.tree.leaves(tree))
    grads = update_grads(tree)
    runners, compile_s, hlo = {}, {}, {}
    for name in names:
        runners[name], compile_s[name], box = update_runner(name, tree, grads, warmup)
        hlo[name] = box["hlo"]
        log(f"  {tree_name}: compiled {name} in {compile_s[name]:.2f}s")
    times = interleave(runners, steps)
    result = _summary(times, "adamw")
    bw = copy_bandwidth(n)
    for name in names:
        r = result[name]
        r["compile_s"] = compile_s[name]
        r["hlo_kernels"] = hlo[name]["kernels"]
        r["hlo_bytes_per_param"] = hlo[name]["bytes"] / n
        if "adamw" in names:
            r["compile_ratio_to_adamw"] = compile_s[name] / compile_s["adamw"]
            r["hlo_traffic_ratio_to_adamw"] = hlo[name]["bytes"] / hlo["adamw"]["bytes"]
        moved = registry.entry(name).update_bytes
        if moved:
            r["bytes_per_param"] = moved
            r["achieved_GBps"] = moved * n / r["median_s"] / 1e9
    return {"tree": tree_name, "params": int(n), "leaves": len(jax.tree.leaves(tree)),
            "copy_GBps": bw / 1e9, "optimizers": result}


# --- whole train steps ------------------------------------------------------------

def mlp_task(key) -> tuple[Any, Callable]:
    """`(params, loss)`: the zoo's 784-512-512-10 ReLU MLP on one fixed batch of 128."""
    init, apply = models.mlp((784, 512, 512, 10))
    k_init, k_data = jax.random.split(key)
    x = jax.random.normal(k_data, (128, 784))
    y = jax.random.randint(k_data, (128,), 0, 10)
    return init(k_init), lambda params: models.xent(apply(params, x), y)


def transformer_task(key, vocab: int = 256, d: int = 128, layers: int = 2, heads: int = 4,
                     seq: int = 64, batch: int = 16, return_tokens: bool = False):
    """`(params, loss)` (and the tokens if `return_tokens`): the zoo's causal
    transformer; `loss(params, tokens=fixed batch of batch x (seq + 1))`."""
    init, apply = models.transformer(vocab, d, layers, heads, seq)
    k_init, k_data = jax.random.split(key)
    tokens = jax.random.randint(k_data, (batch, seq + 1), 0, vocab)

    def loss(params, tokens=tokens):
        return models.xent(apply(params, tokens[:, :-1]), tokens[:, 1:])

    params = init(k_init)
    return (params, loss, tokens) if return_tokens else (params, loss)


TRAIN_TASKS = {"mlp": mlp_task, "transformer": transformer_task}


def time_train_steps(task: str, names: list[str], steps: int, warmup: int, seed: int,
                     log: Callable[[str], None]) -> dict:
    """Forward + backward + update of a small model, every optimizer interleaved."""
    params0, loss = TRAIN_TASKS[task](jax.random.PRNGKey(seed))
    runners, compile_s, boxes = {}, {}, {}
    for name in names:
        tx = registry.get(name)

        def step(params, state, tx=tx):
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        params = jax.tree.map(jnp.copy, params0)
        runners[name], compile_s[name], boxes[name] = _compiled_runner(
            step, params, tx.init(params), (), warmup)
        log(f"  {task}: compiled {name} in {compile_s[name]:.2f}s")
    times = interleave(runners, steps)
    baseline = "adamw" if "adamw" in names else names[0]
    result = _summary(times, baseline)
    for name in names:
        result[name]["compile_s"] = compile_s[name]
        result[name]["final_loss"] = float(boxes[name]["rest"][0])
    return {"task": task, "seed": seed, "baseline": baseline, "optimizers": result}


def measure(trees: list[str], train_tasks: list[str], train_optimizers: list[str],
            steps: int, warmup: int, output: str, log: Callable[[str], None],
            update_names: list[str] | None = None) -> dict:
    """Update timings on `trees`, then train-step timings of `train_tasks`; the
    JSON record is rewritten to `output` after each part, so nothing measured is
    lost if a later part is interrupted. `update_names`: the optimizers of the
    update timing (None: `update_optimizers()`)."""
    out = {"environment": environment(), "update": [], "train_step": [],
           "method": __doc__.strip()}
    names = update_names or update_optimizers()
    for t in trees:
        log(f"update timing on {t} ({steps} interleaved rounds after {warmup} warm-up)")
        out["update"].append(time_updates(t, names, steps, warmup, log))
        write_json(output, out)
    for task in train_tasks:
        log(f"train-step timing: {task}")
        out["train_step"].append(time_train_steps(task, train_optimizers, steps, warmup, 0, log))
        write_json(output, out)
    return out


def update_table(runs: list[dict]) -> str:
    """Markdown table of update-only ratios (the headline), the traffic of the
    compiled program, bandwidth and compile time."""
    lines = ["| tree | params | optimizer | ratio to adamw (median) | median ms"
             " (min–max) | GB/s (copy GB/s) | kernels | HLO B/param (ratio) | compile s"
             " (ratio) |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for name, r in run["optimizers"].items():
            lines.append(
                f"| {run['tree']} | {run['params'] / 1e6:.1f}M | {name} | "
                f"{r['ratio_to_adamw']:.2f} | {r['median_s'] * 1e3:.2f} "
                f"({r['min_s'] * 1e3:.2f}–{r['max_s'] * 1e3:.2f}) | "
                f"{r.get('achieved_GBps', float('nan')):.1f} ({run['copy_GBps']:.1f}) | "
                f"{r.get('hlo_kernels', '')} | {_pair(r, 'hlo_bytes_per_param', 'hlo_traffic')} | "
                f"{_pair(r, 'compile_s', 'compile')} |")
    return "\n".join(lines)


def _pair(r: dict, value: str, ratio: str) -> str:
    """`value (ratio)` from a timing record; older files lack the HLO fields."""
    if value not in r:
        return ""
    text = f"{r[value]:.2f}"
    return f"{text} ({r[ratio + '_ratio_to_adamw']:.2f})" if ratio + "_ratio_to_adamw" in r \
        else text


def parent_table(runs: list[dict]) -> str:
    """Markdown: each storage variant's time as a median ratio to its float parent,
    from the same interleaved rounds (update-only runs and train steps)."""
    lines = ["| timing | tree or task | optimizer | parent | ratio to parent (median) |",
             "|---|---|---|---|---|"]
    for run in runs:
        kind, where = ("update", run["tree"]) if "tree" in run else ("train step", run["task"])
        for name, r in run["optimizers"].items():
            if "ratio_to_parent" in r:
                lines.append(f"| {kind} | {where} | {name} | {r['parent']} | "
                             f"{r['ratio_to_parent']:.2f} |")
    return "\n".join(lines)


def train_table(runs: list[dict]) -> str:
    """Markdown table of whole-train-step timings."""
    lines = ["| task | optimizer | ratio to adamw | median ms (min–max) | compile s |",
             "|---|---|---|---|---|"]
    for run in runs:
        for name, r in run["optimizers"].items():
            lines.append(f"| {run['task']} | {name} | {r['ratio_to_adamw']:.2f} | "
                         f"{r['median_s'] * 1e3:.2f} ({r['min_s'] * 1e3:.2f}–"
                         f"{r['max_s'] * 1e3:.2f}) | {r['compile_s']:.2f} |")
    return "\n".join(lines)

"""Runs a `Task` for one optimizer: every learning rate of the grid and every seed
in one compiled program (`lax.scan` over steps, `vmap` over runs).

Protocol (the same for every optimizer):
1. all learning rates of the task's log grid x (tuning seeds + final seeds) run in
   one program; seed `s` fixes the initial parameters and the batch order, so
   every optimizer sees the same ones (paired comparisons);
2. the learning rate is selected on the mean final validation metric of the
   tuning seeds only; if the best one sits on an edge of the grid, two more
   points are added beyond that edge (same log spacing) and the choice is redone;
3. the final seeds at the selected learning rate are the reported result.

A task with `final_at_best` (long runs) runs step 1 on the tuning seeds only and
then the final seeds at the selected learning rate alone, in a second program;
its record holds nan (None) for the final seeds at the other learning rates.

Every registry optimizer ends in `scale_by_learning_rate`, so its update is
exactly `lr * update_at_lr_1`: the program builds the optimizer at lr = 1 and
multiplies by a traced per-run learning rate (tested bit for bit). For the
weight-decay sweep, optimizers with decoupled weight decay are built with
weight_decay = 0 and the decay `-lr * wd * params` is added outside, per run.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer.benchmarks.programme import records, registry
from stam_optimizer.benchmarks.programme.task import Task
from stam_optimizer.diagnostics import find_states, tree_beta1

# LLVM optimisation level 1 instead of XLA:CPU's default 2: compiling is what the
# programme spends most of its time on, and on these small models level 1 compiles
# about 40% faster with no measurable loss of run time. Every optimizer is compiled
# the same way. (Timings of `stam-bench speed` do not use this.)
COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def leaf_names(params) -> list[str]:
    """Readable paths of the parameter leaves ("[0]['w']" -> "0/w")."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in paths]


def build(task: Task, name: str, sweep_wd: bool = False):
    """`program(lrs, wds, seeds) -> dict of arrays`, one row per run, jitted.

    Outputs: `metrics/<k>` (runs, evals+1), `train_loss` (runs, evals+1) with the
    mean training loss of each evaluation interval (index 0: the first batch),
    and `beta1` (runs, evals+1, leaves) for STAM-family optimizers.
    """
    own = task.make_optimizer is not None
    entry = registry.entry(name)
    if not own and not entry.linear_in_lr:
        raise ValueError(f"{task.name}: {name!r} is not linear in the learning rate, and "
                         "this task builds every optimizer once at lr 1; only a task with "
                         "its own make_optimizer (the gpt suite) can run it")
    tx_lr1 = None if own else registry.get(name, 1.0, 0.0 if sweep_wd else registry.WD)
    track_beta1 = bool(find_states(jax.eval_shape(
        lambda: task.make_optimizer(name, 1.0).init(task.init(jax.random.key(0)))))) \
        if own else registry.has_beta1_state(name)
    n_chunks = task.steps // task.eval_every

    def one(lr, wd, seed):
        k_init, k_data, k_noise = jax.random.split(jax.random.key(seed), 3)
        params = task.init(k_init)

        def batch_at(t):
            return task.batch(k_data if task.seed_batches else jax.random.fold_in(k_data, t), t)
        tx = task.make_optimizer(name, lr) if own else tx_lr1
        state = tx.init(params)

        def train_step(carry, t):
            params, state = carry
            value, grads = jax.value_and_grad(task.loss)(params, batch_at(t))
            if task.grad_noise:
                leaves, tdef = jax.tree.flatten(grads)
                keys = jax.random.split(jax.random.fold_in(k_noise, t), len(leaves))
                grads = tdef.unflatten([g + task.grad_noise * jax.random.normal(k, g.shape)
                                        for g, k in zip(leaves, keys)])
            updates, state = tx.update(grads, state, params)
            if own:
                params = optax.apply_updates(params, updates)
            elif sweep_wd:
                params = jax.tree.map(lambda p, u: p + lr * (u - wd * p), params, updates)
            else:
                params = jax.tree.map(lambda p, u: p + lr * u, params, updates)
            return (params, state), value

        def observe(params, state, step):
            at = entry.eval_params(params, state) if entry.eval_params else params
            obs = {f"metrics/{k}": v for k, v in task.evaluate(at, step).items()}
            if track_beta1:
                obs["beta1"] = jnp.stack(jax.tree.leaves(tree_beta1(state, params)))
            return obs

        def chunk(carry, i):
            steps = i * task.eval_every + jnp.arange(task.eval_every)
            carry, losses = jax.lax.scan(train_step, carry, steps)
            obs = observe(*carry, (i + 1) * task.eval_every)
            return carry, obs | {"train_loss": losses.mean()}

        first = task.loss(params, batch_at(0))
        obs0 = observe(params, state, 0) | {"train_loss": first}
        (params, _), obs = jax.lax.scan(chunk, (params, state), jnp.arange(n_chunks))
        obs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), obs0, obs)
        if task.test is not None:
            obs |= {f"test/{k}": v for k, v in task.test(params).items()}
        return obs

    return jax.jit(jax.vmap(one))


def execute(task: Task, name: str, lrs, seeds, wds=None) -> tuple[dict, float, float]:
    """Runs the grid (lrs x wds x seeds, flattened, lr slowest); returns numpy
    outputs, compile seconds and run seconds."""
    lrs, seeds = np.asarray(lrs, np.float32), np.asarray(seeds, np.uint32)
    wds = np.zeros(1, np.float32) if wds is None else np.asarray(wds, np.float32)
    grid = np.stack(np.meshgrid(np.arange(len(lrs)), np.arange(len(wds)),
                                np.arange(len(seeds)), indexing="ij"), -1).reshape(-1, 3)
    args = (jnp.asarray(lrs[grid[:, 0]]), jnp.asarray(wds[grid[:, 1]]),
            jnp.asarray(seeds[grid[:, 2]]))
    program = build(task, name, sweep_wd=np.any(wds != 0) or len(wds) > 1)
    t0 = time.perf_counter()
    compiled = program.lower(*args).compile(compiler_options=COMPILER_OPTIONS)
    t1 = time.perf_counter()
    out = jax.device_get(compiled(*args))
    t2 = time.perf_counter()
    shape = (len(lrs), len(wds), len(seeds))
    return ({k: np.asarray(v).reshape(shape + np.shape(v)[1:]) for k, v in out.items()},
            t1 - t0, t2 - t1)


def eval_steps(task: Task) -> list[int]:
    return list(range(0, task.steps + 1, task.eval_every))


def derived_metrics(task: Task, out: dict) -> dict[str, np.ndarray]:
    """Final value of every metric, plus `post_shift_val_loss` (mean validation
    loss over the evaluations after the first shift) and `auc_val_loss` (mean
    over all evaluations after step 0). Shapes: the leading run axes of `out`."""
    final = {k.split("/", 1)[1]: v[..., -1] for k, v in out.items() if k.startswith("metrics/")}
    final |= {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("test/")}
    val = out["metrics/val_loss"]
    final["auc_val_loss"] = val[..., 1:].mean(-1)
    if task.shift_steps:
        after = np.asarray(eval_steps(task)) > task.shift_steps[0]
        final["post_shift_val_loss"] = val[..., after].mean(-1)
    return final


def _grid_extension(lrs: list[float], best: int) -> list[float] | None:
    """Two more log-spaced points beyond the edge where `best` sits, or None."""
    if 0 < best < len(lrs) - 1 or len(lrs) < 2:
        return None
    ratio = lrs[1] / lrs[0]
    if best == 0:
        return [lrs[0] / ratio**2, lrs[0] / ratio]
    return [lrs[-1] * ratio, lrs[-1] * ratio**2]


def tune_and_run(task: Task, name: str, tune_seeds: list[int], final_seeds: list[int],
                 size: str, at_lr: float | None = None) -> dict:
    """The whole protocol for one (task, optimizer); returns the run record.

    `at_lr`: no tuning; the final seeds run at this learning rate alone (a storage
    variant at the learning rate its float parent chose, `scheduler.parity_parent`),
    and the record's tuning part lists no seeds."""
    if at_lr is not None:
        out, compile_s, run_s = execute(task, name, [at_lr], final_seeds)
        return _record(task, name, size, out, [at_lr], 0, [], final_seeds, False,
                       compile_s, run_s)
    seeds = list(tune_seeds) + list(final_seeds)
    nt = len(tune_seeds)
    lrs = list(task.lr_grid)
    run_seeds = list(tune_seeds) if task.final_at_best else seeds
    extended = False
    out, compile_s, run_s = execute(task, name, lrs, run_seeds)

    def select(out, lrs):
        score = derived_metrics(task, out)[task.metric][:, 0, :nt].mean(-1)
        score = np.where(np.isfinite(score), score, np.inf)
        return int(np.argmin(score)), score

    best, score = select(out, lrs)
    extra = _grid_extension(lrs, best) if np.isfinite(score[best]) else None
    if extra:
        more, c2, r2 = execute(task, name, extra, run_seeds)
        compile_s, run_s, extended = compile_s + c2, run_s + r2, True
        lrs = sorted(lrs + extra)
        order = np.argsort([*task.lr_grid, *extra])
        out = {k: np.concatenate([out[k], more[k]])[order] for k in out}
        best, score = select(out, lrs)
    if task.final_at_best:
        more, c3, r3 = execute(task, name, [lrs[best]], final_seeds)
        compile_s, run_s = compile_s + c3, run_s + r3
        out = _with_final_seeds(out, more, best)
    return _record(task, name, size, out, lrs, best, tune_seeds, final_seeds, extended,
                   compile_s, run_s)


def _record(task: Task, name: str, size: str, out: dict, lrs: list[float], best: int,
            tune_seeds: list[int], final_seeds: list[int], extended: bool,
            compile_s: float, run_s: float) -> dict:
    """The run record of `out` (lrs, 1, tuning + final seeds, ...), `best` the
    index of the chosen learning rate."""
    nt = len(tune_seeds)
    final = derived_metrics(task, out)
    steps = eval_steps(task)
    rec = {
        "schema": records.SCHEMA, "kind": "run", "task": task.name, "suite": task.suite,
        "optimizer": name, "size": size, "task_info": task.info(),
        "tuning": {"lrs": lrs, "seeds": list(tune_seeds),
                   "metric": _clean(final[task.metric][:, 0, :nt]),
                   "best_lr": lrs[best], "extended": extended},
    }
    fin = {k: v[best, 0, nt:] for k, v in final.items()}
    curves = {k.split("/", 1)[1]: out[k][best, 0, nt:] for k in out if k.startswith("metrics/")}
    curves["train_loss"] = out["train_loss"][best, 0, nt:]
    target_curve = curves.get(task.metric, curves["val_loss"])
    rec["final"] = {
        "lr": lrs[best], "seeds": list(final_seeds), "metric": _clean(fin[task.metric]),
        "extra": {k: _clean(v) for k, v in fin.items() if k != task.metric},
        "eval_steps": steps, "curves": {k: _clean(v) for k, v in curves.items()},
        "steps_to_target": [_first_reach(steps, c, task.target) for c in target_curve],
    }
    rec["lr_sensitivity"] = {"lrs": lrs, "final_seed_metric": _clean(final[task.metric][:, 0,
                                                                                          nt:]),
                             "train_loss": _clean(out["train_loss"][:, 0, nt:])}
    if f"metrics/{task.metric}" in out:  # ℓ₀ per final seed (the same at every lr)
        rec["lr_sensitivity"]["start_metric"] = _clean(
            out[f"metrics/{task.metric}"][best, 0, nt:, 0])
    if "beta1" in out:
        params = jax.eval_shape(task.init, jax.random.key(0))
        b1 = out["beta1"][best, 0, nt]  # first final seed: (evals+1, leaves)
        rec["beta1"] = {"eval_steps": steps,
                        "layers": {n: _clean(b1[:, i]) for i, n in enumerate(leaf_names(params))}}
    rec["diverged"] = [bool(not np.all(np.isfinite(out["train_loss"][best, 0, nt + i]))
                            or not np.isfinite(fin[task.metric][i]))
                       for i in range(len(final_seeds))]
    rec["timing"] = {"compile_s": compile_s, "run_s": run_s}
    if task.record is not None:
        rec["measured"] = task.record(name)
    rec["environment"] = records.environment()
    return rec


def _with_final_seeds(tuned: dict, final: dict, best: int) -> dict:
    """The outputs of the tuning seeds (lrs, 1, tuning seeds, ...) with the final
    seeds' (1, 1, final seeds, ...) appended on the seed axis at learning rate
    `best`, nan at the others."""
    out = {}
    for k, a in tuned.items():
        b = np.asarray(final[k], np.float64)
        pad = np.full(a.shape[:2] + b.shape[2:], np.nan)
        pad[best] = b[0]
        out[k] = np.concatenate([np.asarray(a, np.float64), pad], axis=2)
    return out


def sweep(task: Task, name: str, lrs: list[float], wds: list[float], seeds: list[int],
          size: str) -> dict:
    """lr x weight-decay grid for an optimizer with decoupled weight decay."""
    if not registry.entry(name).decoupled_wd:
        raise ValueError(f"sweep: {name!r} has no decoupled weight decay; choose from "
                         f"{', '.join(registry.names(decoupled_wd=True))}")
    out, compile_s, run_s = execute(task, name, lrs, seeds, wds)
    metric = derived_metrics(task, out)[task.metric]  # (lr, wd, seed)
    return {"schema": records.SCHEMA, "kind": "sweep", "task": task.name, "optimizer": name,
            "size": size, "task_info": task.info(), "lrs": list(lrs), "wds": list(wds),
            "seeds": list(seeds), "metric": _clean(np.transpose(metric, (1, 0, 2))),
            "timing": {"compile_s": compile_s, "run_s": run_s},
            "environment": records.environment()}


def mean_beta1(rec: dict | None) -> float:
    """Mean over layers and evaluations (after step 0) of the β₁ a run recorded.

    The record keeps β₁ of the first final seed at the chosen learning rate;
    nan when the run has none.
    """
    layers = ((rec or {}).get("beta1") or {}).get("layers") or {}
    values = [v for vs in layers.values() for v in vs[1:] if v is not None]
    return float(np.mean(values)) if values else math.nan


def _first_reach(steps: list[int], curve: np.ndarray, target: float) -> int | None:
    hit = [s for s, v in zip(steps, curve) if np.isfinite(v) and v <= target]
    return hit[0] if hit else None


def _clean(a) -> list:
    """Nested lists of floats with non-finite values as None (valid JSON)."""
    a = np.asarray(a, np.float64)
    if a.ndim == 0:
        return float(a) if math.isfinite(a) else None
    return [_clean(x) for x in a]

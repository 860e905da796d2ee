"""The benchmark programme: turns suites into jobs, runs what is not done yet,
and keeps every finished run on disk.

A job is (kind, task, optimizer) with kind "run" (tuning + final seeds, see
`runner`) or "sweep" (lr x weight decay). Each job writes one JSON file
atomically; a job whose file exists with the same size, task description,
grid and seeds is skipped, so an interrupted programme resumes where it
stopped. Jobs run on a small thread pool (XLA compiles and runs outside the
GIL); compiled programs go to a persistent cache under the output folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer.benchmarks.measure import memory, signal_streams, speed
from stam_optimizer.benchmarks.programme import records, registry, runner, sizes
from stam_optimizer.benchmarks.programme.suites import SUITES, TASK_OPTIMIZERS, TASKS
from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks.data import DatasetMissing


def source_of(name: str) -> str | None:
    """The run on the same task that `name` is built from (`registry.Entry.depends_on`):
    stam_const_mean runs STAM with α = 0 and β₁ = the mean β₁ that stam_full used on
    the task (`runner.mean_beta1`), after stam_full's job."""
    return registry.entry(name).depends_on


def parity_parent(name: str, task: Task) -> str | None:
    """The float parent whose chosen learning rate `name` runs at on `task`, or None.

    On a task that runs its final seeds at one learning rate (`Task.final_at_best`,
    the long runs), a storage variant (`registry.Entry.parent`: low-bit or bf16
    state) is not tuned: its final seeds run at the learning rate its parent
    chose, after the parent's job, which is what a user who switches by changing
    one line gets (and what the parity verdicts compare). On other tasks every
    optimizer runs the whole grid, and the report reads the variant at the
    parent's learning rate from it."""
    return registry.entry(name).parent if task.final_at_best else None


def waits_for(job: Job, task: Task) -> str | None:
    """The run on the same task whose record `job` needs before it can start."""
    return source_of(job.optimizer) or parity_parent(job.optimizer, task)


def parent_lr(job: Job, task: Task, out: Path, size: str) -> float:
    """The learning rate the parity parent of `job` chose on its task (from its
    finished run at `size` on disk); raises ValueError naming the missing run."""
    name = parity_parent(job.optimizer, task)
    parent = Job("run", job.task, name)
    if not is_done(parent, task, out, size):
        raise ValueError(f"{job.optimizer} on {job.task} runs at the learning rate its float "
                         f"parent {name} chose: run {name} on this task first (e.g. "
                         f"--optimizers {name},{job.optimizer})")
    return float(records.load_json(parent.path(out))["final"]["lr"])


@dataclasses.dataclass(frozen=True)
class Job:
    kind: str  # "run" | "sweep"
    task: str
    optimizer: str

    def path(self, out: Path) -> Path:
        return out / ("runs" if self.kind == "run" else "sweeps") / self.task / \
            f"{self.optimizer}.json"


def optimizers_for(suite: str, task: str, size: str, chosen: Sequence[str] | None,
                   extra: Sequence[str] = ()) -> list[str]:
    """The optimizers a suite runs on `task` at `size`; `chosen` (--optimizers)
    overrides, `extra` (--optimizer, user factories) joins every suite."""
    s = SUITES[suite]
    narrow = size != "full" and s.narrow_at_quick
    if chosen:
        names = list(chosen)
    elif task in TASK_OPTIMIZERS:
        names = TASK_OPTIMIZERS[task](size)
    else:
        names = [n for n, e in registry.ENTRIES.items()
                 if getattr(e, s.member) is True and (not narrow or e.on_task(task))]
    names += [n for n in extra if n not in names]
    if s.kind == "sweep":
        names = [n for n in names if registry.entry(n).decoupled_wd]
    return names


def plan(suites: Sequence[str], size: str, chosen: Sequence[str] | None = None,
         extra: Sequence[str] = ()) -> list[Job]:
    """Every job of `suites`, without duplicates, in suite order."""
    jobs: list[Job] = []
    for suite in suites:
        s = SUITES[suite]
        kind = "sweep" if s.kind == "sweep" else "run"
        for task in s.tasks_at(size):
            for name in optimizers_for(suite, task, size, chosen, extra):
                source = source_of(name)
                if source is not None and kind != "run":
                    continue
                needs = [source] if source is not None else []
                for job in [Job(kind, task, n) for n in needs] + [Job(kind, task, name)]:
                    if job not in jobs:
                        jobs.append(job)
    return jobs


def constant_beta1(job: Job, out: Path) -> tuple[str, float]:
    """The registry name and β₁ of a dependent job (from its source run on disk)."""
    entry = registry.entry(job.optimizer)
    source = records.load_json(Job("run", job.task, entry.depends_on).path(out))
    mean = runner.mean_beta1(source)
    if not np.isfinite(mean):
        raise ValueError(f"{job.optimizer} on {job.task}: no beta1 record in the "
                         f"{entry.depends_on} run it is built from")
    value = float(f"{mean:.4f}")
    return entry.from_run(value).name, value


def sized(task: Task, size: str) -> Task:
    return task if task.fixed_grid else dataclasses.replace(task,
                                                            lr_grid=sizes.get(size).lr_grid)


def seeds_of(task: Task, size: str) -> tuple[list[int], list[int]]:
    """(tuning seeds, final seeds): the task's own, else the size's."""
    if task.seeds is not None:
        return task.seeds
    s = sizes.get(size)
    return list(s.tune_seeds), list(s.final_seeds)


def is_done(job: Job, task: Task, out: Path, size: str) -> bool:
    """True if the job's file holds a finished result for exactly this setup."""
    rec = records.load_json(job.path(out))
    if not rec or rec.get("size") != size or rec.get("task_info") != task.info():
        return False
    if job.kind == "sweep":
        s = sizes.get(size)
        return rec.get("lrs") == list(s.sweep_lrs) and rec.get("wds") == list(s.sweep_wds) \
            and rec.get("seeds") == list(s.sweep_seeds)
    tune, final = seeds_of(task, size)
    if parity_parent(job.optimizer, task) is not None:
        try:
            lr = parent_lr(job, task, out, size)
        except ValueError:
            return False
        return rec["tuning"].get("at_parent_lr") == lr and rec["final"]["seeds"] == list(final)
    if source_of(job.optimizer) is not None:
        try:
            value = constant_beta1(job, out)[1]
        except ValueError:
            return False
        if (rec.get("constant_beta1") or {}).get("value") != value:
            return False
    return rec["tuning"]["seeds"] == list(tune) and rec["final"]["seeds"] == list(final) and \
        set(task.lr_grid) <= set(rec["tuning"]["lrs"])


def run_job(job: Job, task: Task, out: Path, size: str) -> dict:
    if job.kind == "sweep":
        s = sizes.get(size)
        rec = runner.sweep(task, job.optimizer, list(s.sweep_lrs), list(s.sweep_wds),
                           list(s.sweep_seeds), size)
    elif source_of(job.optimizer) is not None:
        name, value = constant_beta1(job, out)
        rec = runner.tune_and_run(task, name, *seeds_of(task, size), size)
        rec["optimizer"] = job.optimizer
        rec["constant_beta1"] = {"value": value, "from": source_of(job.optimizer),
                                 "registry_name": name}
    elif parity_parent(job.optimizer, task) is not None:
        lr = parent_lr(job, task, out, size)
        rec = runner.tune_and_run(task, job.optimizer, *seeds_of(task, size), size, at_lr=lr)
        rec["tuning"] |= {"at_parent_lr": lr, "parent": parity_parent(job.optimizer, task)}
    else:
        rec = runner.tune_and_run(task, job.optimizer, *seeds_of(task, size), size)
    records.write_json(str(job.path(out)), rec)
    return rec


def smoke(out: Path) -> dict:
    """One update of every registry optimizer on a small MLP: finite? state bytes?"""
    params = {"w1": jnp.full((16, 32), 0.1), "b1": jnp.zeros(32), "w2": jnp.full((32, 4), 0.1),
              "b2": jnp.zeros(4)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    n = sum(p.size for p in jax.tree.leaves(params))
    rows = []
    for name in registry.names(full=True):
        tx = registry.get(name, 1e-3)
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        new = optax.apply_updates(params, updates)
        nbytes = memory.tree_bytes(state)
        rows.append({"optimizer": name, "params": n, "state_bytes": int(nbytes),
                     "bytes_per_param": nbytes / n,
                     "finite": bool(all(jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new)))})
    rec = {"schema": records.SCHEMA, "kind": "smoke", "rows": rows,
           "environment": records.environment()}
    records.write_json(str(out / "smoke.json"), rec)
    return rec


def memory_suite(out: Path, size: str, log: Callable[[str], None]) -> None:
    s = sizes.get(size)
    memory.measure(list(s.memory_models), registry.names(full=True),
                   compiled=s.memory_compiled, train_step=s.memory_compiled,
                   output=str(out / "memory.json"), log=log)


def timing_suite(out: Path, size: str, log: Callable[[str], None]) -> None:
    s = sizes.get(size)
    # below full size, the optimizers that count their update bytes (the storage
    # variants and their parents, Muon's seconds-long update among them, at full)
    names = None if size == "full" else [n for n in speed.update_optimizers()
                                         if registry.entry(n).update_bytes]
    speed.measure(list(s.timing_trees), list(s.timing_tasks), registry.names(full=True),
                  s.timing_steps, 3, str(out / "speed.json"), log, update_names=names)


def signal_suite(out: Path, size: str, optimizers: Sequence[str] | None,
                 log: Callable[[str], None]) -> None:
    names = [n for n in optimizers or () if n in signal_streams.adaptive_optimizers("full")]
    if optimizers and not names:
        log("signal: none of the chosen optimizers has an adaptive beta1; skipped")
        return
    signal_streams.run_suite(str(out / "signal.json"), size, names or None, log)


# Suites without tasks, by kind: what runs them (after the task suites).
SPECIAL = {"memory": lambda out, size, opts, log: memory_suite(out, size, log),
           "timing": lambda out, size, opts, log: timing_suite(out, size, log),
           "signal": signal_suite}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the programme. `counts` are the jobs finished so far (their
    files are on disk); `abandoned` jobs were still running when a second Ctrl-C
    came, so their worker threads must not be waited for on the way out."""

    def __init__(self, counts: dict, abandoned: int = 0):
        super().__init__(f"{counts.get('done', 0)} runs finished")
        self.counts, self.abandoned = counts, abandoned


def _as_completed(futures):
    """`concurrent.futures.as_completed` (a seam for the interrupt tests)."""
    return cf.as_completed(futures)


class _Progress:
    """A rich progress bar when rich is installed and the output is a terminal,
    plain log lines otherwise."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.log, self.bar = log, None
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
            if sys.stderr.isatty():
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                    MofNCompleteColumn(), TimeElapsedColumn())
                self.id = self.bar.add_task("stam-bench", total=total)
                self.bar.start()
        except ImportError:
            pass

    def add(self, n: int) -> None:
        """Changes the number of steps still expected by `n`."""
        if self.bar is not None and n:
            self.bar.update(self.id, total=self.bar.tasks[0].total + n)

    def advance(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.console.print(msg)
            self.bar.advance(self.id)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _summary(job: Job, rec: dict, seconds: float) -> str:
    if job.kind == "sweep":
        return f"sweep {job.task} {job.optimizer}: done in {seconds:.0f}s"
    m = [x for x in rec["final"]["metric"] if x is not None]
    mean = f"{np.mean(m):.4f}" if m else "diverged"
    return (f"{job.task:<20} {job.optimizer:<16} lr {rec['final']['lr']:.2g}  "
            f"{rec['task_info']['metric']} {mean}  ({seconds:.0f}s)")


def _check_arguments(suites: Sequence[str], size: str, workers: int) -> None:
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"unknown suite {s!r}; choose from {', '.join(SUITES)}")
    sizes.get(size)  # ValueError naming the sizes
    if size == "gpu":
        bare = [s for s in suites if not SUITES[s].tasks_at("gpu")]
        if bare:
            raise ValueError(f"size 'gpu' runs only suites with gpu tasks "
                             f"({', '.join(n for n, s in SUITES.items() if s.gpu_tasks)}); "
                             f"not {', '.join(bare)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def _pending(suites: Sequence[str], size: str, out: Path, cfg: Config,
             optimizers: Sequence[str] | None, extra: Sequence[str], force: bool,
             counts: dict, log: Callable[[str], None],
             only: Sequence[str] | None = None) -> tuple[dict[str, Task | None], list[Job]]:
    """The built tasks and the jobs still to run; counts skipped and missing-data jobs.

    Dependent jobs are always returned: whether they are done is known only after
    their source runs."""
    tasks: dict[str, Task | None] = {}
    jobs = []
    for job in plan(suites, size, optimizers, extra):
        if only and job.task not in only:
            continue
        if job.task not in tasks:
            try:
                tasks[job.task] = sized(TASKS[job.task](cfg), size)
            except DatasetMissing as e:
                log(f"skipping {job.task}: {e}")
                tasks[job.task] = None
                counts["missing_data"] += 1
        if tasks[job.task] is None:
            continue
        if not force and waits_for(job, tasks[job.task]) is None and \
                is_done(job, tasks[job.task], out, size):
            counts["skipped"] += 1
            continue
        jobs.append(job)
    return tasks, jobs


def _save_running(futures: dict[cf.Future, Job], finished: Callable[[cf.Future], None],
                  counts: dict, progress: _Progress, log: Callable[[str], None]) -> None:
    """After a first Ctrl-C: drops queued jobs, waits for the running ones to be
    saved (a second Ctrl-C abandons them), then raises `Interrupted`."""
    for fut in futures:
        fut.cancel()  # queued jobs are dropped; running ones cannot be stopped
    running = [f for f in futures if not f.done()]
    progress.close()
    if running:
        names = ", ".join(f"{futures[f].task}/{futures[f].optimizer}" for f in running)
        log(f"interrupted: waiting for {len(running)} running job(s) to finish and be "
            f"saved ({names}); press Ctrl-C again to stop now and lose them")
        try:
            for fut in _as_completed(running):
                if not fut.cancelled():
                    finished(fut)
        except KeyboardInterrupt:
            raise Interrupted(counts, abandoned=len(running)) from None
    raise Interrupted(counts) from None


def run_programme(suites: Sequence[str], size: str, out: Path, *, data_dir: Path | None = None,
                  optimizers: Sequence[str] | None = None, extra: Sequence[str] = (),
                  workers: int = 2, force: bool = False,
                  log: Callable[[str], None] = print,
                  tasks: Sequence[str] | None = None) -> dict:
    """Runs `suites` at `size` into `out`; returns counts of done/skipped/failed jobs.
    `tasks` (names) keeps only the jobs of those tasks.

    `optimizers` replaces each suite's optimizer set; `extra` names registry
    entries (see `registry.load`) added to every suite."""
    _check_arguments(suites, size, workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(out / "cache" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    cfg = Config(size=size, data_dir=data_dir, cache_dir=out / "cache")
    counts = {"done": 0, "skipped": 0, "failed": 0, "missing_data": 0}
    t0 = time.perf_counter()
    kinds = [SUITES[s].kind for s in suites]
    if "smoke" in kinds:
        rows = smoke(out)["rows"]
        bad = [r["optimizer"] for r in rows if not r["finite"]]
        log(f"smoke: {len(rows)} optimizers, non-finite: {', '.join(bad) or 'none'}")

    only = tasks
    tasks, jobs = _pending(suites, size, out, cfg, optimizers, extra, force, counts, log, only)
    dependent = [j for j in jobs if waits_for(j, tasks[j.task]) is not None]
    if counts["skipped"]:
        log(f"resuming: {counts['skipped']} finished runs kept, {len(jobs)} to go")

    progress = _Progress(len(jobs), log)

    def work(job: Job) -> tuple[Job, dict, float]:
        t = time.perf_counter()
        return job, run_job(job, tasks[job.task], out, size), time.perf_counter() - t

    pool = cf.ThreadPoolExecutor(max_workers=workers)
    futures: dict[cf.Future, Job] = {}

    def finished(fut: cf.Future) -> None:
        try:
            job, rec, seconds = fut.result()
            counts["done"] += 1
            progress.advance(_summary(job, rec, seconds))
        except Exception:  # one failed job must not lose the others
            counts["failed"] += 1
            progress.advance(f"FAILED {futures[fut]}:\n{traceback.format_exc()}")

    def run_all(batch: list[Job]) -> None:
        submitted = {pool.submit(work, j): j for j in batch}
        futures.update(submitted)
        for fut in cf.as_completed(submitted):
            finished(fut)

    try:
        run_all([j for j in jobs if j not in dependent])
        # dependent jobs read the runs just written; a finished one is kept only
        # if it was built from the source run now on disk
        later = [j for j in dependent if force or not is_done(j, tasks[j.task], out, size)]
        counts["skipped"] += len(dependent) - len(later)
        progress.add(len(later) - len(dependent))
        run_all(later)
    except KeyboardInterrupt:
        _save_running(futures, finished, counts, progress, log)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
    for kind, run_special in SPECIAL.items():
        if kind in kinds:
            run_special(out, size, optimizers, log)
    counts["seconds"] = time.perf_counter() - t0
    return counts

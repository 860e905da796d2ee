"""Shared code of the 0.1.0 benchmark commands (mnist_sanity, phase1_runner,
stress_runner, cifar10_cnn): run tasks with the programme's protocol and write
the 0.1.0 output file, with a short table on stdout."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from stam_optimizer.benchmarks.programme import records, runner, sizes
from stam_optimizer.benchmarks.programme.log import log
from stam_optimizer.benchmarks.programme.task import Task
from stam_optimizer.benchmarks.report import stats

# the optimizers the 0.1.0 runners compared, plus AdamW as the reference
OPTIMIZERS_010 = "stam_full,stam_lite,sgd_momentum,rmsprop,adagrad,nadam,lamb,adamw"


def run_tasks(tasks: Sequence[Task], optimizers: Sequence[str], seeds: int,
              output: str, command: str) -> dict:
    """Tunes the learning rate (quick grid, one tuning seed) and runs `seeds` final
    seeds for every task x optimizer; writes `output` atomically; prints a table."""
    runs = []
    for task in tasks:
        task = dataclasses.replace(task, lr_grid=sizes.SIZES["quick"].lr_grid)
        for name in optimizers:
            log(f"{task.name}: {name}")
            runs.append(runner.tune_and_run(task, name, [1000], list(range(seeds)),
                                               "custom"))
    out = {"schema": records.SCHEMA, "kind": "legacy", "command": command, "runs": runs,
           "environment": records.environment()}
    records.write_json(output, out)
    print(table(runs))
    print(f"\nwritten: {output}")
    return out


def table(records: Sequence[dict]) -> str:
    """Markdown: task, optimizer, selected lr, final metric mean [95% CI]."""
    lines = ["| task | optimizer | lr | metric | mean [95% CI] | diverged |",
             "|---|---|---|---|---|---|"]
    for r in records:
        vals = np.array([np.nan if v is None else v for v in r["final"]["metric"]])
        mean, lo, hi = stats.mean_ci(vals)
        ci = f"{mean:.4f} [{lo:.4f}, {hi:.4f}]" if np.isfinite(lo) else f"{mean:.4f}"
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['final']['lr']:.2g} | "
                     f"{r['task_info']['metric']} | {ci} | {sum(r['diverged'])} |")
    return "\n".join(lines)

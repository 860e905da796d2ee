"""`summary.json`: the compact, committed form of a results folder.

`stam-bench report` writes it next to report.md. It holds every number the
report's tables and its non-curve figures are computed from (per task x
optimizer x learning rate x seed: final metrics, spikes, divergence), the
derived results a reader wants without recomputing them (per task x optimizer:
best lr and best loss with CI, the state bytes where the run measured them;
every paired comparison with the baseline and its verdict), the sweeps, and the
signal suite's responses. It leaves out the per-step series (validation and
training curves, β₁ per layer, the signal streams' β₁): those stay in the raw
files (`runs/`, `signal.json`), which a run writes and the repository does not
commit. The figures drawn from per-step series (`curves_*.png`, `beta1_*.png`,
`signal_*.png`) are therefore redrawn only when the raw files are present; a
report built from the summary alone links the PNGs already in the folder.

`runs_from`, `sweeps_from` and `signal_from` turn a summary back into the
records the report reads, so that a report built from the summary equals the
one built from the raw files (tested). The format is in docs/benchmark_format.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stam_optimizer.benchmarks.programme.records import check, read_record, write_atomic

SCHEMA = 1  # version of the summary format
FILE = "summary.json"

# keys of a run record that the summary holds elsewhere (identity, task level)
_IDENTITY = ("schema", "kind", "task", "optimizer", "task_info")
# derived per-optimizer fields: recomputed from the per-seed values, never read back
_DERIVED = ("best",)
_SHARED = ("suite", "size")  # stored once per task when every optimizer's is the same
DIGITS = 5  # significant digits of the derived numbers (never read back)


# --- per-step series -> what the report needs of them ---------------------------------

def _spikes(train_loss: list) -> tuple[list, list]:
    from stam_optimizer.benchmarks.report.gpt_report import count_spikes, diverged

    return ([[count_spikes(c) for c in row] for row in train_loss],
            [[int(diverged(c)) for c in row] for row in train_loss])


def compact_run(run: dict) -> dict:
    """The summary entry of a run record: the record less its identity and its
    per-step series, which are replaced by what the report derives from them
    (steps to target, the number of β₁ layers, spikes and divergences per lr x
    seed; ℓ₀ and the curve names go to the task)."""
    from stam_optimizer.benchmarks.report.report import run_steps_to_target

    out = {k: v for k, v in run.items() if k not in _IDENTITY}
    final = {k: v for k, v in run["final"].items()
             if k not in ("curves", "eval_steps", "curve_names", "curve_start")}
    final["steps_to_target"] = run_steps_to_target(run)
    out["final"] = final
    beta1 = out.pop("beta1", None)
    if beta1 and beta1.get("layers"):
        out["beta1_layers"] = len(beta1["layers"])
    sens = out.get("lr_sensitivity")
    if sens:
        sens = dict(sens)
        if "train_loss" in sens:
            sens["spikes"], sens["diverged"] = _spikes(sens.pop("train_loss"))
        for key in ("spikes", "diverged"):  # all zero: left out (zero on reading)
            if key in sens and not any(map(any, sens[key])):
                del sens[key]
        if sens.get("lrs") == (run.get("tuning") or {}).get("lrs"):
            del sens["lrs"]  # the tuning grid (restored on reading)
        out["lr_sensitivity"] = sens
    env = out.get("environment")
    if isinstance(env, dict):
        out["environment"] = {k: v for k, v in env.items() if k != "time_utc"}
    if isinstance(out.get("timing"), dict):  # wall-clock seconds: to the millisecond
        out["timing"] = {k: round(v, 3) if isinstance(v, float) else v
                         for k, v in out["timing"].items()}
    return out


def _run_record(task: str, t: dict, opt: str, entry: dict, envs: list) -> dict:
    run = {"schema": 1, "kind": "run", "task": task, "optimizer": opt,
           "task_info": entry.get("task_info", t["info"])}
    run |= {k: t[k] for k in _SHARED if k in t}
    run |= {k: v for k, v in entry.items() if k not in _DERIVED}
    run["final"] = dict(run["final"], curve_names=t.get("curves", []),
                        curve_start=t.get("curve_start"))
    if isinstance(run.get("environment"), int):
        run["environment"] = envs[run["environment"]]
    sens = run.get("lr_sensitivity")
    if sens is not None and "lrs" not in sens:
        run["lr_sensitivity"] = {"lrs": run["tuning"]["lrs"], **sens}
    return run


def _shared(entries: dict[str, dict]) -> dict:
    """The `_SHARED` keys with one value in every entry (moved to the task)."""
    out = {}
    for key in _SHARED:
        values = [e.get(key) for e in entries.values()]
        if values and all(key in e for e in entries.values()) and all(
                v == values[0] for v in values):
            out[key] = values[0]
    return out


# --- building ---------------------------------------------------------------------------

def _clean(x: Any, digits: int | None = None) -> Any:
    """Non-finite floats as null (standard JSON), numpy scalars as Python ones;
    with `digits`, floats rounded to that many significant digits."""
    if isinstance(x, dict):
        return {k: _clean(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v, digits) for v in x]
    if isinstance(x, (np.floating, float)):
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}") if digits else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def comparison(family: str, task: str, candidate: str, baseline: str, j) -> dict:
    """One judged paired comparison (a `stats.Judged`), as summary.json lists it."""
    return _clean({"family": family, "task": task, "candidate": candidate,
                   "baseline": baseline, "n": j.diff.n, "diff": j.diff.mean,
                   "ci": [j.diff.lo, j.diff.hi], "p": j.diff.p_value, "holm_p": j.p_holm,
                   "holm_ci": [j.adj_lo, j.adj_hi], "mde": j.mde, "verdict": j.verdict},
                  DIGITS)


def build(tasks: dict, sweeps: dict, signal: dict | None, baseline: str,
          comparisons: list[dict]) -> dict:
    """The summary of grouped run records `tasks` (task -> optimizer -> run), the
    grouped `sweeps`, the signal record and the judged comparisons."""
    from stam_optimizer.benchmarks.report.report import curve_for, curve_names, start_value
    from stam_optimizer.benchmarks.report.stats import final_values, mean_ci

    envs: list = []
    out_tasks = {}
    for task, runs in tasks.items():
        info = next(iter(runs.values()))["task_info"]
        curve = curve_for(info.get("metric", "val_loss"), runs)
        head = {"info": info, "curves": sorted({c for r in runs.values() for c in curve_names(r)}),
                "curve_start": start_value(curve, runs)}
        opts = {}
        for opt, run in runs.items():
            entry = compact_run(run)
            if run["task_info"] != info:
                entry["task_info"] = run["task_info"]
            if "environment" in entry:
                if entry["environment"] not in envs:
                    envs.append(entry["environment"])
                entry["environment"] = envs.index(entry["environment"])
            mean, lo, hi = mean_ci(final_values(run))
            entry["best"] = _clean({"lr": (run.get("tuning") or {}).get(
                "best_lr", run["final"].get("lr")), "loss": mean, "ci": [lo, hi]}, DIGITS)
            opts[opt] = entry
        shared = _shared(opts)
        for entry in opts.values():
            for key in shared:
                del entry[key]
        out_tasks[task] = {**shared, **head, "optimizers": opts}
    out_sweeps = {t: {o: {k: v for k, v in s.items() if k not in ("schema", "kind", "task",
                                                                    "optimizer")}
                      for o, s in by_opt.items()} for t, by_opt in sweeps.items()}
    data = {"schema": SCHEMA, "kind": "summary", "baseline": baseline,
            "precision": "float64", "tasks": out_tasks, "comparisons": comparisons,
            "sweeps": out_sweeps, "environments": envs}
    if signal:
        data["signal"] = compact_signal(signal)
    from stam_optimizer.benchmarks.report import chinchilla_report

    if chinchilla_report.regime_runs(tasks):  # derived, never read back
        data["one_chinchilla"] = _clean(chinchilla_report.summary(tasks), DIGITS)
    data = _clean(data)
    parts = list(_measured_parts(data))
    full = sorted({name for obj, key, name in parts
                   if not all(_float32_exact(v) for v in _leaves(obj[key]))})
    if not full:
        data["precision"] = "float32"
    elif set(full) != {name for _, _, name in parts}:
        data["precision"] = {"float32_except": full}
    return data


# --- float32 measurements ------------------------------------------------------------------

_MEASURED = (("tuning", "metric"), ("final", "metric"), ("final", "extra"),
             ("lr_sensitivity", "final_seed_metric"), ("lr_sensitivity", "start_metric"))


def _leaves(x: Any):
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    elif isinstance(x, float):
        yield x


def _measured_parts(data: dict):
    """(container, key, kind) of every per-seed measurement of a summary; the kind
    names the measurement ("final.metric", "final.extra.auc_val_loss", "sweep.metric"),
    the unit at which `precision` is decided."""
    for t in data["tasks"].values():
        for entry in t["optimizers"].values():
            for a, b in _MEASURED:
                if not (isinstance(entry.get(a), dict) and b in entry[a]):
                    continue
                if isinstance(entry[a][b], dict):  # `extra`: one kind per metric
                    for k in entry[a][b]:
                        yield entry[a][b], k, f"{a}.{b}.{k}"
                else:
                    yield entry[a], b, f"{a}.{b}"
    for by_opt in (data.get("sweeps") or {}).values():
        for s in by_opt.values():
            yield s, "metric", "sweep.metric"


def _short_parts(data: dict) -> list[tuple[dict, str, str]]:
    """(container, key, kind) of the measurements a summary holds as float32 text: all of
    them with precision "float32", all but the listed kinds with
    {"float32_except": [...]}, none with "float64"."""
    precision = data.get("precision")
    if precision == "float32":
        return list(_measured_parts(data))
    if isinstance(precision, dict):
        full = set(precision.get("float32_except", []))
        return [p for p in _measured_parts(data) if p[2] not in full]
    return []


def _float32_text(x: float) -> str:
    return str(np.float32(x))


def _float32_exact(x: float) -> bool:
    """True when `x` is a float32 value whose shortest float32 text reads back to it
    (through a float64, as `json` reads it)."""
    return float(np.float32(x)) == x and float(np.float32(float(_float32_text(x)))) == x


def _as_float32(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _as_float32(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_as_float32(v) for v in x]
    return float(np.float32(x)) if isinstance(x, float) else x


def compact_signal(signal: dict) -> dict:
    """`signal.json` less its per-step series (eval_steps, and each run's β₁, z, s)."""
    if signal.get("kind") == "signal-summary":
        return signal
    out = {k: v for k, v in signal.items() if k != "eval_steps"}
    out["kind"] = "signal-summary"
    out["runs"] = [{k: v for k, v in r.items() if k not in ("beta1", "z", "s")}
                   for r in signal.get("runs", [])]
    return out


# --- writing and reading ----------------------------------------------------------------

WIDTH = 100  # an object whose one-line form fits in this many characters stays on one line


def _flat(x: Any, short: bool) -> str:
    """`x` on one line; floats in their shortest float32 text when `short`."""
    if isinstance(x, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_flat(v, short)}"
                               for k, v in x.items()) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(_flat(v, short) for v in x) + "]"
    if short and isinstance(x, float):
        return _float32_text(x)
    return json.dumps(x, ensure_ascii=False, allow_nan=False)


def dumps(data: Any, indent: int = 0, short: frozenset = frozenset()) -> str:
    """JSON with objects one key a line and arrays on one line: readable and
    diffable, without a line per number. Values whose id is in `short` are floats
    written as their shortest float32 text."""
    if id(data) in short or not isinstance(data, (dict, list)) or (
            isinstance(data, list) and not any(isinstance(v, dict) for v in data)):
        return _flat(data, id(data) in short)
    flat = _flat(data, False)
    if isinstance(data, dict) and len(flat) + indent <= WIDTH and not any(
            id(v) in short for v in data.values()):
        return flat
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(data, list):
        items = [inner + dumps(v, indent + 1, short) for v in data]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]" if items else "[]"
    items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent + 1, short)}"
             for k, v in data.items()]
    return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"


def write(path: str | Path, data: dict) -> Path:
    """Writes a summary atomically; the per-seed measurements of float32 kinds (see
    `build`'s precision) in their shortest float32 text (`load` reads them back
    exactly)."""
    parts = _short_parts(data)
    short = {id(obj[key]) for obj, key, _ in parts}
    # an `extra` whose every metric is short is written as one short object
    short |= {id(obj) for obj, _, kind in parts if kind.startswith("final.extra.")
              and all(id(v) in short for v in obj.values())}
    return write_atomic(path, (dumps(data, 0, frozenset(short)) + "\n").encode())


def load(results_dir: str | Path) -> dict | None:
    """`summary.json` of `results_dir`, or None if it is missing or not a summary."""
    path = Path(results_dir) / FILE
    if not path.exists():
        return None
    data = read_record(path)
    if data is None or data.get("kind") != "summary" or not isinstance(data.get("tasks"), dict):
        return None
    for obj, key, _ in _short_parts(data):
        obj[key] = _as_float32(obj[key])
    return data


def runs_from(summary: dict) -> list[dict]:
    """The run records (less their per-step series) a summary holds."""
    envs = summary.get("environments") or []
    out = []
    for task, t in summary["tasks"].items():
        for opt, entry in t["optimizers"].items():
            run = _run_record(task, t, opt, entry, envs)
            check(run, "run")
            out.append(run)
    return out


def sweeps_from(summary: dict) -> list[dict]:
    """The sweep records a summary holds."""
    out = []
    for task, by_opt in (summary.get("sweeps") or {}).items():
        for opt, s in by_opt.items():
            rec = {"schema": 1, "kind": "sweep", "task": task, "optimizer": opt, **s}
            check(rec, "sweep")
            out.append(rec)
    return out


def signal_from(summary: dict) -> dict | None:
    """The signal record (less its β₁ series) a summary holds, if any."""
    return summary.get("signal")

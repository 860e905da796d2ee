"""The one-Chinchilla regime in numbers: the primary family, its Holm correction,
its decisive fraction and what the undecided comparisons would need.

`summary(tasks)` turns the run records of the regime (suite "chinchilla") into one
JSON-able dict: per task its parameters and tokens and which β₁ the β₁-tuned AdamW
chose; per primary comparison (`chinchilla.primary_family`, fixed in code before
the run) on every task the difference candidate − baseline of the final metric
over the paired final seeds, its 95% interval, its Holm-adjusted p-value within
the primary family only, and its verdict against the task's minimum effect
(`stats.verdict`); the fraction of primary comparisons that are decisive (win, tie
or loss) against `DECISIVE_TARGET`; and, for each comparison that is not, how many
seeds it would need (`seeds_needed`). Every other optimizer against AdamW is a
secondary comparison, Holm-corrected in a family of its own and reported as such.

The β₁-tuned AdamW (`chinchilla.TUNED_BETA1`) is, per task, the run among `adamw`
(β₁ 0.9) and the registry's β₁ grid whose tuning seeds did best (mean over the
tuning seeds at the learning rate each run chose): the choice never looks at the
final seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.stats as sps

from stam_optimizer.benchmarks.report.markdown import table
from stam_optimizer.benchmarks.report.stats import (
    ALPHA,
    POWER,
    Judged,
    PairedDiff,
    Tasks,
    floats,
    judge,
    min_detectable_effect,
    paired_runs,
)
from stam_optimizer.benchmarks.tasks import chinchilla

DECISIVE = ("win", "tie", "loss")
DECISIVE_TARGET = 0.8
MAX_SEEDS = 4096  # beyond this, `seeds_needed` says None


def regime_runs(tasks: Tasks) -> Tasks:
    """The tasks whose runs belong to the regime (suite "chinchilla")."""
    return {t: runs for t, runs in tasks.items()
            if runs and all(r.get("suite") == chinchilla.SUITE for r in runs.values())}


def tuning_score(run: dict) -> float:
    """The run's tuning result: the best, over its learning rates, of the mean
    final metric of its tuning seeds (nan when none is finite)."""
    tuning = run.get("tuning") or {}
    values = floats(np.ravel(np.asarray(tuning.get("metric") or [], dtype=object)))
    lrs = tuning.get("lrs") or []
    if not lrs or values.size == 0:
        return math.nan
    means = values.reshape(len(lrs), -1).mean(axis=1)
    finite = means[np.isfinite(means)]
    return float(finite.min()) if finite.size else math.nan


def tuned_beta1(runs: Mapping[str, dict]) -> dict | None:
    """Which β₁ the β₁-tuned AdamW takes on one task: {"optimizer", "beta1",
    "tuning": {β₁: tuning score}}; None when no run of its grid is there."""
    scores = {b: (n, tuning_score(runs[n])) for n, b in chinchilla.adamw_beta1_runs().items()
              if n in runs}
    finite = {b: v for b, v in scores.items() if math.isfinite(v[1])}
    if not finite:
        return None
    best = min(finite, key=lambda b: (finite[b][1], b))
    return {"optimizer": finite[best][0], "beta1": best,
            "tuning": {f"{b:g}": _num(v) for b, (_, v) in sorted(scores.items())}}


def resolve(name: str, runs: Mapping[str, dict]) -> str | None:
    """The run that stands for `name` on a task (the chosen β₁ run for the tuned
    AdamW); None when it is missing."""
    if name == chinchilla.TUNED_BETA1:
        found = tuned_beta1(runs)
        return None if found is None else found["optimizer"]
    return name if name in runs else None


def seeds_needed(diff: PairedDiff, min_effect: float, level: float = ALPHA,
                 power: float = POWER, max_seeds: int = MAX_SEEDS) -> int | None:
    """How many paired seeds would make a comparison decisive, at its observed mean
    difference and standard deviation.

    Where |mean| >= `min_effect` (it would be a win or a loss): the fewest n whose
    minimum detectable effect (`stats.min_detectable_effect`, two-sided paired t at
    `level` with `power`) is at most |mean|. Where |mean| < `min_effect` (it would
    be a tie): the fewest n whose 95% interval half-width `t·sd/√n` is at most
    `min_effect − |mean|`. None when the sd or mean is not finite, the sd is 0
    (nothing more to learn), or more than `max_seeds` would be needed.
    """
    mean, sd = diff.mean, diff.sd
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd <= 0 or min_effect <= 0:
        return None
    if abs(mean) >= min_effect:
        def enough(n: int) -> bool:
            mde = min_detectable_effect(sd, n, level, power)
            return math.isfinite(mde) and mde <= abs(mean)
    else:
        room = min_effect - abs(mean)

        def enough(n: int) -> bool:
            return float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) <= room
    lo, hi = 2, 2
    while not enough(hi):
        if hi >= max_seeds:
            return None
        lo, hi = hi + 1, min(2 * hi, max_seeds)
    while lo < hi:  # `enough` is monotone in n
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _row(task: str, candidate: str, baseline: str, base_run: str | None, j: Judged | None,
         min_effect: float, family: str) -> dict:
    row = {"task": task, "candidate": candidate, "baseline": baseline,
           "baseline_run": base_run, "family": family, "min_effect": min_effect}
    if j is None:
        return row | {"diff": None, "ci": [None, None], "holm_p": None, "p": None, "n": 0,
                      "sd": None, "verdict": "missing", "seeds_needed": None}
    d = j.diff
    level = ALPHA / j.family_size if j.family_size else ALPHA
    undecided = j.verdict not in DECISIVE
    return row | {"diff": _num(d.mean), "ci": [_num(d.lo), _num(d.hi)],
                  "holm_p": _num(j.p_holm), "p": _num(d.p_value), "n": d.n, "sd": _num(d.sd),
                  "verdict": j.verdict,
                  "seeds_needed": seeds_needed(d, min_effect, level) if undecided else None}


def _judged_rows(tasks: Tasks, pairs: list[tuple[str, str, str]], family: str) -> list[dict]:
    """Rows for (task, candidate, baseline) comparisons judged as one Holm family;
    a comparison whose runs are missing gets verdict "missing" and no test."""
    tests, where = {}, {}
    for t, cand, base in pairs:
        runs = tasks[t]
        base_run = resolve(base, runs)
        where[(t, cand, base)] = base_run
        if cand in runs and base_run is not None:
            tests[(t, cand, base)] = (paired_runs(runs[cand], runs[base_run]),
                                      _min_effect(runs))
    judged = judge(tests, family)
    return [_row(t, c, b, where[(t, c, b)], judged.get((t, c, b)), _min_effect(tasks[t]),
                 family) for t, c, b in pairs]


def _min_effect(runs: Mapping[str, dict]) -> float:
    return float(next(iter(runs.values()))["task_info"]["min_effect"])


def _task_entry(runs: Mapping[str, dict]) -> dict:
    measured = next((r["measured"] for r in runs.values() if r.get("measured")), {})
    keys = ("params", "params_total", "params_counted", "tokens_per_param", "tokens_per_run",
            "steps", "batch", "seq", "d", "layers", "windows_per_run", "train_windows")
    return {k: measured.get(k) for k in keys} | {
        "min_effect": _min_effect(runs), "optimizers": sorted(runs),
        "adamw_tuned_b1": tuned_beta1(runs)}


def summary(tasks: Tasks, family: tuple[tuple[str, str], ...] | None = None) -> dict:
    """The regime's results as one JSON-able dict (see the module docstring).

    `tasks` maps task -> optimizer -> run record; only the regime's tasks are read.
    `family` defaults to `chinchilla.primary_family()`. Keys: "regime" (tokens per
    parameter, how parameters are counted, the family, alpha, power, target),
    "tasks" (per task: params, tokens, shape, the chosen β₁), "primary" and
    "secondary" (one row per comparison: task, candidate, baseline, baseline_run,
    diff, ci, p, holm_p, verdict, n, sd, min_effect, seeds_needed), "decisive"
    (count, total, fraction, target, met: over the primary comparisons that were
    run) and "missing" (primary comparisons whose runs are absent).
    """
    family = chinchilla.primary_family() if family is None else tuple(family)
    tasks = regime_runs(tasks)
    order = sorted(tasks)
    primary = _judged_rows(tasks, [(t, c, b) for t in order for c, b in family],
                           "primary: one Chinchilla")
    in_primary = {(t, c, b) for t, c, b in ((r["task"], r["candidate"], r["baseline"])
                                            for r in primary)}
    secondary_pairs = [(t, o, chinchilla.BASELINE) for t in order for o in sorted(tasks[t])
                       if o != chinchilla.BASELINE and chinchilla.BASELINE in tasks[t]
                       and (t, o, chinchilla.BASELINE) not in in_primary]
    secondary = _judged_rows(tasks, secondary_pairs, "secondary: one Chinchilla vs adamw")
    ran = [r for r in primary if r["verdict"] != "missing"]
    decisive = sum(r["verdict"] in DECISIVE for r in ran)
    fraction = decisive / len(ran) if ran else math.nan
    return {
        "regime": {"tokens_per_param": chinchilla.TOKENS_PER_PARAM,
                   "params_counted": chinchilla.PARAMS_COUNTED,
                   "primary_family": [list(p) for p in family], "alpha": ALPHA,
                   "power": POWER, "decisive_target": DECISIVE_TARGET},
        "tasks": {t: _task_entry(tasks[t]) for t in order},
        "primary": ran,
        "missing": [{k: r[k] for k in ("task", "candidate", "baseline")}
                    for r in primary if r["verdict"] == "missing"],
        "secondary": [r for r in secondary if r["verdict"] != "missing"],
        "decisive": {"count": decisive, "total": len(ran), "fraction": _num(fraction),
                     "target": DECISIVE_TARGET,
                     "met": bool(ran) and fraction >= DECISIVE_TARGET},
    }


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def section(tasks: Tasks) -> list[str]:
    """The report's markdown for the regime (empty when it was not run)."""
    found = summary(tasks)
    if not found["tasks"]:
        return []
    d = found["decisive"]
    lines = ["## One Chinchilla: 20 tokens per parameter", "",
             f"Parameters counted: {found['regime']['params_counted']}. Primary family "
             f"(fixed before the run, Holm within it only): "
             + ", ".join(f"{c} vs {b}" for c, b in found["regime"]["primary_family"]) + ".",
             ""]
    lines += table(["task", "d", "layers", "params", "tokens", "steps", "batch",
                    "β₁ of the tuned AdamW"],
                   [[t, *(str(e[k]) for k in ("d", "layers", "params", "tokens_per_run",
                                                "steps", "batch")),
                     _fmt((e["adamw_tuned_b1"] or {}).get("beta1"))]
                    for t, e in found["tasks"].items()])
    lines += ["", f"Decisive primary comparisons: {d['count']} of {d['total']} "
              f"({_fmt(d['fraction'], 2)}; target {d['target']:g}: "
              f"{'met' if d['met'] else 'not met'}).", ""]
    for name in ("primary", "secondary"):
        rows = found[name]
        if not rows:
            continue
        lines += [f"**{name.capitalize()}** comparisons (candidate − baseline, lower is "
                  "better):", ""]
        lines += table(["task", "candidate", "baseline", "diff [95% CI]", "Holm p", "verdict",
                        "seeds needed"],
                       [[r["task"], f"`{r['candidate']}`",
                         f"`{r['baseline']}`" + (f" (`{r['baseline_run']}`)"
                                                 if r["baseline_run"] != r["baseline"] else ""),
                         f"{_fmt(r['diff'])} [{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]",
                         _fmt(r["holm_p"], 2), r["verdict"],
                         "" if r["seeds_needed"] is None else str(r["seeds_needed"])]
                        for r in rows])
        lines.append("")
    if found["missing"]:
        lines += ["Primary comparisons not run: " + ", ".join(
            f"{r['task']} {r['candidate']} vs {r['baseline']}" for r in found["missing"]), ""]
    return lines

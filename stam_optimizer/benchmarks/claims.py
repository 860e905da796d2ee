"""Paired comparisons, verdicts, and the report sections that judge claims.

The shared machinery of `stam-bench report` (final values per seed, paired
differences, Holm-corrected verdicts, markdown tables) and the sections built on
it alone: the two 0.1.0 claims, int8 momentum parity and the adaptivity ablation.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from stam_optimizer.benchmarks.stats import (
    PairedDiff,
    holm,
    holm_levels,
    interval,
    mean_ci,
    min_detectable_effect,
    paired_difference,
    verdict,
)

ALPHA = 0.05
POWER = 0.8
PRIMARY_PREFIX = "stam"  # registry names of the STAM family
LONG_HORIZON_TASK = "long_horizon_mlp"
VERDICTS = ("win", "tie", "loss", "inconclusive")

Tasks = dict[str, dict[str, dict]]  # task -> optimizer -> run


# --- paired comparisons --------------------------------------------------------------

def _floats(values) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in values], dtype=float)


def final_values(run: dict) -> np.ndarray:
    """The final metric of a run, one value per final seed (nan: diverged)."""
    return _floats(run["final"]["metric"])


def _paired(seeds_a, values_a, seeds_b, values_b) -> PairedDiff:
    """a - b on the seeds both have, matched by seed."""
    b = dict(zip(seeds_b, values_b))
    pairs = [(x, b[s]) for s, x in zip(seeds_a, values_a) if s in b]
    return paired_difference([p[0] for p in pairs], [p[1] for p in pairs])


def paired_runs(a: dict, b: dict) -> PairedDiff:
    """Paired difference of the final metric, run `a` minus run `b`."""
    return _paired(a["final"]["seeds"], final_values(a), b["final"]["seeds"], final_values(b))


def _info(runs: dict[str, dict]) -> dict:
    return next(iter(runs.values()))["task_info"]


def _mean(run: dict) -> float:
    return mean_ci(final_values(run))[0]


def _ranked(runs: dict[str, dict]) -> list[str]:
    """Optimizers by mean final metric, best first, nan last."""
    means = {n: _mean(r) for n, r in runs.items()}
    return sorted(runs, key=lambda n: (math.isnan(means[n]), np.nan_to_num(means[n]), n))


class Judged(NamedTuple):
    """A paired difference with its Holm-adjusted p-value and verdict, judged in a
    Holm family of `family_size` comparisons named `family`.

    `level` is the significance level Holm's procedure tested this comparison at;
    (`adj_lo`, `adj_hi`) is the interval at confidence `1 - level`, which excludes
    0 exactly when `p_holm < ALPHA`. `mde` is the smallest mean difference the
    paired t-test would detect with 80% power at the family's strictest level
    `ALPHA / family_size`, given the seeds and the observed sd of the differences.
    """

    diff: PairedDiff
    p_holm: float
    verdict: str
    level: float = math.nan
    adj_lo: float = math.nan
    adj_hi: float = math.nan
    mde: float = math.nan
    family: str = ""
    family_size: int = 0


def judge(tests: dict[Any, tuple[PairedDiff, float]], family: str = "") -> dict[Any, Judged]:
    """Holm-corrects a family of (difference, min_effect) tests and gives verdicts,
    Holm-level intervals and minimum detectable effects."""
    keys = list(tests)
    ps = [tests[k][0].p_value for k in keys]
    adjusted, levels = holm(ps), holm_levels(ps, ALPHA)
    m = int(np.sum(~np.isnan(np.asarray(ps, dtype=float))))
    out = {}
    for k, p, level in zip(keys, adjusted, levels):
        d = tests[k][0]
        lo, hi = interval(d, 1 - level) if math.isfinite(level) else (math.nan, math.nan)
        if d.sd == 0 and math.isfinite(d.mean):  # all differences equal: a point
            lo = hi = d.mean
        mde = min_detectable_effect(d.sd, d.n, ALPHA / m, POWER) if m else math.nan
        out[k] = Judged(d, float(p), verdict(d, float(p), tests[k][1], ALPHA), float(level),
                        lo, hi, mde, family, m)
    return out


def families(tasks: Tasks, baseline: str) -> dict[str, list[tuple[str, str]]]:
    """The Holm families of the comparisons with the baseline: the STAM family
    (registry names starting with "stam") first, the other optimizers (peers)
    second. Each holds (task, optimizer) for every task that has the baseline."""
    out: dict[str, list[tuple[str, str]]] = {}
    for t, runs in tasks.items():
        if baseline not in runs:
            continue
        for o in runs:
            if o == baseline:
                continue
            name = (f"primary: STAM family vs {baseline}" if o.startswith(PRIMARY_PREFIX)
                    else f"peers vs {baseline}")
            out.setdefault(name, []).append((t, o))
    return dict(sorted(out.items(), key=lambda kv: not kv[0].startswith("primary")))


def compare_to_baseline(tasks: Tasks, baseline: str) -> dict[tuple[str, str], Judged]:
    """Every (task, optimizer) vs the baseline on that task, Holm-corrected within
    its family (see `families`)."""
    out: dict[tuple[str, str], Judged] = {}
    for name, members in families(tasks, baseline).items():
        out |= judge({(t, o): (paired_runs(tasks[t][o], tasks[t][baseline]),
                               _info(tasks[t])["min_effect"]) for t, o in members}, name)
    return out


def verdict_counts(judged: dict[tuple[str, str], Judged]) -> dict[str, dict[str, int]]:
    """optimizer -> verdict -> number of tasks."""
    counts: dict[str, dict[str, int]] = {}
    for (_, opt), j in judged.items():
        counts.setdefault(opt, dict.fromkeys(VERDICTS, 0))[j.verdict] += 1
    return counts


def _compare_pairs(tasks: Tasks, pairs: list[tuple[str, str]]) -> dict[Any, Judged]:
    """`a - b` for each (a, b) in `pairs` on every task having both; one Holm family."""
    return judge({(t, a, b): (paired_runs(runs[a], runs[b]), _info(runs)["min_effect"])
                  for t, runs in tasks.items() for a, b in pairs if a in runs and b in runs})


# --- markdown helpers ------------------------------------------------------------------

def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _ci(mean: float, lo: float, hi: float) -> str:
    return f"{_f(mean)} [{_f(lo)}, {_f(hi)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


# --- the 0.1.0 claims ------------------------------------------------------------------

class Claim(NamedTuple):
    """The outcome of checking one claim, and the lines that explain it."""

    outcome: str  # "reproduced" | "not reproduced" | "inconclusive" | "not run"
    lines: list[str]


def _sweep_best(sweep: dict) -> tuple[float, int, int]:
    """Best mean over seeds on the grid: (mean, wd index, lr index); inf if none finite."""
    m = np.asarray(sweep["metric"], dtype=float).reshape(len(sweep["wds"]), len(sweep["lrs"]), -1)
    mean = np.where(np.isfinite(m).all(axis=2), m.mean(axis=2), np.inf)
    i, j = np.unravel_index(np.argmin(mean), mean.shape)
    return float(mean[i, j]), int(i), int(j)


def _sweep_cell(sweep: dict, wd: int, lr: int) -> np.ndarray:
    m = np.asarray(sweep["metric"], dtype=float).reshape(len(sweep["wds"]), len(sweep["lrs"]), -1)
    return m[wd, lr]


def claim_sweep(sweeps: Tasks, name: str = "stam_lite") -> Claim:
    """Claim (a): `name` has the lowest best-cell metric in every sweep, significantly."""
    tests, rows = {}, {}
    for task, by_opt in sweeps.items():
        if name not in by_opt or len(by_opt) < 2:
            continue
        best = {o: _sweep_best(s) for o, s in by_opt.items()}
        order = sorted(best, key=lambda o: (best[o][0], o))
        other = order[1] if order[0] == name else order[0]
        a, b = by_opt[name], by_opt[other]
        diff = _paired(a["seeds"], _sweep_cell(a, *best[name][1:]),
                       b["seeds"], _sweep_cell(b, *best[other][1:]))
        tests[task] = (diff, _info(by_opt)["min_effect"])
        rows[task] = (order, best, other)
    if not tests:
        return Claim("not run", [f"Not run: no sweep file pairs `{name}` with another optimizer."])
    judged, table, outcomes = judge(tests), [], []
    for task, (order, best, other) in rows.items():
        j = judged[task]
        significant = j.p_holm < ALPHA
        outcome = ("reproduced" if order[0] == name and significant and j.diff.mean < 0 else
                   "not reproduced" if order[0] != name and significant and j.diff.mean > 0
                   else "inconclusive")
        outcomes.append(outcome)
        ranking = ", ".join(f"`{o}` {_f(best[o][0])}" for o in order)
        table.append([task, ranking, f"`{name}` − `{other}`: {_ci(*j.diff[:3])}",
                      _f(j.p_holm, 3), outcome])
    overall = ("not reproduced" if "not reproduced" in outcomes else
               "reproduced" if all(o == "reproduced" for o in outcomes) else "inconclusive")
    return Claim(overall, [
        "Per sweep task: the best (lr, wd) cell of each optimizer by mean final metric over "
        f"the sweep seeds; `{name}` at its best cell is compared, paired by seed, with the "
        "runner-up (or with the leader when it is not first), Holm-corrected across sweep tasks.",
        "", *_table(["task", "best mean per optimizer (best first)", "paired difference [CI]",
                     "Holm p", "outcome"], table)])


def claim_long_horizon(tasks: Tasks, task: str = LONG_HORIZON_TASK) -> Claim:
    """Claim (b): stam_full and nadam are the top two on `task`, both significantly
    better than adamw."""
    runs = tasks.get(task)
    if runs is None:
        return Claim("not run", [f"Not run: no results for `{task}`."])
    missing = [o for o in ("stam_full", "nadam", "adamw") if o not in runs]
    if missing:
        return Claim("inconclusive", [f"Cannot be checked: `{task}` lacks "
                                      f"{', '.join(f'`{o}`' for o in missing)}."])
    order = _ranked(runs)
    leader = order[0]
    pairs = [("stam_full", "adamw"), ("nadam", "adamw")]
    if leader not in ("stam_full", "nadam", "adamw"):
        pairs.append(("stam_full", leader))
    judged = _compare_pairs({task: runs}, pairs)

    def sig(a: str, b: str, sign: int) -> bool:
        j = judged[(task, a, b)]
        return j.p_holm < ALPHA and sign * j.diff.mean > 0

    if set(order[:2]) == {"stam_full", "nadam"} and sig("stam_full", "adamw", -1) and sig(
            "nadam", "adamw", -1):
        outcome = "reproduced"
    elif (sig("stam_full", "adamw", 1) or sig("nadam", "adamw", 1)
          or (("stam_full", leader) in pairs and sig("stam_full", leader, 1))):
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
    ranking = ", ".join(f"{i}. `{o}` {_f(_mean(runs[o]))}" for i, o in enumerate(order, 1))
    rows = [[f"`{a}` − `{b}`", _ci(*j.diff[:3]), _f(j.p_holm, 3)]
            for (_, a, b), j in judged.items()]
    return Claim(outcome, [
        f"Ranking by mean final metric: {ranking}. Reproduced needs `stam_full` and `nadam` "
        "as the top two and both significantly better than `adamw` (Holm across the tests "
        "below); not reproduced if either is significantly worse than `adamw`, or "
        "`stam_full` is significantly worse than a different leader.", "",
        *_table(["paired difference", "mean [95% CI]", "Holm p"], rows)])


def claims_section(tasks: Tasks, sweeps: Tasks) -> list[str]:
    lines = ["## The 0.1.0 claims", ""]
    for title, claim in (
            ('(a) "STAMLite is best in the hyperparameter sweep"', claim_sweep(sweeps)),
            ('(b) "STAM ranks first with NAdam on the long-horizon non-stationary MLP"',
             claim_long_horizon(tasks))):
        lines += [f"### {title}", "", *claim.lines, "", f"**Outcome: {claim.outcome}.**", ""]
    return lines


# --- int8 parity, ablation --------------------------------------------------------------

def _pair_table(judged: dict[Any, Judged], tasks: Tasks, words: dict[str, str]) -> list[str]:
    rows = [[task, f"`{a}` {_f(_mean(tasks[task][a]))}", f"`{b}` {_f(_mean(tasks[task][b]))}",
             _ci(*j.diff[:3]), _f(j.p_holm, 3), words.get(j.verdict, j.verdict)]
            for (task, a, b), j in judged.items()]
    return _table(["task", "candidate mean", "reference mean", "candidate − reference [CI]",
                   "Holm p", "verdict"], rows)


def int8_section(tasks: Tasks) -> list[str]:
    lines = ["## int8 momentum parity", ""]
    judged = _compare_pairs(tasks, [("stam_lite_int8", "stam_lite")])
    if not judged:
        return lines + ["Not run: no task has both `stam_lite` and `stam_lite_int8`.", ""]
    words = {"tie": "tie (parity)", "win": "int8 better", "loss": "int8 worse",
             "inconclusive": "inconclusive"}
    n_tie = sum(j.verdict == "tie" for j in judged.values())
    return lines + [f"int8 − float32 momentum, paired by seed (Holm across tasks). Parity (CI "
                    f"inside ±min_effect) on {n_tie} of {len(judged)} tasks.", "",
                    *_pair_table(judged, tasks, words)]


def ablation_section(tasks: Tasks, baseline: str) -> list[str]:
    lines = ["## Ablation: does adaptivity matter?", "",
             "`stam_fixed` is STAM with adapt_strength 0 (AdamW-like with β₁ 0.9); "
             "`stam_const_beta` has β₁ fixed at 0.81. A win means `stam_full` is better.", ""]
    judged = _compare_pairs(tasks, [("stam_full", "stam_fixed"),
                                        ("stam_full", "stam_const_beta")])
    if not judged:
        return lines + ["Not run: no task has `stam_full` with `stam_fixed` or "
                        "`stam_const_beta`.", "", *signal_ablation(tasks, baseline)]
    names = ("stam_full", "stam_fixed", "stam_const_beta", "stam_lite", baseline)
    means = [[t, *(_f(_mean(r[n])) if n in r else "—" for n in names)]
             for t, r in tasks.items() if "stam_full" in r]
    fixed = [j.verdict for (_, _, b), j in judged.items() if b == "stam_fixed"]
    summary = (f"`stam_full` vs `stam_fixed`: {fixed.count('win')} wins, {fixed.count('tie')} "
               f"ties, {fixed.count('loss')} losses, {fixed.count('inconclusive')} inconclusive "
               f"of {len(fixed)} tasks.") if fixed else ""
    return lines + [summary, "", *_table(["task", *(f"`{n}` mean" for n in names)], means),
                    *_pair_table(judged, tasks, {}), *signal_ablation(tasks, baseline)]


# (candidate, reference) pairs of the β₁-signal ablation, one Holm family
SIGNAL_PAIRS = (("stam_full_energy", "stam_full"), ("stam_full_energy", "stam_const_mean"),
                ("stam_full_energy", "adamw"), ("stam_full", "stam_const_mean"),
                ("stam_lite_energy", "stam_lite"), ("stam_lite_energy", "adamw"))


def signal_ablation(tasks: Tasks, baseline: str = "adamw") -> list[str]:
    """The energy-signal variants against SPEC STAM(Lite), against STAM with a constant
    β₁ equal to the mean β₁ SPEC STAM used on the task, and against the baseline."""
    lines = ["### The β₁ signal: energy variant, SPEC signal, STAM's own mean β₁", ""]
    pairs = [(a, baseline if b == "adamw" else b) for a, b in SIGNAL_PAIRS]
    judged = _compare_pairs(tasks, pairs)
    if not judged:
        return lines + ["Not run: no task has `stam_full_energy` or `stam_lite_energy` with "
                        "a reference.", ""]
    consts = [[t, _f(((r.get("stam_const_mean") or {}).get("constant_beta1") or {})
                     .get("value"))] for t, r in tasks.items() if "stam_const_mean" in r]
    counts = {}
    for (_, a, b), j in judged.items():
        counts.setdefault((a, b), dict.fromkeys(VERDICTS, 0))[j.verdict] += 1
    summary = [f"`{a}` vs `{b}`: " + ", ".join(f"{c[v]} {v}" for v in VERDICTS)
               + f" (of {sum(c.values())} tasks)." for (a, b), c in counts.items()]
    return lines + [
        "Paired by seed, Holm-corrected across all rows of this table; a win means the "
        "candidate (first) is better. `stam_const_mean` is STAM with α = 0 and β₁ fixed at "
        "the mean β₁ `stam_full` used on that task (mean over layers and evaluations of its "
        "first final seed):", "",
        *(_table(["task", "constant β₁ of `stam_const_mean`"], consts) if consts else
          ["No `stam_const_mean` run.", ""]),
        *(f"* {line}" for line in summary), "", *_pair_table(judged, tasks, {})]

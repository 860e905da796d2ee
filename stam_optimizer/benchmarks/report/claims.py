"""The report sections that judge claims: the two 0.1.0 claims, int8 momentum
parity, and the adaptivity and β₁-signal ablations.

Built on the paired comparisons of `stats` and the tables of `markdown` alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.benchmarks.report.markdown import interval_text, number, table
from stam_optimizer.benchmarks.report.stats import (
    ALPHA,
    VERDICTS,
    Judged,
    Tasks,
    compare_at_parent_lr,
    compare_pairs,
    judge,
    mean_final,
    paired_values,
    ranked,
    task_info,
)

LONG_HORIZON_TASK = "long_horizon_mlp"

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
        diff = paired_values(a["seeds"], _sweep_cell(a, *best[name][1:]),
                       b["seeds"], _sweep_cell(b, *best[other][1:]))
        tests[task] = (diff, task_info(by_opt)["min_effect"])
        rows[task] = (order, best, other)
    if not tests:
        return Claim("not run", [f"Not run: no sweep file pairs `{name}` with another optimizer."])
    judged, cells, outcomes = judge(tests), [], []
    for task, (order, best, other) in rows.items():
        j = judged[task]
        significant = j.p_holm < ALPHA
        outcome = ("reproduced" if order[0] == name and significant and j.diff.mean < 0 else
                   "not reproduced" if order[0] != name and significant and j.diff.mean > 0
                   else "inconclusive")
        outcomes.append(outcome)
        ranking = ", ".join(f"`{o}` {number(best[o][0])}" for o in order)
        cells.append([task, ranking, f"`{name}` − `{other}`: {interval_text(*j.diff[:3])}",
                      number(j.p_holm, 3), outcome])
    overall = ("not reproduced" if "not reproduced" in outcomes else
               "reproduced" if all(o == "reproduced" for o in outcomes) else "inconclusive")
    return Claim(overall, [
        "Per sweep task: the best (lr, wd) cell of each optimizer by mean final metric over "
        f"the sweep seeds; `{name}` at its best cell is compared, paired by seed, with the "
        "runner-up (or with the leader when it is not first), Holm-corrected across sweep tasks.",
        "", *table(["task", "best mean per optimizer (best first)", "paired difference [CI]",
                     "Holm p", "outcome"], cells)])


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
    order = ranked(runs)
    leader = order[0]
    pairs = [("stam_full", "adamw"), ("nadam", "adamw")]
    if leader not in ("stam_full", "nadam", "adamw"):
        pairs.append(("stam_full", leader))
    judged = compare_pairs({task: runs}, pairs)

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
    ranking = ", ".join(f"{i}. `{o}` {number(mean_final(runs[o]))}" for i, o in enumerate(order, 1))
    rows = [[f"`{a}` − `{b}`", interval_text(*j.diff[:3]), number(j.p_holm, 3)]
            for (_, a, b), j in judged.items()]
    return Claim(outcome, [
        f"Ranking by mean final metric: {ranking}. Reproduced needs `stam_full` and `nadam` "
        "as the top two and both significantly better than `adamw` (Holm across the tests "
        "below); not reproduced if either is significantly worse than `adamw`, or "
        "`stam_full` is significantly worse than a different leader.", "",
        *table(["paired difference", "mean [95% CI]", "Holm p"], rows)])


def claims_section(tasks: Tasks, sweeps: Tasks) -> list[str]:
    lines = ["## The 0.1.0 claims", ""]
    for title, claim in (
            ('(a) "STAMLite is best in the hyperparameter sweep"', claim_sweep(sweeps)),
            ('(b) "STAM ranks first with NAdam on the long-horizon non-stationary MLP"',
             claim_long_horizon(tasks))):
        lines += [f"### {title}", "", *claim.lines, "", f"**Outcome: {claim.outcome}.**", ""]
    return lines


# --- storage parity, ablation --------------------------------------------------------------

def _pair_table(judged: dict[Any, Judged], tasks: Tasks, words: dict[str, str]) -> list[str]:
    rows = [[task, f"`{a}` {number(mean_final(tasks[task][a]))}",
             f"`{b}` {number(mean_final(tasks[task][b]))}",
             interval_text(*j.diff[:3]), number(j.p_holm, 3), words.get(j.verdict, j.verdict)]
            for (task, a, b), j in judged.items()]
    return table(["task", "candidate mean", "reference mean", "candidate − reference [CI]",
                   "Holm p", "verdict"], rows)


def storage_section(tasks: Tasks) -> list[str]:
    """Each optimizer that stores its float parent's state differently (low-bit,
    bf16: `registry.Entry.parent`) against that parent, at the parent's tuned
    learning rate, paired by seed, one Holm family."""
    lines = ["## Low-bit and bf16 state: parity with the float parent", ""]
    pairs = [(n, e.parent) for n, e in registry.ENTRIES.items() if e.parent is not None]
    judged = compare_at_parent_lr(tasks, pairs)
    if not judged:
        return lines + ["Not run: no task has a storage variant and its float parent.", ""]
    words = {"tie": "tie (parity)", "win": "variant better", "loss": "variant worse",
             "inconclusive": "inconclusive"}
    same = {k for k, j in judged.items() if j.diff.mean == 0 and j.diff.sd == 0}
    rows = [[task, f"`{a}`", f"`{b}`", number(tasks[task][b]["final"]["lr"], 3),
             interval_text(*j.diff[:3]), number(j.p_holm, 3),
             "identical" if (task, a, b) in same else words.get(j.verdict, j.verdict)]
            for (task, a, b), j in judged.items()]
    n_tie = sum(j.verdict == "tie" for j in judged.values())
    return lines + [
        "Variant − parent, both at the learning rate the parent was tuned to (switching "
        "is a one-line change, without re-tuning), paired by seed, Holm across the rows. "
        f"Parity (the whole 95% CI inside ±min_effect) on {n_tie} of {len(judged)}, of "
        f"which {len(same)} are identical to the bit on every seed (no tensor of the "
        "model is large enough to be stored differently).", "",
        *table(["task", "variant", "parent", "parent's lr", "variant − parent [CI]", "Holm p",
                "verdict"], rows)]


def ablation_section(tasks: Tasks, baseline: str) -> list[str]:
    lines = ["## Ablation: does adaptivity matter?", "",
             "`stam_fixed` is STAM with adapt_strength 0 (AdamW-like with β₁ 0.9); "
             "`stam_const_beta` has β₁ fixed at 0.81. A win means `stam_full` is better.", ""]
    judged = compare_pairs(tasks, [("stam_full", "stam_fixed"),
                                        ("stam_full", "stam_const_beta")])
    if not judged:
        return lines + ["Not run: no task has `stam_full` with `stam_fixed` or "
                        "`stam_const_beta`.", "", *signal_ablation(tasks, baseline)]
    names = ("stam_full", "stam_fixed", "stam_const_beta", "stam_lite", baseline)
    means = [[t, *(number(mean_final(r[n])) if n in r else "—" for n in names)]
             for t, r in tasks.items() if "stam_full" in r]
    fixed = [j.verdict for (_, _, b), j in judged.items() if b == "stam_fixed"]
    summary = (f"`stam_full` vs `stam_fixed`: {fixed.count('win')} wins, {fixed.count('tie')} "
               f"ties, {fixed.count('loss')} losses, {fixed.count('inconclusive')} inconclusive "
               f"of {len(fixed)} tasks.") if fixed else ""
    return lines + [summary, "", *table(["task", *(f"`{n}` mean" for n in names)], means),
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
    judged = compare_pairs(tasks, pairs)
    if not judged:
        return lines + ["Not run: no task has `stam_full_energy` or `stam_lite_energy` with "
                        "a reference.", ""]
    consts = [[t, number(((r.get("stam_const_mean") or {}).get("constant_beta1") or {})
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
        *(table(["task", "constant β₁ of `stam_const_mean`"], consts) if consts else
          ["No `stam_const_mean` run.", ""]),
        *(f"* {line}" for line in summary), "", *_pair_table(judged, tasks, {})]

"""Statistics of the benchmark: confidence intervals, paired tests, Holm, verdicts.

Every comparison in `stam-bench` is paired: two optimizers run on the same seeds,
and the per-seed differences are what gets tested. Lower metric is better
everywhere, and a difference is always `candidate - baseline`, so a negative
difference means the candidate did better.

Besides the plain 95% intervals, each comparison of a Holm family gets an
interval at the level Holm's step-down procedure actually tested it at
(`holm_levels`), so that "the adjusted interval excludes 0" and "Holm-adjusted
p < alpha" always agree, and a minimum detectable effect
(`min_detectable_effect`): the difference a paired t-test at that family's
strictest level would find with 80% power, given the number of seeds and the
observed spread of the per-seed differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

from stam_optimizer.benchmarks.programme import registry

NAN = float("nan")


class PairedDiff(NamedTuple):
    """Mean of the per-seed differences `a - b`, its CI, the paired t-test p-value,
    the number of pairs and the sample standard deviation of the differences."""

    mean: float
    lo: float
    hi: float
    p_value: float
    n: int
    sd: float = NAN


def _as_float_array(x) -> np.ndarray:
    """A 1-D float array; `None` entries become nan."""
    return np.asarray([NAN if v is None else v for v in np.ravel(np.asarray(x, dtype=object))],
                      dtype=float)


def mean_ci(x, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of `x`.

    Fewer than two values give `(mean, nan, nan)` (nan mean if there are none);
    any non-finite value makes all three nan, because a diverged run has no mean.
    """
    a = _as_float_array(x)
    if a.size == 0 or not np.all(np.isfinite(a)):
        return NAN, NAN, NAN
    mean = float(a.mean())
    if a.size < 2:
        return mean, NAN, NAN
    half = float(sps.t.ppf(0.5 + confidence / 2, a.size - 1)) * float(a.std(ddof=1)) / math.sqrt(
        a.size)
    return mean, mean - half, mean + half


def paired_difference(a, b, confidence: float = 0.95) -> PairedDiff:
    """Paired comparison of `a` and `b` (same seed at the same index).

    Returns the mean of `a - b` with its Student-t CI and the two-sided paired
    t-test p-value. Non-finite values make every field nan. When all differences
    are equal the test is degenerate: the p-value is 0 if they are non-zero and 1
    if they are all zero, and the CI has zero width.
    """
    x, y = _as_float_array(a), _as_float_array(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    n = int(x.size)
    d = x - y
    if n == 0 or not np.all(np.isfinite(d)):
        return PairedDiff(NAN, NAN, NAN, NAN, n)
    mean = float(d.mean())
    if n < 2:
        return PairedDiff(mean, NAN, NAN, NAN, n)
    if np.all(d == d[0]):
        return PairedDiff(mean, mean, mean, 0.0 if mean != 0 else 1.0, n, 0.0)
    res = sps.ttest_rel(x, y)
    ci = res.confidence_interval(confidence)
    return PairedDiff(mean, float(ci.low), float(ci.high), float(res.pvalue), n,
                      float(d.std(ddof=1)))


def interval(diff: PairedDiff, confidence: float) -> tuple[float, float]:
    """The Student-t interval of `diff.mean` at `confidence`, from its `sd` and `n`
    (the interval `paired_difference` would give at that confidence)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if diff.n < 2 or not (math.isfinite(diff.mean) and math.isfinite(diff.sd)):
        return NAN, NAN
    half = float(sps.t.ppf(0.5 + confidence / 2, diff.n - 1)) * diff.sd / math.sqrt(diff.n)
    return diff.mean - half, diff.mean + half


def _sorted_p(p_values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The p-values as floats, an all-nan result of their shape, and the indices
    of the non-nan ones in ascending (stable) order."""
    p = _as_float_array(p_values)
    idx = np.flatnonzero(~np.isnan(p))
    return p, np.full(p.shape, NAN), idx[np.argsort(p[idx], kind="stable")]


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Step-down: the i-th smallest of m p-values is multiplied by `m - i + 1`, the
    running maximum keeps the adjusted values monotone, and they are capped at 1.
    nan entries stay nan and do not count in m.
    """
    p, out, order = _sorted_p(p_values)
    m = order.size
    if m == 0:
        return out
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def holm_levels(p_values, alpha: float = 0.05) -> np.ndarray:
    """The significance level at which Holm's procedure tests each p-value.

    With the m p-values sorted, p_(1) <= ... <= p_(m), Holm compares p_(k) with
    `alpha / (m - k + 1)` until the first one that fails, say the r-th; every
    p-value from there on is judged at that last level `alpha / (m - r + 1)`. A
    two-sided interval at confidence `1 - level` therefore excludes 0 exactly
    when the Holm-adjusted p-value is below `alpha`. nan entries stay nan and do
    not count in m.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p, out, order = _sorted_p(p_values)
    m = order.size
    if m == 0:
        return out
    rejected = holm(p[order]) < alpha  # in sorted order: True then False
    r = int(np.argmin(rejected)) if not rejected.all() else m
    k = np.arange(m)
    out[order] = alpha / (m - np.minimum(k, r))
    return out


def power_paired(effect: float, sd: float, n: int, level: float) -> float:
    """Power of the two-sided paired t-test at `level` with `n` pairs when the true
    mean difference is `effect` and the differences have standard deviation `sd`."""
    df = n - 1
    crit = float(sps.t.ppf(1 - level / 2, df))
    nc = abs(effect) * math.sqrt(n) / sd
    # the far tail is below 1e-3 of the power at any nc > 0 that matters here, and
    # scipy's nct returns nan for some of its tiny values: count those as 0
    far = float(np.nan_to_num(sps.nct.cdf(-crit, df, nc), nan=0.0))
    return float(sps.nct.sf(crit, df, nc)) + far


def min_detectable_effect(sd: float, n: int, level: float, power: float = 0.8) -> float:
    """The smallest mean difference that a two-sided paired t-test at `level`
    detects with probability `power`, for `n` pairs whose differences have
    standard deviation `sd` (noncentral t; nan for n < 2 or a non-finite sd,
    0 for sd = 0)."""
    if not 0 < level < 1 or not 0 < power < 1:
        raise ValueError(f"level and power must be in (0, 1), got {level} and {power}")
    if n < 2 or sd is None or not math.isfinite(sd):
        return NAN
    if sd == 0:
        return 0.0
    with warnings.catch_warnings():  # scipy's nct series may not converge far out;
        warnings.simplefilter("ignore", RuntimeWarning)  # such a result is checked below
        hi = sd
        for _ in range(200):
            reached = power_paired(hi, sd, n, level)
            if not math.isfinite(reached):
                return NAN
            if reached >= power:
                break
            hi *= 2
        else:
            return NAN
        try:
            mde = float(brentq(lambda e: power_paired(e, sd, n, level) - power, 0.0, hi,
                               xtol=1e-12 * hi, rtol=1e-10))
        except ValueError:  # a nan power inside the bracket
            return NAN
    return mde if math.isfinite(mde) else NAN


def win_threshold(n: int, level: float) -> float:
    """How many standard errors (sd/√n) a mean difference must reach for the paired
    t-test with `n` pairs to be significant at `level`."""
    return float(sps.t.ppf(1 - level / 2, n - 1)) if n >= 2 else NAN


def verdict(diff: PairedDiff, p_adjusted: float, min_effect: float, alpha: float = 0.05) -> str:
    """"win", "loss", "tie" or "inconclusive" for `diff = candidate - baseline`.

    win/loss: significant (`p_adjusted < alpha`) and at least `min_effect` better/
    worse on average; tie: the whole CI lies within ±`min_effect`; anything else,
    and any nan, is inconclusive.
    """
    values = (diff.mean, diff.lo, diff.hi, p_adjusted, min_effect)
    if any(v is None or not math.isfinite(v) for v in values):
        return "inconclusive"
    if p_adjusted < alpha and diff.mean <= -min_effect:
        return "win"
    if p_adjusted < alpha and diff.mean >= min_effect:
        return "loss"
    if -min_effect <= diff.lo and diff.hi <= min_effect:
        return "tie"
    return "inconclusive"


def steps_to_target(eval_steps, curve, target) -> int | None:
    """The first eval step whose value is `<= target`; None if never (non-finite
    values never count)."""
    if target is None or not math.isfinite(float(target)):
        return None
    for step, value in zip(eval_steps, curve):
        if value is not None and math.isfinite(float(value)) and float(value) <= float(target):
            return int(step)
    return None


def performance_profile(costs: Mapping[str, Sequence[float | None]],
                        taus) -> dict[str, np.ndarray]:
    """Performance profiles in the AlgoPerf style.

    `costs[opt][task]` is the number of steps `opt` needed to reach the task's
    target (None or inf: never). Per task, each cost is divided by the best cost
    on that task; `profile[opt][i]` is the fraction of tasks whose ratio is
    `<= taus[i]`. Tasks that no optimizer solved are dropped (all-nan profiles if
    none is left). A cost of 0 counts as 1 step so that ratios stay finite.
    """
    names = list(costs)
    taus = np.asarray(taus, dtype=float)
    if not names:
        return {}
    rows = [_as_float_array(costs[n]) for n in names]
    if len({r.size for r in rows}) != 1:
        raise ValueError("every optimizer needs one cost per task (equal lengths)")
    table = np.array(rows)
    table = np.where(np.isnan(table), np.inf, table)
    if np.any(table < 0):
        raise ValueError("costs must be >= 0")
    table = np.maximum(table, 1.0)
    solved = np.isfinite(table).any(axis=0)
    if not solved.any():
        return {n: np.full(taus.shape, NAN) for n in names}
    table = table[:, solved]
    ratios = table / table.min(axis=0, keepdims=True)
    return {n: (ratios[i][None, :] <= taus[:, None]).mean(axis=1) for i, n in enumerate(names)}


# --- comparisons of benchmark runs -------------------------------------------------

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("win", "tie", "loss", "inconclusive")

Tasks = dict[str, dict[str, dict]]  # task -> optimizer -> run


def floats(values) -> np.ndarray:
    """JSON values as floats, None (a diverged run) as nan."""
    return np.asarray([math.nan if v is None else v for v in values], dtype=float)


def final_values(run: dict) -> np.ndarray:
    """The final metric of a run, one value per final seed (nan: diverged)."""
    return floats(run["final"]["metric"])


def paired_values(seeds_a, values_a, seeds_b, values_b) -> PairedDiff:
    """a - b on the seeds both have, matched by seed."""
    b = dict(zip(seeds_b, values_b))
    pairs = [(x, b[s]) for s, x in zip(seeds_a, values_a) if s in b]
    return paired_difference([p[0] for p in pairs], [p[1] for p in pairs])


def paired_runs(a: dict, b: dict) -> PairedDiff:
    """Paired difference of the final metric, run `a` minus run `b`."""
    return paired_values(a["final"]["seeds"], final_values(a), b["final"]["seeds"], final_values(b))


def values_at_lr(run: dict, lr: float) -> np.ndarray | None:
    """The final seeds' metric of `run` at learning rate `lr` of its sweep (the
    lr-sensitivity record holds every lr x final seed); None where `lr` was not run."""
    sens = run.get("lr_sensitivity") or {}
    for i, x in enumerate(sens.get("lrs", [])):
        if math.isclose(x, lr, rel_tol=1e-9):
            return floats(sens["final_seed_metric"][i])
    return None


def compare_at_parent_lr(tasks: Tasks, pairs: list[tuple[str, str]]) -> dict[Any, Judged]:
    """`a − b` for each (a, b) in `pairs` on every task having both, with `a` taken at
    the learning rate `b` was tuned to (a user switches from b to a by changing one
    line, not by re-tuning); one Holm family. A task where `a` did not run that
    learning rate is left out."""
    tests = {}
    for t, runs in tasks.items():
        for a, b in pairs:
            if a not in runs or b not in runs:
                continue
            at = values_at_lr(runs[a], runs[b]["final"]["lr"])
            if at is not None:
                tests[(t, a, b)] = (paired_values(runs[a]["final"]["seeds"], at,
                                                  runs[b]["final"]["seeds"],
                                                  final_values(runs[b])),
                                    task_info(runs)["min_effect"])
    return judge(tests)


def task_info(runs: dict[str, dict]) -> dict:
    """The task description shared by the runs of one task."""
    return next(iter(runs.values()))["task_info"]


def mean_final(run: dict) -> float:
    """The mean final metric of a run over its seeds (nan if every seed diverged)."""
    return mean_ci(final_values(run))[0]


def ranked(runs: dict[str, dict]) -> list[str]:
    """Optimizers by mean final metric, best first, nan last."""
    means = {n: mean_final(r) for n, r in runs.items()}
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
    (`registry.in_stam_family`: STAM, STAMLite, their storage variants and
    ablations) first, the other optimizers (peers)
    second. Each holds (task, optimizer) for every task that has the baseline."""
    out: dict[str, list[tuple[str, str]]] = {}
    for t, runs in tasks.items():
        if baseline not in runs:
            continue
        for o in runs:
            if o == baseline:
                continue
            name = (f"primary: STAM family vs {baseline}" if registry.in_stam_family(o)
                    else f"peers vs {baseline}")
            out.setdefault(name, []).append((t, o))
    return dict(sorted(out.items(), key=lambda kv: not kv[0].startswith("primary")))


def compare_to_baseline(tasks: Tasks, baseline: str) -> dict[tuple[str, str], Judged]:
    """Every (task, optimizer) vs the baseline on that task, Holm-corrected within
    its family (see `families`)."""
    out: dict[tuple[str, str], Judged] = {}
    for name, members in families(tasks, baseline).items():
        out |= judge({(t, o): (paired_runs(tasks[t][o], tasks[t][baseline]),
                               task_info(tasks[t])["min_effect"]) for t, o in members}, name)
    return out


def verdict_counts(judged: dict[tuple[str, str], Judged]) -> dict[str, dict[str, int]]:
    """optimizer -> verdict -> number of tasks."""
    counts: dict[str, dict[str, int]] = {}
    for (_, opt), j in judged.items():
        counts.setdefault(opt, dict.fromkeys(VERDICTS, 0))[j.verdict] += 1
    return counts


def compare_pairs(tasks: Tasks, pairs: list[tuple[str, str]]) -> dict[Any, Judged]:
    """`a - b` for each (a, b) in `pairs` on every task having both; one Holm family."""
    return judge({(t, a, b): (paired_runs(runs[a], runs[b]), task_info(runs)["min_effect"])
                  for t, runs in tasks.items() for a, b in pairs if a in runs and b in runs})


# --- markdown helpers ------------------------------------------------------------------

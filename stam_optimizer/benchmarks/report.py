"""`stam-bench report`: report.md and its figures, derived from a results folder.

Nothing here runs an optimizer: every number comes from the JSON files described
in docs/benchmark_format.md. Missing pieces (some tasks or optimizers, no sweeps,
no smoke/memory/speed files) make the matching sections say "not run"; a file
that cannot be read is skipped with a warning.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stam_optimizer.benchmarks import plots
from stam_optimizer.benchmarks.stats import (
    PairedDiff,
    holm,
    mean_ci,
    paired_difference,
    performance_profile,
    steps_to_target,
    verdict,
)

ALPHA = 0.05
LONG_HORIZON_TASK = "long_horizon_mlp"
VERDICTS = ("win", "tie", "loss", "inconclusive")
PRETTY = {"adamw": "AdamW", "stam_full": "STAM", "stam_lite": "STAMLite", "nadam": "NAdam"}
PROFILE_TAU_MAX = 4.0

Tasks = dict[str, dict[str, dict]]  # task -> optimizer -> run


# --- loading -------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None with a warning if it cannot be read."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("the top level is not a JSON object")
        return data
    except (OSError, ValueError) as e:
        warnings.warn(f"stam-bench report: skipping unreadable {path}: {e}", stacklevel=3)
        return None


REQUIRED = {
    "run": ("task", "optimizer", "task_info.min_effect", "final.seeds", "final.metric"),
    "sweep": ("task", "optimizer", "task_info.min_effect", "lrs", "wds", "seeds", "metric"),
}


def _check(data: dict, kind: str) -> None:
    """Raises ValueError if a run or sweep file lacks what the report needs."""
    for key in REQUIRED[kind]:
        obj = data
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise ValueError(f"missing {key}")
            obj = obj[part]
    if kind == "run" and len(data["final"]["seeds"]) != len(data["final"]["metric"]):
        raise ValueError("final.seeds and final.metric differ in length")
    if kind == "sweep" and np.asarray(data["metric"], dtype=float).size != (
            len(data["lrs"]) * len(data["wds"]) * len(data["seeds"])):
        raise ValueError("metric is not n_wd x n_lr x n_seeds")


def _load_folder(results_dir: str | Path, sub: str, kind: str) -> list[dict]:
    out = []
    for path in sorted(Path(results_dir, sub).glob("*/*.json")):
        data = _read_json(path)
        if data is None:
            continue
        try:
            _check(data, kind)
        except (KeyError, TypeError, ValueError) as e:
            warnings.warn(f"stam-bench report: skipping {path}: not a valid {kind} file "
                          f"({e})", stacklevel=3)
            continue
        out.append(data)
    return out


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every readable `runs/<task>/<optimizer>.json` under `results_dir`."""
    return _load_folder(results_dir, "runs", "run")


def load_sweeps(results_dir: str | Path) -> list[dict]:
    """Every readable `sweeps/<task>/<optimizer>.json` under `results_dir`."""
    return _load_folder(results_dir, "sweeps", "sweep")


def _load_optional(path: Path) -> dict | None:
    return _read_json(path) if path.exists() else None


def group(items: list[dict]) -> Tasks:
    """task -> optimizer -> file, in the order the files were read."""
    out: Tasks = {}
    for d in items:
        out.setdefault(d["task"], {})[d["optimizer"]] = d
    return out


# --- numbers from runs -----------------------------------------------------------------

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


def run_steps_to_target(run: dict) -> list[int | None]:
    """Steps to the task target per final seed (stored, else computed from curves)."""
    final = run["final"]
    if "steps_to_target" in final:
        return [None if s is None else int(s) for s in final["steps_to_target"]]
    info = run["task_info"]
    curves = final.get("curves", {}).get(info.get("metric", "val_loss"), [])
    return [steps_to_target(final.get("eval_steps", []), c, info.get("target")) for c in curves]


def _median_cost(run: dict) -> float | None:
    steps = _floats([math.inf if s is None else s for s in run_steps_to_target(run)])
    median = float(np.median(steps)) if steps.size else math.inf
    return median if math.isfinite(median) else None


class Judged(NamedTuple):
    """A paired difference with its Holm-adjusted p-value and verdict."""

    diff: PairedDiff
    p_holm: float
    verdict: str


def judge(tests: dict[Any, tuple[PairedDiff, float]]) -> dict[Any, Judged]:
    """Holm-corrects a family of (difference, min_effect) tests and gives verdicts."""
    keys = list(tests)
    adjusted = holm([tests[k][0].p_value for k in keys])
    return {k: Judged(tests[k][0], float(p), verdict(tests[k][0], float(p), tests[k][1], ALPHA))
            for k, p in zip(keys, adjusted)}


def compare_to_baseline(tasks: Tasks, baseline: str) -> dict[tuple[str, str], Judged]:
    """Every (task, optimizer) vs the baseline on that task, one Holm family."""
    tests = {(t, o): (paired_runs(run, runs[baseline]), _info(runs)["min_effect"])
             for t, runs in tasks.items() if baseline in runs
             for o, run in runs.items() if o != baseline}
    return judge(tests)


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


def _pretty(name: str) -> str:
    return f"{PRETTY[name]} (`{name}`)" if name in PRETTY else f"`{name}`"


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _image(path: Path | None, caption: str) -> list[str]:
    return [f"![{caption}]({path.name})", ""] if path else []


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclasses.dataclass
class _Context:
    results_dir: Path
    out_dir: Path
    baseline: str
    tasks: Tasks
    sweeps: Tasks
    judged: dict[tuple[str, str], Judged]


# --- sections --------------------------------------------------------------------------

def _header(ctx: _Context) -> list[str]:
    runs = [r for runs in ctx.tasks.values() for r in runs.values()]
    sizes = sorted({str(r.get("size", "?")) for r in runs}) or ["n/a"]
    envs = sorted({(str(e.get("jax")), str(e.get("optax")), str(e.get("cpu")),
                    str(e.get("threads"))) for r in runs if (e := r.get("environment"))})
    env_text = "; ".join(f"jax {j}, optax {o}, CPU {c}, {t} threads" for j, o, c, t in envs)
    optimizers = sorted({r["optimizer"] for r in runs})
    seeds = sorted({tuple(r["final"]["seeds"]) for r in runs})
    tune = sorted({tuple((r.get("tuning") or {}).get("seeds", ())) for r in runs})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# stam-bench report", "",
        f"Generated {date} from `{ctx.results_dir}`. Size: {', '.join(sizes)}.",
        f"Environment: {env_text or 'not recorded'}"
        + (" (runs come from more than one environment)" if len(envs) > 1 else "") + ".",
        f"{len(ctx.tasks)} tasks, {len(optimizers)} optimizers "
        f"({', '.join(f'`{o}`' for o in optimizers) or 'none'}); final seeds "
        f"{' / '.join(str(list(s)) for s in seeds) or 'none'}; tuning seeds "
        f"{' / '.join(str(list(s)) for s in tune) or 'none'}.", "",
        "**Protocol.** Per task, the learning rate of every optimizer is tuned on the same "
        "log grid with the tuning seeds and the validation metric; then every optimizer runs "
        "the same fresh final seeds, so comparisons are paired by seed. Intervals are "
        "Student-t 95% CIs; p-values are paired t-tests, Holm-corrected across all "
        f"(task, optimizer) comparisons vs `{ctx.baseline}`; each task has a minimum effect "
        "size below which a difference does not count.", "",
        "Lower metric is better everywhere. Differences are candidate − baseline, so a "
        "negative difference means the candidate did better. A **win** needs Holm p < "
        f"{ALPHA} and a mean improvement of at least the task's min_effect; a **loss** the "
        "same in the other direction; a **tie** needs the whole 95% CI inside ±min_effect; "
        "anything else is **inconclusive**.", ""]
    if not runs:
        lines += ["No run files were found under `runs/`: nothing to compare.", ""]
    return lines


def verdict_counts(judged: dict[tuple[str, str], Judged]) -> dict[str, dict[str, int]]:
    """optimizer -> verdict -> number of tasks."""
    counts: dict[str, dict[str, int]] = {}
    for (_, opt), j in judged.items():
        counts.setdefault(opt, dict.fromkeys(VERDICTS, 0))[j.verdict] += 1
    return counts


def _headline(ctx: _Context) -> list[str]:
    lines = [f"## Headline: every optimizer vs {_pretty(ctx.baseline)}", ""]
    counts = verdict_counts(ctx.judged)
    if not counts:
        return lines + [f"Not run: no task has both `{ctx.baseline}` and another optimizer.", ""]
    for name in ("stam_full", "stam_lite"):
        c = counts.get(name)
        if c is None:
            lines.append(f"{_pretty(name)} was not compared (no runs on a task with the baseline).")
            continue
        lines.append(f"{PRETTY[name]} beat {PRETTY.get(ctx.baseline, ctx.baseline)} on "
                     f"{c['win']} of {sum(c.values())} tasks, tied on {c['tie']}, lost on "
                     f"{c['loss']} (inconclusive on {c['inconclusive']}).")
    order = sorted(counts, key=lambda o: (-counts[o]["win"], counts[o]["loss"], o))
    rows = [[f"`{o}`", *(str(counts[o][v]) for v in VERDICTS), str(sum(counts[o].values()))]
            for o in order]
    return [*lines, "", *_table(["optimizer", *VERDICTS, "tasks"], rows)]


def _task_rows(ctx: _Context, task: str, runs: dict[str, dict]) -> list[list[str]]:
    rows = []
    for opt in _ranked(runs):
        run, j = runs[opt], ctx.judged.get((task, opt))
        tuning = run.get("tuning") or {}
        lr = tuning.get("best_lr", run["final"].get("lr"))
        lrs = tuning.get("lrs") or []
        note = " (grid edge)" if lrs and lr in (min(lrs), max(lrs)) else ""
        note += " (grid extended)" if tuning.get("extended") else ""
        steps = run_steps_to_target(run)
        reached = [s for s in steps if s is not None]
        median = _median_cost(run)
        diverged = run.get("diverged") or []
        rows.append([
            f"`{opt}`", _f(lr, 3) + note, _ci(*mean_ci(final_values(run))),
            "baseline" if opt == ctx.baseline else ("n/a" if j is None else _ci(*j.diff[:3])),
            "" if j is None else _f(j.p_holm, 3), "" if j is None else f"**{j.verdict}**",
            f"{_f(median) if median is not None else 'never' if not reached else 'not reached'}"
            f" ({len(reached)}/{len(steps)} seeds reached)",
            f"{sum(map(bool, diverged))}/{len(diverged)}"])
    return rows


def _per_task(ctx: _Context) -> list[str]:
    lines = ["## Per-task results", "",
             "Rows are sorted by mean final metric, best first. `diff` is optimizer − "
             f"`{ctx.baseline}` on the shared seeds. A mean is n/a when a final seed "
             "diverged (last column); such an optimizer ranks last.", ""]
    for task, runs in ctx.tasks.items():
        info = _info(runs)
        metric = info.get("metric", "val_loss")
        lines += [f"### {task}", "", f"{info.get('description', '')}", "",
                  f"Metric `{metric}` (lower is better), min_effect {_f(info['min_effect'])}, "
                  f"target {_f(info.get('target'))}, {info.get('steps', '?')} steps, "
                  f"shifts at {info.get('shift_steps') or 'none'}."
                  + ("" if ctx.baseline in runs else f" `{ctx.baseline}` was not run here."), ""]
        lines += _table(["optimizer", "best lr", f"final {metric} [95% CI]",
                         f"diff vs {ctx.baseline} [CI]", "Holm p", "verdict",
                         "steps to target (median)", "diverged seeds"],
                        _task_rows(ctx, task, runs))
        name = _safe(task)
        lines += ["Curves: mean over the final seeds with a 95% CI band (values of diverged "
                  "seeds left out), dashed lines at distribution shifts.", ""]
        lines += _image(plots.curves(task, metric, runs, info.get("shift_steps") or [],
                                     ctx.out_dir / f"curves_{name}.png"), f"{task} curves")
        lines += _image(plots.lr_sensitivity(task, runs, ctx.out_dir / f"lr_{name}.png"),
                        f"{task} LR sensitivity")
        lines += _image(plots.beta1(task, runs, ctx.out_dir / f"beta1_{name}.png"),
                        f"{task} beta1 trajectories")
    return lines


def _forest(ctx: _Context) -> list[str]:
    lines = [f"## Paired differences vs {ctx.baseline} (forest plot)", ""]
    rows = []
    for (task, opt), j in ctx.judged.items():
        me = float(_info(ctx.tasks[task])["min_effect"]) or math.nan
        rows.append((f"{task} · {opt}", j.diff.mean / me, j.diff.lo / me, j.diff.hi / me,
                     j.verdict))
    path = plots.forest(rows, ctx.out_dir / "forest.png", ctx.baseline)
    if path is None:
        return lines + ["Not run: no finite paired difference to show.", ""]
    return lines + ["Each difference is divided by its task's min_effect so that all tasks "
                    "share one axis; the band is ±1 min_effect.", "", *_image(path, "forest")]


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


def _claims(ctx: _Context) -> list[str]:
    lines = ["## The 0.1.0 claims", ""]
    for title, claim in (
            ('(a) "STAMLite is best in the hyperparameter sweep"', claim_sweep(ctx.sweeps)),
            ('(b) "STAM ranks first with NAdam on the long-horizon non-stationary MLP"',
             claim_long_horizon(ctx.tasks))):
        lines += [f"### {title}", "", *claim.lines, "", f"**Outcome: {claim.outcome}.**", ""]
    return lines


# --- int8, ablation, profile -------------------------------------------------------------

def _pair_table(judged: dict[Any, Judged], tasks: Tasks, words: dict[str, str]) -> list[str]:
    rows = [[task, f"`{a}` {_f(_mean(tasks[task][a]))}", f"`{b}` {_f(_mean(tasks[task][b]))}",
             _ci(*j.diff[:3]), _f(j.p_holm, 3), words.get(j.verdict, j.verdict)]
            for (task, a, b), j in judged.items()]
    return _table(["task", "candidate mean", "reference mean", "candidate − reference [CI]",
                   "Holm p", "verdict"], rows)


def _int8(ctx: _Context) -> list[str]:
    lines = ["## int8 momentum parity", ""]
    judged = _compare_pairs(ctx.tasks, [("stam_lite_int8", "stam_lite")])
    if not judged:
        return lines + ["Not run: no task has both `stam_lite` and `stam_lite_int8`.", ""]
    words = {"tie": "tie (parity)", "win": "int8 better", "loss": "int8 worse",
             "inconclusive": "inconclusive"}
    n_tie = sum(j.verdict == "tie" for j in judged.values())
    return lines + [f"int8 − float32 momentum, paired by seed (Holm across tasks). Parity (CI "
                    f"inside ±min_effect) on {n_tie} of {len(judged)} tasks.", "",
                    *_pair_table(judged, ctx.tasks, words)]


def _ablation(ctx: _Context) -> list[str]:
    lines = ["## Ablation: does adaptivity matter?", "",
             "`stam_fixed` is STAM with adapt_strength 0 (AdamW-like with β₁ 0.9); "
             "`stam_const_beta` has β₁ fixed at 0.81. A win means `stam_full` is better.", ""]
    judged = _compare_pairs(ctx.tasks, [("stam_full", "stam_fixed"),
                                        ("stam_full", "stam_const_beta")])
    if not judged:
        return lines + ["Not run: no task has `stam_full` with `stam_fixed` or "
                        "`stam_const_beta`.", ""]
    names = ("stam_full", "stam_fixed", "stam_const_beta", "stam_lite", ctx.baseline)
    means = [[t, *(_f(_mean(r[n])) if n in r else "—" for n in names)]
             for t, r in ctx.tasks.items() if "stam_full" in r]
    fixed = [j.verdict for (_, _, b), j in judged.items() if b == "stam_fixed"]
    summary = (f"`stam_full` vs `stam_fixed`: {fixed.count('win')} wins, {fixed.count('tie')} "
               f"ties, {fixed.count('loss')} losses, {fixed.count('inconclusive')} inconclusive "
               f"of {len(fixed)} tasks.") if fixed else ""
    return lines + [summary, "", *_table(["task", *(f"`{n}` mean" for n in names)], means),
                    *_pair_table(judged, ctx.tasks, {})]


def _profile(ctx: _Context) -> list[str]:
    lines = ["## Performance profile (steps to target)", ""]
    opts = sorted({o for runs in ctx.tasks.values() for o in runs})
    common = [t for t, runs in ctx.tasks.items() if all(o in runs for o in opts)]
    if not common:
        return lines + ["Not run: no task has every optimizer.", ""]
    costs = {o: [_median_cost(ctx.tasks[t][o]) for t in common] for o in opts}
    taus = np.linspace(1.0, PROFILE_TAU_MAX, 301)
    prof = performance_profile(costs, taus)
    at = performance_profile(costs, [1.0, 2.0])
    left_out = [t for t in ctx.tasks if t not in common]
    lines += ["Cost: median over final seeds of the first eval step reaching the task's "
              "target (never: infinite). Profile(τ) is the fraction of tasks on which an "
              "optimizer is within a factor τ of the best; tasks nobody solved are dropped."
              f" Tasks used: {', '.join(common)}."
              + (f" Left out (not every optimizer ran): {', '.join(left_out)}." if left_out
                 else ""), ""]
    rows = [[f"`{o}`", _f(at[o][0], 3), _f(at[o][1], 3), _f(float(np.mean(prof[o])), 3)]
            for o in sorted(opts, key=lambda o: -np.nan_to_num(np.mean(prof[o]), nan=-1))]
    lines += _table(["optimizer", "fraction at τ=1", "fraction at τ=2",
                     f"mean over τ in [1, {PROFILE_TAU_MAX:g}]"], rows)
    return lines + _image(plots.profile(taus, prof, ctx.out_dir / "profile.png"), "profile")


# --- memory, speed, sweeps -------------------------------------------------------------

def _memory_rows(obj: Any) -> Iterator[dict]:
    """The rows with "optimizer" and a numeric "bytes_per_param": those of a top-level
    "rows" list if there is one, else wherever they sit in `obj`."""
    if isinstance(obj, dict) and isinstance(obj.get("rows"), list):
        obj = obj["rows"]
    if isinstance(obj, dict):
        if "optimizer" in obj and isinstance(obj.get("bytes_per_param"), (int, float)):
            yield obj
            return
        obj = list(obj.values())
    if isinstance(obj, list):
        for item in obj:
            yield from _memory_rows(item)


def _memory(ctx: _Context) -> list[str]:
    lines = ["## Memory", ""]
    series: dict[str, dict[str, float]] = {}
    for fname in ("smoke.json", "memory.json"):
        data = _load_optional(ctx.results_dir / fname)
        rows = list(_memory_rows(data)) if data else []
        if not rows:
            lines += [f"`{fname}`: not run.", ""]
            continue
        extra = sorted({k for r in rows for k, v in r.items() if k not in (
            "optimizer", "bytes_per_param") and isinstance(v, (str, int, float, bool))})
        table = [[f"`{r['optimizer']}`", _f(r["bytes_per_param"]),
                  *(str(r.get(k, "")) for k in extra)] for r in rows]
        lines += [f"From `{fname}`:", "", *_table(["optimizer", "bytes/param", *extra], table)]
        for r in rows:
            label = " ".join(str(r[k]) for k in ("tree", "task", "model") if k in r)
            key = f"{fname[:-5]} {label}".strip()
            series.setdefault(key, {})[str(r["optimizer"])] = float(r["bytes_per_param"])
    labels = sorted({o for s in series.values() for o in s})
    path = plots.bars(labels, {k: [s.get(o, math.nan) for o in labels] for k, s in series.items()},
                      "optimizer state bytes per parameter", "Memory: state bytes per parameter",
                      ctx.out_dir / "memory.png") if series else None
    return lines + _image(path, "memory")


def _speed(ctx: _Context) -> list[str]:
    lines = ["## Speed (update only, ratio to AdamW)", ""]
    data = _load_optional(ctx.results_dir / "speed.json")
    runs = [u for u in (data or {}).get("update", []) if isinstance(u, dict)]
    if not runs:
        return lines + ["`speed.json`: not run.", ""]
    series: dict[str, dict[str, float]] = {}
    rows = []
    for run in runs:
        tree = str(run.get("tree", "?"))
        for opt, r in (run.get("optimizers") or {}).items():
            ratio = r.get("ratio_to_adamw")
            series.setdefault(tree, {})[opt] = math.nan if ratio is None else float(ratio)
            median = r.get("median_s")
            rows.append([tree, f"`{opt}`", _f(ratio, 3),
                         _f(None if median is None else median * 1e3, 3)])
    labels = list(dict.fromkeys(o for s in series.values() for o in s))
    path = plots.bars(labels, {t: [s.get(o, math.nan) for o in labels] for t, s in series.items()},
                      "median time ratio to adamw (lower is faster)",
                      "Update time relative to AdamW, per parameter tree",
                      ctx.out_dir / "speed.png", reference=1.0)
    return lines + [*_table(["tree", "optimizer", "ratio to adamw", "median ms"], rows),
                    *_image(path, "speed")]


def _sweep_maps(ctx: _Context) -> list[str]:
    lines = ["## Sweeps (learning rate x weight decay)", ""]
    if not ctx.sweeps:
        return lines + ["Not run.", ""]
    lines += ["Mean final metric over the sweep seeds; the box marks the best cell.", ""]
    for task, by_opt in ctx.sweeps.items():
        for opt, sweep in by_opt.items():
            path = plots.heatmap(sweep, ctx.out_dir / f"sweep_{_safe(task)}_{_safe(opt)}.png")
            lines += _image(path, f"sweep {task} {opt}")
    return lines


def build_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 baseline: str = "adamw") -> Path:
    """Writes report.md and its PNG figures for `results_dir`; returns the report path."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    tasks = group(load_runs(results_dir))
    ctx = _Context(results_dir, out, baseline, tasks, group(load_sweeps(results_dir)),
                   compare_to_baseline(tasks, baseline))
    lines: list[str] = []
    for section in (_header, _headline, _claims, _per_task, _forest, _int8, _ablation,
                    _profile, _sweep_maps, _memory, _speed):
        lines += section(ctx)
    path = out / "report.md"
    _write_text(path, re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n")
    return path

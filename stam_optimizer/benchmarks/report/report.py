"""`stam-bench report`: report.md and its figures, derived from a results folder.

Nothing here runs an optimizer: every number comes from the JSON files described
in docs/benchmark_format.md. Missing pieces (some tasks or optimizers, no sweeps,
no smoke/memory/speed files) make the matching sections say "not run"; a file
that cannot be read is skipped with a warning. Paired comparisons, verdicts and the
claim, storage-parity and ablation sections live in `claims.py`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.benchmarks.programme.records import (
    load_optional,
    load_runs,
    load_sweeps,
    write_atomic,
)
from stam_optimizer.benchmarks.report import gpt_report, plots, signal_report, summary
from stam_optimizer.benchmarks.report.claims import (
    ablation_section,
    claims_section,
    storage_section,
)
from stam_optimizer.benchmarks.report.markdown import (
    interval_text,
    number,
    table,
)
from stam_optimizer.benchmarks.report.stats import (
    ALPHA,
    POWER,
    VERDICTS,
    Judged,
    Tasks,
    compare_to_baseline,
    families,
    final_values,
    floats,
    mean_ci,
    performance_profile,
    ranked,
    steps_to_target,
    task_info,
    verdict_counts,
    win_threshold,
)

PROFILE_TAU_MAX = 4.0
PROFILE_MIN_TASKS = 3  # below this a performance profile is a step or two, not a curve


def group(items: list[dict]) -> Tasks:
    """task -> optimizer -> file, in the order the files were read."""
    out: Tasks = {}
    for d in items:
        out.setdefault(d["task"], {})[d["optimizer"]] = d
    return out


# --- numbers from runs -----------------------------------------------------------------

def run_steps_to_target(run: dict) -> list[int | None]:
    """Steps to the task target per final seed (stored, else computed from curves)."""
    final = run["final"]
    if "steps_to_target" in final:
        return [None if s is None else int(s) for s in final["steps_to_target"]]
    info = run["task_info"]
    curves = final.get("curves", {}).get(info.get("metric", "val_loss"), [])
    return [steps_to_target(final.get("eval_steps", []), c, info.get("target")) for c in curves]


def _median_cost(run: dict) -> float | None:
    steps = floats([math.inf if s is None else s for s in run_steps_to_target(run)])
    median = float(np.median(steps)) if steps.size else math.inf
    return median if math.isfinite(median) else None


# --- markdown helpers ------------------------------------------------------------------

def _label(name: str) -> str:
    """The registry label of `name`; the name itself for one the registry lacks."""
    found = registry.ENTRIES.get(name)
    return found.label if found is not None else name


def _pretty(name: str) -> str:
    label = _label(name)
    return f"{label} (`{name}`)" if label != name else f"`{name}`"


def _headline_names() -> list[str]:
    """The STAM-family optimizers the headline names: float32, at every quick size."""
    return [n for n, e in registry.ENTRIES.items()
            if e.family == "stam" and e.storage == "float32" and e.quick is True]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _image(path: Path | None, caption: str) -> list[str]:
    return [f"![{caption}]({path.name})", ""] if path else []


@dataclasses.dataclass
class _Context:
    results_dir: Path
    out_dir: Path
    baseline: str
    tasks: Tasks
    sweeps: Tasks
    judged: dict[tuple[str, str], Judged]
    signal: dict | None = None
    raw: bool = True  # read from the raw run files, not from summary.json

    def figure(self, name: str, raw: bool, draw, *args) -> Path | None:
        """`draw(*args, path)` for a figure drawn from per-step series when every
        record of it holds them (`raw`); otherwise the PNG already in the output
        folder, or in the results folder (copied over), if there is one."""
        path = self.out_dir / name
        if raw:
            return draw(*args, path)
        return plots.kept(path, self.results_dir / name)


# --- sections --------------------------------------------------------------------------

def _relative(path: Path, start: Path) -> str:
    """`path` relative to `start` (the report's folder), never an absolute path."""
    try:
        rel = os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive on Windows
        return Path(path).name
    return Path(rel).as_posix()


def parity_parent(run: dict) -> str | None:
    """The float parent at whose chosen learning rate `run` ran untuned (a storage
    variant on a long-run task, `scheduler.parity_parent`), or None."""
    tuning = run.get("tuning") or {}
    return tuning.get("parent") if "at_parent_lr" in tuning else None


def _header(ctx: _Context) -> list[str]:
    runs = [r for runs in ctx.tasks.values() for r in runs.values()]
    sizes = sorted({str(r.get("size", "?")) for r in runs}) or ["n/a"]
    envs = sorted({(str(e.get("jax")), str(e.get("optax")), str(e.get("cpu")),
                    str(e.get("threads"))) for r in runs if (e := r.get("environment"))})
    env_text = "; ".join(f"jax {j}, optax {o}, CPU {c}, {t} threads" for j, o, c, t in envs)
    optimizers = sorted({r["optimizer"] for r in runs})
    seeds = sorted({tuple(r["final"]["seeds"]) for r in runs})
    tune = sorted({tuple((r.get("tuning") or {}).get("seeds", ())) for r in runs
                   if parity_parent(r) is None})
    date = _date()
    rel = _relative(ctx.results_dir, ctx.out_dir)
    source = ("the run files in this report's folder" if rel == "." else
              f"the run files in `{rel}` (relative to this report)")
    lines = [
        "# stam-bench report", "",
        f"Generated {date} from {source}. Size: {', '.join(sizes)}.",
        f"Environment: {env_text or 'not recorded'}"
        + (" (runs come from more than one environment)" if len(envs) > 1 else "") + ".",
        f"{len(ctx.tasks)} tasks, {len(optimizers)} optimizers "
        f"({', '.join(f'`{o}`' for o in optimizers) or 'none'}); final seeds "
        f"{' / '.join(str(list(s)) for s in seeds) or 'none'}; tuning seeds "
        f"{' / '.join(str(list(s)) for s in tune) or 'none'}.", "",
        "**Protocol.** Per task, the learning rate of every optimizer is tuned on the same "
        "log grid with the tuning seeds and the validation metric; then every optimizer runs "
        "the same fresh final seeds, so comparisons are paired by seed. Intervals are "
        "Student-t CIs; p-values are paired t-tests, Holm-corrected within each family of "
        f"comparisons vs `{ctx.baseline}` (below); each task has a minimum effect size "
        "below which a difference does not count.", "",
        "Lower metric is better everywhere. Differences are candidate − baseline, so a "
        "negative difference means the candidate did better. Each difference has two "
        "intervals: the plain 95% CI, and the **Holm CI**, at the confidence at which "
        "Holm's step-down procedure tested that comparison (1 − α/k for its step k), which "
        f"excludes 0 exactly when the Holm p is below {ALPHA}. A **win** needs Holm p < "
        f"{ALPHA} (the Holm CI excludes 0) and a mean improvement of at least the task's "
        "min_effect; a **loss** the same in the other direction; a **tie** needs the whole "
        "95% CI inside ±min_effect; anything else is **inconclusive**. **MDE** is the "
        f"smallest difference the paired t-test would detect with {POWER:.0%} power at its "
        "family's strictest level α/m, given the number of seeds and the observed spread of "
        "the per-seed differences.", ""]
    if any(parity_parent(r) is not None for r in runs):
        lines += ["Storage variants on the long-run tasks (their final seeds at one learning "
                  "rate) are not tuned: they run at the learning rate their float parent chose, "
                  "marked with the parent's name in the tables, as a user who switches by "
                  "changing one line would.", ""]
    fams = families(ctx.tasks, ctx.baseline)
    if fams:
        lines += ["**Correction families** (Holm runs over each separately):", ""]
        for name, members in fams.items():
            m = ctx.judged[members[0]].family_size
            opts = sorted({o for _, o in members})
            lines.append(f"* {name}: {len(members)} comparisons ({m} with a p-value; "
                         f"{len({t for t, _ in members})} tasks × "
                         f"{', '.join(f'`{o}`' for o in opts)}).")
        lines.append("")
    if not runs:
        lines += ["No run files were found under `runs/`: nothing to compare.", ""]
    return lines


def _headline(ctx: _Context) -> list[str]:
    lines = [f"## Headline: every optimizer vs {_pretty(ctx.baseline)}", ""]
    counts = verdict_counts(ctx.judged)
    if not counts:
        return lines + [f"Not run: no task has both `{ctx.baseline}` and another optimizer.", ""]
    for name in _headline_names():
        c = counts.get(name)
        if c is None:
            lines.append(f"{_pretty(name)} was not compared (no runs on a task with the baseline).")
            continue
        lines.append(f"{_label(name)} beat {_label(ctx.baseline)} on "
                     f"{c['win']} of {sum(c.values())} tasks, tied on {c['tie']}, lost on "
                     f"{c['loss']} (inconclusive on {c['inconclusive']}).")
    order = sorted(counts, key=lambda o: (-counts[o]["win"], counts[o]["loss"], o))
    rows = [[f"`{o}`", *(str(counts[o][v]) for v in VERDICTS), str(sum(counts[o].values()))]
            for o in order]
    return [*lines, "", *_power_note(ctx), *table(["optimizer", *VERDICTS, "tasks"], rows)]


def _power_note(ctx: _Context) -> list[str]:
    """Whether the primary family had the power to find a win of min_effect size."""
    primary = {k: j for k, j in ctx.judged.items() if j.family.startswith("primary")}
    rated = {k: j for k, j in primary.items() if math.isfinite(j.mde)}
    if not rated:
        return []
    ns = sorted({j.diff.n for j in rated.values()})
    m = next(iter(rated.values())).family_size
    below = [k for k, j in rated.items()
             if j.mde > float(task_info(ctx.tasks[k[0]])["min_effect"])]
    ratio = float(np.median([j.mde / float(task_info(ctx.tasks[k[0]])["min_effect"])
                             for k, j in rated.items()]))
    seeds = "/".join(map(str, ns))
    t = " / ".join(f"{win_threshold(n, ALPHA / m):.1f}" for n in ns)
    text = (f"With {seeds} final seeds and {m} comparisons in the primary family, a "
            f"difference is significant only beyond {t} standard errors of the mean, and "
            f"the smallest effect detectable with {POWER:.0%} power (MDE) exceeds the task's "
            f"min_effect on {len(below)} of {len(rated)} STAM-family comparisons (median "
            f"MDE = {ratio:.2g} × min_effect).")
    if len(below) == len(rated):
        text = ("**This run cannot be expected to produce a win for the STAM family:** "
                + text + " More final seeds (e.g. `stam-bench full`) are needed to detect "
                "effects of min_effect size.")
    return [text, ""]


def _task_rows(ctx: _Context, task: str, runs: dict[str, dict]) -> list[list[str]]:
    rows = []
    for opt in ranked(runs):
        run, j = runs[opt], ctx.judged.get((task, opt))
        tuning = run.get("tuning") or {}
        lr = tuning.get("best_lr", run["final"].get("lr"))
        lrs = tuning.get("lrs") or []
        parent = parity_parent(run)
        note = (f" ({parent}'s)" if parent else
                " (grid edge)" if lrs and lr in (min(lrs), max(lrs)) else "")
        note += " (grid extended)" if tuning.get("extended") else ""
        steps = run_steps_to_target(run)
        reached = [s for s in steps if s is not None]
        median = _median_cost(run)
        diverged = run.get("diverged") or []
        rows.append([
            f"`{opt}`", number(lr, 3) + note, interval_text(*mean_ci(final_values(run))),
            "baseline" if opt == ctx.baseline else
            ("n/a" if j is None else interval_text(*j.diff[:3])),
            "" if j is None else f"[{number(j.adj_lo)}, {number(j.adj_hi)}] at {_level(j.level)}",
            "" if j is None else number(j.p_holm, 3), "" if j is None else f"**{j.verdict}**",
            "" if j is None else number(j.mde, 3),
            f"{number(median) if median is not None else 'never' if not reached else 'not reached'}"
            f" ({len(reached)}/{len(steps)} seeds reached)",
            f"{sum(map(bool, diverged))}/{len(diverged)}"])
    return rows


def _level(level: float) -> str:
    """A confidence 1 − level as a percentage with enough digits to tell levels apart."""
    if not math.isfinite(level):
        return "n/a"
    digits = max(0, math.ceil(-math.log10(level)) - 1)
    return f"{100 * (1 - level):.{digits}f}%"


def curve_names(run: dict) -> list[str]:
    """The curves a run recorded: those of its raw file, or the names its summary
    entry keeps (`final.curve_names`)."""
    final = run["final"]
    return list(final.get("curves") or final.get("curve_names") or [])


def curve_for(metric: str, runs: dict[str, dict]) -> str | None:
    """The recorded curve to draw for `metric`: itself when the runs hold its curve,
    else the curve the metric is derived from (`post_shift_val_loss` → `val_loss`:
    the longest curve name the metric ends with), else None."""
    names = {c for r in runs.values() for c in curve_names(r)}
    if metric in names:
        return metric
    derived = [c for c in names if metric.endswith("_" + c)]
    return max(derived, key=len) if derived else None


def start_value(curve: str | None, runs: dict[str, dict]) -> float | None:
    """The mean of `curve` at step 0 over every run and seed (ℓ₀), if recorded; for
    runs read from summary.json, the value it stored for the task."""
    if not curve:
        return None
    stored = [r["final"]["curve_start"] for r in runs.values()
              if "curves" not in r["final"] and r["final"].get("curve_start") is not None]
    if stored:
        return float(stored[0])
    values = []
    for r in runs.values():
        final = r["final"]
        data = (final.get("curves") or {}).get(curve)
        if data and final.get("eval_steps", [None])[0] == 0:
            values += [row[0] for row in data if row and row[0] is not None]
    finite = floats(values)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else None


def _mde_line(ctx: _Context, task: str, min_effect: float) -> list[str]:
    rated = [(o, j) for (t, o), j in ctx.judged.items()
             if t == task and o in registry.ENTRIES and registry.ENTRIES[o].quick
             and o != ctx.baseline and math.isfinite(j.mde)]
    if not rated:
        return []
    n = "/".join(sorted({str(j.diff.n) for _, j in rated}))
    return [f"Smallest effect this run could detect here ({POWER:.0%} power, {n} seeds, "
            "observed sd of the paired differences, level α/m of its family): "
            + ", ".join(f"{_pretty(o)} {number(j.mde, 3)}" for o, j in rated)
            + f"; min_effect {number(min_effect)}.", ""]


def _per_task(ctx: _Context) -> list[str]:
    lines = ["## Per-task results", "",
             "Rows are sorted by mean final metric, best first. `diff` is optimizer − "
             f"`{ctx.baseline}` on the shared seeds. A mean is n/a when a final seed "
             "diverged (last column); such an optimizer ranks last.", ""]
    for task, runs in ctx.tasks.items():
        info = task_info(runs)
        metric = info.get("metric", "val_loss")
        lines += [f"### {task}", "", f"{info.get('description', '')}", "",
                  f"Metric `{metric}` (lower is better), min_effect {number(info['min_effect'])}, "
                  f"target {number(info.get('target'))}, {info.get('steps', '?')} steps, "
                  f"shifts at {info.get('shift_steps') or 'none'}."
                  + ("" if ctx.baseline in runs else f" `{ctx.baseline}` was not run here."), ""]
        lines += table(["optimizer", "best lr", f"final {metric} [95% CI]",
                         f"diff vs {ctx.baseline} [95% CI]", "diff: Holm CI", "Holm p",
                         "verdict", "MDE", "steps to target (median)", "diverged seeds"],
                        _task_rows(ctx, task, runs))
        lines += _mde_line(ctx, task, float(info["min_effect"]))
        name = _safe(task)
        curve = curve_for(metric, runs)
        raw = not any("curve_names" in r["final"] for r in runs.values())  # all from runs/
        image = ctx.figure(f"curves_{name}.png", raw, plots.curves, task, curve, runs,
                           info.get("shift_steps") or []) if curve else None
        if image is None and curve and not ctx.raw:
            lines += ["Curves: drawn from the raw run files (`runs/`), which are not here; "
                      "`stam-bench run` writes them.", ""]
        elif image is None:
            lines += [f"Curves: none recorded for `{metric}`.", ""]
        else:
            derived = ("" if curve == metric else
                       f" The metric `{metric}` is derived from the `{curve}` curve "
                       "(its mean over the evaluations after the first shift).")
            lines += [f"Curves of `{curve}`: mean over the final seeds with a 95% CI band "
                      "(values of diverged seeds left out), dashed lines at distribution "
                      f"shifts.{derived}", "", *_image(image, f"{task} curves")]
        lines += _image(plots.lr_sensitivity(task, runs, ctx.out_dir / f"lr_{name}.png",
                                             start=start_value(curve, runs)),
                        f"{task} LR sensitivity")
        if any(r.get("beta1", {}).get("layers") or r.get("beta1_layers")
               for r in runs.values()):
            raw = not any(r.get("beta1_layers") for r in runs.values())
            lines += _image(ctx.figure(f"beta1_{name}.png", raw, plots.beta1, task, runs),
                            f"{task} beta1 trajectories")
    return lines


def _forest(ctx: _Context) -> list[str]:
    lines = [f"## Paired differences vs {ctx.baseline} (forest plot)", ""]
    rows = []
    for (task, opt), j in ctx.judged.items():
        me = float(task_info(ctx.tasks[task])["min_effect"]) or math.nan
        rows.append((f"{task} · {opt}", j.diff.mean / me, j.diff.lo / me, j.diff.hi / me,
                     j.verdict, j.adj_lo / me, j.adj_hi / me))
    path = plots.forest(rows, ctx.out_dir / "forest.png", ctx.baseline)
    if path is None:
        return lines + ["Not run: no finite paired difference to show.", ""]
    return lines + ["Each difference is divided by its task's min_effect so that all tasks "
                    "share one axis; the band is ±1 min_effect. Thick bars: 95% CI; thin "
                    "bars: Holm CI (excludes 0 exactly when the comparison is significant "
                    "after Holm). Colour: verdict (legend). The STAM family comes first, "
                    "then the peers.", "", *_image(path, "forest")]


def _gpt(ctx: _Context) -> list[str]:
    return gpt_report.section(ctx.tasks, ctx.out_dir, ctx.baseline)


def _claims(ctx: _Context) -> list[str]:
    return claims_section(ctx.tasks, ctx.sweeps)


def _storage(ctx: _Context) -> list[str]:
    return storage_section(ctx.tasks)


def _ablation(ctx: _Context) -> list[str]:
    return ablation_section(ctx.tasks, ctx.baseline)


# --- profile -----------------------------------------------------------------------------

def _profile(ctx: _Context) -> list[str]:
    lines = ["## Performance profile (steps to target)", ""]
    # the optimizers that ran on the most tasks (suites with their own optimizer set,
    # like gpt, would otherwise leave no task that has every optimizer)
    cover: dict[str, int] = {}
    for runs in ctx.tasks.values():
        for o in runs:
            cover[o] = cover.get(o, 0) + 1
    top = max(cover.values(), default=0)
    opts = sorted(o for o, n in cover.items() if n == top)
    others = sorted(o for o in cover if o not in opts)
    common = [t for t, runs in ctx.tasks.items() if all(o in runs for o in opts)]
    if not common:
        return lines + ["Not run: no task has every optimizer.", ""]
    if len(common) < PROFILE_MIN_TASKS:
        return lines + [f"Not shown: a performance profile needs at least {PROFILE_MIN_TASKS} "
                        f"tasks that every optimizer ran; this run has {len(common)} "
                        f"({', '.join(common)}).", ""]
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
                 else "")
              + (f" Optimizers that ran on fewer tasks are not in the profile: "
                 f"{', '.join(f'`{o}`' for o in others)}." if others else ""), ""]
    rows = [[f"`{o}`", number(at[o][0], 3), number(at[o][1], 3), number(float(np.mean(prof[o])), 3)]
            for o in sorted(opts, key=lambda o: -np.nan_to_num(np.mean(prof[o]), nan=-1))]
    lines += table(["optimizer", "fraction at τ=1", "fraction at τ=2",
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
        data = load_optional(ctx.results_dir / fname)
        rows = list(_memory_rows(data)) if data else []
        if not rows:
            lines += [f"`{fname}`: not run.", ""]
            continue
        extra = sorted({k for r in rows for k, v in r.items() if k not in (
            "optimizer", "bytes_per_param") and isinstance(v, (str, int, float, bool))})
        cells = [[f"`{r['optimizer']}`", number(r["bytes_per_param"]),
                  *(str(r.get(k, "")) for k in extra)] for r in rows]
        lines += [f"From `{fname}`:", "", *table(["optimizer", "bytes/param", *extra], cells)]
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
    data = load_optional(ctx.results_dir / "speed.json")
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
            rows.append([tree, f"`{opt}`", number(ratio, 3),
                         number(None if median is None else median * 1e3, 3)])
    labels = list(dict.fromkeys(o for s in series.values() for o in s))
    path = plots.bars(labels, {t: [s.get(o, math.nan) for o in labels] for t, s in series.items()},
                      "median time ratio to adamw (lower is faster)",
                      "Update time relative to AdamW, per parameter tree",
                      ctx.out_dir / "speed.png", reference=1.0)
    return lines + [*table(["tree", "optimizer", "ratio to adamw", "median ms"], rows),
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


def _signal(ctx: _Context) -> list[str]:
    return signal_report.signal_section(ctx.results_dir, ctx.out_dir, ctx.signal)


def _comparisons(ctx: _Context) -> list[dict]:
    """Every judged comparison with the baseline (the report's families and the gpt
    suite's), for summary.json."""
    out = [summary.comparison(j.family, t, o, ctx.baseline, j)
           for (t, o), j in ctx.judged.items()]
    best, sens = gpt_report.judge_suite(gpt_report.suite_tasks(ctx.tasks), ctx.baseline)
    for judged in (best, sens):
        out += [summary.comparison(j.family, t, o, ctx.baseline, j)
                for (t, o), j in judged.items()]
    return out


def _merge(raw: list[dict], kept: list[dict]) -> list[dict]:
    """The raw records, and those of summary.json whose (task, optimizer) has none,
    in the order of the files under runs/ (task, then optimizer)."""
    have = {(r["task"], r["optimizer"]) for r in raw}
    out = raw + [r for r in kept if (r["task"], r["optimizer"]) not in have]
    return sorted(out, key=lambda r: Path(r["task"], f"{r['optimizer']}.json"))  # as on disk


def _load(results_dir: Path) -> tuple[list[dict], list[dict], dict | None, bool]:
    """(runs, sweeps, signal, raw). summary.json stands for the raw records that
    are not on disk: a (task, optimizer) with a raw file under runs/ or sweeps/ is
    read from it, every other one from the summary, and signal.json, if there is
    one, replaces the summary's signal. `raw`: some run was read from runs/."""
    runs, sweeps = load_runs(results_dir), load_sweeps(results_dir)
    signal = load_optional(results_dir / "signal.json")
    raw = bool(runs)
    data = summary.load(results_dir)
    if data is not None:
        runs = _merge(runs, summary.runs_from(data))
        sweeps = _merge(sweeps, summary.sweeps_from(data))
        signal = signal or summary.signal_from(data)
    return runs, sweeps, signal, raw


def _date() -> str:
    """Now, or the time in SOURCE_DATE_EPOCH (reproducible builds) if it is set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _chinchilla(ctx: _Context) -> list[str]:
    """The one-Chinchilla regime: its primary family (`chinchilla_report`)."""
    from stam_optimizer.benchmarks.report import chinchilla_report

    return chinchilla_report.section(ctx.tasks, ctx.out_dir)


def build_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 baseline: str = "adamw") -> Path:
    """Writes report.md, its PNG figures and summary.json for `results_dir`; returns
    the report path. Reads the raw records (runs/, sweeps/, signal.json) where there
    are any, else summary.json."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir
    out.mkdir(parents=True, exist_ok=True)
    runs, sweeps, signal, raw = _load(results_dir)
    tasks = group(runs)
    ctx = _Context(results_dir, out, baseline, tasks, group(sweeps),
                   compare_to_baseline(tasks, baseline), signal, raw)
    lines: list[str] = []
    for section in (_header, _headline, _claims, _per_task, _forest, _storage, _ablation,
                    _signal, _gpt, _chinchilla, _profile, _sweep_maps, _memory, _speed):
        lines += section(ctx)
    summary.write(out / summary.FILE, summary.build(ctx.tasks, ctx.sweeps, ctx.signal,
                                                    baseline, _comparisons(ctx)))
    path = out / "report.md"
    write_atomic(path, (re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n").encode())
    return path

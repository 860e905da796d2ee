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

`section(tasks, out_dir)` writes the report's part: first, per width, the answers
(does STAM beat AdamW, and is it more than the β₁ level; does each low-bit member
tie with its float parent; the relative β₁ signal), then the primary and secondary
tables, learning-rate sensitivity and loss spikes (`sensitivity_rows`, beside the
short-horizon gpt tasks when the same report holds them) and a figure of final
loss against optimizer state bytes per parameter, one point per optimizer.

The β₁-tuned AdamW (`chinchilla.TUNED_BETA1`) is, per task, the run among `adamw`
(β₁ 0.9) and the registry's β₁ grid whose tuning seeds did best (mean over the
tuning seeds at the learning rate each run chose): the choice never looks at the
final seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.stats as sps

from stam_optimizer.benchmarks.report import gpt_report, plots
from stam_optimizer.benchmarks.report.markdown import table
from stam_optimizer.benchmarks.report.stats import (
    ALPHA,
    POWER,
    Judged,
    PairedDiff,
    Tasks,
    floats,
    judge,
    mean_ci,
    min_detectable_effect,
    paired_runs,
)
from stam_optimizer.benchmarks.tasks import chinchilla, source_corpus

DECISIVE = ("win", "tie", "loss")
DECISIVE_TARGET = 0.8
MAX_SEEDS = 4096  # beyond this, `seeds_needed` says None
# The loss of predicting every character of the vocabulary equally: the cap of the
# LR sensitivity on the tuning seeds, where a diverged run counts as this.
UNIFORM_LOSS = math.log(len(source_corpus.source_vocabulary()))
# The learning rates every optimizer's sensitivity is read over: the regime's grid.
SENSITIVITY_LRS = chinchilla.GRID["full"]


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
         min_effect: float) -> dict:
    # the family is the key the row sits under, the minimum effect the task's
    row = {"task": task, "candidate": candidate, "baseline": baseline,
           "baseline_run": base_run}
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
    return [_row(t, c, b, where[(t, c, b)], judged.get((t, c, b)), _min_effect(tasks[t]))
            for t, c, b in pairs]


def _min_effect(runs: Mapping[str, dict]) -> float:
    return float(next(iter(runs.values()))["task_info"]["min_effect"])


def _task_entry(runs: Mapping[str, dict]) -> dict:
    measured = next((r["measured"] for r in runs.values() if r.get("measured")), {})
    keys = ("params", "params_total", "params_counted", "tokens_per_param", "tokens_per_run",
            "steps", "batch", "seq", "d", "layers", "windows_per_run", "train_windows")
    return {k: measured.get(k) for k in keys} | {
        "min_effect": _min_effect(runs), "optimizers": sorted(runs),
        "adamw_tuned_b1": tuned_beta1(runs),
        "lr_sensitivity": {o: v for o, v in ((o, _num(tuning_sensitivity(r)))
                                             for o, r in sorted(runs.items())) if v is not None}}


def summary(tasks: Tasks, family: tuple[tuple[str, str], ...] | None = None) -> dict:
    """The regime's results as one JSON-able dict (see the module docstring).

    `tasks` maps task -> optimizer -> run record; only the regime's tasks are read.
    `family` defaults to `chinchilla.primary_family()`. Keys: "regime" (tokens per
    parameter, how parameters are counted, the family, alpha, power, target),
    "tasks" (per task: params, tokens, shape, the chosen β₁), "primary" and
    "secondary" (one row per comparison: task, candidate, baseline, baseline_run,
    diff, ci, p, holm_p, verdict, n, sd, seeds_needed; the minimum effect is the
    task's), "decisive"
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


# --- learning-rate sensitivity, loss spikes, loss against memory -------------------------

def tuning_sensitivity(run: dict, lrs: Sequence[float] = SENSITIVITY_LRS) -> float:
    """LR sensitivity (`gpt_report.lr_sensitivity`, Wortsman et al. 2023) of a regime
    run over `lrs`, from its tuning seeds (its final seeds ran at one learning rate
    only): per tuning seed the mean over `lrs` of `min(ℓ(η), ℓ₀) − ℓ*`, with ℓ₀ =
    `UNIFORM_LOSS` (a diverged run counts as that), then the mean over the seeds.
    nan when the run was not tuned on every one of `lrs` (a storage variant runs at
    its parent's learning rate only)."""
    tuning = run.get("tuning") or {}
    grid = list(tuning.get("lrs") or [])
    seeds = tuning.get("seeds") or []
    if not seeds or any(lr not in grid for lr in lrs):
        return math.nan
    m = floats(np.ravel(np.asarray(tuning["metric"], dtype=object))).reshape(len(grid), -1)
    m = m[[grid.index(lr) for lr in lrs]]
    return float(np.mean([gpt_report.lr_sensitivity(m[:, j], UNIFORM_LOSS)
                          for j in range(m.shape[1])]))


def _short_horizon_sensitivity(run: dict, lrs: Sequence[float]) -> float:
    """A short-horizon gpt run's LR sensitivity over `lrs`, mean over its final seeds
    (its sweep ran every final seed at every learning rate)."""
    if any(lr not in run["lr_sensitivity"].get("lrs", run["tuning"]["lrs"]) for lr in lrs):
        return math.nan
    values = gpt_report.seed_sensitivities(run, lrs)
    return float(np.mean(values)) if values.size else math.nan


def sensitivity_rows(tasks: Tasks, lrs: Sequence[float] = SENSITIVITY_LRS) -> dict:
    """{task: {optimizer: {"lr_sensitivity", "spikes", "spiked_runs", "diverged",
    "runs", "horizon"}}} for the regime's tasks ("one Chinchilla": sensitivity on the
    tuning seeds, spikes in the final runs at the chosen lr) and the short-horizon
    gpt tasks in `tasks` ("short": both over the final seeds' sweep), on the same
    learning rates `lrs`."""
    regime = regime_runs(tasks)
    out: dict[str, dict] = {}
    for t, runs in sorted(tasks.items()):
        short = t not in regime and runs and all(r.get("suite") == gpt_report.SUITE
                                                 for r in runs.values())
        if t not in regime and not short:
            continue
        rows = {}
        for o, r in sorted(runs.items()):
            if not r.get("lr_sensitivity"):
                continue
            sens = _short_horizon_sensitivity(r, lrs) if short else tuning_sensitivity(r, lrs)
            spikes, spiked, diverged = gpt_report.spike_counts(r)
            if "train_loss" in r["lr_sensitivity"]:  # the curves say which runs trained
                trained = sum(gpt_report.ran(c) for row in r["lr_sensitivity"]["train_loss"]
                              for c in row)
            elif short:  # from a summary: the whole sweep ran
                trained = gpt_report.runs_in_sweep(r)
            else:  # from a summary: the final seeds at the chosen lr
                trained = len(r["final"]["metric"])
            rows[o] = {"lr_sensitivity": _num(sens), "spikes": spikes, "spiked_runs": spiked,
                       "diverged": diverged, "runs": trained,
                       "horizon": "short" if short else "one Chinchilla"}
        out[t] = rows
    return out


def loss_memory_figure(tasks: Tasks, path: str | Path) -> Path | None:
    """Mean final loss against optimizer state bytes per parameter (all parameters),
    one point per optimizer, one panel per regime task; None without data."""
    regime = regime_runs(tasks)
    panels = []
    for t, runs in sorted(regime.items()):
        pts = []
        for o, r in sorted(runs.items()):
            m = r.get("measured") or {}
            total = m.get("params_total") or m.get("params")
            mean = mean_ci(floats(r["final"]["metric"]))[0]
            if m.get("state_bytes") is not None and total and math.isfinite(mean):
                pts.append((o, m["state_bytes"] / total, mean))
        if pts:
            panels.append((t, pts))
    if not panels:
        return None
    fig = plots._figure(4.2 * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (t, pts) in zip(axes, panels, strict=True):
        for o, x, y in pts:
            ax.plot(x, y, "o", color="C3" if o == chinchilla.BASELINE else "C0")
            ax.annotate(o, (x, y), fontsize="xx-small", xytext=(3, 2),
                        textcoords="offset points")
        ax.set(title=t, xlabel="optimizer state, bytes per parameter")
        ax.set_xlim(left=0)
    axes[0].set_ylabel("final held-out loss, mean of the final seeds (nats/char)")
    return plots.save(fig, path)


# --- the answers, per width --------------------------------------------------------------

def _verdict_text(row: dict | None) -> str:
    if row is None:
        return "not run"
    lo, hi = row["ci"]
    return f"{row['verdict']} ({_fmt(row['diff'])} [{_fmt(lo)}, {_fmt(hi)}])"


def answers(found: dict) -> list[str]:
    """Per task of `summary(...)`: the regime's questions answered from its primary
    rows, one paragraph each."""
    rows = {(r["task"], r["candidate"], r["baseline"]): r for r in found["primary"]}
    lines = []
    for t, e in found["tasks"].items():
        def row(c, b, t=t):
            return rows.get((t, c, b))

        vs_adamw = row("stam_full", chinchilla.BASELINE)
        vs_const = row("stam_full", "stam_const_mean")
        vs_tuned = row("stam_full", chinchilla.TUNED_BETA1)
        tuned = (e.get("adamw_tuned_b1") or {}).get("beta1")
        won = vs_adamw is not None and vs_adamw["verdict"] == "win"
        controls = [r["verdict"] for r in (vs_const, vs_tuned) if r is not None]
        if not won:
            level = "STAM does not beat AdamW here."
        elif "loss" in controls:
            level = "The β₁ level alone does better: AdamW with a fixed lower β₁ beats STAM."
        elif "win" in controls:
            level = "More than the β₁ level: STAM also beats a fixed lower β₁."
        elif controls:
            level = ("Still the β₁ level: against a fixed β₁ at its own mean and the "
                     "β₁-tuned AdamW it does not win.")
        else:
            level = "Its β₁ controls have not run."
        text = (f"**{t}** (d {e['d']}, {e['params']} parameters, batch {e['batch']}): STAM "
                f"vs AdamW: {_verdict_text(vs_adamw)}; vs AdamW at STAM's own mean β₁: "
                f"{_verdict_text(vs_const)}; vs the β₁-tuned AdamW (β₁ {_fmt(tuned)}): "
                f"{_verdict_text(vs_tuned)}. {level}")
        low_bit = [(c, b) for c, b in chinchilla.low_bit_pairs() if row(c, b) is not None]
        if low_bit:
            ties = sum(row(c, b)["verdict"] == "tie" for c, b in low_bit)
            text += (f" Low-bit state against its float parent ({ties} of {len(low_bit)} "
                     "tie): " + "; ".join(f"`{c}` {_verdict_text(row(c, b))}"
                                          for c, b in low_bit) + ".")
        for c in chinchilla.SIGNAL_CANDIDATES:
            if row(c, chinchilla.BASELINE) is not None:
                text += (f" `{c}` vs AdamW: {_verdict_text(row(c, chinchilla.BASELINE))}.")
        lines += [text, ""]
    return lines


def section(tasks: Tasks, out_dir: str | Path | None = None) -> list[str]:
    """The report's markdown for the regime (empty when it was not run); with
    `out_dir`, the loss-against-memory figure is written there."""
    found = summary(tasks)
    if not found["tasks"]:
        return []
    d = found["decisive"]
    lines = ["## One Chinchilla: 20 tokens per parameter", "",
             "Lower is better; differences are candidate − baseline in nats per character "
             "with their 95% interval; verdicts against the minimum effect "
             f"{_fmt(next(iter(found['tasks'].values()))['min_effect'])}, Holm within the "
             "primary family (below).", "", *answers(found),
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
    lines += _sensitivity_lines(sensitivity_rows(tasks))
    if out_dir is not None:
        path = loss_memory_figure(tasks, Path(out_dir) / "loss_memory.png")
        if path is not None:
            lines += ["Final loss against optimizer state (bytes per parameter, all "
                      "parameters; AdamW in red):", "", f"![loss against memory]({path.name})",
                      ""]
    return lines


def _sensitivity_lines(rows: dict) -> list[str]:
    if not rows:
        return []
    tasks = list(rows)
    names = sorted({o for r in rows.values() for o in r})

    def cell(t: str, o: str) -> str:
        r = rows[t].get(o)
        if r is None:
            return ""
        sens = "—" if r["lr_sensitivity"] is None else f"{r['lr_sensitivity']:.3f}"
        return f"{sens} · {r['spiked_runs']}/{r['runs']}" + (
            f" ({r['diverged']} diverged)" if r["diverged"] else "")

    lrs = ", ".join(f"{lr:g}" for lr in SENSITIVITY_LRS)
    return [f"**Learning-rate sensitivity and loss spikes** on the learning rates {lrs}: "
            "LR sensitivity (Wortsman et al. 2023: mean over the learning rates of the "
            "final loss above the best one, a diverged run counted as the loss of a "
            "uniform prediction) · runs with a loss spike / runs (a training-loss mean "
            "10% above its lowest earlier value). One Chinchilla: sensitivity on the 3 "
            "tuning seeds, spikes in the final runs at the chosen learning rate; short "
            "horizon (when this report has the gpt tasks): both over the final seeds' "
            "sweep. Storage variants ran at one learning rate (—).", "",
            *table(["optimizer", *(f"{t} ({next(iter(rows[t].values()))['horizon']})"
                                   if rows[t] else t for t in tasks)],
                   [[f"`{o}`", *(cell(t, o) for t in tasks)] for o in names]), ""]

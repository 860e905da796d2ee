"""The report section of the gpt suite: learning-rate sensitivity against width,
loss against learning rate, loss spikes, best loss, verdicts, and quality against
memory. Everything comes from the run files (suite "gpt").

LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale
Transformer training instabilities", arXiv 2309.14322, figure 1): for one seed,
the mean over the learning rates of the sweep of `min(ℓ(η), ℓ₀) − ℓ*`, where
ℓ(η) is the final validation loss at peak learning rate η, ℓ₀ the validation
loss at initialisation and ℓ* the best final loss of the sweep; a diverged run
counts as ℓ₀. It is computed per final seed, so that two optimizers can be
compared paired by seed.

Loss spikes (`count_spikes`): in the curve of training-loss means (one per
evaluation interval), a point is raised when it exceeds (1 + `SPIKE_RISE`) × the
lowest earlier point; each maximal stretch of raised points is one spike. A
non-finite point ends the curve: that run diverged and is counted as such, not
as a spike.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.benchmarks.report import plots
from stam_optimizer.benchmarks.report.markdown import (
    interval_text,
    number,
    table,
)
from stam_optimizer.benchmarks.report.stats import (
    Judged,
    Tasks,
    floats,
    judge,
    mean_ci,
    paired_difference,
    paired_runs,
)

SUITE = "gpt"
SPIKE_RISE = 0.1
# Smallest difference of LR sensitivity (nats) that counts, fixed before any full run.
LRS_MIN_EFFECT = 0.05


# --- metrics ---------------------------------------------------------------------------

def lr_sensitivity(losses, start: float) -> float:
    """Mean over the sweep of `min(ℓ(η), ℓ₀) − ℓ*` (ℓ* the best finite loss, capped
    at ℓ₀); diverged entries (None, nan, inf) count as ℓ₀. nan when no entry is
    finite or ℓ₀ is not."""
    x = floats(losses)
    if x.size == 0 or not math.isfinite(start) or not np.isfinite(x).any():
        return math.nan
    capped = np.where(np.isfinite(x), np.minimum(x, start), start)
    return float(np.mean(capped - capped.min()))


def count_spikes(curve, rise: float = SPIKE_RISE) -> int:
    """Number of spikes in a training-loss curve (see the module docstring)."""
    best, raised, spikes = math.inf, False, 0
    for v in floats(curve):
        if not math.isfinite(v):
            break
        up = v > (1 + rise) * best
        spikes += up and not raised
        raised = up
        best = min(best, v)
    return int(spikes)


def ran(curve) -> bool:
    """True when a training-loss curve holds a finite value: a run that trained. A
    curve of only missing values is a run that never happened (a `final_at_best`
    task runs its final seeds at the chosen learning rate only)."""
    return bool(np.isfinite(floats(curve)).any())


def diverged(curve) -> bool:
    """True when a curve of a run that trained (`ran`) holds a non-finite value."""
    return ran(curve) and not np.isfinite(floats(curve)).all()


def seed_sensitivities(run: dict, lrs=None) -> np.ndarray:
    """LR sensitivity per final seed of a run file, over the learning rates `lrs`
    (default: all of the run's; an extension beyond the grid changes the range, so
    optimizers are compared on the lrs they share, see `common_lrs`)."""
    sens = run["lr_sensitivity"]
    m = floats(np.ravel(np.asarray(sens["final_seed_metric"], dtype=object))).reshape(
        len(sens["lrs"]), -1)
    if lrs is not None:
        m = m[[i for i, lr in enumerate(sens["lrs"]) if lr in set(lrs)]]
    starts = floats(sens["start_metric"])
    return np.array([lr_sensitivity(m[:, i], starts[i]) for i in range(m.shape[1])])


def spike_counts(run: dict) -> tuple[int, int, int]:
    """(spikes, runs with a spike, diverged runs) over every lr x final seed: from
    the training-loss curves, or from the counts a summary entry keeps
    (`lr_sensitivity.spikes` and `.diverged`, n_lr x n_final_seeds)."""
    sens = run["lr_sensitivity"]
    if "train_loss" in sens:
        curves = [c for row in sens["train_loss"] for c in row if ran(c)]
        n = [count_spikes(c) for c in curves]
        return sum(n), sum(k > 0 for k in n), sum(diverged(c) for c in curves)
    n = [int(k) for row in sens.get("spikes", []) for k in row]  # absent: none
    return sum(n), sum(k > 0 for k in n), sum(bool(d) for row in sens.get("diverged", [])
                                              for d in row)


def runs_in_sweep(run: dict) -> int:
    """The number of lr x final seed runs of a run file's learning-rate sweep."""
    sens = run["lr_sensitivity"]
    return sum(len(row) for row in sens.get("train_loss", sens["final_seed_metric"]))


def tuning_check(run: dict) -> tuple[float, float, float, float]:
    """`(tuned lr, its mean final loss, hindsight lr, its mean final loss)` of a run
    file: the lr picked on the tuning seeds against the lr of the sweep whose mean
    over the *final* seeds is lowest. The hindsight choice looks at the seeds it is
    scored on, so its loss is optimistic; a large gap says that the tuning seeds
    picked a learning rate the final seeds do not like."""
    sens = run["lr_sensitivity"]
    m = floats(np.ravel(np.asarray(sens["final_seed_metric"], dtype=object))).reshape(
        len(sens["lrs"]), -1)
    means = np.array([np.mean(row) if np.isfinite(row).all() else np.inf for row in m])
    i = int(np.argmin(means))
    tuned = float(run["final"]["lr"])
    return tuned, float(np.mean(floats(run["final"]["metric"]))), float(sens["lrs"][i]), \
        float(means[i])


def common_lrs(runs: dict[str, dict]) -> list[float]:
    """The learning rates every run of a task has (the grid without extensions)."""
    sets = [set(r["lr_sensitivity"]["lrs"]) for r in runs.values()]
    return sorted(set.intersection(*sets)) if sets else []


def _variant(run: dict) -> tuple[int, bool, bool]:
    """(width, qk-layernorm, z-loss) from the task name gpt_d<width>[_qk][_z]."""
    parts = run["task"].split("_")
    return int(parts[1][1:]), "qk" in parts, "z" in parts


# --- verdicts ----------------------------------------------------------------------------

def _families(tasks: Tasks, baseline: str):
    fams: dict[str, list[tuple[str, str]]] = {}
    for t, runs in tasks.items():
        for o in runs:
            if o != baseline and baseline in runs:
                fams.setdefault("STAM family" if registry.in_stam_family(o) else "peers",
                                []).append((t, o))
    return fams


def judge_suite(tasks: Tasks, baseline: str) -> tuple[dict, dict]:
    """Verdicts vs the baseline on (a) best loss and (b) LR sensitivity, Holm within
    the STAM family and within the peers, separately for (a) and (b)."""
    best: dict[tuple[str, str], Judged] = {}
    sens: dict[tuple[str, str], Judged] = {}
    for fam, members in _families(tasks, baseline).items():
        best |= judge({(t, o): (paired_runs(tasks[t][o], tasks[t][baseline]),
                                tasks[t][o]["task_info"]["min_effect"]) for t, o in members},
                      f"gpt best loss: {fam}")
        tests = {}
        for t, o in members:
            a, b = tasks[t][o], tasks[t][baseline]
            lrs = common_lrs(tasks[t])
            sa, sb = dict(zip(a["final"]["seeds"], seed_sensitivities(a, lrs))), dict(
                zip(b["final"]["seeds"], seed_sensitivities(b, lrs)))
            common = [s for s in sa if s in sb]
            tests[(t, o)] = (paired_difference([sa[s] for s in common],
                                               [sb[s] for s in common]), LRS_MIN_EFFECT)
        sens |= judge(tests, f"gpt LR sensitivity: {fam}")
    return best, sens


# --- figures ---------------------------------------------------------------------------

def _sensitivity_figure(tasks: Tasks, path: Path) -> Path | None:
    fig = plots._figure(11, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    opts = sorted({o for runs in tasks.values() for o in runs})
    drawn = False
    for ax, qk in zip(axes, (False, True)):
        for k, o in enumerate(opts):
            pts = sorted((_variant(r)[0], *mean_ci(seed_sensitivities(r, common_lrs(runs))))
                         for runs in tasks.values() for name, r in runs.items()
                         if name == o and _variant(r)[1:] == (qk, False))
            if not pts:
                continue
            w, m, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            shift = 1 + 0.015 * (k - (len(opts) - 1) / 2)  # side by side, not on top
            ax.errorbar(w * shift, m, yerr=[m - lo, hi - m], marker="o", capsize=3,
                        linestyle=plots.STYLES[k // 10 % len(plots.STYLES)], label=o)
            drawn = True
        ax.set_xscale("log", base=2)
        widths = sorted({_variant(r)[0] for runs in tasks.values() for r in runs.values()})
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set(xlabel="width d", title=f"qk-layernorm {'on' if qk else 'off'}")
    if not drawn:
        return None
    axes[0].set_ylabel("LR sensitivity (nats; lower is better)")
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes),
                          key=lambda hl: len(hl[0]))  # the panel with the most lines
    axes[1].legend(handles, labels, fontsize="small", loc="upper left",
                   bbox_to_anchor=(1.01, 1.0))
    return plots.save(fig, path)


def _loss_lr_figure(tasks: Tasks, path: Path) -> Path | None:
    names = sorted(tasks, key=lambda t: _variant(next(iter(tasks[t].values()))))
    if not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = plots._figure(4.5 * cols + 2, 3.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, t in zip(axes, names):
        runs = tasks[t]
        top = None
        for k, (o, r) in enumerate(sorted(runs.items())):
            sens = r["lr_sensitivity"]
            lrs = np.asarray(sens["lrs"], dtype=float)
            m = floats(np.ravel(np.asarray(sens["final_seed_metric"], dtype=object))).reshape(
                lrs.size, -1)
            start = float(np.nanmean(floats(sens["start_metric"])))
            top = start if top is None else max(top, start)
            mean = np.where(np.isfinite(m).all(1), m.mean(1), np.nan)
            bad = ~np.isfinite(mean) | (mean > start)
            line, = ax.plot(lrs, np.where(bad, np.nan, mean), marker="o", markersize=3,
                            linestyle=plots.STYLES[k // 10 % len(plots.STYLES)], label=o)
            if bad.any():
                ax.plot(lrs[bad], np.full(int(bad.sum()), start), "x", color=line.get_color())
        if top is not None:
            ax.axhline(top, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(t, fontsize="medium")
        ax.set(xlabel="peak learning rate", ylabel="final val loss")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[min(cols, len(names)) - 1].legend(fontsize="x-small", loc="upper left",
                                           bbox_to_anchor=(1.01, 1.0))
    return plots.save(fig, path)


def _memory_figure(runs: dict[str, dict], title: str, path: Path) -> Path | None:
    pts = [(o, r["measured"].get("state_bytes"), r["measured"].get("train_step_peak_bytes"),
            mean_ci(floats(r["final"]["metric"]))[0]) for o, r in sorted(runs.items())
           if r.get("measured")]
    pts = [p for p in pts if p[1] is not None and math.isfinite(p[3])]
    if not pts:
        return None
    fig = plots._figure(11, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, col, label in zip(axes, (1, 2), ("optimizer state (MiB)",
                                             "compiled train-step peak (MiB)")):
        for p in pts:
            if p[col] is None:
                continue
            ax.plot(p[col] / 2**20, p[3], "o")
            ax.annotate(p[0], (p[col] / 2**20, p[3]), fontsize="x-small", xytext=(3, 3),
                        textcoords="offset points")
        ax.set(xlabel=label)
    axes[0].set_ylabel("best final val loss (mean of final seeds)")
    fig.suptitle(title, fontsize="medium")
    return plots.save(fig, path)


# --- the section -------------------------------------------------------------------------

def _mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:.3g}"


def _setup_lines(tasks: Tasks, order: list[str], first: dict, baseline: str) -> list[str]:
    """The setup, the recipes and the protocol paragraphs of the section."""
    lines: list[str] = []
    lines += [
        "Small GPT decoders (pre-LayerNorm, no biases, untied embeddings) on characters of "
        "real text, trained as language models are: linear warmup then cosine decay of the "
        "peak learning rate η, gradients clipped to global norm 1, decoupled weight decay "
        "0.1 (× the scheduled lr) on every parameter, the same token budget, schedule, "
        "clipping and grid of peak learning rates for every optimizer. Per task, the "
        "setup and its token budget:", ""]
    lines += [f"* `{t}`: {next(iter(tasks[t].values()))['task_info']['description']}."
              for t in order]
    recipes = {o: r["measured"].get("recipe") for runs in tasks.values()
               for o, r in runs.items() if r.get("measured")}
    lines += ["", "Hyperparameters each optimizer gets (AdamW's LLM settings b2 0.95, eps "
              "1e-8 wherever the optimizer has the same knob):", ""]
    lines += [f"* `{o}`: {recipes[o]}" for o in sorted(recipes) if recipes[o]]
    lines += ["", f"Protocol: every optimizer runs the grid {first['tuning']['lrs']} (plus two "
              "points beyond an edge where its best sits, marked below) with tuning seeds "
              f"{first['tuning']['seeds']} and final seeds {first['final']['seeds']}; the "
              "best lr is picked on the tuning seeds, and the **best loss** is the final "
              "validation loss of the final seeds at that lr. **LR sensitivity** "
              "(Wortsman et al. 2023, figure 1) is, per final seed, the mean over the grid of "
              "min(ℓ(η), ℓ₀) − ℓ*, with ℓ₀ the validation loss at initialisation, ℓ* the "
              "best final loss of the sweep and a diverged run counted as ℓ₀ (lower: less "
              "sensitive), over the learning rates every optimizer of the task ran (grid "
              "extensions left out, so that the range is the same for all). **Spikes**: in "
              "each run's curve of training-loss means (one per "
              "evaluation interval), a point above (1 + "
              f"{SPIKE_RISE:g}) × the lowest earlier point is raised, and each stretch of "
              "raised points is one spike; a non-finite loss is a divergence, not a spike. "
              "Spikes and divergences are counted over every lr × final seed of the sweep. "
              "Verdicts vs "
              f"`{baseline}`, paired by seed, Holm-corrected within the STAM family and within "
              "the peers, separately for (a) best loss (min effect: the task's, "
              f"{number(first['task_info']['min_effect'])} nats) and (b) LR sensitivity (min "
              f"effect {LRS_MIN_EFFECT:g} nats, fixed before the full run). Schedule-free "
              "AdamW is evaluated at its averaged parameters.", ""]
    return lines


def _task_table(t: str, runs: dict, best: dict, sens: dict, baseline: str,
                wide: list[str]) -> list[str]:
    """The table of one task, best loss first; appends to `wide` the comparisons
    whose interval is wider than the minimum effect."""
    header = ["optimizer", "best lr", "best loss [95% CI]", f"diff vs {baseline} [95% CI]",
              "(a) verdict", "LR sensitivity [95% CI]", f"diff vs {baseline} [95% CI]",
              "(b) verdict", "spikes (runs with one)", "diverged runs", "state MiB",
              "train-step peak MiB"]
    rows = []
    for o in sorted(runs, key=lambda o: (not math.isfinite(mean_ci(floats(
            runs[o]["final"]["metric"]))[0]), mean_ci(floats(runs[o]["final"]["metric"]))[0]
            if math.isfinite(mean_ci(floats(runs[o]["final"]["metric"]))[0]) else 0, o)):
        r = runs[o]
        jb, js = best.get((t, o)), sens.get((t, o))
        spikes, with_spike, div = spike_counts(r)
        n_runs = runs_in_sweep(r)
        meas = r.get("measured") or {}
        note = " (extended)" if r["tuning"].get("extended") else ""
        rows.append([
            f"`{o}`", number(r["final"]["lr"], 3) + note, interval_text(*mean_ci(floats(
                r["final"]["metric"]))),
            "baseline" if o == baseline else
            "n/a" if jb is None else interval_text(*jb.diff[:3]),
            "" if jb is None else f"**{jb.verdict}**",
            interval_text(*mean_ci(seed_sensitivities(r, common_lrs(runs)))),
            "baseline" if o == baseline else
            "n/a" if js is None else interval_text(*js.diff[:3]),
            "" if js is None else f"**{js.verdict}**",
            f"{spikes} ({with_spike}/{n_runs})", f"{div}/{n_runs}",
            _mib(meas.get("state_bytes")), _mib(meas.get("train_step_peak_bytes"))])
        if jb is not None and math.isfinite(jb.diff.hi - jb.diff.lo) and (
                jb.diff.hi - jb.diff.lo) / 2 >= r["task_info"]["min_effect"]:
            wide.append(f"`{t}` · `{o}` (half-width "
                        f"{number((jb.diff.hi - jb.diff.lo) / 2, 3)})")
        elif jb is not None and not math.isfinite(jb.diff.hi - jb.diff.lo):
            wide.append(f"`{t}` · `{o}` (no interval: a seed diverged or too few seeds)")
    return table(header, rows)


def _tuning_lines(tasks: Tasks, order: list[str], opts: list[str]) -> list[str]:
    """The tuning check: per optimizer and task, the tuned lr against the hindsight
    lr and what the mean final loss would have been there."""
    def cell(t: str, o: str) -> str:
        if o not in tasks[t]:
            return "—"
        tuned, loss, best_lr, best = tuning_check(tasks[t][o])
        if best_lr == tuned:
            return number(loss, 4)
        return (f"{number(loss, 4)} → {number(best, 4)} "
                f"(lr {number(tuned, 3)} → {number(best_lr, 3)})")

    return ["**Tuning check.** The learning rate is picked on one tuning seed; here, "
            "per optimizer, the mean final loss at that lr, and where another lr of the "
            "sweep has a lower mean over the final seeds, that loss and lr after the arrow "
            "(chosen in hindsight on the seeds it is scored on, so optimistic). A gap "
            "means the tuning seed was unlucky for that optimizer, and the verdicts "
            "above inherit it.", "",
            *table(["optimizer", *(f"`{t}`" for t in order)],
                   [[f"`{o}`", *(cell(t, o) for t in order)] for o in opts])]


def suite_tasks(tasks: Tasks) -> Tasks:
    """The tasks of the gpt suite (those whose runs have an LR-sensitivity sweep)."""
    return {t: runs for t, runs in tasks.items()
            if any(r.get("suite") == SUITE and "lr_sensitivity" in r and
                   "start_metric" in r["lr_sensitivity"] for r in runs.values())}


def section(tasks: Tasks, out_dir: Path, baseline: str = "adamw") -> list[str]:
    """The markdown lines of the gpt section (and its figures under `out_dir`)."""
    lines = ["## GPT suite: learning-rate sensitivity, loss spikes, memory", ""]
    tasks = suite_tasks(tasks)
    if not tasks:
        return lines + ["Not run.", ""]
    order = sorted(tasks, key=lambda t: _variant(next(iter(tasks[t].values()))))
    best, sens = judge_suite(tasks, baseline)
    first = next(iter(tasks[order[0]].values()))
    lines += _setup_lines(tasks, order, first, baseline)
    path = _sensitivity_figure(tasks, out_dir / "gpt_lr_sensitivity.png")
    if path:
        lines += ["LR sensitivity against width (mean over final seeds, 95% CI), without and "
                  "with qk-layernorm (z-loss off):", "", f"![gpt LR sensitivity]({path.name})",
                  ""]
    opts = sorted({o for runs in tasks.values() for o in runs})
    grid = [[f"`{o}`", *(number(mean_ci(seed_sensitivities(tasks[t][o], common_lrs(tasks[t])))[0],
                            3)
                         + ("" if (t, o) not in sens else f" ({sens[(t, o)].verdict})")
                         if o in tasks[t] else "—" for t in order)] for o in opts]
    lines += ["LR sensitivity per optimizer and task (mean over final seeds, nats; in "
              f"brackets the verdict (b) against `{baseline}`):", "",
              *table(["optimizer", *(f"`{t}`" for t in order)], grid)]
    path = _loss_lr_figure(tasks, out_dir / "gpt_loss_vs_lr.png")
    if path:
        lines += ["Final validation loss against peak learning rate (mean over final seeds; "
                  "crosses on the dotted ℓ₀ line: diverged or worse than at initialisation):",
                  "", f"![gpt loss vs lr]({path.name})", ""]
    lines += _tuning_lines(tasks, order, opts)
    wide: list[str] = []
    widest = max(_variant(r)[0] for rs in tasks.values() for r in rs.values())
    for t in order:
        lines += [f"### {t}", "", *_task_table(t, tasks[t], best, sens, baseline, wide)]
        if _variant(next(iter(tasks[t].values())))[0] == widest:
            path = _memory_figure(tasks[t], f"{t}: best loss against memory",
                                  out_dir / f"gpt_memory_{t}.png")
            if path:
                lines += [f"![{t} loss against memory]({path.name})", ""]
    min_effect = number(first["task_info"]["min_effect"])
    lines += ["**Precision.** The 95% CI of the best-loss difference to "
              f"`{baseline}` has a half-width below the minimum effect ({min_effect}) "
              + ("for every comparison." if not wide else
                 f"except for {len(wide)} comparisons: " + ", ".join(wide)
                 + "; more final seeds are needed there."), ""]
    return lines

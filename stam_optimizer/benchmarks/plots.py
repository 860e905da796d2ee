"""The figures of the benchmark report, drawn from run data with matplotlib.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot), so
nothing global is touched, and every PNG is written atomically. Each function
returns the path it wrote, or None when there was nothing to draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from stam_optimizer.benchmarks.files import write_atomic
from stam_optimizer.benchmarks.stats import mean_ci

STYLES = ("-", "--", "-.", ":")
VERDICT_COLORS = {"win": "tab:green", "loss": "tab:red", "tie": "tab:blue",
                  "inconclusive": "tab:gray"}


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Writes `fig` as a PNG to `path` via a temporary file and a rename."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(path, buf.getvalue())


def _column_band(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: mean and 95% CI over the finite entries."""
    stats = [mean_ci(col[np.isfinite(col)]) for col in rows.T]
    return tuple(np.array(v, dtype=float) for v in zip(*stats)) if stats else (
        np.array([]), np.array([]), np.array([]))


def curves(task: str, metric: str, runs: Mapping[str, dict], shift_steps: Sequence[int],
           path: str | Path) -> Path | None:
    """Mean curve of `metric` over the final seeds with a 95% CI band, per optimizer."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn, positive = False, True
    for k, (name, run) in enumerate(runs.items()):
        final = run["final"]
        data = final.get("curves", {}).get(metric)
        if not data:
            continue
        x = np.asarray(final["eval_steps"], dtype=float)
        rows = np.asarray(data, dtype=float)
        if rows.ndim != 2 or rows.shape[1] != x.size:  # not one value per eval step
            continue
        mean, lo, hi = _column_band(rows)
        line, = ax.plot(x, mean, STYLES[k // 10 % len(STYLES)], label=name)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        shown = np.concatenate([mean, lo, hi])
        positive &= bool(np.all(shown[np.isfinite(shown)] > 0))
        drawn = True
    if not drawn:
        return None
    for s in shift_steps:
        ax.axvline(s, color="black", linestyle="--", linewidth=1)
    if positive:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=f"{metric} (lower is better)")
    ax.set_title(f"{task}: final seeds, mean and 95% CI", fontsize="medium")
    ax.legend(fontsize="small")
    return save(fig, path)


def lr_sensitivity(task: str, runs: Mapping[str, dict], path: str | Path) -> Path | None:
    """Tuning metric (mean over tuning seeds) against learning rate, log x."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for name, run in runs.items():
        tuning = run.get("tuning") or {}
        if not tuning.get("lrs") or not tuning.get("metric"):
            continue
        lrs = np.asarray(tuning["lrs"], dtype=float)
        values = np.asarray(tuning["metric"], dtype=float).reshape(lrs.size, -1)
        mean = np.where(np.isfinite(values).all(axis=1), values.mean(axis=1), np.nan)
        line, = ax.plot(lrs, mean, marker="o", label=name)
        best = tuning.get("best_lr")
        if best is not None and np.any(np.isclose(lrs, best)):
            i = int(np.argmin(np.abs(lrs - best)))
            ax.plot(lrs[i], mean[i], marker="*", markersize=14, color=line.get_color())
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="tuning metric (mean of tuning seeds)")
    ax.set_title(f"{task}: LR sensitivity (star: chosen lr)", fontsize="medium")
    ax.legend(fontsize="small")
    return save(fig, path)


def beta1(task: str, runs: Mapping[str, dict], path: str | Path,
          max_legend: int = 12) -> Path | None:
    """β₁ trajectories: one panel per optimizer, one line per layer."""
    with_beta = {n: r["beta1"] for n, r in runs.items() if r.get("beta1", {}).get("layers")}
    if not with_beta:
        return None
    fig = _figure(5.0 * len(with_beta), 4.0)
    axes = fig.subplots(1, len(with_beta), squeeze=False)[0]
    for ax, (name, b) in zip(axes, with_beta.items()):
        for layer, values in b["layers"].items():
            n = min(len(b["eval_steps"]), len(values))
            ax.plot(b["eval_steps"][:n], np.asarray(values[:n], dtype=float), label=layer)
        ax.set(title=f"{task}: {name}", xlabel="step", ylabel="mean β₁ per layer")
        if len(b["layers"]) <= max_legend:
            ax.legend(fontsize="x-small")
    return save(fig, path)


def forest(rows: Sequence[tuple[str, float, float, float, str]], path: str | Path,
           baseline: str) -> Path | None:
    """Paired differences vs the baseline, each divided by its task's min_effect.

    `rows` are (label, mean, lo, hi, verdict) already normalised; the shaded band
    is ±1 min_effect, left of it the candidate is better.
    """
    rows = [r for r in rows if math.isfinite(r[1])]
    if not rows:
        return None
    fig = _figure(7.0, 1.2 + 0.3 * len(rows))
    ax = fig.add_subplot()
    ax.axvspan(-1, 1, color="tab:blue", alpha=0.12, label="±min_effect")
    ax.axvline(0, color="black", linewidth=0.8)
    y = np.arange(len(rows))[::-1]
    for yi, (_, mean, lo, hi, verdict) in zip(y, rows):
        color = VERDICT_COLORS.get(verdict, "black")
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [yi, yi], color=color, linewidth=2)
        ax.plot(mean, yi, "o", color=color)
    ax.set_yticks(y, [r[0] for r in rows], fontsize="small")
    # two-line labels: the long task labels leave the axes too narrow for one line
    ax.set(xlabel=f"(candidate − {baseline}) / task min_effect\n(negative: candidate better)",
           title=f"Paired differences vs {baseline}\n95% CI, colour = verdict")
    return save(fig, path)


def profile(taus: np.ndarray, profiles: Mapping[str, np.ndarray], path: str | Path) -> Path | None:
    """Performance profiles: fraction of tasks within a factor tau of the best."""
    if not profiles or all(np.all(np.isnan(p)) for p in profiles.values()):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for k, (name, frac) in enumerate(profiles.items()):
        ax.step(taus, frac, STYLES[k % len(STYLES)], where="post", label=name, linewidth=1.5)
    ax.set_xscale("log")
    ticks = [t for t in (1, 1.5, 2, 3, 4, 6, 8, 16) if t <= taus[-1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="tau (steps to target / best steps on the task)",
           ylabel="fraction of tasks", ylim=(-0.02, 1.02),
           title="Performance profile (steps to each task's target)")
    ax.legend(fontsize="small")
    return save(fig, path)


def bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str, title: str,
         path: str | Path, reference: float | None = None) -> Path | None:
    """Grouped bars: one group per label, one bar per series (nan: no bar)."""
    if not labels or not series:
        return None
    fig = _figure(max(6.0, 0.6 * len(labels) * max(1, len(series)) ** 0.5), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.asarray(values, dtype=float), width,
               label=name)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize="small")
    ax.set(ylabel=ylabel, title=title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    return save(fig, path)


def heatmap(sweep: dict, path: str | Path) -> Path | None:
    """Mean final metric over seeds on the lr x weight-decay grid of one sweep."""
    lrs, wds = sweep.get("lrs") or [], sweep.get("wds") or []
    if not lrs or not wds:
        return None
    values = np.asarray(sweep["metric"], dtype=float).reshape(len(wds), len(lrs), -1)
    mean = np.where(np.isfinite(values).all(axis=2), values.mean(axis=2), np.nan)
    fig = _figure(max(5.5, 1.5 + 0.9 * len(lrs)), max(3.5, 1.5 + 0.6 * len(wds)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mean), origin="lower", aspect="auto", cmap="viridis_r")
    fig.colorbar(im, ax=ax, label="mean final metric (lower better)")
    lo, hi = (np.nanmin(mean), np.nanmax(mean)) if np.isfinite(mean).any() else (0, 0)
    for (i, j), v in np.ndenumerate(mean):
        light = math.isnan(v) or hi == lo or (v - lo) / (hi - lo) < 0.5  # viridis_r: yellow
        ax.text(j, i, "div." if math.isnan(v) else f"{v:.3g}", ha="center", va="center",
                fontsize="x-small", color="black" if light else "white")
    if np.isfinite(mean).any():
        i, j = np.unravel_index(np.nanargmin(mean), mean.shape)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red",
                               linewidth=2))
    ax.set_xticks(range(len(lrs)), [f"{v:.0e}" for v in lrs], rotation=45, fontsize="small")
    ax.set_yticks(range(len(wds)), [f"{v:g}" for v in wds], fontsize="small")
    ax.set(xlabel="learning rate", ylabel="weight decay")
    ax.set_title(f"{sweep.get('task')}: {sweep.get('optimizer')} (box: best)", fontsize="medium")
    return save(fig, path)



def signal_stream(stream: str, title: str, series: Mapping[int, Mapping[str, tuple]],
                  change: int, ylim: tuple[float, float], path: str | Path) -> Path | None:
    """β₁ over the steps of one gradient stream: one panel per tensor size (shared y
    axis, the same limits in every stream's figure), one line per optimizer.

    `series[n][optimizer] = (steps, beta1)`.
    """
    series = {n: s for n, s in series.items() if s}
    if not series:
        return None
    fig = _figure(4.2 * len(series) + 1.0, 4.4)
    axes = fig.subplots(1, len(series), squeeze=False, sharey=True)[0]
    names = list(dict.fromkeys(o for s in series.values() for o in s))
    colors = {o: f"C{i % 10}" for i, o in enumerate(names)}
    for ax, (n, by_opt) in zip(axes, series.items()):
        for k, name in enumerate(names):
            if name not in by_opt:
                continue
            x, y = by_opt[name]
            ax.plot(np.asarray(x, float), np.asarray(y, dtype=float), STYLES[k % len(STYLES)],
                    color=colors[name], label=name, linewidth=1.3)
        if change:
            ax.axvline(change, color="black", linestyle="--", linewidth=0.8)
        ax.set(xlabel="step", title=f"{n} entries", ylim=ylim)
    axes[0].set_ylabel("β₁")
    fig.suptitle(f"{stream}: {title}", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(names), 4),
               fontsize="small")
    return save(fig, path)

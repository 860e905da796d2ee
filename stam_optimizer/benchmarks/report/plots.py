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
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from stam_optimizer.benchmarks.programme.records import write_atomic
from stam_optimizer.benchmarks.report.stats import mean_ci

STYLES = ("-", "--", "-.", ":")
DPI = 100
COLORS = 64  # palette size of the PNGs
VERDICT_COLORS = {"win": "tab:green", "loss": "tab:red", "tie": "tab:blue",
                  "inconclusive": "tab:gray"}
VERDICTS_ORDER = ("win", "tie", "loss", "inconclusive")


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Writes `fig` as a PNG to `path` via a temporary file and a rename.

    The PNG has a palette of at most `COLORS` colours (median cut, no dithering):
    a plot of a few line colours on white looks the same and takes about a
    quarter of the bytes of a true-colour PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    with Image.open(buf) as image:
        palette = image.convert("RGB").quantize(COLORS, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return write_atomic(path, out.getvalue())


def kept(path: str | Path, source: str | Path) -> Path | None:
    """A figure that cannot be redrawn (its per-step series are not at hand): `path`
    if it exists, else `source` copied to `path`, else None."""
    path, source = Path(path), Path(source)
    if path.is_file():
        return path
    if source.is_file():
        return write_atomic(path, source.read_bytes())
    return None


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


def lr_sensitivity(task: str, runs: Mapping[str, dict], path: str | Path,
                   start: float | None = None) -> Path | None:
    """Tuning metric (mean over tuning seeds) against learning rate, log x.

    With `start` (ℓ₀, the metric at step 0) the y axis stops just above ℓ₀: a
    learning rate whose mean is worse than ℓ₀ or diverged is drawn as a cross on
    the ℓ₀ line, so one diverged point cannot flatten the others. The y axis is
    logarithmic when every value shown is positive.
    """
    fig = _figure(8.5, 4.5)
    ax = fig.add_subplot()
    drawn, clipped, shown = False, False, []
    top = start if start is not None and math.isfinite(start) and start > 0 else None
    for k, (name, run) in enumerate(runs.items()):
        tuning = run.get("tuning") or {}
        if not tuning.get("lrs") or not tuning.get("seeds"):
            continue  # not tuned (a storage variant run at its parent's learning rate)
        lrs = np.asarray(tuning["lrs"], dtype=float)
        values = np.asarray(tuning["metric"], dtype=float).reshape(lrs.size, -1)
        mean = np.where(np.isfinite(values).all(axis=1), values.mean(axis=1), np.nan)
        bad = ~np.isfinite(mean) | ((mean > top) if top is not None else False)
        kept = np.where(bad, np.nan, mean)
        line, = ax.plot(lrs, kept, STYLES[k // 10 % len(STYLES)], marker="o", label=name)
        if top is not None and bad.any():
            ax.plot(lrs[bad], np.full(int(bad.sum()), top), "x", color=line.get_color(),
                    markersize=9, markeredgewidth=2)
            clipped = True
        best = tuning.get("best_lr")
        if best is not None and np.any(np.isclose(lrs, best)):
            i = int(np.argmin(np.abs(lrs - best)))
            ax.plot(lrs[i], kept[i], marker="*", markersize=14, color=line.get_color())
        shown += list(kept[np.isfinite(kept)])
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    if top is not None:
        ax.axhline(top, color="black", linestyle=":", linewidth=1)
        shown.append(top)
    if shown and min(shown) > 0:
        ax.set_yscale("log")
    if top is not None:
        low = min(shown)
        ax.set_ylim(top=top * 1.15 if ax.get_yscale() == "log" else top + 0.05 * (top - low))
    handles, labels = ax.get_legend_handles_labels()
    if top is not None:
        handles.append(Line2D([], [], color="black", linestyle=":"))
        labels.append("ℓ₀: metric at step 0")
    if clipped:
        handles.append(Line2D([], [], color="gray", marker="x", linestyle="none",
                              markeredgewidth=2))
        labels.append("diverged or worse than ℓ₀ (drawn at ℓ₀)")
    ax.set(xlabel="learning rate", ylabel="tuning metric (mean of tuning seeds)")
    ax.set_title(f"{task}: LR sensitivity (star: chosen lr)", fontsize="medium")
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


_PARTS = {"w": "weight", "b": "bias", "kernel": "weight", "bias": "bias", "scale": "scale"}
_GROUPS = {"blocks": "block", "layers": "layer"}


def layer_label(path: str) -> str:
    """A readable name for a parameter path: `0/w` → `layer 0 weight`,
    `blocks/1/qkv` → `block 1 qkv`, `embed` stays `embed`."""
    words, group = [], "layer"
    for part in path.split("/"):
        if part in _GROUPS:
            group = _GROUPS[part]
        elif part.isdigit():
            words.append(f"{group} {part}")
        else:
            words.append(_PARTS.get(part, part))
    return " ".join(words) or path


def beta1(task: str, runs: Mapping[str, dict], path: str | Path,
          max_legend: int = 12, columns: int = 3) -> Path | None:
    """β₁ trajectories: one panel per optimizer (at most `columns` per row), one
    line per layer, all panels on one y axis."""
    with_beta = {n: r["beta1"] for n, r in runs.items() if r.get("beta1", {}).get("layers")}
    if not with_beta:
        return None
    ncols = min(columns, math.ceil(math.sqrt(len(with_beta))))  # near-square grid
    nrows = math.ceil(len(with_beta) / ncols)
    fig = _figure(4.6 * ncols, 3.6 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    values = [v for b in with_beta.values() for vs in b["layers"].values() for v in vs
              if v is not None and math.isfinite(v)]
    for ax, (name, b) in zip(axes, with_beta.items()):
        for layer, vs in b["layers"].items():
            n = min(len(b["eval_steps"]), len(vs))
            ax.plot(b["eval_steps"][:n], np.asarray(vs[:n], dtype=float),
                    label=layer_label(layer))
        ax.set(title=name, xlabel="step")
        if len(b["layers"]) <= max_legend:
            ax.legend(fontsize="x-small")
    for ax in axes[len(with_beta):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("mean β₁ per layer")
    if values:
        lo, hi = min(values), max(values)
        lo = min(lo, hi - 0.1)  # at least 0.1 tall: a constant β₁ is a flat line
        axes[0].set_ylim(lo - 0.01, hi + 0.01)
    fig.suptitle(f"{task}: β₁ per layer (first final seed)", fontsize="medium")
    return save(fig, path)


def forest(rows: Sequence[tuple], path: str | Path, baseline: str) -> Path | None:
    """Paired differences vs the baseline, each divided by its task's min_effect.

    `rows` are (label, mean, lo, hi, verdict) or (label, mean, lo, hi, verdict,
    adj_lo, adj_hi), already normalised: (lo, hi) is the 95% CI (thick bar),
    (adj_lo, adj_hi) the Holm-adjusted one (thin bar). The shaded band is ±1
    min_effect; left of it the candidate is better. The legend names the verdict
    colours that appear.
    """
    rows = [r for r in rows if math.isfinite(r[1])]
    if not rows:
        return None
    fig = _figure(7.0, 1.8 + 0.3 * len(rows))
    ax = fig.add_subplot()
    ax.axvspan(-1, 1, color="tab:blue", alpha=0.12)
    ax.axvline(0, color="black", linewidth=0.8)
    y = np.arange(len(rows))[::-1]
    seen, adjusted = [], False
    for yi, row in zip(y, rows):
        _, mean, lo, hi, verdict = row[:5]
        color = VERDICT_COLORS.get(verdict, "black")
        if len(row) >= 7 and math.isfinite(row[5]) and math.isfinite(row[6]):
            ax.plot([row[5], row[6]], [yi, yi], color=color, linewidth=0.8)
            adjusted = True
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [yi, yi], color=color, linewidth=2.5)
        ax.plot(mean, yi, "o", color=color)
        if verdict not in seen:
            seen.append(verdict)
    ax.set_yticks(y, [r[0] for r in rows], fontsize="small")
    handles = [Line2D([], [], color=VERDICT_COLORS.get(v, "black"), marker="o", linewidth=2.5)
               for v in VERDICTS_ORDER if v in seen]
    labels = [v for v in VERDICTS_ORDER if v in seen]
    handles += [Line2D([], [], color=VERDICT_COLORS.get(v, "black"), marker="o") for v in seen
                if v not in VERDICTS_ORDER]
    labels += [v for v in seen if v not in VERDICTS_ORDER]
    handles.append(Patch(color="tab:blue", alpha=0.12))
    labels.append("±min_effect")
    handles.append(Line2D([], [], color="black", linewidth=2.5))
    labels.append("95% CI")
    if adjusted:
        handles.append(Line2D([], [], color="black", linewidth=0.8))
        labels.append("Holm CI")
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="verdict / bars", title_fontsize="small")
    # two-line labels: the long task labels leave the axes too narrow for one line
    ax.set(xlabel=f"(candidate − {baseline}) / task min_effect\n(negative: candidate better)",
           title=f"Paired differences vs {baseline}")
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

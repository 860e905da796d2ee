"""The report section of the signal suite, derived from `signal.json` alone."""

from __future__ import annotations

import math
from pathlib import Path

from stam_optimizer.benchmarks.report import plots
from stam_optimizer.benchmarks.report.markdown import (
    table,
)

ARROW = {"falls": "↓", "rises": "↑", "constant": "="}


def _cell(r: dict) -> str:
    mark = "✓" if r["matches"] == "yes" else "✗"
    extreme = r["before"] + r["delta"]
    return (f"{r['before']:.3f} → {extreme:.3f} ({r['delta']:+.3f} in {r['steps']} steps) "
            f"{mark}")


def response_table(data: dict, n: int) -> list[str]:
    """Rows: streams; columns: the 0.1.0 promise, then one per optimizer."""
    runs = [r for r in data["runs"] if r["n"] == n]
    names = list(dict.fromkeys(r["optimizer"] for r in runs))
    by = {(r["stream"], r["optimizer"]): r["response"] for r in runs}
    words = data.get("promise_words", {})
    rows = []
    for stream, info in data["streams"].items():
        promise = info["promise"]
        rows.append([f"`{stream}`: {info['description']}",
                     f"{ARROW.get(promise, '')} {words.get(promise, promise)}",
                     *(_cell(by[(stream, o)]) if (stream, o) in by else "—" for o in names)])
    score = ["**streams matching the promise**", "",
             *(f"**{sum(by[(s, o)]['matches'] == 'yes' for s in data['streams'] if (s, o) in by)}"
               f"/{sum((s, o) in by for s in data['streams'])}**" for o in names)]
    return table(["stream (what changes)", "0.1.0 promise", *(f"`{o}`" for o in names)],
                  [*rows, score])


def signal_section(results_dir: Path, out_dir: Path, data: dict | None) -> list[str]:
    lines = ["## β₁ signal: what the adaptation responds to", ""]
    if not data or not data.get("runs"):
        return lines + ["`signal.json`: not run (`stam-bench run signal`).", ""]
    steps, change = data["steps"], data["change"]
    sizes = data["sizes"]
    tol = data.get("tolerance", 0.01)
    lines += [
        f"Controlled gradient streams on one tensor ({', '.join(map(str, sizes))} entries), "
        f"{steps} steps, seeded NumPy (seed {data.get('seed')}): a fixed random mean plus "
        f"noise, one property changing at step {change}. β₁ is read from the optimizer "
        "state after every step (the registry's defaults, no training).", "",
        "Each cell: β₁ just before the change → the value furthest from it within the "
        "window (signed change, steps after the change at which it was reached). The "
        "window is 200 steps (tiny size: less) after an abrupt change and the whole second "
        "half for the gradual streams (rotation, warmup, decay); the stationary stream is "
        "read from step 100 to the end (start-up levels below). ✓: the direction matches "
        f"the 0.1.0 description, with a move of at least {tol:g} (for \"no change\": less "
        f"than {tol:g}).", ""]
    shown = 4096 if 4096 in sizes else max(sizes)
    for n in [shown] + [s for s in sizes if s != shown]:
        lines += [f"### Response table, {n} entries", "", *response_table(data, n)]
    levels = [[f"`{r['optimizer']}`", str(r["n"]),
               *(f"{r['response']['levels'].get(t, math.nan):.3f}" for t in ("10", "100", "1000")),
               f"{r['response']['levels'].get(str(steps - 1), math.nan):.3f}"]
              for r in data["runs"] if r["stream"] == "stationary"]
    lines += ["### Start-up on the stationary stream", "",
              *table(["optimizer", "entries", "β₁ at step 10", "at 100", "at 1000",
                       f"at {steps - 1}"], levels)]
    kept = data.get("eval_steps")
    raw = kept is not None and all("beta1" in r for r in data["runs"])
    values = [v for r in data["runs"] for v in r["beta1"] if v is not None] if raw else []
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.01, 0.05 * (hi - lo))
    lines += ["### β₁ over time, per stream", "",
              "Same y axis in every figure; the dashed line marks the change.", ""]
    for stream, info in data["streams"].items():
        path = out_dir / f"signal_{stream}.png"
        if not raw:  # a summary keeps no β₁ series: the PNG already drawn, if any
            path = plots.kept(path, results_dir / path.name)
            if path is not None:
                lines += [f"![signal {stream}]({path.name})", ""]
            continue
        series: dict[int, dict[str, tuple]] = {}
        for r in data["runs"]:
            if r["stream"] == stream:
                series.setdefault(r["n"], {})[r["optimizer"]] = (kept, r["beta1"])
        path = plots.signal_stream(stream, info["description"], series,
                                   0 if stream == "stationary" else change,
                                   (lo - pad, hi + pad), path)
        if path is not None:
            lines += [f"![signal {stream}]({path.name})", ""]
    return lines

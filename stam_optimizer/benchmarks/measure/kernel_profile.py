"""Time per kernel of a compiled optimizer update: which pass is slow, and why.

`stam-bench speed` gives the time of a whole update and the bytes its
compiled program moves. When the two disagree (an update slower than its bytes
predict) the question is which kernel is at fault. This module runs the
compiled update under `jax.profiler` and reads the kernel events that XLA's
CPU runtime records, named after the HLO instructions, back from the Perfetto
trace. Next to each kernel's time it puts the bytes that kernel reads and
writes (`hlo_traffic.kernel_list`), so that a kernel far below the machine's
copy bandwidth stands out as bound by arithmetic, not memory.

Caveat: XLA:CPU runs independent kernels concurrently (the tensors of a tree,
and within a tensor e.g. STAM's two statistics and its ν loop), so their
times can overlap and sum to more than the step takes; each time is the
kernel's own wall time, averaged over the profiled steps. The tree `single16`
(one 4096×4096 tensor) keeps the overlap to the kernels of one tensor.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from stam_optimizer.benchmarks.measure import hlo_traffic, speed


def kernel_times(run: Callable[[], None], names: set[str], rounds: int) -> dict[str, float]:
    """Mean seconds per call of `run()` spent in each kernel named in `names`.

    Raises RuntimeError when the trace holds none of them (a JAX version whose
    profiler names kernels differently).
    """
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(rounds):
                run()
        traces = sorted(Path(tmp).rglob("*.trace.json.gz"))
        if not traces:
            raise RuntimeError("jax.profiler wrote no Perfetto trace")
        with gzip.open(traces[-1], "rt") as f:
            data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    total: defaultdict[str, float] = defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            total[e["name"]] += float(e.get("dur", 0.0)) * 1e-6  # µs -> s
    if not total:
        raise RuntimeError("the profiler trace names none of the program's kernels; "
                           f"this JAX version ({jax.__version__}) is not supported here")
    return {k: v / rounds for k, v in total.items()}


def profile_update(tree_name: str, optimizer: str, rounds: int = 10,
                   warmup: int = 3) -> dict:
    """Per-kernel time, bytes and bandwidth of one optimizer's update on a tree
    of `speed.TREES`, and the update's median time without the profiler."""
    tree = speed.make_tree(tree_name)
    run, _, box = speed.update_runner(optimizer, tree, speed.update_grads(tree), warmup)
    kernels = hlo_traffic.kernel_list(box["hlo_text"])
    times = kernel_times(run, {k["name"] for k in kernels}, rounds)
    step_s = float(np.median(speed.interleave({optimizer: run}, rounds)[optimizer]))
    rows = []
    for k in kernels:
        t = times.get(k["name"])
        rows.append({**k, "seconds": t,
                     "GBps": k["bytes"] / t / 1e9 if t else None})
    rows.sort(key=lambda r: -(r["seconds"] or 0.0))
    n = sum(x.size for x in jax.tree.leaves(tree))
    return {"tree": tree_name, "optimizer": optimizer, "params": int(n),
            "step_median_s": step_s, "rounds": rounds, "kernels": rows}


def table(result: dict, top: int = 12) -> str:
    """Markdown: the `top` slowest kernels of a `profile_update` result."""
    ms = result["step_median_s"] * 1e3
    busy = sum(r["seconds"] or 0.0 for r in result["kernels"]) * 1e3
    lines = [f"{result['optimizer']} on {result['tree']}: update {ms:.2f} ms (median"
             f" without the profiler); {len(result['kernels'])} kernels, their times sum to"
             f" {busy:.2f} ms (above the update time where kernels overlap)",
             "", "| kernel | op | ms | MB read + written | GB/s |", "|---|---|---|---|---|"]
    for r in result["kernels"][:top]:
        t = "" if r["seconds"] is None else f"{r['seconds'] * 1e3:.2f}"
        gbps = "" if r["GBps"] is None else f"{r['GBps']:.1f}"
        lines.append(f"| {r['name']} | {r['op']} | {t} | {r['bytes'] / 1e6:.1f} | {gbps} |")
    return "\n".join(lines)

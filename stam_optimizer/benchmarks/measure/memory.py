"""Optimizer-state memory: bytes per parameter, and the compiled update's buffers.

Three measurements, none of which allocates the models:

* State bytes. The optimizer's state is built abstractly with
  `jax.eval_shape(tx.init, params)` on `jax.ShapeDtypeStruct` parameters, and the
  bytes of every leaf (shape × itemsize) are summed. Everything the optimizer
  keeps is counted: step counters, per-tensor scalars, and, for int8 STAMLite,
  the uint8 codes, the float32 block scales and the small tensors (under
  `min_quantized_size` elements: biases, norms) that stay float32.
* Compiled memory. The optimizer update alone — `(params, grads, state) ->
  (params, state)`, i.e. `tx.update` then `optax.apply_updates` — is lowered on
  abstract inputs and compiled once with params and state donated and once
  without. XLA's `memory_analysis()` gives the bytes of the arguments, the
  outputs, the outputs that reuse (alias) a donated argument, and the
  temporaries; `total = argument + output − alias + temp` is the live-buffer
  bound reported. `peak_memory_in_bytes` is stored too but not used: on CPU it
  leaves out part of the temporaries (see `MEMORY_ANALYSIS_NOTES`).
* Train-step peak. The whole training step of the transformer —
  `(params, state, tokens) -> (params, state, loss)`: forward, backward and the
  update — is lowered and compiled the same way (params and state donated or
  not), on a batch of `batch × seq` tokens. Its `total` is what a user's step
  holds at its peak: params, gradients, state, activations and every other
  temporary. The optimizer's share of it is the state (and the update's
  temporaries); the rest is the same for every optimizer.

Sizes are bytes; "MB" in printed lines is 2**20 bytes, as in the 0.1.0 report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from stam_optimizer.benchmarks.programme import records, registry
from stam_optimizer.benchmarks.report.markdown import table
from stam_optimizer.benchmarks.tasks import models

MB = 2**20
BASELINE = registry.BASELINE
DEFAULT_MODEL = "transformer"

MEMORY_ANALYSIS_NOTES = (
    "CPU backend (jax 0.10.2): argument/output/alias/temp_size_in_bytes are filled in; "
    "generated_code_size_in_bytes and every host_* field are 0. peak_memory_in_bytes "
    "counts only part of the temporaries (none of lamb's or lion's, about 4 of the 12-16 "
    "bytes/param of the STAM family's), so total = argument + output - alias + temp is "
    "reported instead (the buffers the program holds while it runs; peak_reported is kept "
    "for reference). Argument sizes are exact; output includes XLA's result tuple (8 bytes "
    "per output buffer); temp depends on XLA's fusion and "
    "buffer-assignment decisions and can change with the jax/XLA version. Grads are never "
    "donated; 'donated' means params and state are."
)


# The parameter trees measured (abstract: shapes only), from the model zoo.
small_mlp = models.small_mlp
medium_mlp = models.medium_mlp
wide_linear = models.wide_linear
transformer = models.abstract_transformer
transformer_loss = models.abstract_transformer_loss

MODELS: dict[str, Callable[[], dict]] = {
    "small_mlp": small_mlp,
    "medium_mlp": medium_mlp,
    "wide_linear": wide_linear,
    "transformer": transformer,
}


def get_model(name: str) -> dict:
    """The abstract parameter tree of model `name`; ValueError lists the names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]()


def parse_models(text: str) -> list[str]:
    """Splits a comma-separated list of model names, checking each one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no model named; choose from {', '.join(MODELS)}")
    for n in names:
        if n not in MODELS:
            raise ValueError(f"unknown model {n!r}; choose from {', '.join(MODELS)}")
    return names


def param_count(params: Any) -> int:
    """Number of scalars in a tree of arrays or `ShapeDtypeStruct`s."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def tree_bytes(tree: Any) -> int:
    """Bytes of all leaves of a tree of arrays or `ShapeDtypeStruct`s."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
    """Bytes of `tx.init(params)`, computed abstractly (nothing is allocated)."""
    return tree_bytes(jax.eval_shape(tx.init, params))


def state_rows(models: list[str], optimizers: list[str]) -> list[dict]:
    """One row per (model, optimizer): state bytes, bytes/param, ratio to AdamW."""
    rows = []
    for model in models:
        params = get_model(model)
        n = param_count(params)
        base = state_bytes(registry.get(BASELINE), params)
        for name in optimizers:
            b = state_bytes(registry.get(name), params)
            rows.append({"model": model, "optimizer": name, "params": n,
                         "leaves": len(jax.tree.leaves(params)), "state_bytes": b,
                         "bytes_per_param": b / n, "ratio_to_adamw": b / base})
    return rows


def storage_state(model: str = DEFAULT_MODEL) -> list[dict]:
    """Every registry entry that stores a float optimizer's state differently
    (`registry.Entry.parent`): its state bytes per parameter on `model`, everything
    counted (small float32 leaves and per-tensor scalars included), and how many
    times smaller than its parent's and than AdamW's state it is."""
    params = get_model(model)
    n = param_count(params)
    base = state_bytes(registry.get(BASELINE), params)
    rows = []
    for name, e in registry.ENTRIES.items():
        if e.parent is None:
            continue
        b = state_bytes(registry.get(name), params)
        parent = state_bytes(registry.get(e.parent), params)
        rows.append({"model": model, "optimizer": name, "parent": e.parent,
                     "storage": e.storage, "params": n, "state_bytes": b,
                     "bytes_per_param": b / n, "parent_bytes_per_param": parent / n,
                     "times_smaller_than_parent": parent / b,
                     "times_smaller_than_adamw": base / b})
    return rows


def _train_step(loss: Callable, tx: optax.GradientTransformation) -> Callable:
    def step(params, state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return step


def _update_step(tx: optax.GradientTransformation) -> Callable:
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def compiled_memory(tx: optax.GradientTransformation, params: Any, donate: bool) -> dict:
    """Buffer sizes of the compiled update `(params, grads, state) -> (params, state)`,
    lowered on abstract inputs, with params and state donated when `donate`.

    Returns the `memory_analysis()` fields argument, output, alias, temp,
    peak_reported (bytes; None where the backend gives no analysis) and
    total = argument + output − alias + temp.
    """
    state = jax.eval_shape(tx.init, params)
    grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    jitted = jax.jit(_update_step(tx), donate_argnums=(0, 2) if donate else ())
    return _analysis(jitted, params, grads, state)


def step_memory(loss: Callable, tx: optax.GradientTransformation, params: Any,
                batch: Any, donate: bool = False) -> dict:
    """Buffer sizes of the compiled train step `(params, state, batch) ->
    (params, state, loss)` of any scalar `loss(params, batch)`, lowered on abstract
    inputs (arrays or `ShapeDtypeStruct`s), with params and state donated when
    `donate`; the fields of `compiled_memory`.
    """
    state = jax.eval_shape(tx.init, params)
    jitted = jax.jit(_train_step(loss, tx), donate_argnums=(0, 1) if donate else ())
    return _analysis(jitted, params, state, batch)


def peak_bytes(analysis: dict) -> int | None:
    """The peak of a `compiled_memory`/`step_memory` result: the backend's reported
    peak where it gives one (non-zero), else argument + output − alias + temp."""
    return analysis["peak_reported"] or analysis["total"]


def train_step_memory(tx: optax.GradientTransformation, params: dict, donate: bool,
                      batch: int, seq: int) -> dict:
    """`step_memory` of the zoo transformer's next-token loss on `batch × seq` tokens."""
    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be >= 1, got batch={batch}, seq={seq}")
    ctx = params["pos"].shape[0]
    if seq > ctx:
        raise ValueError(f"seq must be <= the model's context {ctx}, got {seq}")
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    return step_memory(transformer_loss, tx, params, tokens, donate)


def _analysis(jitted: Any, *args: Any) -> dict:
    with warnings.catch_warnings():  # unusable donated buffers are visible as alias < donated
        warnings.simplefilter("ignore")
        stats = jitted.lower(*args).compile().memory_analysis()
    if stats is None:
        return {"argument": None, "output": None, "alias": None, "temp": None,
                "peak_reported": None, "total": None}
    fields = {"argument": "argument_size_in_bytes", "output": "output_size_in_bytes",
              "alias": "alias_size_in_bytes", "temp": "temp_size_in_bytes",
              "peak_reported": "peak_memory_in_bytes"}
    out = {k: (int(getattr(stats, f)) if hasattr(stats, f) else None) for k, f in fields.items()}
    parts = [out[k] for k in ("argument", "output", "alias", "temp")]
    out["total"] = None if None in parts else parts[0] + parts[1] - parts[2] + parts[3]
    return out


def compiled_rows(model: str, optimizers: list[str],
                  log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Compiled-update memory of every optimizer on `model`, donated and not."""
    params = get_model(model)
    n = param_count(params)
    rows = []
    for name in optimizers:
        tx = registry.get(name)
        for donate in (False, True):
            r = {"model": model, "optimizer": name, "donated": donate, "params": n}
            r.update(compiled_memory(tx, params, donate))
            r["total_bytes_per_param"] = None if r["total"] is None else r["total"] / n
            rows.append(r)
        log(f"  {model}: compiled {name}")
    base = {r["donated"]: r["total"] for r in rows if r["optimizer"] == BASELINE}
    for r in rows:
        b = base.get(r["donated"])
        r["total_ratio_to_adamw"] = None if not b or r["total"] is None else r["total"] / b
    return rows


def train_step_rows(optimizers: list[str], batch: int, seq: int,
                    log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Train-step peak of every optimizer on the transformer, donated and not, with
    its state bytes next to it."""
    params = transformer()
    n = param_count(params)
    rows = []
    for name in optimizers:
        tx = registry.get(name)
        s_bytes = state_bytes(tx, params)
        for donate in (False, True):
            r = {"model": "transformer", "optimizer": name, "donated": donate, "params": n,
                 "batch": batch, "seq": seq, "param_bytes": tree_bytes(params),
                 "state_bytes": s_bytes}
            r.update(train_step_memory(tx, params, donate, batch, seq))
            r["total_bytes_per_param"] = None if r["total"] is None else r["total"] / n
            rows.append(r)
        log(f"  transformer: compiled the train step with {name}")
    base = {r["donated"]: r for r in rows if r["optimizer"] == BASELINE}
    for r in rows:
        b = base.get(r["donated"])
        r["state_ratio_to_adamw"] = None if not b else r["state_bytes"] / b["state_bytes"]
        r["total_ratio_to_adamw"] = (None if not b or not b["total"] or r["total"] is None
                                     else r["total"] / b["total"])
    return rows


def parent_rows(train_step: list[dict]) -> list[dict]:
    """For every optimizer of `train_step` that stores its float parent's state
    differently (`registry.Entry.parent`) and whose parent was measured too: the
    state bytes it saves and how much of that the donated train step's peak saves.
    `peak_share` = peak saved / state saved; the target is at least 0.8 (the
    transients of decoding must not eat the saving)."""
    by = {(r["optimizer"], r["donated"]): r for r in train_step}
    rows = []
    for name in dict.fromkeys(r["optimizer"] for r in train_step):
        found = registry.ENTRIES.get(name)
        parent = found.parent if found is not None else None
        if parent is None or (parent, True) not in by:
            continue
        mine, theirs = by[(name, True)], by[(parent, True)]
        state_saved = theirs["state_bytes"] - mine["state_bytes"]
        peak_saved = (None if mine["total"] is None or theirs["total"] is None
                      else theirs["total"] - mine["total"])
        rows.append({"optimizer": name, "parent": parent, "params": mine["params"],
                     "state_bytes": mine["state_bytes"],
                     "parent_state_bytes": theirs["state_bytes"], "state_saved": state_saved,
                     "peak": mine["total"], "parent_peak": theirs["total"],
                     "peak_saved": peak_saved,
                     "peak_share": (None if peak_saved is None or state_saved <= 0
                                    else peak_saved / state_saved)})
    return rows


# --- reports ------------------------------------------------------------------------

def parent_table(rows: list[dict]) -> str:
    """Markdown: each storage variant against its float parent in the donated
    transformer train step (MB), and the share of the state saving the peak keeps."""
    head = ["optimizer", "parent", "state B/param", "parent state B/param", "state saved MB",
            "peak MB", "parent peak MB", "peak saved MB", "peak saved / state saved"]
    return "\n".join(table(head, [
        [r["optimizer"], r["parent"], f"{r['state_bytes'] / r['params']:.3f}",
         f"{r['parent_state_bytes'] / r['params']:.3f}", _mb(r["state_saved"]), _mb(r["peak"]),
         _mb(r["parent_peak"]), _mb(r["peak_saved"]),
         "n/a" if r["peak_share"] is None else f"{r['peak_share']:.2f}"]
        for r in rows])[:-1])


def bytes_table(rows: list[dict]) -> str:
    """Markdown: state bytes/param (and ratio to AdamW) per optimizer × model."""
    model_names = list(dict.fromkeys(r["model"] for r in rows))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    cell = {(r["model"], r["optimizer"]): r for r in rows}
    params = {r["model"]: r["params"] for r in rows}
    head = " | ".join(f"{m} ({params[m] / 1e6:.2f}M)" for m in model_names)
    lines = [f"| optimizer | {head} |", "|---" * (len(model_names) + 1) + "|"]
    for name in optimizers:
        cells = []
        for m in model_names:
            r = cell[(m, name)]
            cells.append(f"{r['bytes_per_param']:.3f} ({r['ratio_to_adamw']:.3f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mb(x: int | None) -> str:
    return "n/a" if x is None else f"{x / MB:.2f}"


def compiled_table(rows: list[dict]) -> str:
    """Markdown: compiled-update buffer sizes (MB) with and without donation."""
    lines = ["| model | optimizer | donated | argument MB | output MB | alias MB | temp MB"
             " | total MB | total B/param | total / adamw |", "|---" * 10 + "|"]
    for r in rows:
        bpp = r["total_bytes_per_param"]
        ratio = r["total_ratio_to_adamw"]
        lines.append(
            f"| {r['model']} | {r['optimizer']} | {'yes' if r['donated'] else 'no'} | "
            f"{_mb(r['argument'])} | {_mb(r['output'])} | {_mb(r['alias'])} | "
            f"{_mb(r['temp'])} | {_mb(r['total'])} | "
            f"{'n/a' if bpp is None else f'{bpp:.2f}'} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def train_step_table(rows: list[dict]) -> str:
    """Markdown: per optimizer, state bytes next to the train step's peak (MB), with
    and without donation, and both ratios to AdamW."""
    by = {(r["optimizer"], r["donated"]): r for r in rows}
    lines = ["| optimizer | state MB | state / adamw | peak MB, not donated | peak MB, donated"
             " | peak / adamw (donated) |", "|---" * 6 + "|"]
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        plain, don = by[(name, False)], by[(name, True)]
        ratio = don["total_ratio_to_adamw"]
        sratio = don["state_ratio_to_adamw"]
        lines.append(
            f"| {name} | {_mb(don['state_bytes'])} | "
            f"{'n/a' if sratio is None else f'{sratio:.2f}'} | {_mb(plain['total'])} | "
            f"{_mb(don['total'])} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def storage_lines(rows: list[dict]) -> list[str]:
    """One line per storage variant (`storage_state`)."""
    return [f"{t['optimizer']} on {t['model']}: {t['bytes_per_param']:.4f} bytes/param "
            f"({t['storage']}), {t['times_smaller_than_parent']:.2f}x below {t['parent']}, "
            f"{t['times_smaller_than_adamw']:.2f}x below AdamW, small float32 leaves and "
            "scalar state included" for t in rows]


def measure(models: list[str], optimizers: list[str], *,
            compiled_optimizers: list[str] | None = None, compiled_model: str = DEFAULT_MODEL,
            compiled: bool = True, train_step: bool = True, train_batch: int = 4,
            train_seq: int = 256, output: str = "results/memory.json",
            log: Callable[[str], None] = print) -> dict:
    """State bytes of `optimizers` on `models`, then (unless switched off) the
    compiled update's memory on `compiled_model` and the transformer train step's
    peak, for `compiled_optimizers` (default: `optimizers`). AdamW, the baseline of
    every ratio, is always measured. The JSON record is rewritten to `output`
    after each part, so an interruption keeps what was measured. Raises
    ValueError for a `train_seq` beyond the transformer's context."""
    for name in models + [compiled_model]:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    ctx = transformer()["pos"].shape[0]
    if train_step and not 1 <= train_seq <= ctx:
        raise ValueError(f"train_seq (--train-seq) must be in [1, {ctx}], the "
                         f"transformer's context; got {train_seq}")
    optimizers = list(optimizers) + ([BASELINE] if BASELINE not in optimizers else [])
    chosen = list(compiled_optimizers or optimizers)
    chosen += [BASELINE] if BASELINE not in chosen else []
    parents = [registry.entry(n).parent for n in chosen if registry.entry(n).parent]
    chosen += [p for p in dict.fromkeys(parents) if p not in chosen]  # for `parent_rows`
    out = {"schema": records.SCHEMA, "kind": "memory", "environment": records.environment(),
           "method": __doc__.strip(), "memory_analysis_notes": MEMORY_ANALYSIS_NOTES,
           "rows": state_rows(list(models), optimizers), "storage": storage_state(),
           "compiled": [], "train_step": []}
    records.write_json(output, out)
    if compiled:
        log(f"compiling the update of {len(chosen)} optimizers on {compiled_model}")
        out["compiled"] = compiled_rows(compiled_model, chosen, log)
        records.write_json(output, out)
    if train_step:
        log(f"compiling the transformer train step ({train_batch} x {train_seq} "
            f"tokens) with {len(chosen)} optimizers")
        out["train_step"] = train_step_rows(chosen, train_batch, train_seq, log)
        out["parents"] = parent_rows(out["train_step"])
        records.write_json(output, out)
    return out


def summary(out: dict) -> str:
    """The tables of a `measure` record, as printed by `stam-bench memory`."""
    parts = ["Optimizer state, bytes per parameter (ratio to optax.adamw):\n",
             bytes_table(out["rows"])]
    if out["compiled"]:
        parts += ["\nCompiled optimizer update (params, grads, state in; params, state out), "
                  "total = argument + output - alias + temp:\n", compiled_table(out["compiled"])]
    if out["train_step"]:
        r0 = out["train_step"][0]
        parts += [f"\nTransformer train step ({r0['params'] / 1e6:.1f}M params, batch "
                  f"{r0['batch']} x {r0['seq']} tokens): optimizer state next to the step's "
                  "peak, peak = argument + output - alias + temp (params, grads, state, "
                  "activations, temporaries):\n", train_step_table(out["train_step"])]
        if out.get("parents"):
            parts += ["\nLow-bit and bf16 state against its float parent (donated train step; "
                      "the peak should save at least 0.8 of the state bytes saved):\n",
                      parent_table(out["parents"])]
    if out["compiled"] or out["train_step"]:
        parts.append(f"\nNote: {MEMORY_ANALYSIS_NOTES}")
    parts += ["", *storage_lines(out["storage"])]
    return "\n".join(parts)

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

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from stam_optimizer.benchmarks import files, registry, speed
from stam_optimizer.benchmarks.argtypes import optimizer_names

MB = 2**20
BASELINE = "adamw"
# Issue #5: int8 STAMLite state on the transformer, small float32 leaves included.
INT8_OPTIMIZER = "stam_lite_int8"
INT8_TARGET_MODEL = "transformer"
INT8_TARGET_BYTES_PER_PARAM = 1.10

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


def _sds(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _mlp(sizes: tuple[int, ...]) -> dict:
    """Dense layers with biases between consecutive `sizes`."""
    return {f"layer{i}": {"w": _sds(a, b), "b": _sds(b)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def small_mlp() -> dict:
    """64-128-64 MLP: 16.6k params, AdamW state ≈ 0.13 MB (as in 0.1.0)."""
    return _mlp((64, 128, 64))


def medium_mlp() -> dict:
    """1024-4096-4096-1024 MLP: 25.2M params, AdamW state ≈ 192.07 MB (as in 0.1.0)."""
    return _mlp((1024, 4096, 4096, 1024))


def wide_linear() -> dict:
    """One 8192×8192 linear layer with bias: 67.1M params, AdamW state ≈ 512.06 MB."""
    return {"w": _sds(8192, 8192), "b": _sds(8192)}


def transformer(vocab: int = 32000, d: int = 512, layers: int = 4, ctx: int = 1024) -> dict:
    """Decoder-only transformer: token and position embeddings, pre-norm blocks
    (layer norms with scale and bias, attention and MLP weights with biases) and
    a final layer norm; the output head is tied to the token embedding. The
    defaults give 29.5M params, 27.6k of them in leaves under 4096 elements."""
    def ln() -> dict:
        return {"scale": _sds(d), "bias": _sds(d)}

    def block() -> dict:
        return {"ln1": ln(), "ln2": ln(),
                "qkv": {"w": _sds(d, 3 * d), "b": _sds(3 * d)},
                "proj": {"w": _sds(d, d), "b": _sds(d)},
                "up": {"w": _sds(d, 4 * d), "b": _sds(4 * d)},
                "down": {"w": _sds(4 * d, d), "b": _sds(d)}}

    return {"embed": _sds(vocab, d), "pos": _sds(ctx, d),
            "blocks": [block() for _ in range(layers)], "ln_f": ln()}


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


def int8_target(model: str = INT8_TARGET_MODEL) -> dict:
    """Issue #5 check: int8 STAMLite state bytes/param on `model` ≤ 1.10."""
    params = get_model(model)
    n = param_count(params)
    b = state_bytes(registry.get(INT8_OPTIMIZER), params)
    base = state_bytes(registry.get(BASELINE), params)
    bpp = b / n
    return {"model": model, "optimizer": INT8_OPTIMIZER, "params": n, "state_bytes": b,
            "bytes_per_param": bpp, "limit": INT8_TARGET_BYTES_PER_PARAM,
            "times_smaller_than_adamw": base / b, "passed": bpp <= INT8_TARGET_BYTES_PER_PARAM}


def transformer_loss(params: dict, tokens: jax.Array) -> jax.Array:
    """Next-token cross-entropy of the `transformer` parameter tree on `tokens`
    (batch, seq + 1): pre-norm causal attention (heads of 64, at least one) and
    a GELU MLP per block, the output head tied to the token embedding."""
    d = params["embed"].shape[1]
    heads = max(1, d // 64)
    batch, seq = tokens.shape[0], tokens.shape[1] - 1

    def norm(x, p):
        mean = x.mean(-1, keepdims=True)
        return p["scale"] * (x - mean) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) \
            + p["bias"]

    def dense(x, p):
        return x @ p["w"] + p["b"]

    mask = jnp.tril(jnp.ones((seq, seq), bool))
    x = params["embed"][tokens[:, :-1]] + params["pos"][:seq]
    for blk in params["blocks"]:
        q, k, v = jnp.split(dense(norm(x, blk["ln1"]), blk["qkv"]), 3, axis=-1)
        q, k, v = (t.reshape(batch, seq, heads, d // heads) for t in (q, k, v))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // heads)
        att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(batch, seq, d)
        x = x + dense(out, blk["proj"])
        x = x + dense(jax.nn.gelu(dense(norm(x, blk["ln2"]), blk["up"])), blk["down"])
    logits = norm(x, params["ln_f"]) @ params["embed"].T
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _train_step(tx: optax.GradientTransformation) -> Callable:
    def step(params, state, tokens):
        loss, grads = jax.value_and_grad(transformer_loss)(params, tokens)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

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


def train_step_memory(tx: optax.GradientTransformation, params: dict, donate: bool,
                      batch: int, seq: int) -> dict:
    """Buffer sizes of the compiled transformer train step
    `(params, state, tokens) -> (params, state, loss)` on `batch × seq` tokens, lowered
    on abstract inputs, with params and state donated when `donate`; the fields of
    `compiled_memory`.
    """
    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be >= 1, got batch={batch}, seq={seq}")
    ctx = params["pos"].shape[0]
    if seq > ctx:
        raise ValueError(f"seq must be <= the model's context {ctx}, got {seq}")
    state = jax.eval_shape(tx.init, params)
    tokens = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    jitted = jax.jit(_train_step(tx), donate_argnums=(0, 1) if donate else ())
    return _analysis(jitted, params, state, tokens)


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


# --- reports ------------------------------------------------------------------------

def bytes_table(rows: list[dict]) -> str:
    """Markdown: state bytes/param (and ratio to AdamW) per optimizer × model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    cell = {(r["model"], r["optimizer"]): r for r in rows}
    params = {r["model"]: r["params"] for r in rows}
    head = " | ".join(f"{m} ({params[m] / 1e6:.2f}M)" for m in models)
    lines = [f"| optimizer | {head} |", "|---" * (len(models) + 1) + "|"]
    for name in optimizers:
        cells = []
        for m in models:
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


def target_line(t: dict) -> str:
    """PASS/MISS line of the int8 bytes/param target."""
    verdict = "PASS" if t["passed"] else "MISS"
    return (f"{verdict}: {t['optimizer']} on {t['model']} = {t['bytes_per_param']:.4f} "
            f"bytes/param (target <= {t['limit']:.2f}), {t['times_smaller_than_adamw']:.2f}x "
            "below AdamW, small float32 leaves and scalar state included")


# --- command line ---------------------------------------------------------------

def _model_list(text: str) -> list[str]:
    try:
        return parse_models(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _model_name(text: str) -> str:
    name = text.strip()
    if name not in MODELS:
        raise argparse.ArgumentTypeError(
            f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return name


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `stam-bench memory` to `parser`."""
    parser.add_argument("--models", type=_model_list, default=list(MODELS),
                        help=f"comma-separated models for state bytes: {', '.join(MODELS)}")
    parser.add_argument("--optimizers", type=optimizer_names, default=list(registry.OPTIMIZERS),
                        help="comma-separated registry names (default: all)")
    parser.add_argument("--compiled-optimizers", type=optimizer_names, default=None,
                        help="registry names whose compiled update and train step are "
                             "measured (default: those of --optimizers)")
    parser.add_argument("--compiled-model", type=_model_name, default=INT8_TARGET_MODEL,
                        help="model whose compiled update memory is measured")
    parser.add_argument("--no-compiled", action="store_true",
                        help="skip the compiled update memory")
    parser.add_argument("--train-batch", type=_positive_int, default=4,
                        help="sequences per train step of the transformer (default 4)")
    parser.add_argument("--train-seq", type=_positive_int, default=256,
                        help="tokens per sequence of the train step, <= 1024 (default 256)")
    parser.add_argument("--no-train-step", action="store_true",
                        help="skip the transformer train step's peak memory")
    parser.add_argument("--output", default="results/memory.json", help="JSON file to write")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Runs `stam-bench memory`: writes the JSON, prints the tables and the int8 verdict."""
    ctx = transformer()["pos"].shape[0]
    if not args.no_train_step and args.train_seq > ctx:
        print(f"stam-bench memory: --train-seq must be <= the transformer's context {ctx}, "
              f"got {args.train_seq}", file=sys.stderr)
        return 2
    optimizers = list(args.optimizers)
    if BASELINE not in optimizers:  # every ratio is to AdamW: always measure it
        optimizers.append(BASELINE)
    compiled = list(args.compiled_optimizers or optimizers)
    if BASELINE not in compiled:
        compiled.append(BASELINE)
    out = {"schema": 1, "kind": "memory", "environment": speed.environment(),
           "method": __doc__.strip(), "memory_analysis_notes": MEMORY_ANALYSIS_NOTES,
           "rows": state_rows(list(args.models), optimizers), "int8_target": int8_target(),
           "compiled": [], "train_step": []}
    files.write_json(args.output, out)
    if not args.no_compiled:
        _log(f"compiling the update of {len(compiled)} optimizers on {args.compiled_model}")
        out["compiled"] = compiled_rows(args.compiled_model, compiled, _log)
        files.write_json(args.output, out)
    if not args.no_train_step:
        _log(f"compiling the transformer train step ({args.train_batch} x {args.train_seq} "
             f"tokens) with {len(compiled)} optimizers")
        out["train_step"] = train_step_rows(compiled, args.train_batch, args.train_seq, _log)
        files.write_json(args.output, out)
    print("Optimizer state, bytes per parameter (ratio to optax.adamw):\n")
    print(bytes_table(out["rows"]))
    if out["compiled"]:
        print("\nCompiled optimizer update (params, grads, state in; params, state out), "
              "total = argument + output - alias + temp:\n")
        print(compiled_table(out["compiled"]))
    if out["train_step"]:
        r0 = out["train_step"][0]
        print(f"\nTransformer train step ({r0['params'] / 1e6:.1f}M params, batch {r0['batch']}"
              f" x {r0['seq']} tokens): optimizer state next to the step's peak, "
              "peak = argument + output - alias + temp (params, grads, state, activations, "
              "temporaries):\n")
        print(train_step_table(out["train_step"]))
    if out["compiled"] or out["train_step"]:
        print(f"\nNote: {MEMORY_ANALYSIS_NOTES}")
    print()
    print(target_line(out["int8_target"]))
    print(f"\nwritten: {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with the same options as `stam-bench memory`."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

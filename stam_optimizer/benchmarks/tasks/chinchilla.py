"""The one-Chinchilla regime of the gpt suite: small GPTs trained on 20 tokens per
parameter of the CPython-source corpus, every character seen at most once.

The model, schedule and recipe are those of the short-horizon gpt tasks
(`tasks/gpt.py`: pre-LayerNorm GPT without biases, untied head; linear warmup
over the first 10% of the steps then cosine to 0.1·peak; clipping at global norm
1; decoupled weight decay 0.1; AdamW's LLM settings b1 0.9, b2 0.95, eps 1e-8
wherever an optimizer has the same hyperparameter). What changes is the length
and the data:

* **Token budget.** Each task trains on `TOKENS_PER_PARAM` = 20 tokens (characters
  predicted) per *non-embedding* parameter: every parameter except the token
  embedding, the learned positions and the output head (the vocabulary and
  position matrices, which Kaplan et al. 2020 leave out of N). The same count for
  every optimizer. `token_budget` gives the steps: `20·N / (batch·context)`,
  rounded to the nearest whole number of evaluation intervals.
* **Widths.** Three widths at two layers span more than 4× in non-embedding
  parameters (`REGIME["full"]`), and the middle width runs a second time with a
  batch 8× larger on the same token budget (8× fewer steps).
* **Data.** Training batches come from the train split of the CPython-source
  corpus (`tasks/source_corpus.py`, split by file), cut into non-overlapping
  windows of context + 1 characters; each seed reads them in its own order,
  without replacement (`window_slots`), so no run sees a training character twice
  (`make` refuses a shape that would need more windows than the split has).
  Evaluation uses windows of the validation split (files no training batch
  contains): the curves on `EVAL_WINDOWS` of them, the compared metric
  `heldout_loss` once at the end on `TEST_WINDOWS`.
* **Protocol.** A half-decade grid of peak learning rates, the same for every
  optimizer (two more points beyond an edge where the best sits), chosen on the
  mean of 3 tuning seeds; then 8 final seeds at the chosen learning rate alone
  (`Task.final_at_best`), all seeds of a program batched with `vmap`.

Sizes: `full` is the regime; `tiny` is the same regime at toy widths (seconds,
for tests); `gpu` is one task for one GPU (`chinchilla_gpu`, about 0.4 M
non-embedding parameters: the largest at 20 tokens per parameter whose tokens fit
in the train split once), never run in CI. There is no quick size: `stam-bench
quick` keeps the short-horizon tasks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stam_optimizer.benchmarks.measure import memory
from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks import gpt as short
from stam_optimizer.benchmarks.tasks import source_corpus
from stam_optimizer.benchmarks.tasks.models import gpt, xent

SUITE = "chinchilla"
TOKENS_PER_PARAM = 20
PARAMS_COUNTED = ("non-embedding: every parameter except the token embedding, the "
                  "learned positions and the output head")
EMBEDDING_LEAVES = ("embed", "pos", "head")
HEAD_DIM = short.HEAD_DIM
# Smallest difference of held-out loss (nats/char) that counts, fixed before any full
# run: the short-horizon gpt tasks' 0.02.
MIN_EFFECT = 0.02
TARGET = 2.5  # held-out loss that counts as reached (steps to target), as the gpt tasks'
TUNE_SEEDS = (1000, 1001, 1002)
FINAL_SEEDS = tuple(range(8))


@dataclasses.dataclass(frozen=True)
class Shape:
    """One task of the regime: model width `d`, `layers`, `batch` sequences of
    `seq` characters per step."""

    d: int
    layers: int
    batch: int
    seq: int

    @property
    def heads(self) -> int:
        return max(1, self.d // HEAD_DIM)


# Task names are the same at every size; the shapes shrink at tiny.
REGIME: dict[str, dict[str, Shape]] = {
    "full": {"chinchilla_small": Shape(20, 2, 8, 64),
             "chinchilla_medium": Shape(32, 2, 8, 64),
             "chinchilla_large": Shape(48, 2, 8, 64),
             "chinchilla_medium_batch8x": Shape(32, 2, 64, 64)},
    "tiny": {"chinchilla_small": Shape(8, 1, 4, 16),
             "chinchilla_medium": Shape(12, 1, 4, 16),
             "chinchilla_large": Shape(16, 1, 4, 16),
             "chinchilla_medium_batch8x": Shape(12, 1, 32, 16)},
    "gpu": {"chinchilla_gpu": Shape(128, 2, 32, 128)},
}
FULL_TASKS = tuple(REGIME["full"])
GPU_TASKS = tuple(REGIME["gpu"])
# Peak learning rates, half-decades (the same for every optimizer).
GRID = {"tiny": (1e-2, 3e-2, 1e-1), "full": (1e-3, 3e-3, 1e-2, 3e-2),
        "gpu": (1e-3, 3e-3, 1e-2, 3e-2)}
SEEDS = {"tiny": ((1000,), (0, 1)), "full": (TUNE_SEEDS, FINAL_SEEDS),
         "gpu": (TUNE_SEEDS, FINAL_SEEDS)}
EVALS = {"tiny": 4, "full": 10, "gpu": 10}
EVAL_WINDOWS = {"tiny": 4, "full": 64, "gpu": 64}
TEST_WINDOWS = {"tiny": 8, "full": 512, "gpu": 512}

# The primary family, fixed before the run: (candidate, baseline) pairs. Each
# STAM-family optimizer and the strongest peers against AdamW; STAM against AdamW
# with β₁ fixed at STAM's own mean β₁ on the task (does adapting β₁ matter once
# runs are long?); STAM against AdamW with its β₁ tuned too (`TUNED_BETA1`); and
# each low-bit member of the registry against its float parent (`low_bit_pairs`);
# STAM with the relative β₁ signal against AdamW (added after the first 32 runs:
# the only signal that follows the noise level at the gradients' SNR).
PRIMARY_CANDIDATES = ("stam_full", "stam_lite", "adams", "muon")
# β₁ signals that follow the noise level at GPT gradients' SNR, against AdamW.
SIGNAL_CANDIDATES = ("stam_full_relative",)
BASELINE = "adamw"
TUNED_BETA1 = "adamw_tuned_b1"  # the per-task best of `adamw` and the β₁ grid
CORE = (BASELINE, *PRIMARY_CANDIDATES)


def adamw_beta1_runs() -> dict[str, float]:
    """The runs the β₁-tuned AdamW chooses from: optimizer name -> its β₁."""
    grid = {registry.adamw_beta1_entry(b).name: b for b in registry.ADAMW_BETA1_GRID}
    return {BASELINE: short.B1} | grid


def storage_bits(storage: str) -> int:
    """Bits per stored state value of a registry storage name ("int8" -> 8,
    "bfloat16" -> 16, "float32" -> 32); raises ValueError naming `storage` when it
    holds no number."""
    found = re.search(r"(\d+)", storage)
    if found is None:
        raise ValueError(f"storage {storage!r} names no bit width")
    return int(found.group(1))


def low_bit_pairs(entries: dict[str, registry.Entry] | None = None) -> list[tuple[str, str]]:
    """(member, float parent) for every registry entry that stores its state in 8
    bits or fewer and names its `parent`, in registry order; picks up low-bit
    entries as they are added."""
    entries = registry.ENTRIES if entries is None else entries
    return [(n, e.parent) for n, e in entries.items()
            if e.parent is not None and storage_bits(e.storage) <= 8]


def primary_family(entries: dict[str, registry.Entry] | None = None
                   ) -> tuple[tuple[str, str], ...]:
    """The primary comparisons (candidate, baseline), Holm-corrected together on the
    tasks of the regime; everything else is secondary.

    >>> primary_family()[:5]
    (('stam_full', 'adamw'), ('stam_lite', 'adamw'), ('adams', 'adamw'), ('muon', 'adamw'), \
('stam_full', 'stam_const_mean'))
    """
    pairs = [(c, BASELINE) for c in PRIMARY_CANDIDATES]
    pairs.append(("stam_full", "stam_const_mean"))
    pairs += low_bit_pairs(entries)
    pairs.append(("stam_full", TUNED_BETA1))
    pairs += [(c, BASELINE) for c in SIGNAL_CANDIDATES]
    return tuple(dict.fromkeys(pairs))


def optimizers(size: str) -> list[str]:
    """The optimizers the regime runs at `size`: at full and tiny every name the
    primary family needs (the β₁-tuned AdamW as its grid of runs); at gpu AdamW and
    the four primary candidates."""
    if size == "gpu":
        return list(CORE)
    names: list[str] = []
    for pair in primary_family():
        for n in pair:
            names += list(adamw_beta1_runs()) if n == TUNED_BETA1 else [n]
    return list(dict.fromkeys(names))


def count_params(params: Any) -> tuple[int, int]:
    """(non-embedding, total) parameter counts of a gpt parameter tree (arrays or
    shapes); the embedding leaves are `EMBEDDING_LEAVES`."""
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    emb = sum(int(np.prod(params[k].shape)) for k in EMBEDDING_LEAVES)
    return total - emb, total


def token_budget(params: int, batch: int, seq: int, evals: int = 1,
                 tokens_per_param: float = TOKENS_PER_PARAM) -> tuple[int, int]:
    """(steps, eval_every) to train `params` parameters on `tokens_per_param`
    tokens each, `batch·seq` tokens per step: the steps of the budget,
    `tokens_per_param·params / (batch·seq)`, rounded to the nearest whole number of
    `evals` evaluation intervals (so the tokens trained are within half an interval
    of the budget), at least one interval.

    >>> token_budget(24736, 8, 64, evals=10)  # 494720 tokens: 966.25 steps
    (970, 97)
    >>> token_budget(24736, 64, 64, evals=10)  # 8x the batch: 120.8 steps
    (120, 12)
    """
    for name, value in (("params", params), ("batch", batch), ("seq", seq), ("evals", evals)):
        if value < 1:
            raise ValueError(f"token_budget: {name} must be >= 1, got {value}")
    if tokens_per_param <= 0:
        raise ValueError(f"token_budget: tokens_per_param must be > 0, got {tokens_per_param}")
    exact = tokens_per_param * params / (batch * seq)
    evals = max(1, min(evals, math.ceil(exact)))
    every = max(1, math.floor(exact / evals + 0.5))
    return every * evals, every


def window_order(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed permutations (p, q) of range(n) that `window_slots` composes with a
    per-seed rotation."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n).astype(np.int32), rng.permutation(n).astype(np.int32)


def window_slots(key: jax.Array, slots: jax.Array, p: jax.Array, q: jax.Array) -> jax.Array:
    """The training windows read at `slots` (0, 1, 2, ... in reading order) by the
    seed whose data key is `key`: `p[(q[slot] + r) mod n]` with a rotation r drawn
    from `key`. For every key this is a permutation of range(n), so the slots
    0..n-1 read each window exactly once: windows are drawn without replacement."""
    n = p.shape[0]
    r = (jax.random.bits(key, (), jnp.uint32) % n).astype(jnp.int32)
    return p[(q[slots] + r) % n]


def _windows(codes: np.ndarray, seq: int) -> np.ndarray:
    n = len(codes) // (seq + 1)
    return codes[: n * (seq + 1)].reshape(n, seq + 1)


def _spread(windows: np.ndarray, count: int) -> np.ndarray:
    return windows[np.linspace(0, len(windows) - 1, min(count, len(windows))).astype(np.int64)]


def _size_of(cfg: Config, name: str) -> str:
    sizes = [s for s, tasks in REGIME.items() if name in tasks]
    if cfg.size not in sizes:
        raise ValueError(f"task {name}: size must be one of {', '.join(sizes)} (the "
                         f"one-Chinchilla regime has no {cfg.size!r} size), got {cfg.size!r}")
    if cfg.steps is not None:
        raise ValueError(f"task {name}: steps cannot be overridden; they follow from "
                         f"{TOKENS_PER_PARAM} tokens per parameter")
    return cfg.size


def make(cfg: Config, name: str) -> Task:
    """The task `name` of the regime at the size of `cfg` (tiny, full or gpu)."""
    size = _size_of(cfg, name)
    shape = REGIME[size][name]
    vocab = source_corpus.source_vocabulary()
    train = _windows(source_corpus.encode(source_corpus.load_source_corpus("train"), vocab),
                     shape.seq)
    val = _windows(source_corpus.encode(source_corpus.load_source_corpus("validation"), vocab),
                   shape.seq)
    init, apply = gpt(len(vocab), shape.d, shape.layers, shape.heads, shape.seq)
    n_params, n_total = count_params(jax.eval_shape(init, jax.random.key(0)))
    steps, every = token_budget(n_params, shape.batch, shape.seq, EVALS[size])
    tokens = steps * shape.batch * shape.seq
    if steps * shape.batch > len(train):
        raise ValueError(f"task {name} at size {size}: {steps} steps x batch {shape.batch} "
                         f"need {steps * shape.batch} windows of {shape.seq + 1} characters; "
                         f"the train split has {len(train)}")
    warmup = max(1, round(short.WARMUP_FRACTION * steps))
    windows = jnp.asarray(train)
    p, q = (jnp.asarray(a) for a in window_order(len(train)))
    eval_set = jnp.asarray(_spread(val, EVAL_WINDOWS[size]), jnp.int32)
    test_set = jnp.asarray(_spread(val, TEST_WINDOWS[size]), jnp.int32)
    offsets = jnp.arange(shape.batch)

    def batch(key, step):
        rows = window_slots(key, step * shape.batch + offsets, p, q)
        return windows[rows].astype(jnp.int32)

    def loss(params, b):
        return xent(apply(params, b[:, :-1]), b[:, 1:])

    def evaluate(params, step):
        return {"val_loss": xent(apply(params, eval_set[:, :-1]), eval_set[:, 1:])}

    def test(params):
        return {"heldout_loss": xent(apply(params, test_set[:, :-1]), test_set[:, 1:])}

    def record(opt: str) -> dict:
        tx = short.llm_optimizer(opt, 1e-3, steps, warmup)
        return {"params": n_params, "params_total": n_total, "params_counted": PARAMS_COUNTED,
                "tokens_per_param": TOKENS_PER_PARAM, "tokens_per_run": tokens,
                "steps": steps, "batch": shape.batch, "seq": shape.seq, "d": shape.d,
                "layers": shape.layers, "train_windows": len(train),
                "windows_per_run": steps * shape.batch,
                "state_bytes": memory.state_bytes(tx, jax.eval_shape(init, jax.random.key(0))),
                "recipe": short.recipe(opt)}

    desc = (f"GPT d {shape.d}, {shape.layers} layers, {shape.heads} heads, context "
            f"{shape.seq}; {n_params} non-embedding parameters ({n_total} in all) x "
            f"{TOKENS_PER_PARAM} tokens each: {steps} steps x batch {shape.batch} = {tokens} "
            f"tokens, each a character of the CPython-source train split read once "
            f"({steps * shape.batch} of its {len(train)} windows, without replacement); "
            f"warmup {warmup} steps then cosine to {short.FINAL_LR_FRACTION:g}·peak, clip "
            f"{short.CLIP_NORM:g}, weight decay {short.WEIGHT_DECAY:g}; metric: cross-entropy "
            f"in nats/char on {len(test_set)} windows of the held-out validation files")
    tune, final = SEEDS[size]
    return Task(name=name, suite=SUITE, description=desc, init=init, batch=batch, loss=loss,
                evaluate=evaluate, test=test, metric="heldout_loss", steps=steps,
                eval_every=every, batch_size=shape.batch, min_effect=MIN_EFFECT,
                target=TARGET, lr_grid=GRID[size],
                make_optimizer=lambda opt, lr: short.llm_optimizer(opt, lr, steps, warmup),
                seeds=(list(tune), list(final)), fixed_grid=True, record=record,
                seed_batches=True, final_at_best=True)


def regime_table(size: str = "full", names: Iterable[str] | None = None) -> list[dict]:
    """One row per task of `size`: its shape, parameter counts, tokens and steps."""
    if size not in REGIME:
        raise ValueError(f"size must be one of {', '.join(REGIME)}, got {size!r}")
    vocab = len(source_corpus.source_vocabulary())
    rows = []
    for name in names or REGIME[size]:
        s = REGIME[size][name]
        init, _ = gpt(vocab, s.d, s.layers, s.heads, s.seq)
        n, total = count_params(jax.eval_shape(init, jax.random.key(0)))
        steps, _ = token_budget(n, s.batch, s.seq, EVALS[size])
        rows.append({"task": name, "d": s.d, "layers": s.layers, "params": n,
                     "params_total": total, "batch": s.batch, "seq": s.seq, "steps": steps,
                     "tokens": steps * s.batch * s.seq})
    return rows


TASKS = {n: (lambda cfg, n=n: make(cfg, n)) for n in (*FULL_TASKS, *GPU_TASKS)}

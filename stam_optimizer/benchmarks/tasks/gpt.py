"""Small GPTs trained the way language models are trained (suite gpt).

A pre-LayerNorm GPT decoder (no biases, untied embedding and head) predicts the
next character of real text, at several widths and a fixed depth, with and
without qk-layernorm and z-loss. Every optimizer gets the same recipe:

* peak learning rate η from the grid, linear warmup over the first
  `WARMUP_FRACTION` of the steps, then cosine decay to `FINAL_LR_FRACTION`·η;
* gradients clipped to global norm `CLIP_NORM` before the optimizer;
* decoupled weight decay `WEIGHT_DECAY`, multiplied by the scheduled learning
  rate (as in `optax.adamw`), on every parameter;
* AdamW's language-model settings b1 0.9, b2 0.95, eps 1e-8; where an optimizer
  has the same hyperparameter it gets the same value (each registry entry's `notes` say
  what each one gets and why).

Schedule-free AdamW replaces the decay by its iterate averaging: it gets the
same warmup and then a constant learning rate (its authors' recipe), and it is
evaluated at its averaged parameters (`optax.contrib.schedule_free_eval_params`).

The grid is the same for every optimizer: half-decades 3e-4 … 3e-1 at full
size; the runner adds two more points beyond an edge where the best sits.
Each run record also holds the optimizer's state bytes and the peak memory of
the compiled train step (`memory.step_memory`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer.benchmarks.measure import memory
from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks import data
from stam_optimizer.benchmarks.tasks.models import gpt, token_windows, xent, z_loss

WARMUP_FRACTION = 0.1
FINAL_LR_FRACTION = 0.1
CLIP_NORM = 1.0
WEIGHT_DECAY = 0.1
B1, B2, EPS = 0.9, 0.95, 1e-8
Z_LOSS = 1e-4
LAYERS, HEAD_DIM = 2, 16

# Peak learning rates, half-decades (the same for every optimizer).
GRID = {"tiny": (3e-2, 1e-1, 3e-1), "quick": (3e-3, 1e-2, 3e-2, 1e-1),
        "full": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)}
# (tuning seeds, final seeds)
SEEDS = {"tiny": ((1000,), (0, 1)), "quick": ((1000,), (0, 1)),
         "full": ((1000,), (0, 1, 2, 3, 4))}
# Per width: (steps, batch, context); tokens per run = steps x batch x context.
SHAPES = {"tiny": (12, 4, 16), "quick": (120, 8, 32), "full": (200, 8, 64)}
EVALS = {"tiny": 4, "quick": 12, "full": 20}
VAL_WINDOWS = {"tiny": 4, "quick": 16, "full": 32}

def warmup_cosine(steps: int, warmup: int, final_fraction: float = FINAL_LR_FRACTION):
    """`t -> multiplier of the peak lr`: (t+1)/warmup for t < warmup, then cosine
    from 1 down to `final_fraction` at the last step. Pure jnp (traceable)."""

    def f(t):
        t = jnp.asarray(t, jnp.float32)
        frac = jnp.clip((t - warmup) / max(steps - warmup - 1, 1), 0.0, 1.0)
        cos = final_fraction + (1 - final_fraction) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(t < warmup, (t + 1) / warmup, cos)

    return f


def _matrices_only(params):
    """Muon's dimension numbers: the block matrices (reduction axis 0, output
    axis 1); None (its Adam) for embeddings, positions, head and gains."""
    spec = optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    return {k: ([{n: spec if getattr(v, "ndim", 0) == 2 else None
                 for n, v in blk.items()} for blk in sub]
                if k == "blocks" else None) for k, sub in params.items()}


# What every optimizer gets where it has the hyperparameter (see registry.Recipe).
RECIPE = registry.Recipe(weight_decay=WEIGHT_DECAY, b1=B1, b2=B2, eps=EPS,
                         decay_everything=True, matrix_axes=_matrices_only)


def schedule(entry: registry.Entry, lr: Any, steps: int, warmup: int) -> Any:
    """The learning rate at step t for `entry` at peak `lr`: warmup then cosine, or
    warmup then constant for an entry whose averaging replaces the decay."""
    if entry.warmup_only:
        return lambda t: lr * jnp.minimum((jnp.asarray(t, jnp.float32) + 1) / warmup, 1.0)
    mult = warmup_cosine(steps, warmup)
    return lambda t: lr * mult(t)


def llm_optimizer(name: str, lr: Any, steps: int, warmup: int) -> optax.GradientTransformation:
    """The registry optimizer `name` with the suite's recipe at peak learning rate
    `lr` (a float or a traced scalar): clipping, then the entry built at the
    schedule with `RECIPE` (weight decay, LLM betas)."""
    entry = registry.entry(name)
    return optax.chain(optax.clip_by_global_norm(CLIP_NORM),
                       entry.build(schedule(entry, lr, steps, warmup), RECIPE))


def recipe(name: str) -> str:
    """How `llm_optimizer` sets up `name`, in words (the report's hyperparameter list)."""
    return registry.entry(name).notes


@dataclasses.dataclass(frozen=True)
class Variant:
    d: int
    qk_norm: bool = False
    z_loss: bool = False

    @property
    def name(self) -> str:
        return f"gpt_d{self.d}" + ("_qk" if self.qk_norm else "") + ("_z" if self.z_loss else "")


WIDTHS = (16, 32, 64)
VARIANTS = tuple([Variant(d, qk) for d in WIDTHS for qk in (False, True)]
                 + [Variant(WIDTHS[-1], False, True)])
QUICK_VARIANTS = (Variant(16),)


def _corpus() -> tuple[np.ndarray, int]:
    codes, chars = data.encode_chars(data.load_text_corpus())
    return codes, len(chars)


def make(cfg: Config, v: Variant) -> Task:
    """The task of variant `v` at the size of `cfg`."""
    codes, vocab = _corpus()
    split = int(len(codes) * 0.9)
    train, val_stream = codes[:split], codes[split:]
    steps, batch_size, seq = SHAPES[cfg.size] if cfg.steps is None else (
        cfg.steps, *SHAPES[cfg.size][1:])
    steps, every = Config(size=cfg.size, steps=steps).schedule(steps, steps, steps,
                                                               EVALS[cfg.size])
    warmup = max(1, round(WARMUP_FRACTION * steps))
    init, apply = gpt(vocab, v.d, LAYERS, max(1, v.d // HEAD_DIM), seq, qk_norm=v.qk_norm)
    batch, val = token_windows(train, val_stream, seq, batch_size, VAL_WINDOWS[cfg.size])

    def loss(params, b):
        logits = apply(params, b[:, :-1])
        out = xent(logits, b[:, 1:])
        return out + z_loss(logits, Z_LOSS) if v.z_loss else out

    def evaluate(params, step):
        return {"val_loss": xent(apply(params, val[:, :-1]), val[:, 1:])}

    def record(name: str) -> dict:
        p = jax.eval_shape(init, jax.random.key(0))
        tx = llm_optimizer(name, 1e-3, steps, warmup)
        b = jax.ShapeDtypeStruct((batch_size, seq + 1), jnp.int32)
        return {"params": memory.param_count(p), "state_bytes": memory.state_bytes(tx, p),
                "train_step_peak_bytes": memory.peak_bytes(memory.step_memory(loss, tx, p, b)),
                "tokens_per_run": tokens, "recipe": recipe(name)}

    tokens = steps * batch_size * seq
    heads = max(1, v.d // HEAD_DIM)
    desc = (f"GPT d {v.d}, {LAYERS} layers, {heads} heads, context {seq}, "
            f"qk-layernorm {'on' if v.qk_norm else 'off'}, z-loss "
            f"{f'{Z_LOSS:g}·log²Z' if v.z_loss else 'off'}; characters of Python "
            f"standard-library docstrings (frozen snapshot, PSF license); {steps} steps x "
            f"batch {batch_size} = {tokens} tokens ({tokens / len(train):.2f} epochs of "
            f"{len(train)} training characters); warmup {warmup} steps then cosine to "
            f"{FINAL_LR_FRACTION:g}·peak, clip {CLIP_NORM:g}, weight decay {WEIGHT_DECAY:g}; "
            "metric: validation cross-entropy in nats/char")
    tune, final = SEEDS[cfg.size]
    return Task(name=v.name, suite="gpt", description=desc, init=init, batch=batch, loss=loss,
                evaluate=evaluate, steps=steps, eval_every=every, batch_size=batch_size,
                min_effect=0.02, target=2.5, lr_grid=GRID[cfg.size],
                make_optimizer=lambda name, lr: llm_optimizer(name, lr, steps, warmup),
                seeds=(list(tune), list(final)), fixed_grid=True,
                record=record)


TASKS = {v.name: (lambda cfg, v=v: make(cfg, v)) for v in VARIANTS}

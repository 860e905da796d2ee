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
  has the same hyperparameter it gets the same value (`HYPERPARAMETERS` says
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

import stam_optimizer as so
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

HYPERPARAMETERS = {
    "adamw": "b1 0.9, b2 0.95, eps 1e-8 (the LLM baseline)",
    "stam_full": "b1_base 0.9, b2 0.95 (AdamW's), eps 1e-8; adaptive β₁ at its defaults",
    "stam_full_energy": "as stam_full, with the energy β₁ signal",
    "stam_const_mean": "as stam_full with α = 0 and β₁ fixed at the mean β₁ that stam_full "
                       "used on the task (AdamW with that β₁): does adapting β₁ matter, or "
                       "only its level?",
    "stam_lite": "b1_base 0.9, eps 1e-8; it has no b2 (per-tensor moments, decay 0.99 "
                 "default); adaptive β₁ at its defaults",
    "stam_lite_energy": "as stam_lite, with the energy β₁ signal",
    "stam_lite_int8": "as stam_lite, momentum stored in int8",
    "adams": "b1 0.9, b2 0.95, eps 1e-8",
    "adafactor": "optax defaults (factored second moment, decay_rate 0.8, update clipping "
                 "1.0, parameter-scaled steps, no momentum); its decay rate is given as "
                 "0.1 × the scheduled lr so that it is decoupled like AdamW's",
    "lion": "b1 0.9, b2 0.99 (Lion's defaults: its b2 plays another role than Adam's)",
    "muon": "Newton–Schulz on the block matrices (beta 0.95, nesterov); embedding, "
            "positions, head and gains by its internal Adam with b2 0.95; one learning "
            "rate for both",
    "schedule_free_adamw": "b1 0.9, b2 0.95, eps 1e-8; warmup then constant lr (no "
                           "cosine: its averaging replaces the decay); evaluated at its "
                           "averaged parameters",
}
OPTIMIZERS = tuple(HYPERPARAMETERS)
QUICK_OPTIMIZERS = ("adamw", "stam_full", "stam_lite")


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


def llm_optimizer(name: str, lr: Any, steps: int, warmup: int) -> optax.GradientTransformation:
    """The optimizer `name` with the suite's recipe at peak learning rate `lr`
    (a float or a traced scalar): clipping, schedule, weight decay, LLM betas.
    Any other registry name (a user's factory, `registry.load`) is built at the
    schedule and the suite's weight decay, with its own defaults otherwise."""
    mult = warmup_cosine(steps, warmup)
    sched = lambda t: lr * mult(t)  # noqa: E731
    wd = WEIGHT_DECAY
    if name == "adamw":
        tx = optax.adamw(sched, b1=B1, b2=B2, eps=EPS, weight_decay=wd)
    elif name in ("stam_full", "stam_full_energy"):
        kw = {"signal": "energy"} if name.endswith("_energy") else {}
        tx = so.stam(sched, b1_base=B1, b2=B2, eps=EPS, weight_decay=wd, **kw)
    elif registry.const_beta(name) is not None:  # stam_const_mean's "stam_const_beta=<b>"
        tx = so.stam(sched, b1_base=registry.const_beta(name), b2=B2, eps=EPS,
                     weight_decay=wd, adapt_strength=0.0)
    elif name in ("stam_lite", "stam_lite_energy", "stam_lite_int8"):
        kw = {"signal": "energy"} if name.endswith("_energy") else {}
        if name == "stam_lite_int8":
            kw["state_dtype"] = "int8"
        tx = so.stam_lite(sched, b1_base=B1, eps=EPS, weight_decay=wd, **kw)
    elif name == "adams":
        tx = so.adams(sched, b1=B1, b2=B2, eps=EPS, weight_decay=wd)
    elif name == "adafactor":
        tx = optax.adafactor(sched, weight_decay_rate=lambda t: wd * sched(t))
    elif name == "lion":
        tx = optax.lion(sched, b1=B1, b2=0.99, weight_decay=wd)
    elif name == "muon":
        tx = optax.contrib.muon(sched, weight_decay=wd, adam_b1=B1, adam_b2=B2,
                                adam_weight_decay=wd,
                                muon_weight_dimension_numbers=_matrices_only)
    elif name == "schedule_free_adamw":
        tx = optax.contrib.schedule_free_adamw(
            lambda t: lr * jnp.minimum((jnp.asarray(t, jnp.float32) + 1) / warmup, 1.0),
            b1=B1, b2=B2, eps=EPS, weight_decay=wd)
    elif name in registry.OPTIMIZERS:  # e.g. a user's factory (`registry.load`)
        tx = registry.get(name, sched, wd)
    else:
        raise ValueError(f"optimizer {name!r} has no gpt recipe and is not in the registry; "
                         f"choose from {', '.join(OPTIMIZERS)}")
    return optax.chain(optax.clip_by_global_norm(CLIP_NORM), tx)


def recipe(name: str) -> str:
    """How `llm_optimizer` sets up `name`, in words (the report's hyperparameter list)."""
    b = registry.const_beta(name)
    if b is not None:
        return f"{HYPERPARAMETERS['stam_const_mean']} (β₁ = {b:g})"
    return HYPERPARAMETERS.get(name, "its factory's own defaults at the suite's schedule and "
                                     f"weight decay {WEIGHT_DECAY:g}")


def eval_params(name: str, params: Any, state: Any) -> Any:
    """The parameters at which `name` is evaluated: schedule-free AdamW's
    averaged iterate, the training parameters for every other optimizer."""
    if name != "schedule_free_adamw":
        return params
    sf = [s for s in jax.tree.leaves(state, is_leaf=_is_schedule_free)
          if _is_schedule_free(s)]
    return optax.contrib.schedule_free_eval_params(sf[0], params)


def _is_schedule_free(x: Any) -> bool:
    return isinstance(x, optax.contrib.ScheduleFreeState)


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
                eval_params=eval_params, seeds=(list(tune), list(final)), fixed_grid=True,
                record=record)


TASKS = {v.name: (lambda cfg, v=v: make(cfg, v)) for v in VARIANTS}

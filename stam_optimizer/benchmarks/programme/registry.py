"""The optimizer registry: one `Entry` per optimizer, and every suite reads it.

An entry says how to build the optimizer from a learning rate (a float or a
schedule) and a suite's `Recipe`, and what the suites, the measurements and the
report need to know about it: its label and family, whether its weight decay is
decoupled, which β₁ signal it adapts with, how its state is stored and which
float optimizer it stores differently, where it runs by default, and how the
gpt suite schedules and evaluates it. Adding an optimizer is one `add(Entry(...))`.

The general suites build every optimizer with `DEFAULT` (each optimizer's own
defaults, decoupled weight decay `WD` = 0.01 where it has one) at learning rate
1 and scale the update; the gpt suite passes its schedule and its recipe (the
LLM settings of AdamW wherever an optimizer has the same hyperparameter).

>>> import jax.numpy as jnp
>>> from stam_optimizer.benchmarks.programme import registry
>>> entry = registry.entry("adamw")
>>> entry.label, entry.family, entry.decoupled_wd
('AdamW', 'peer', True)
>>> tx = entry.build(1e-3, registry.Recipe(weight_decay=0.1, b2=0.95))
>>> tx.init({"w": jnp.zeros(3)})[0].count
Array(0, dtype=int32)
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

import stam_optimizer as so

WD = 0.01
BASELINE = "adamw"  # what every comparison and ratio is against
FAMILIES = ("stam", "peer", "variant", "user")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The hyperparameters a suite gives every optimizer that has them.

    `b1`, `b2`, `eps`: None leaves the optimizer's own default. `weight_decay`
    goes to every decoupled weight decay; `decay_everything` also gives it to
    optimizers whose defaults have none (Adafactor, Muon's internal Adam).
    `matrix_axes(params)`: Muon's dimension numbers for the model (None: its own).
    """

    weight_decay: float = WD
    b1: float | None = None
    b2: float | None = None
    eps: float | None = None
    decay_everything: bool = False
    matrix_axes: Callable[[Any], Any] | None = None

    def given(self, **names: str) -> dict[str, Any]:
        """Keyword arguments `{optimizer_arg: value}` for the recipe fields `names`
        maps to them (`given(b1="b1_base")`), leaving out the fields that are None."""
        values = {arg: getattr(self, field) for field, arg in names.items()}
        return {arg: v for arg, v in values.items() if v is not None}


DEFAULT = Recipe()

Build = Callable[[Any, Recipe], optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One optimizer of the benchmark.

    name: its registry name (`--optimizers`, file names, records).
    build: `build(learning_rate, recipe)` -> optax transformation.
    label: the name the report prints.
    family: "stam" (STAM, STAMLite and their storage variants), "variant"
      (ablations of those; with "stam" the report's primary family), "peer"
      (other optimizers) or "user".
    notes: how it takes the recipe, in words (the report's hyperparameter list).
    decoupled_wd: its update is `-lr·(direction + weight_decay·params)` (the
      lr x weight-decay sweep varies it inside one compiled program).
    signal: the β₁ signal it adapts with ("spec", "energy", "relative"); None: no
      adaptive β₁.
    storage: how its state is stored ("float32", "bfloat16", "int8", ...).
    parent: the optimizer it stores differently (its parity reference).
    update_bytes: bytes moved per parameter by one float32 update, counted from
      the update rule of docs/math.md (`stam-bench speed` reports the achieved
      bandwidth): AdamW reads p, g, m, v and writes p, m, v (28); STAM reads g
      and μ for its statistics first (36); STAMLite reads g for its statistics,
      then g, μ, p in and μ, p out (24); AdamS reads p, g, m and writes p, m
      (20). The energy signal reads the same for STAM and adds a read of μ for
      STAMLite (28).
    full: in the general suites' default set at full size.
    quick: in every general suite at quick size (True), or on these tasks only.
    gpt: in the gpt suite (at quick size too when `quick` is True).
    ablation: in the ablation suite.
    warmup_only: the gpt schedule holds the peak after warmup (no cosine decay).
    linear_in_lr: its update is `lr·(update at lr 1)`, so the general suites can
      build it once and scale; otherwise only suites that build per lr run it.
    eval_params: `(params, state) -> parameters to evaluate` (None: params).
    depends_on: the run on the same task this entry is built from; `from_run`
      then turns that run's mean β₁ into the entry that actually runs.
    """

    name: str
    build: Build
    label: str = ""
    family: str = "peer"
    notes: str = ""
    decoupled_wd: bool = False
    signal: str | None = None
    storage: str = "float32"
    parent: str | None = None
    update_bytes: int | None = None
    full: bool = True
    quick: bool | tuple[str, ...] = False
    gpt: bool = False
    ablation: bool = False
    warmup_only: bool = False
    linear_in_lr: bool = True
    eval_params: Callable[[Any, Any], Any] | None = None
    depends_on: str | None = None
    from_run: Callable[[float], Entry] | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"Entry {self.name!r}: family must be one of {FAMILIES}, "
                             f"got {self.family!r}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def on_task(self, task: str) -> bool:
        """True when the entry runs on `task` at quick size."""
        return self.quick is True or (isinstance(self.quick, tuple) and task in self.quick)


ENTRIES: dict[str, Entry] = {}


def add(entry: Entry) -> Entry:
    """Registers `entry`; raises ValueError if its name is taken."""
    if entry.name in ENTRIES or entry.name.startswith(CONST_BETA_PREFIX):
        raise ValueError(f"optimizer {entry.name!r} is a registry name already")
    ENTRIES[entry.name] = entry
    return entry


# --- how the optimizers take a recipe ---------------------------------------------------

def _stam(**fixed: Any) -> Build:
    return lambda lr, r: so.stam(lr, weight_decay=r.weight_decay,
                                 **r.given(b1="b1_base", b2="b2", eps="eps") | fixed)


def _stam_lite(**fixed: Any) -> Build:
    return lambda lr, r: so.stam_lite(lr, weight_decay=r.weight_decay,
                                      **r.given(b1="b1_base", eps="eps") | fixed)


def _scaled(lr: Any, factor: float) -> Any:
    """`factor·lr`, for a float or a schedule."""
    return (lambda t: factor * lr(t)) if callable(lr) else factor * lr


def _adafactor(lr: Any, r: Recipe) -> optax.GradientTransformation:
    if not r.decay_everything:
        return optax.adafactor(lr)
    return optax.adafactor(lr, weight_decay_rate=_scaled(lr, r.weight_decay))


def _muon(lr: Any, r: Recipe) -> optax.GradientTransformation:
    extra = r.given(b1="adam_b1", b2="adam_b2")
    if r.decay_everything:
        extra["adam_weight_decay"] = r.weight_decay
    if r.matrix_axes is not None:
        extra["muon_weight_dimension_numbers"] = r.matrix_axes
    return optax.contrib.muon(lr, weight_decay=r.weight_decay, **extra)


def _adamw(lr: Any, r: Recipe) -> optax.GradientTransformation:
    return optax.adamw(lr, weight_decay=r.weight_decay, **r.given(b1="b1", b2="b2", eps="eps"))


# Leaves of at least one block are stored low-bit in the benchmark, so that the small
# models of the suites are quantised too (the library's default, 4096, keeps them
# float32, and a parity test on them would compare an optimizer with itself).
LOW_BIT_MIN_SIZE = 128


def _low_bit(build: Build, bits: int) -> Build:
    """`build`'s optimizer with its state stored in `bits` bits (`so.quantized_state`,
    leaves of at least `LOW_BIT_MIN_SIZE` entries)."""
    return lambda lr, r: so.quantized_state(build(lr, r), bits=bits,
                                            min_size=LOW_BIT_MIN_SIZE)


# The benchmark factors every matrix of the small suite models (the library's
# default, 128, would leave them unfactored: factored AdamW would be AdamW).
FACTOR_MIN_DIM = 16


def _factored_adamw(lr: Any, r: Recipe) -> optax.GradientTransformation:
    return so.factored_adamw(lr, weight_decay=r.weight_decay, min_dim_to_factor=FACTOR_MIN_DIM,
                             **r.given(b1="b1", b2="b2", eps="eps"))


def _schedule_free_eval(params: Any, state: Any) -> Any:
    found = [s for s in jax.tree.leaves(state, is_leaf=_is_schedule_free)
             if _is_schedule_free(s)]
    return optax.contrib.schedule_free_eval_params(found[0], params)


def _is_schedule_free(x: Any) -> bool:
    return isinstance(x, optax.contrib.ScheduleFreeState)


# "stam_const_beta=<b>": STAM with α = 0 and β₁ = b, 0 < b < 1 (`const_beta_entry`).
CONST_BETA_PREFIX = "stam_const_beta="


def const_beta(name: str) -> float | None:
    """The β₁ of a `"stam_const_beta=<b>"` name; None for any other name.

    Raises ValueError when the number after '=' is not in (0, 1)."""
    if not name.startswith(CONST_BETA_PREFIX):
        return None
    try:
        b = float(name[len(CONST_BETA_PREFIX):])
    except ValueError:
        b = float("nan")
    if not 0.0 < b < 1.0:
        raise ValueError(f"{name!r}: the constant beta1 after '=' must be a number in (0, 1)")
    return b


def _from_source(lr: Any, r: Recipe) -> optax.GradientTransformation:
    raise ValueError("stam_const_mean is built from the stam_full run on the same task "
                     "(registry.Entry.from_run); run it through a suite, or name "
                     "'stam_const_beta=<b>' for a constant beta1 of b")


def const_beta_entry(b: float) -> Entry:
    """STAM with α = 0 and β₁ = b (AdamW with that β₁), named `stam_const_beta=<b>`."""
    return Entry(f"{CONST_BETA_PREFIX}{b}", _stam(b1_base=b, adapt_strength=0.0),
                 label=f"STAM α=0, β₁={b:g}", family="variant", decoupled_wd=True, full=False,
                 notes=f"as stam_full with α = 0: AdamW with β₁ = {b:g}")


for _entry in (
    Entry("stam_full", _stam(), "STAM", "stam", decoupled_wd=True, signal="spec",
          update_bytes=36, quick=True, gpt=True, ablation=True,
          notes="b1_base 0.9, b2 0.95 (AdamW's), eps 1e-8; adaptive β₁ at its defaults"),
    Entry("stam_full_bf16", _stam(mu_dtype="bfloat16"), "STAM bf16", "stam", decoupled_wd=True,
          signal="spec", storage="bfloat16", parent="stam_full",
          notes="as stam_full, momentum stored in bfloat16"),
    Entry("stam_full_energy", _stam(signal="energy"), "STAM energy", "variant",
          decoupled_wd=True, signal="energy", update_bytes=36, gpt=True, ablation=True,
          notes="as stam_full, with the energy β₁ signal"),
    Entry("stam_full_relative", _stam(signal="relative"), "STAM relative", "variant",
          decoupled_wd=True, signal="relative", update_bytes=36,
          notes="as stam_full, with the relative β₁ signal (residual energy against its "
                "slow average)"),
    Entry("stam_lite", _stam_lite(), "STAMLite", "stam", decoupled_wd=True, signal="spec",
          update_bytes=24, quick=True, gpt=True, ablation=True,
          notes="b1_base 0.9, eps 1e-8; it has no b2 (per-tensor moments, decay 0.99 "
                "default); adaptive β₁ at its defaults"),
    Entry("stam_lite_energy", _stam_lite(signal="energy"), "STAMLite energy", "variant",
          decoupled_wd=True, signal="energy", update_bytes=28, gpt=True, ablation=True,
          notes="as stam_lite, with the energy β₁ signal"),
    Entry("stam_lite_bf16", _stam_lite(state_dtype="bfloat16"), "STAMLite bf16", "stam",
          decoupled_wd=True, signal="spec", storage="bfloat16", parent="stam_lite",
          update_bytes=20, notes="as stam_lite, state stored in bfloat16"),
    Entry("stam_lite_int8", _stam_lite(state_dtype="int8", min_quantized_size=LOW_BIT_MIN_SIZE),
          "STAMLite int8", "stam",
          decoupled_wd=True, signal="spec", storage="int8", parent="stam_lite",
          update_bytes=18, gpt=True,
          quick=("long_horizon_mlp", "mnist1d_mlp", "char_lm"),
          notes="as stam_lite, momentum stored in int8 (tensors of at least 128 entries)"),
    Entry("stam_lite_int4", _stam_lite(state_dtype="int4", min_quantized_size=LOW_BIT_MIN_SIZE),
          "STAMLite int4", "stam",
          decoupled_wd=True, signal="spec", storage="int4", parent="stam_lite", gpt=True,
          notes="as stam_lite, momentum stored in 4 bits (stochastic rounding; tensors of "
                "at least 128 entries)"),
    Entry("stam_fixed", _stam(adapt_strength=0.0), "STAM α=0", "variant", decoupled_wd=True,
          ablation=True, notes="as stam_full with α = 0: AdamW (β₁ = b1_base)"),
    Entry("stam_const_beta", _stam(b1_base=0.81, adapt_strength=0.0), "STAM α=0, β₁=0.81",
          "variant", decoupled_wd=True, ablation=True,
          notes="as stam_full with α = 0 and β₁ = 0.81, STAMLite's usual β₁"),
    Entry("stam_const_mean", _from_source, "STAM α=0, mean β₁", "variant",
          decoupled_wd=True, full=False, gpt=True, ablation=True, depends_on="stam_full",
          from_run=const_beta_entry,
          notes="as stam_full with α = 0 and β₁ fixed at the mean β₁ that stam_full used "
                "on the task (AdamW with that β₁): does adapting β₁ matter, or only its "
                "level?"),
    Entry("adamw", _adamw, "AdamW", decoupled_wd=True, update_bytes=28, quick=True, gpt=True,
          ablation=True,
          notes="b1 0.9, b2 0.95, eps 1e-8 (the LLM baseline)"),
    Entry("adam", lambda lr, r: optax.adam(lr, **r.given(b1="b1", b2="b2", eps="eps")),
          "Adam", notes="no weight decay"),
    Entry("nadam", lambda lr, r: optax.nadam(lr, **r.given(b1="b1", b2="b2", eps="eps")),
          "NAdam", quick=("long_horizon_mlp",), notes="no weight decay"),
    Entry("lamb", lambda lr, r: optax.lamb(lr, weight_decay=r.weight_decay), "LAMB",
          notes="its own defaults; weight decay inside the trust ratio"),
    Entry("sgd_momentum", lambda lr, r: optax.sgd(lr, momentum=0.9), "SGD+momentum",
          notes="momentum 0.9, no weight decay"),
    Entry("rmsprop", lambda lr, r: optax.rmsprop(lr), "RMSProp", notes="optax defaults"),
    Entry("adagrad", lambda lr, r: optax.adagrad(lr), "Adagrad", notes="optax defaults"),
    Entry("lion", lambda lr, r: optax.lion(lr, weight_decay=r.weight_decay), "Lion",
          decoupled_wd=True, gpt=True,
          notes="b1 0.9, b2 0.99 (Lion's defaults: its b2 plays another role than Adam's)"),
    Entry("adams", lambda lr, r: so.adams(lr, weight_decay=r.weight_decay,
                                          **r.given(b1="b1", b2="b2", eps="eps")),
          "AdamS", decoupled_wd=True, update_bytes=20, gpt=True,
          notes="b1 0.9, b2 0.95, eps 1e-8"),
    Entry("adafactor", _adafactor, "Adafactor", gpt=True,
          notes="optax defaults (factored second moment, decay_rate 0.8, update clipping "
                "1.0, parameter-scaled steps, no momentum); in the gpt suite its decay "
                "rate is the weight decay × the scheduled lr, so that it is decoupled like "
                "AdamW's"),
    Entry("muon", _muon, "Muon", gpt=True,
          notes="Newton–Schulz on the block matrices (beta 0.95, nesterov); embedding, "
                "positions, head and gains by its internal Adam with b2 0.95; one learning "
                "rate for both"),
    Entry("adamw_8bit", _low_bit(_adamw, 8), "AdamW 8-bit", decoupled_wd=True,
          storage="int8", parent="adamw", gpt=True,
          notes="as adamw, μ and ν stored in 8 bits (so.quantized_state)"),
    Entry("adamw_4bit", _low_bit(_adamw, 4), "AdamW 4-bit", decoupled_wd=True,
          storage="int4", parent="adamw", gpt=True,
          notes="as adamw, μ and ν stored in 4 bits (so.quantized_state)"),
    Entry("muon_8bit", _low_bit(_muon, 8), "Muon 8-bit", storage="int8", parent="muon",
          gpt=True, notes="as muon, its momentum and its Adam's moments stored in 8 bits "
                          "(so.quantized_state)"),
    Entry("factored_adamw", _factored_adamw, "factored AdamW", decoupled_wd=True, gpt=True,
          notes="b1 0.9, b2 0.95, eps 1e-8; Adafactor's row/column second moment for "
                f"matrices of at least {FACTOR_MIN_DIM} x {FACTOR_MIN_DIM}, Adam's elsewhere"),
    Entry("factored_adamw_4bit", _low_bit(_factored_adamw, 4),
          "factored AdamW 4-bit", decoupled_wd=True, storage="int4", parent="factored_adamw",
          gpt=True, notes="as factored_adamw, μ (and the unfactored ν) stored in 4 bits "
                          "(so.quantized_state)"),
    Entry("schedule_free_adamw",
          lambda lr, r: optax.contrib.schedule_free_adamw(
              lr, weight_decay=r.weight_decay, **r.given(b1="b1", b2="b2", eps="eps")),
          "schedule-free AdamW", full=False, gpt=True, warmup_only=True, linear_in_lr=False,
          eval_params=_schedule_free_eval,
          notes="b1 0.9, b2 0.95, eps 1e-8; warmup then constant lr (no cosine: its "
                "averaging replaces the decay); evaluated at its averaged parameters"),
):
    add(_entry)


# AdamW with its β₁ tuned too: the one-Chinchilla regime runs AdamW at each β₁ of
# this grid (β₁ 0.9 is `adamw` itself) and keeps, per task, the β₁ whose tuning
# seeds did best, so that no optimizer wins by a β₁ AdamW was not allowed to tune.
ADAMW_BETA1_GRID = (0.7, 0.8, 0.95)


def adamw_beta1_entry(b: float) -> Entry:
    """AdamW with β₁ = b and otherwise `adamw`'s recipe, named `adamw_b1_<b>`."""
    if not 0.0 < b < 1.0:
        raise ValueError(f"adamw_beta1_entry: b must be in (0, 1), got {b}")

    def build(lr: Any, r: Recipe) -> optax.GradientTransformation:
        return optax.adamw(lr, weight_decay=r.weight_decay,
                           **(r.given(b2="b2", eps="eps") | {"b1": b}))

    return Entry(f"adamw_b1_{b:g}", build, f"AdamW β₁={b:g}", decoupled_wd=True,
                 update_bytes=28, full=False,
                 notes=f"as adamw with β₁ = {b:g} (the β₁-tuned AdamW's grid)")


for _b in ADAMW_BETA1_GRID:
    add(adamw_beta1_entry(_b))


def entry(name: str) -> Entry:
    """The entry of `name` (a `"stam_const_beta=<b>"` name gives STAM with a constant
    β₁ of b); raises ValueError listing the names."""
    b = const_beta(name)
    if b is not None:
        return const_beta_entry(b)
    if name not in ENTRIES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(ENTRIES)}")
    return ENTRIES[name]


def names(**where: Any) -> list[str]:
    """Registry names whose entries have every attribute of `where` equal to its value
    (`names(full=True)`, `names(family="stam")`), in registry order."""
    return [n for n, e in ENTRIES.items() if all(getattr(e, k) == v for k, v in where.items())]


def get(name: str, learning_rate: Any = 1e-3,
        weight_decay: float = WD) -> optax.GradientTransformation:
    """Builds the registered optimizer `name` with `DEFAULT`'s recipe and `weight_decay`;
    raises ValueError listing the names.

    Besides the registry's names, `"stam_const_beta=<b>"` builds STAM with a
    constant β₁ of b.
    """
    return entry(name).build(learning_rate, dataclasses.replace(DEFAULT,
                                                                weight_decay=weight_decay))


def load(spec: str) -> str:
    """Adds a user's optimizer factory to the registry; returns its name.

    `spec` is `[NAME=]path/to/file.py:factory` or `[NAME=]package.module:factory`.
    The factory is called as `factory(learning_rate, weight_decay=wd)` and must
    return an optax transformation; it becomes an `Entry` of family "user" that
    joins every suite. The benchmarks treat its update as linear in the learning
    rate (they build it once at lr 1 and scale the update), except the gpt suite,
    which passes its warmup + cosine schedule as `learning_rate`. NAME defaults to
    the factory's own name. Raises ValueError naming what is wrong with `spec`.

    >>> import jax.numpy as jnp
    >>> from stam_optimizer.benchmarks.programme import registry
    >>> registry.load("my_adamw=optax:adamw")
    'my_adamw'
    >>> registry.get("my_adamw", 1e-3).init({"w": jnp.zeros(3)})[0].count
    Array(0, dtype=int32)
    >>> del registry.ENTRIES["my_adamw"]
    """
    name, sep, target = spec.partition("=")
    if not sep:
        name, target = "", spec
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"optimizer spec {spec!r}: expected [NAME=]FILE.py:FACTORY or "
                         "[NAME=]MODULE:FACTORY")
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"optimizer spec {spec!r}: no file {where!r}")
        mod_name = f"stam_bench_user_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_name] = module
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"optimizer spec {spec!r}: cannot import {where!r} ({e})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"optimizer spec {spec!r}: {where!r} has no callable {attr!r}")
    name = name or attr
    if name in ENTRIES or name.startswith(CONST_BETA_PREFIX):
        raise ValueError(f"optimizer spec {spec!r}: {name!r} is a registry name already; "
                         "give yours another with NAME=")
    tx = factory(1e-3, weight_decay=WD)
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise ValueError(f"optimizer spec {spec!r}: {attr}(learning_rate, weight_decay=) "
                         f"returned {type(tx).__name__}, not an optax transformation")
    add(Entry(name, lambda lr, r: factory(lr, weight_decay=r.weight_decay), family="user",
              quick=True, gpt=True,
              notes=f"its factory's own defaults ({spec}) at the suite's schedule and "
                    "weight decay"))
    return name


def parse_names(text: str) -> list[str]:
    """Splits a comma-separated list of optimizer names, checking each one."""
    found = [n.strip() for n in text.split(",") if n.strip()]
    for n in found:
        entry(n)
    if not found:
        raise ValueError("no optimizer named")
    return found


def in_stam_family(name: str) -> bool:
    """True for STAM, STAMLite, their storage variants and their ablations (families
    "stam" and "variant"): the report's primary Holm family. A name the registry
    does not know (a user's optimizer from an earlier session) is a peer."""
    found = ENTRIES.get(name)
    if found is None and const_beta(name) is not None:
        return True
    return found is not None and found.family in ("stam", "variant")


def has_beta1_state(name: str) -> bool:
    """True when the state of `name` holds a STAM-family β₁ (adaptive or constant)."""
    tx = entry(name).build(1.0, DEFAULT)
    return bool(so.find_states(jax.eval_shape(tx.init, {"w": jnp.zeros((2, 2))})))

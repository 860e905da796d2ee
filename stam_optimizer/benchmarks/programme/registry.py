"""The optimizer registry: every benchmark builds its optimizers from here.

Adding an optimizer is one line: a name and a factory `(learning_rate,
weight_decay) -> optax transformation`. Decoupled weight decay is 0.01 wherever an
optimizer has it, so that no optimizer gets a different regulariser by default;
optimizers without weight decay ignore the argument. `DECOUPLED_WD` names the
ones whose update is `-lr * (direction + weight_decay * params)`, which the
learning-rate x weight-decay sweep can vary inside one compiled program.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import optax

import stam_optimizer as so

WD = 0.01

Factory = Callable[..., optax.GradientTransformation]

OPTIMIZERS: dict[str, Factory] = {
    "stam_full": lambda lr, wd=WD: so.stam(lr, weight_decay=wd),
    "stam_full_bf16": lambda lr, wd=WD: so.stam(lr, weight_decay=wd, mu_dtype="bfloat16"),
    "stam_full_energy": lambda lr, wd=WD: so.stam(lr, weight_decay=wd, signal="energy"),
    "stam_lite": lambda lr, wd=WD: so.stam_lite(lr, weight_decay=wd),
    "stam_lite_energy": lambda lr, wd=WD: so.stam_lite(lr, weight_decay=wd, signal="energy"),
    "stam_lite_bf16": lambda lr, wd=WD: so.stam_lite(lr, weight_decay=wd, state_dtype="bfloat16"),
    "stam_lite_int8": lambda lr, wd=WD: so.stam_lite(lr, weight_decay=wd, state_dtype="int8"),
    "stam_fixed": lambda lr, wd=WD: so.stam(lr, weight_decay=wd, adapt_strength=0.0),
    "stam_const_beta": lambda lr, wd=WD: so.stam(lr, weight_decay=wd, b1_base=0.81,
                                                 adapt_strength=0.0),
    "adamw": lambda lr, wd=WD: optax.adamw(lr, weight_decay=wd),
    "adam": lambda lr, wd=WD: optax.adam(lr),
    "nadam": lambda lr, wd=WD: optax.nadam(lr),
    "lamb": lambda lr, wd=WD: optax.lamb(lr, weight_decay=wd),
    "sgd_momentum": lambda lr, wd=WD: optax.sgd(lr, momentum=0.9),
    "rmsprop": lambda lr, wd=WD: optax.rmsprop(lr),
    "adagrad": lambda lr, wd=WD: optax.adagrad(lr),
    "lion": lambda lr, wd=WD: optax.lion(lr, weight_decay=wd),
    "adams": lambda lr, wd=WD: so.adams(lr, weight_decay=wd),
    "adafactor": lambda lr, wd=WD: optax.adafactor(lr),
    "muon": lambda lr, wd=WD: optax.contrib.muon(lr, weight_decay=wd),
}
# Schedule-free AdamW is not here: its update is not `lr * update_at_lr_1` (the
# learning rate weights its iterate average), which the runner relies on; the gpt
# suite, which builds each optimizer at its traced learning rate, runs it.

DECOUPLED_WD = ("stam_full", "stam_full_bf16", "stam_full_energy", "stam_lite",
                "stam_lite_energy", "stam_lite_bf16", "stam_lite_int8", "stam_fixed",
                "stam_const_beta", "adamw", "lion", "adams")
# The β₁ signal (stam_optimizer.beta1_signal) of each STAM-family entry that does
# not use the default "spec".
SIGNAL = {"stam_full_energy": "energy", "stam_lite_energy": "energy"}


# "stam_const_beta=<b>": STAM with α = 0 and β₁ = b (0 < b < 1), e.g. a constant
# equal to the mean β₁ that STAM used on a task (the ablation's stam_const_mean).
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


def _const_beta(name: str) -> Factory | None:
    b = const_beta(name)
    if b is None:
        return None
    return lambda lr, wd=WD: so.stam(lr, weight_decay=wd, b1_base=b, adapt_strength=0.0)


def get(name: str, learning_rate: float = 1e-3,
        weight_decay: float = WD) -> optax.GradientTransformation:
    """Builds the registered optimizer `name`; raises ValueError listing the names.

    Besides the names of `OPTIMIZERS`, `"stam_const_beta=<b>"` builds STAM with a
    constant β₁ of b.
    """
    const = _const_beta(name)
    if const is not None:
        return const(learning_rate, weight_decay)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, weight_decay)


def load(spec: str) -> str:
    """Adds a user's optimizer factory to the registry; returns its name.

    `spec` is `[NAME=]path/to/file.py:factory` or `[NAME=]package.module:factory`.
    The factory is called as `factory(learning_rate, weight_decay=wd)` and must
    return an optax transformation; the benchmarks treat
    its update as linear in the learning rate (they build it once at lr 1 and scale
    the update), except the gpt suite, which passes its warmup + cosine schedule as
    `learning_rate`. NAME defaults to the factory's own name. Raises ValueError
    naming what is wrong with `spec`.

    >>> import jax.numpy as jnp
    >>> import stam_optimizer.benchmarks.programme.registry as r
    >>> r.load("my_adamw=optax:adamw")
    'my_adamw'
    >>> r.get("my_adamw", 1e-3).init({"w": jnp.zeros(3)})[0].count
    Array(0, dtype=int32)
    >>> del r.OPTIMIZERS["my_adamw"]
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
    if name in OPTIMIZERS or name.startswith(CONST_BETA_PREFIX):
        raise ValueError(f"optimizer spec {spec!r}: {name!r} is a registry name already; "
                         "give yours another with NAME=")
    tx = factory(1e-3, weight_decay=WD)
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise ValueError(f"optimizer spec {spec!r}: {attr}(learning_rate, weight_decay=) "
                         f"returned {type(tx).__name__}, not an optax transformation")
    OPTIMIZERS[name] = lambda lr, wd=WD: factory(lr, weight_decay=wd)
    return name


def parse_names(text: str) -> list[str]:
    """Splits a comma-separated list of optimizer names, checking each one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        get(n)
    if not names:
        raise ValueError("no optimizer named")
    return names

"""The optimizer registry: every benchmark builds its optimizers from here.

Adding an optimizer is one line: a name and a factory `learning_rate -> optax
transformation`. Decoupled weight decay is 0.01 wherever an optimizer has it, so
that no optimizer gets a different regulariser by default.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

import stam_optimizer as so

WD = 0.01

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "stam_full": lambda lr: so.stam(lr, weight_decay=WD),
    "stam_lite": lambda lr: so.stam_lite(lr, weight_decay=WD),
    "stam_lite_bf16": lambda lr: so.stam_lite(lr, weight_decay=WD, state_dtype="bfloat16"),
    "stam_lite_int8": lambda lr: so.stam_lite(lr, weight_decay=WD, state_dtype="int8"),
    "stam_fixed": lambda lr: so.stam(lr, weight_decay=WD, adapt_strength=0.0),
    "stam_const_beta": lambda lr: so.stam(lr, weight_decay=WD, b1_base=0.81, adapt_strength=0.0),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=WD),
    "adam": lambda lr: optax.adam(lr),
    "nadam": lambda lr: optax.nadam(lr),
    "lamb": lambda lr: optax.lamb(lr, weight_decay=WD),
    "sgd_momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "rmsprop": lambda lr: optax.rmsprop(lr),
    "adagrad": lambda lr: optax.adagrad(lr),
    "lion": lambda lr: optax.lion(lr, weight_decay=WD),
    "adams": lambda lr: so.adams(lr, weight_decay=WD),
}


def get(name: str, learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """Builds the registered optimizer `name`; raises ValueError listing the names."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate)


def parse_names(text: str) -> list[str]:
    """Splits a comma-separated list of optimizer names, checking each one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        get(n)
    if not names:
        raise ValueError("no optimizer named")
    return names

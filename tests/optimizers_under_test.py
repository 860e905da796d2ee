"""The one list of optimizers the test files run: every optimizer and state dtype.

`ALIASES[name](learning_rate, **kw)` builds an optimizer (updates added to
params); `TRANSFORMS[name](**kw)` the matching `scale_by_*` direction. int8 and
int4 STAMLite use `min_quantized_size=0`, so every test tensor of at least one
dimension is quantised (0-d tensors stay float32 by design). The `adamw_q8`/`adamw_q4`
entries are `so.quantized_state(optax.adamw(...), bits)`, with `min_size=1` for the
same reason.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

import stam_optimizer as so

INT8 = {"state_dtype": "int8", "min_quantized_size": 0}
INT4 = {"state_dtype": "int4", "min_quantized_size": 0}
# Options of int8/int4 STAMLite and of the quantized_state aliases that fix the
# state layout: static under inject_hyperparams.
STATIC_ARGS = ("state_dtype", "block_size", "min_quantized_size", "stochastic_rounding", "seed",
               "bits", "min_size", "min_dim_to_factor")  # and factored AdamW's choice
# Factored AdamW with every matrix of the test trees factored (the default 128 factors none).
SMALL_FACTOR = {"min_dim_to_factor": 2}


def adamw_quantized(learning_rate: optax.ScalarOrSchedule = 1e-2, weight_decay: float = 1e-4,
                    mask=None, *, bits: int = 8, min_size: int = 1,
                    block_size: int | None = None, stochastic_rounding: bool | None = None,
                    seed: int = 0) -> optax.GradientTransformationExtraArgs:
    """`so.quantized_state(optax.adamw(...), bits)`: an alias-shaped factory."""
    return so.quantized_state(optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask),
                              bits, min_size=min_size, block_size=block_size,
                              stochastic_rounding=stochastic_rounding, seed=seed)


# name -> (alias factory, its keyword arguments besides learning_rate)
SPECS: dict[str, tuple[Callable[..., optax.GradientTransformationExtraArgs], dict]] = {
    "stam": (so.stam, {}),
    "stam_lite": (so.stam_lite, {}),
    "stam_lite_bf16": (so.stam_lite, {"state_dtype": "bfloat16"}),
    "stam_lite_f16": (so.stam_lite, {"state_dtype": "float16"}),
    "stam_lite_int8": (so.stam_lite, INT8),
    "stam_lite_int4": (so.stam_lite, INT4),
    "stam_energy": (so.stam, {"signal": "energy"}),
    "stam_lite_energy": (so.stam_lite, {"signal": "energy"}),
    "stam_relative": (so.stam, {"signal": "relative"}),
    "adams": (so.adams, {}),
    "factored_adamw_small": (so.factored_adamw, SMALL_FACTOR),
    "adamw_q8": (adamw_quantized, {"bits": 8}),
    "adamw_q4": (adamw_quantized, {"bits": 4}),
}
# name -> (scale_by_* factory, its keyword arguments)
TRANSFORM_SPECS: dict[str, tuple[Callable[..., optax.GradientTransformationExtraArgs], dict]] = {
    "scale_by_stam": (so.scale_by_stam, {}),
    "scale_by_stam_lite": (so.scale_by_stam_lite, {}),
    "scale_by_stam_lite_bf16": (so.scale_by_stam_lite, {"state_dtype": "bfloat16"}),
    "scale_by_stam_lite_f16": (so.scale_by_stam_lite, {"state_dtype": "float16"}),
    "scale_by_stam_lite_int8": (so.scale_by_stam_lite, INT8),
    "scale_by_stam_lite_int4": (so.scale_by_stam_lite, INT4),
    "scale_by_adams": (so.scale_by_adams, {}),
    "scale_by_factored_adam": (so.scale_by_factored_adam, SMALL_FACTOR),
}


def _alias(name: str):
    factory, fixed = SPECS[name]
    return lambda learning_rate=1e-2, **kw: factory(learning_rate, **{**fixed, **kw})


def _transform(name: str):
    factory, fixed = TRANSFORM_SPECS[name]
    return lambda **kw: factory(**{**fixed, **kw})


ALIASES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    name: _alias(name) for name in SPECS}
TRANSFORMS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    name: _transform(name) for name in TRANSFORM_SPECS}

# Subsets by what they can represent.
# (factored AdamW at its default min_dim_to_factor factors none of the small test
# trees: its factored_adamw_small entry covers it; tests/test_factored_adam.py the rest)
FLOAT32_STATE = ("stam", "stam_lite", "stam_lite_int8", "adams",
                 "factored_adamw_small")  # no low-precision buffer
BASE = ("stam", "stam_lite", "adams", "factored_adamw_small")  # one per algorithm, default dtypes
ADAPTIVE = ("stam", "stam_lite", "stam_lite_bf16", "stam_lite_f16", "stam_lite_int8",
            "stam_lite_int4", "stam_energy", "stam_lite_energy", "stam_relative")  # β₁
QUANTIZED_STATE = ("adamw_q8", "adamw_q4")  # so.quantized_state(...)
# Every entry whose state holds blockwise codes (`QuantizedArray` leaves).
QUANTIZED = ("stam_lite_int8", "stam_lite_int4", *QUANTIZED_STATE)


# The entries the flax, sharding and integration harnesses run: all but the energy
# and relative signal and float16 variants, which differ from a neighbour here only in the β₁ rule
# (same state structure and shapes) or the state's half-precision dtype (as bfloat16),
# and which the contract harness, the mesh-invariance test and their own tests run
# (CI time: about a minute of the suite).
HARNESS = tuple(n for n in ALIASES if n not in ("stam_energy", "stam_lite_energy",
                                                 "stam_relative", "stam_lite_f16"))


def alias(name: str, learning_rate: float = 1e-2, **kw) -> optax.GradientTransformationExtraArgs:
    """`ALIASES[name](learning_rate, **kw)`."""
    return ALIASES[name](learning_rate, **kw)


def transform(name: str, **kw) -> optax.GradientTransformationExtraArgs:
    """`TRANSFORMS[name](**kw)`."""
    return TRANSFORMS[name](**kw)

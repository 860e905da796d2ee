"""Checks on hyperparameters and on the arguments of `init` / `update`.

Nothing here is public API. Hyperparameter checks run where a factory is
called: on concrete values they raise `TypeError` (wrong type) or `ValueError`
(out of range) naming the argument; on traced values, as
`optax.inject_hyperparams` passes them inside `update`, only the static part
(type and shape) is checked. Tree and shape checks on gradients depend on
static shapes only, so they cost nothing in the compiled update.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stam_optimizer.blockwise import QuantizedArray

# Storage dtypes accepted by name; values are what `jnp.dtype` understands.
FLOAT_STATE_DTYPES = ("float32", "bfloat16", "float16")

# Low-precision float dtypes: a hyperparameter given in one of them may have been
# rounded (`optax.inject_hyperparams` casts floats to the params' dtype).
_ROUNDING_DTYPES = ("bfloat16", "float16")


def _describe(value: Any) -> str:
    """`value` for an error message: its repr and, for non-arrays, its type."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, (jax.Array, np.ndarray)):
        return text
    return f"{text} ({type(value).__name__})"


def check_number(name: str, value: Any, *, schedule: bool = False) -> None:
    """Raises TypeError naming `name` unless `value` is a real scalar.

    Accepted: Python `int` / `float` (not `bool`), NumPy integer and float
    scalars, and 0-d NumPy or jax arrays of an integer or float dtype, traced
    ones included. With `schedule=True` a callable (an optax schedule
    `count -> value`) is accepted too.
    """
    if schedule and callable(value):
        return
    what = "a number or a schedule (a callable count -> value)" if schedule else "a number"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {what}, got {_describe(value)}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return
    if isinstance(value, (jax.Array, np.ndarray)):
        dtype = jnp.dtype(value.dtype)
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(f"{name} must be {what}: an array of dtype {dtype.name} is not"
                            f" accepted, got {_describe(value)}")
        if np.ndim(value) != 0:
            raise TypeError(f"{name} must be {what}: an array must be 0-d (a scalar), got"
                            f" shape {np.shape(value)}")
        return
    hint = ""
    if isinstance(value, str):
        hint = f"; pass {name}={value} without quotes" if _parses_as_float(value) else ""
    elif callable(value):
        hint = ("; schedules are accepted for learning_rate and weight_decay only (to"
                f" schedule {name}, use optax.inject_hyperparams)")
    raise TypeError(f"{name} must be {what}, got {_describe(value)}{hint}")


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_bool(name: str, value: Any) -> None:
    """Raises TypeError naming `name` unless `value` is a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")


def concrete_float(value: Any) -> float | None:
    """Returns `value` as a Python float, or None when it is traced or a schedule.

    `optax.inject_hyperparams` calls the optimizer factory again inside every
    update with traced hyperparameters; range checks must then stand aside.
    """
    if callable(value):
        return None
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def _rounding_hint(value: Any) -> str:
    """Why a low-precision hyperparameter may be out of range, and the remedy."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or jnp.dtype(dtype).name not in _ROUNDING_DTYPES:
        return ""
    name = jnp.dtype(dtype).name
    example = "0.999" if name == "bfloat16" else "0.9999"
    return (f". This {name} value may have been rounded: optax.inject_hyperparams casts"
            f" float hyperparameters to the params' dtype, and in {name} {example} becomes"
            " 1.0. Keep them in float32 with"
            " optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)")


def check_range(
        name: str,
        value: Any,
        low: float,
        high: float = float("inf"),
        *,
        low_open: bool = False,
        high_open: bool = True,
        schedule: bool = False,
) -> None:
    """TypeError unless `value` is a number (see `check_number`); ValueError
    naming `name` when a concrete `value` lies outside the range."""
    check_number(name, value, schedule=schedule)
    v = concrete_float(value)
    if v is None:
        return
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):  # also catches NaN
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(
                f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}"
                + _rounding_hint(value)
        )


def check_unit_open(name: str, value: Any) -> None:
    """Raises unless `value` is a number in the open interval (0, 1)."""
    check_range(name, value, 0.0, 1.0, low_open=True, high_open=True)


def check_interval_int(name: str, value: Any) -> None:
    """Raises unless `value` is a number and, when concrete, an integer ≥ 1."""
    check_number(name, value)
    v = concrete_float(value)
    if v is None:
        return
    if v < 1 or v != int(v):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_b1_min(b1_min: Any, b1_base: Any) -> None:
    """Raises unless `b1_min` is a number with 0 < b1_min ≤ b1_base (when concrete)."""
    check_number("b1_min", b1_min)
    lo, hi = concrete_float(b1_min), concrete_float(b1_base)
    if lo is None:
        return
    if not lo > 0.0 or (hi is not None and lo > hi):
        raise ValueError(
                f"b1_min must be in (0, b1_base] = (0, {hi if hi is not None else 'b1_base'}],"
                f" got {b1_min!r}" + _rounding_hint(b1_min)
        )


def resolve_dtype(name: str, value: Any, allowed: tuple[str, ...]) -> jnp.dtype | None:
    """Turns a dtype given as a string, numpy/jax dtype or scalar type into `jnp.dtype`.

    TypeError for something that names no dtype at all (a number, a list);
    ValueError for a dtype outside `allowed`.
    """
    if value is None:
        return None
    if not isinstance(value, (str, np.dtype, type)) and not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be a dtype or one of the strings"
                        f" {', '.join(allowed)}, got {_describe(value)}")
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return dtype


def check_learning_rate(learning_rate: Any) -> None:
    """Raises for a learning rate that is not a number ≥ 0 or a schedule."""
    check_range("learning_rate", learning_rate, 0.0, schedule=True)


def check_weight_decay(weight_decay: Any) -> None:
    """Raises for a weight decay that is not a number ≥ 0 or a schedule."""
    check_range("weight_decay", weight_decay, 0.0, schedule=True)


def check_mask(mask: Any) -> None:
    """Warns when a weight-decay `mask` is a single boolean or 0-d array.

    Such a mask applies to every leaf at once. It is what a callable mask turns
    into under `optax.inject_hyperparams` without `static_args=("mask",)`: the
    wrapper takes the callable for a schedule and passes on its value at the
    step count, which for the usual `lambda params: jax.tree.map(...)` is one
    boolean (typically False, which switches weight decay off for every leaf).
    """
    if mask is None or callable(mask):
        return
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(mask)) and np.ndim(mask) == 0:
        warnings.warn(
            f"mask={mask!r} is a single value, applied to every leaf alike. If you"
            " passed a callable mask through optax.inject_hyperparams, it was taken for"
            " a schedule and called with the step count: declare it static with"
            " optax.inject_hyperparams(..., static_args=('mask',)). For no weight decay"
            " at all, set weight_decay=0.",
            UserWarning, stacklevel=4)


def as_arrays(tree: Any) -> Any:
    """`tree` with every leaf a jax array (Python and NumPy scalars and arrays too).

    A leaf that is not a jax array becomes one of the dtype jax gives it by
    default (float32 for a Python float or a NumPy float64 array unless
    `jax_enable_x64`), strongly typed, so that no explicit float64 request
    raises a warning and no weakly typed state causes a recompile.
    """
    def convert(x):
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):  # abstract inputs stay abstract
            return x
        return jnp.asarray(x, jnp.result_type(x))

    return jax.tree.map(convert, tree)


def _quantized(x: Any) -> QuantizedArray | None:
    """`x` as a `QuantizedArray` when it is one, or a mapping of its two fields
    (as `flax.nnx.Optimizer` stores it back); else None."""
    if isinstance(x, QuantizedArray):
        return x
    if hasattr(x, "keys") and set(x.keys()) == set(QuantizedArray._fields):
        return QuantizedArray(*(x[f] for f in QuantizedArray._fields))
    return None


def _is_slot(x: Any) -> bool:
    return _quantized(x) is not None


def _is_buffer(x: Any) -> bool:
    """True for one leaf's state buffer: an array (a single pytree leaf) or int8/int4 codes."""
    if _is_slot(x):
        return True
    treedef = jax.tree.structure(x)
    return treedef.num_leaves == 1 and treedef.num_nodes == 1


def grad_leaves(updates: Any, expected: Any, params: Any = None
                ) -> tuple[Any, list[jax.Array]]:
    """The treedef of `updates` and its leaves as arrays, checked against the state.

    `expected` is the param-shaped buffer of the optimizer state (its μ or m),
    built from the params by `init`. Raises ValueError when the gradients'
    tree differs from it (naming the paths found in only one of them) or a
    leaf's shape differs (naming the leaf path and both shapes). A quantised leaf
    (`QuantizedArray`) keeps no shape, only its number of blocks: its gradient
    is checked against the leaf of `params` when given, else by element count.
    """
    treedef = jax.tree.structure(updates)
    try:
        slots = treedef.flatten_up_to(expected)
    except (ValueError, TypeError):
        slots = None
    if slots is None or not all(map(_is_buffer, slots)):
        raise ValueError(_tree_mismatch(updates, expected))
    gs = treedef.flatten_up_to(updates)
    for i, (g, slot) in enumerate(zip(gs, slots)):
        got = tuple(np.shape(g))
        slot = _quantized(slot) or slot
        want = _shape_in(params, treedef, i) if isinstance(slot, QuantizedArray) else None
        if want is not None:
            if got != want:
                raise ValueError(
                    f"grads{_path(updates, i)} has shape {got}, but the params have"
                    f" {want} (the leaf's quantised optimizer state keeps no shape of its own)")
        elif isinstance(slot, QuantizedArray):
            # blocks tile the last axis: codes are (*got[:-1], n_blocks, block)
            # (4-bit codes: two per byte, ceil(block/2) bytes per block)
            *lead, n_blocks, width = np.shape(slot.codes)
            block = -(-got[-1] // n_blocks) if got else None
            if (not got or tuple(lead) != got[:-1]
                    or width not in (block, -(-block // 2))):
                raise ValueError(
                    f"grads{_path(updates, i)} has shape {got}, but its quantised optimizer"
                    f" state holds rows of shape {tuple(lead)} with {n_blocks} blocks of"
                    f" {width} bytes each: pass gradients shaped like the params given"
                    f" to init")
        elif got != tuple(np.shape(slot)):
            raise ValueError(
                f"grads{_path(updates, i)} has shape {got}, but the optimizer state"
                f" expects {tuple(np.shape(slot))} (the shape of that leaf of the params"
                f" given to init)")
    return treedef, [g if isinstance(g, jax.Array) else jnp.asarray(g, jnp.result_type(g))
                     for g in gs]


def _shape_in(params: Any, treedef: Any, index: int) -> tuple[int, ...] | None:
    """Shape of the `index`-th leaf of `params` read with `treedef`, or None."""
    if params is None:
        return None
    try:
        leaf = treedef.flatten_up_to(params)[index]
    except (ValueError, TypeError):
        return None
    shape = getattr(leaf, "shape", None)
    return None if shape is None else tuple(shape)


def _path(tree: Any, index: int) -> str:
    """`jax.tree_util.keystr` of the `index`-th leaf of `tree`."""
    path, _ = jax.tree_util.tree_flatten_with_path(tree)[0][index]
    return jax.tree_util.keystr(path)


def _tree_mismatch(updates: Any, expected: Any) -> str:
    """Error text for gradients whose tree is not the state's."""
    got = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]}
    want = {jax.tree_util.keystr(p) for p, _ in
            jax.tree_util.tree_flatten_with_path(expected, is_leaf=_is_slot)[0]}

    def listed(paths):
        paths = sorted(paths)
        return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

    lines = ["grads do not have the tree structure of the optimizer state (built by init"
             " from the params)"]
    if want - got:
        lines.append(f"leaves in the state, missing from grads: {listed(want - got)}")
    if got - want:
        lines.append(f"leaves in grads, not in the state: {listed(got - want)}")
    lines.append(f"expected (state): {jax.tree.structure(expected, is_leaf=_is_slot)}")
    lines.append(f"got (grads): {jax.tree.structure(updates)}")
    return "\n".join(lines)


def check_real(name: str, tree: Any) -> None:
    """Raises TypeError naming the dtype when `tree` holds a complex leaf.

    The per-tensor statistics and β₁ rules are defined for real tensors; a
    complex one is refused instead of being trained to a wrong point.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                    f"{name}: complex parameters are not supported, got dtype {dtype} at"
                    f" {jax.tree_util.keystr(path) or 'the root'}; optimise the real and"
                    " imaginary parts as two real parameters"
            )

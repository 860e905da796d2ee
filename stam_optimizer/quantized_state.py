"""`quantized_state`: any optax transformation with its state stored in 8 or 4 bits.

The wrapper keeps the inner transformation's state with its large param-shaped
floating leaves as `blockwise.QuantizedArray` (codes plus one float32 scale per
block, blocks tiling the last axis as for int8 STAMLite), and every update runs

    S = dequantize(S_q);   (u, S') = inner.update(g, S, params);   S_q' = quantize(S')

inside one traced function: the float copy of a leaf is an intermediate that XLA
fuses into the inner update's elementwise work, not a second stored state.

Which leaves are quantised, and with which map, is a function of the state's
paths, shapes and dtypes alone (see `quantized_state`), so the plan is the same
on every mesh, traced or eager, and in `init` and `update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stam_optimizer import blockwise, low_bit_codecs
from stam_optimizer._common import unbox
from stam_optimizer._validation import check_bool, check_number
from stam_optimizer.blockwise import Codec, QuantizedArray

__all__ = ["NONNEGATIVE_FIELDS", "QuantizedStateState", "default_kind", "dequantize_state",
           "quantize_state", "quantized_state"]

# State fields that hold non-negative accumulators (second moments, sums of
# squares): optax's adam/adamw/nadam/lamb/amsgrad/rmsprop/yogi/adabelief/muon
# (`nu`, `nu_max`), adagrad (`sum_of_squares`), adadelta (`e_g`, `e_x`), adafactor
# (`v_row`, `v_col`, `v`), so.stam (`nu`).
NONNEGATIVE_FIELDS = frozenset({"nu", "nu_max", "sum_of_squares", "e_g", "e_x",
                                "v_row", "v_col", "v"})
KINDS = ("signed", "nonnegative")


class QuantizedStateState(NamedTuple):
    """State of `quantized_state`.

    Attributes:
      inner: the inner transformation's state, each quantised leaf replaced by a
        `QuantizedArray` (uint8 codes `(..., n_blocks, width)` and float32
        scales `(..., n_blocks)`).
      count: int32 step counter (keys the stochastic rounding).
    """

    inner: Any
    count: jax.Array


def _field(path: tuple) -> str | None:
    """The last NamedTuple field name (or dict key) on `path` that names a state field."""
    for entry in reversed(path):
        name = getattr(entry, "name", None)
        if isinstance(name, str):
            return name
    return None


def default_kind(path: tuple, leaf: Any, min_size: int) -> str | None:
    """The default rule: "nonnegative" for a leaf under a field of
    `NONNEGATIVE_FIELDS`, "signed" for any other, None (kept as it is) when the
    leaf has fewer than `min_size` entries."""
    if leaf.size < min_size:
        return None
    return "nonnegative" if _field(path) in NONNEGATIVE_FIELDS else "signed"


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], jnp.dtype] | None:
    x = unbox(x)
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return None
    return tuple(shape), jnp.dtype(dtype)


def _plan(inner: optax.GradientTransformation, state: Any, params: Any, bits: int,
          min_size: int, codec_for: Callable[[tuple, Any], str | None] | None,
          ) -> tuple[Any, list]:
    """`(treedef, codecs)`: the leaves of `state` (arrays or abstract values) and, per
    leaf, its `Codec` or None.

    Candidates are the leaves that `optax.tree_map_params` finds at the params'
    positions in `inner`'s state, floating, non-empty, at least 1-D and of the
    shape of one of the params (so adafactor's row and column statistics, or
    Muon's Newton–Schulz coefficients, are not). Where `tree_map_params` cannot
    run `inner.init` (a callable of the params inside it), the shape test alone
    decides."""
    # Leaves are what has a shape and dtype: a container's boxed leaf (a flax
    # Variable) is one leaf, as `tree_map_params` below sees it.
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        state, is_leaf=lambda x: _shape_dtype(x) is not None)
    try:
        at_params = treedef.flatten_up_to(optax.tree_map_params(
            inner, lambda _: True, state, transform_non_params=lambda _: False,
            is_leaf=lambda x: _shape_dtype(x) is not None))
    except (AttributeError, TypeError):
        # an `init` that cannot take optax's params placeholder (a callable of the
        # params, such as Muon's dimension numbers, reads it as a tree): every leaf
        # is a candidate, and the shape test below decides
        at_params = [True] * len(flat)
    param_shapes = {sd[0] for p in jax.tree.leaves(params)
                    if (sd := _shape_dtype(p)) is not None}
    codecs = []
    for (path, leaf), candidate in zip(flat, at_params, strict=True):
        sd = _shape_dtype(leaf)
        kind = None
        if candidate is True and sd is not None and sd[0] and 0 not in sd[0] \
                and sd[0] in param_shapes and jnp.issubdtype(sd[1], jnp.floating):
            abstract = jax.ShapeDtypeStruct(*sd)
            kind = "auto" if codec_for is None else codec_for(path, abstract)
            if kind == "auto":
                kind = default_kind(path, abstract, min_size)
            if kind is not None and kind not in KINDS:
                raise ValueError(f"codec_for must return 'signed', 'nonnegative', 'auto' or "
                                 f"None, got {kind!r} for {jax.tree_util.keystr(path)}")
        codecs.append(None if kind is None else low_bit_codecs.codec(kind, bits))
    return treedef, codecs


def _as_quantized(x: Any) -> Any:
    """A stored quantised leaf as `QuantizedArray`, also when a container (such as
    `flax.nnx.Optimizer`) rebuilt it as a mapping."""
    if isinstance(x, QuantizedArray):
        return x
    if hasattr(x, "keys") and set(x.keys()) == set(QuantizedArray._fields):
        return QuantizedArray(*(unbox(x[f]) for f in QuantizedArray._fields))
    return x


SCALE_DTYPES = ("bfloat16", "float32")


def _encode(leaves: list, codecs: list[Codec | None], block_size: int,
            key: jax.Array | None, scale_dtype: str) -> list:
    out = []
    for i, (x, c) in enumerate(zip(leaves, codecs, strict=True)):
        if c is None:
            out.append(x)
            continue
        k = None if key is None else jax.random.fold_in(key, i)
        out.append(blockwise.quantize(unbox(x), c, block_size, k, jnp.dtype(scale_dtype)))
    return out


def _encode_compiled(leaves: list, codecs: list[Codec | None], block_size: int,
                     scale_dtype: str) -> list:
    """`_encode` with nearest rounding, as one compiled program over the quantised
    leaves (eagerly, every op of every leaf would be compiled for its sharding on
    its own: seconds per mesh layout); the other leaves are returned as they are."""
    quantized = [i for i, c in enumerate(codecs) if c is not None]
    encoded = jax.jit(lambda xs: _encode(xs, [codecs[i] for i in quantized], block_size,
                                         None, scale_dtype))([leaves[i] for i in quantized])
    out = list(leaves)
    for i, q in zip(quantized, encoded, strict=True):
        out[i] = q
    return out


def _decode(leaves: list, codecs: list[Codec | None], abstract: list) -> list:
    out = []
    for x, c, a in zip(leaves, codecs, abstract, strict=True):
        if c is None:
            out.append(x)
            continue
        shape, dtype = _shape_dtype(a)
        out.append(blockwise.dequantize(_as_quantized(x), shape, c).astype(dtype))
    return out


def _validate(bits: int, min_size: int, block_size: int | None,
              stochastic_rounding: bool | None, seed: int,
              scale_dtype: str = "bfloat16") -> int:
    if bits not in (4, 8) or isinstance(bits, bool):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {', '.join(map(repr, SCALE_DTYPES))}, "
                         f"got {scale_dtype!r}")
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
    if block_size is None:
        block_size = low_bit_codecs.BLOCK_SIZE[bits]
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
    if stochastic_rounding is not None:
        check_bool("stochastic_rounding", stochastic_rounding)
    check_number("seed", seed)
    return block_size


def quantize_state(state: Any, inner: optax.GradientTransformation, params: Any,
                   bits: int = 8, *, min_size: int = 4096,
                   block_size: int | None = None,
                   codec_for: Callable[[tuple, Any], str | None] | None = None,
                   scale_dtype: str = "bfloat16") -> QuantizedStateState:
    """The `quantized_state(inner, bits, ...)` form of `inner`'s float `state`
    (nearest rounding, step count 0), for switching a run to low-bit state at a
    checkpoint: pass the result to the wrapper's `update` (same `bits`,
    `min_size`, `block_size`, `codec_for`, `scale_dtype`). `dequantize_state` is
    the way back.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((64, 64))}
      >>> inner = optax.adam(1e-3)
      >>> q = quantize_state(inner.init(params), inner, params, bits=4)
      >>> type(q.inner[0].nu["w"]).__name__
      'QuantizedArray'
    """
    block_size = _validate(bits, min_size, block_size, False, 0, scale_dtype)
    treedef, codecs = _plan(inner, state, params, bits, min_size, codec_for)
    leaves = _encode_compiled(treedef.flatten_up_to(state), codecs, block_size, scale_dtype)
    return QuantizedStateState(treedef.unflatten(leaves), jnp.zeros([], jnp.int32))


def dequantize_state(q_state: QuantizedStateState, inner: optax.GradientTransformation,
                     params: Any, bits: int = 8, *, min_size: int = 4096,
                     codec_for: Callable[[tuple, Any], str | None] | None = None) -> Any:
    """The inner optimizer's float state held by `q_state` (a `quantized_state`
    state built with the same `bits`, `min_size` and `codec_for`), for switching
    back to float state: `inner.init(params)` gives the structure, shapes and dtypes."""
    _validate(bits, min_size, None, False, 0)
    abstract = jax.eval_shape(inner.init, params)
    treedef, codecs = _plan(inner, abstract, params, bits, min_size, codec_for)
    leaves = _decode(treedef.flatten_up_to(q_state.inner), codecs, treedef.flatten_up_to(abstract))
    return treedef.unflatten(leaves)


def quantized_state(
    inner: optax.GradientTransformation,
    bits: int = 8,
    *,
    min_size: int = 4096,
    block_size: int | None = None,
    stochastic_rounding: bool | None = None,
    seed: int = 0,
    codec_for: Callable[[tuple, Any], str | None] | None = None,
    scale_dtype: str = "bfloat16",
) -> optax.GradientTransformationExtraArgs:
    r"""Stores the state of `inner` (any optax transformation) in 8 or 4 bits.

    Every update decodes the stored state, runs `inner.update` on it, and
    re-encodes the new state, in one traced function::

      S = decode(S_q);   (u, S') = inner.update(g, S, params);   S_q' = encode(S')

    The updates `u` are those of `inner` on the decoded state: the only
    difference to running `inner` in float is the rounding of its state to
    the stored grid at every step.

    Which leaves are stored quantised (the rule depends only on the paths,
    shapes and dtypes of `inner.init(params)`, never on values, sharding or
    tracing):

    * candidates are floating leaves of at least one dimension, non-empty, with
      the shape of one of the params (param-shaped moments); counts, scalars,
      factored statistics of another shape and integer leaves stay as they are;
    * with `codec_for=None`, a candidate of at least `min_size` entries is
      stored with the non-negative map when its state field is one of
      `NONNEGATIVE_FIELDS` (`nu`, `nu_max`, `sum_of_squares`, `v`, `v_row`,
      `v_col`, `e_g`, `e_x`: second moments of Adam-like optimizers, adagrad,
      adadelta, adafactor, so.stam) and with the signed map otherwise
      (momenta: `mu`, `trace`, `ema`, ...);
    * `codec_for(path, leaf)` (path as `jax.tree_util.tree_flatten_with_path`
      gives it, leaf a `jax.ShapeDtypeStruct`), called for every candidate,
      overrides the rule: "signed", "nonnegative", None (keep it as it is) or
      "auto" (the default rule).

    A quantised leaf of shape `(..., n)` is cut along its last axis into
    `ceil(n/block_size)` blocks of equal size (`blockwise.layout`); each block
    keeps one scale `s` (its largest |x|, rounded up to a bfloat16 by default)
    and one 8-bit code or half a byte per element (`low_bit_codecs`): signed
    maps `x̂ = s·sign(q)·(|q|/L)²`, non-negative maps `v̂ = s·((q+1)/L)⁴` that
    never decode a positive value to zero (Li et al.'s zero-point problem).
    State bytes per element, block 128 with bfloat16 scales: 8 bits
    1 + 2/128 = 1.016; 4 bits 0.5 + 2/128 = 0.516 (float32 scales: 1.031 and
    0.531).

    Non-finite values: a NaN or ±Inf in a state leaf after `inner.update`
    makes its block's scale non-finite, and that block decodes to NaN at the
    next step; other blocks, other leaves and the scales of other blocks are
    untouched (each block is encoded from its own maximum). Whether a NaN
    gradient reaches the state is the inner optimizer's business, as in float
    (optax.adam carries it; `optax.chain(optax.zero_nans(), ...)` or
    so.stam/so.adams, which sanitise, do not).

    Args:
      inner: the optax transformation whose state is stored (an optimizer, a
        chain, with clipping and schedules, ...). Its `init` must be traceable
        by `jax.eval_shape` (all optax transformations are).
      bits: 8 or 4. Default 8.
      min_size: smallest number of entries of a quantised leaf, ≥ 1. Default
        4096 (biases and norms stay float32; a float32 scale per few bytes
        would save little).
      block_size: largest number of elements per block, ≥ 1, or None for the
        measured default (128 at either width; docs/memory.md).
      stochastic_rounding: round unbiasedly between neighbouring codes
        (keyed from `seed`, the step count and the leaf), so that slow EMAs
        (β₂ = 0.999 at 4 bits) do not freeze. None (default): on at 4 bits,
        off at 8. Measured on the noisy quadratic of
        `tests/test_quantized_state.py` (curvatures spanning 100x inside a
        block), AdamW at 4 bits ends at 4.4x the float run's loss with nearest
        rounding and at most 1.33x with stochastic rounding; at 8 bits both
        are within 1% of float, and nearest rounding is cheaper.
      seed: seed of the stochastic rounding. Default 0.
      codec_for: per-leaf override of the rule above, or None.
      scale_dtype: "bfloat16" (default) or "float32", the dtype of the block
        scales. A bfloat16 scale is the float32 block maximum rounded up (at
        most 2⁻⁷ above it), so no entry is clipped and the codes' relative
        error bound grows by at most that factor.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is a
      `QuantizedStateState`; extra arguments (e.g. `value=loss`) are passed to
      `inner`.

    References:
      Dettmers et al. 2022, 8-bit Optimizers via Block-wise Quantization,
      arXiv:2110.02861. Li et al. 2023, Memory Efficient Optimizers with 4-bit
      States, arXiv:2309.01507.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> opt = quantized_state(optax.adamw(1e-3), bits=4, min_size=1)
      >>> params = {"w": jnp.ones((8, 256))}
      >>> state = opt.init(params)
      >>> state.inner[0].mu["w"].codes.shape, state.inner[0].mu["w"].codes.dtype
      ((8, 2, 64), dtype('uint8'))
      >>> updates, state = jax.jit(opt.update)(params, state, params)
    """
    block_size = _validate(bits, min_size, block_size, stochastic_rounding, seed, scale_dtype)
    if stochastic_rounding is None:
        stochastic_rounding = bits == 4
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        state = inner.init(params)
        treedef, codecs = _plan(inner, state, params, bits, min_size, codec_for)
        leaves = _encode_compiled(treedef.flatten_up_to(state), codecs, block_size,
                                  scale_dtype)
        return QuantizedStateState(treedef.unflatten(leaves), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        like = updates if params is None else params
        abstract = jax.eval_shape(inner.init, like)
        treedef, codecs = _plan(inner, abstract, like, bits, min_size, codec_for)
        stored = treedef.flatten_up_to(state.inner)
        floats = _decode(stored, codecs, treedef.flatten_up_to(abstract))
        updates, new_inner = inner.update(updates, treedef.unflatten(floats), params,
                                          **extra_args)
        key = (jax.random.fold_in(jax.random.PRNGKey(seed), state.count)
               if stochastic_rounding else None)
        leaves = _encode(treedef.flatten_up_to(new_inner), codecs, block_size, key,
                         scale_dtype)
        return updates, QuantizedStateState(treedef.unflatten(leaves),
                                            optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

"""Save params and optimizer state with orbax-checkpoint; restore them onto any mesh.

A checkpoint holds global arrays, not shards: orbax writes each array once,
whatever mesh it lived on, and reads it back into whatever shardings the
restore target asks for. What a restore needs is therefore a target: the shape,
dtype and sharding of every leaf of `{"params": ..., "opt_state": ...}` on the
new mesh. `restore_targets` builds it from the new mesh's parameter shardings
and `jax.eval_shape(opt.init, params)` (nothing is allocated):

* param-shaped buffers (μ, ν, m) are sharded like their parameter;
* int8 STAMLite momenta (`quantize.QuantizedArray`, blocks tiling the last
  axis) keep the parameter's spec on their leading axes; the parameter's
  last-axis entry goes to the block axis when the blocks tile every shard, and
  is dropped (replicated along that mesh axis) otherwise, as a fresh `init`
  places them;
* everything else (step counts, the 1-D vectors of per-tensor scalars) is
  replicated over the mesh.

The shapes come from the optimizer's abstract `init`, i.e. from the global
parameter shapes and the optimizer's arguments; a checkpoint restores onto a
mesh only when its state has those shapes there (orbax refuses a shape change).

orbax-checkpoint is an optional dependency: `pip install 'stam-optimizer[checkpoint]'`.
This module imports it only when a checkpoint is written or read. Orbax's own
`CheckpointManager` (periodic, atomic checkpoints, see
`examples/checkpoint_resume.py`) takes the same targets through
`orbax.checkpoint.args.StandardRestore(restore_targets(opt, params))`.

Example:
  >>> import jax, jax.numpy as jnp, tempfile, os
  >>> import stam_optimizer as so
  >>> from stam_optimizer import checkpoint
  >>> opt = so.stam_lite(1e-3)
  >>> params = {"w": jnp.ones((4, 3))}
  >>> state = opt.init(params)
  >>> path = os.path.join(tempfile.mkdtemp(), "step_0")
  >>> checkpoint.save(path, params, state)
  >>> params2, state2 = checkpoint.restore(path, opt, params)
  >>> bool((params2["w"] == params["w"]).all())
  True

References:
  orbax-checkpoint, https://orbax.readthedocs.io/en/latest/guides/checkpoint/
"""

from __future__ import annotations

import os
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from stam_optimizer.blockwise import QuantizedArray, codes_spec
from stam_optimizer.state_sharding import scales_spec

EXTRA_HINT = ("stam_optimizer.checkpoint needs orbax-checkpoint, an optional extra: "
              "pip install 'stam-optimizer[checkpoint]' (or pip install orbax-checkpoint)")


def _orbax() -> Any:
    """`orbax.checkpoint`, or an ImportError naming the extra to install."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(EXTRA_HINT) from e
    return ocp


def _sharding_of(x: Any) -> Sharding | None:
    return getattr(x, "sharding", None)


def _replicated(params: Any) -> Sharding:
    """A sharding that puts a whole array on every device the params live on."""
    for leaf in jax.tree.leaves(params):
        s = _sharding_of(leaf)
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, PartitionSpec())
    for leaf in jax.tree.leaves(params):
        s = _sharding_of(leaf)
        if isinstance(s, Sharding) and s.is_fully_replicated:
            return s
    return SingleDeviceSharding(jax.devices()[0])


def _quantized_shardings(q: QuantizedArray, param_sharding: Sharding | None,
                         param_shape: tuple[int, ...],
                         replicated: Sharding) -> QuantizedArray:
    """Shardings of the codes (..., n_blocks, block) and scales (..., n_blocks) of one
    int8 μ: the param's spec on the leading axes; its last-axis entry on the block
    axis when the blocks tile every shard, else replicated along it (as
    `quantize.codes_spec` places a fresh state)."""
    if not isinstance(param_sharding, NamedSharding) or param_sharding.is_fully_replicated:
        return QuantizedArray(replicated, replicated)
    mesh = param_sharding.mesh
    n_blocks = q.codes.shape[-2]  # the block from the layout: packed codes are narrower
    codes = codes_spec(param_sharding.spec, mesh, param_shape,
                       blocks=(n_blocks, -(-param_shape[-1] // n_blocks)))
    return QuantizedArray(NamedSharding(mesh, codes),
                             NamedSharding(mesh, scales_spec(codes, len(param_shape))))


def state_shardings(opt: optax.GradientTransformation, params: Any) -> Any:
    """Shardings for the state of `opt` on the mesh that `params` are laid out on.

    Args:
      opt: the optimizer (anything with an optax `init`).
      params: the parameter tree on the target mesh: arrays, or
        `jax.ShapeDtypeStruct`s with `sharding` set.

    Returns:
      A tree with the structure of `opt.init(params)` whose leaves are shardings
      (see the module docstring for the rules). Pass it as `out_shardings` of
      `jax.jit(opt.init)` to build a fresh state in the same layout.
    """
    abstract = jax.eval_shape(opt.init, params)
    replicated = _replicated(params)

    def like_param(leaf: Any, param: Any) -> Any:
        if isinstance(leaf, QuantizedArray):
            return _quantized_shardings(leaf, _sharding_of(param), tuple(param.shape),
                                        replicated)
        s = _sharding_of(param)
        if tuple(leaf.shape) == tuple(param.shape) and isinstance(s, Sharding):
            return s
        return replicated

    return optax.tree_map_params(
        opt, like_param, abstract, params,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, (QuantizedArray, jax.ShapeDtypeStruct)))


def abstract_state(opt: optax.GradientTransformation, params: Any) -> Any:
    """`jax.eval_shape(opt.init, params)` with every leaf's target sharding attached."""
    abstract = jax.eval_shape(opt.init, params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, state_shardings(opt, params))


def _abstract_params(params: Any) -> Any:
    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        s = _sharding_of(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=s if isinstance(s, Sharding) else None)

    return jax.tree.map(leaf, params)


def restore_targets(opt: optax.GradientTransformation, params: Any) -> dict:
    """The restore target `{"params": ..., "opt_state": ...}` for the mesh of `params`.

    Args:
      opt: the optimizer whose state was saved (same arguments as at save time).
      params: the parameters as they should be laid out after the restore:
        arrays (only their shape, dtype and sharding are used) or
        `jax.ShapeDtypeStruct`s with `sharding` set.

    Returns:
      A dict of `jax.ShapeDtypeStruct` trees, the layout `save` writes.
    """
    abstract_params = _abstract_params(params)
    return {"params": abstract_params, "opt_state": abstract_state(opt, abstract_params)}


def _path(directory: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(directory))


def save(directory: str | os.PathLike, params: Any, opt_state: Any, *,
         force: bool = False) -> None:
    """Writes `{"params": params, "opt_state": opt_state}` to `directory` and waits.

    orbax writes into a temporary directory and renames it when complete, so an
    interrupted save never leaves a half-written checkpoint under `directory`.
    Every process of a multi-process run must call it (each writes its shards).

    Args:
      directory: the checkpoint's directory; it must not exist unless `force`.
      params: a tree of arrays, sharded in any way.
      opt_state: the optimizer state of `params`, sharded in any way.
      force: overwrite an existing checkpoint. Default False.
    """
    ocp = _orbax()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(_path(directory), {"params": params, "opt_state": opt_state}, force=force)
        ckpt.wait_until_finished()


def restore(directory: str | os.PathLike, opt: optax.GradientTransformation,
            params: Any) -> tuple[Any, Any]:
    """Reads a checkpoint of `save` onto the mesh of `params`.

    Args:
      directory: a directory written by `save` (or an orbax `StandardSave`).
      opt: the optimizer, built with the arguments it was saved with.
      params: the target parameter layout (see `restore_targets`).

    Returns:
      `(params, opt_state)`, sharded as `restore_targets(opt, params)` says.
    """
    ocp = _orbax()
    with ocp.StandardCheckpointer() as ckpt:
        out = ckpt.restore(_path(directory), restore_targets(opt, params))
    return out["params"], out["opt_state"]

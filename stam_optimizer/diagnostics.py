"""Reading per-tensor diagnostics back out of optimizer state: the adaptive β₁
(`tree_beta1`) and the count of steps with non-finite gradients (`tree_nonfinite`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from stam_optimizer._common import is_boxed, unbox
from stam_optimizer.adams import ScaleByAdamsState
from stam_optimizer.blockwise import QuantizedArray
from stam_optimizer.factored_adam import ScaleByFactoredAdamState
from stam_optimizer.stam import ScaleByStamState
from stam_optimizer.stam_lite import ScaleByStamLiteState

_STATES = (ScaleByStamState, ScaleByStamLiteState)
_COUNTED = (ScaleByStamState, ScaleByStamLiteState, ScaleByAdamsState,
            ScaleByFactoredAdamState)


_is_boxed = is_boxed
_unbox = unbox


def find_states(opt_state: Any) -> list[ScaleByStamState | ScaleByStamLiteState]:
    """All STAM / STAMLite states inside an optax state (chains and wrappers too)."""
    found = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _STATES))
    return [s for s in found if isinstance(s, _STATES)]


def tree_beta1(opt_state: Any, params: Any) -> Any:
    """The β₁ each leaf used at the last step, as a pytree shaped like `params`.

    Finds every `scale_by_stam` / `scale_by_stam_lite` state inside `opt_state`,
    whatever chain or wrapper holds it (`optax.chain`, `inject_hyperparams`,
    `MultiSteps`, `apply_if_finite`, `masked`, `multi_transform`, the state of a
    `flax.nnx.Optimizer`). Leaves that no STAM-family optimizer handles (for
    instance ones masked out) get NaN. Before the first step every leaf reads
    `b1_base`.

    Args:
      opt_state: an optimizer state returned by `init` or `update`.
      params: the parameters (or any pytree with their structure).

    Returns:
      A pytree like `params` whose leaves are 0-d float arrays (flax Variables
      in `params` are replaced by plain arrays).

    Example:
      >>> import jax.numpy as jnp
      >>> from stam_optimizer import stam
      >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> beta1 = tree_beta1(stam().init(params), params)
      >>> round(float(beta1["w"]), 6)
      0.9
    """
    leaves, treedef = jax.tree.flatten(params, is_leaf=_is_boxed)
    states = find_states(opt_state)
    if not states:
        raise ValueError(
            "tree_beta1: opt_state holds no STAM or STAMLite state; build the"
            " optimizer with stam_optimizer.stam / stam_lite / scale_by_stam*"
        )
    out: list[Any] = [jnp.asarray(jnp.nan, jnp.float32)] * len(leaves)
    for state in states:
        _scatter(out, state.mu, jnp.asarray(_unbox(state.beta1)), "tree_beta1")
    return treedef.unflatten(out)


def tree_nonfinite(opt_state: Any, params: Any) -> Any:
    """Per leaf, the number of steps whose gradient had a NaN or ±Inf entry.

    STAM, STAMLite, AdamS and factored AdamW replace non-finite gradient
    entries by 0 and go on; this reads back how often that happened to each tensor (the
    `nonfinite` field of their states; see the state docstrings for exactly
    what counts). Log it next to `tree_beta1`. The states are found inside any
    chain or wrapper, as for `tree_beta1`. Leaves that none of these optimizers
    handles read -1. A step that `optax.apply_if_finite` skips never reaches
    the inner optimizer and is counted by that wrapper instead.

    Args:
      opt_state: an optimizer state returned by `init` or `update`.
      params: the parameters (or any pytree with their structure).

    Returns:
      A pytree like `params` whose leaves are 0-d int32 arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> from stam_optimizer import stam
      >>> params = {"w": jnp.zeros(2), "b": jnp.zeros(())}
      >>> opt = stam()
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([1.0, jnp.nan]), "b": jnp.ones(())}
      >>> _, state = opt.update(grads, state, params)
      >>> {k: int(v) for k, v in tree_nonfinite(state, params).items()}
      {'b': 0, 'w': 1}
    """
    leaves, treedef = jax.tree.flatten(params, is_leaf=_is_boxed)
    states = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _COUNTED))
    states = [s for s in states if isinstance(s, _COUNTED)]
    if not states:
        raise ValueError(
            "tree_nonfinite: opt_state holds no STAM, STAMLite, AdamS or factored AdamW"
            " state; build the optimizer with stam_optimizer.stam / stam_lite / adams /"
            " factored_adamw / scale_by_*"
        )
    out: list[Any] = [jnp.asarray(-1, jnp.int32)] * len(leaves)
    for state in states:
        buffer = state.m if isinstance(state, ScaleByAdamsState) else state.mu
        _scatter(out, buffer, jnp.asarray(_unbox(state.nonfinite)), "tree_nonfinite")
    return treedef.unflatten(out)


def _scatter(out: list[Any], buffer: Any, vector: jax.Array, caller: str) -> None:
    """Writes the per-tensor `vector` of one state into `out` (one entry per param leaf).

    `buffer` is that state's param-shaped buffer: its masked-out leaves
    (`optax.MaskedNode`) have no entry in the vector and are left as they are.
    """
    slots = jax.tree.leaves(
        buffer, is_leaf=lambda x: isinstance(x, (optax.MaskedNode, QuantizedArray)))
    if len(slots) != len(out):
        raise ValueError(
            f"{caller}: the optimizer state covers {len(slots)} leaves but params"
            f" has {len(out)}; pass the params the optimizer was initialised with"
        )
    j = 0
    for i, slot in enumerate(slots):
        if isinstance(slot, optax.MaskedNode):
            continue
        out[i] = vector[j]
        j += 1

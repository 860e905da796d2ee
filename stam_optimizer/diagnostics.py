"""Reading per-tensor diagnostics (the adaptive β₁) back out of optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from stam_optimizer import _common as c
from stam_optimizer.quantize import QuantizedArray
from stam_optimizer.stam import ScaleByStamState
from stam_optimizer.stam_lite import ScaleByStamLiteState

_STATES = (ScaleByStamState, ScaleByStamLiteState)


_is_boxed = c.is_boxed
_unbox = c.unbox


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
        beta1 = jnp.asarray(_unbox(state.beta1))
        slots = jax.tree.leaves(
            state.mu, is_leaf=lambda x: isinstance(x, (optax.MaskedNode, QuantizedArray)))
        if len(slots) != len(leaves):
            raise ValueError(
                f"tree_beta1: the optimizer state covers {len(slots)} leaves but params"
                f" has {len(leaves)}; pass the params the optimizer was initialised with"
            )
        j = 0
        for i, slot in enumerate(slots):
            if isinstance(slot, optax.MaskedNode):
                continue
            out[i] = beta1[j]
            j += 1
    return treedef.unflatten(out)

"""AdamS: the momentum serves as its own normalizer (Zhang, Wang & Chen, 2025).

Implements the AdamS section of docs/math.md. One param-shaped buffer `m`; the
denominator mixes the previous momentum and the current gradient, so there is
no second moment and no bias correction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stam_optimizer._common import (
    count_flagged,
    map_leaves,
    sanitize,
    vector,
    with_decay_and_lr,
    zeros_like_tree,
)
from stam_optimizer._reductions import nonfinite_sums
from stam_optimizer._storage import momentum_and_previous
from stam_optimizer._validation import (
    FLOAT_STATE_DTYPES,
    as_arrays,
    check_learning_rate,
    check_range,
    check_real,
    check_unit_open,
    check_weight_decay,
    grad_leaves,
    resolve_dtype,
)


class ScaleByAdamsState(NamedTuple):
    """State of `scale_by_adams`.

    Attributes:
      m: momentum, param-shaped.
      nonfinite: int32, one per tensor in the leaf order of
        `jax.tree.leaves(params)`: the number of steps so far at which the
        tensor's gradient had a NaN or ±Inf entry (those entries were used as
        0). It is read off `sum(g)` (one more read of g per step), so a step
        also counts when every entry is finite but the sum overflows the
        statistics dtype (beyond about 3.4e38 in float32). Saturates at
        2³¹−1. Read it with `tree_nonfinite`.
    """

    m: optax.Updates
    nonfinite: jax.Array


def scale_by_adams(
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescales updates by AdamS's direction `u = m / (√v + eps)`.

    Per element, with `g` the gradient (non-finite entries replaced by 0)::

      v = b2·m_prev² + (1−b2)·g²      # the momentum *before* this step
      m = b1·m_prev + (1−b1)·g
      u = m / (√v + eps)

    Defaults: b1=0.9 and b2=0.95 are the values the paper uses for its GPT-2
    and Llama pretraining runs, which it inherits unchanged from the AdamW
    baseline (the paper's claim is that AdamS takes AdamW's hyperparameters);
    eps=1e-8 is AdamW's.

    Args:
      b1: momentum decay, in (0, 1). Default 0.9.
      b2: weight of the previous momentum in the denominator, in (0, 1). Default 0.95.
      eps: added to √v, ≥ 0. Default 1e-8.
      mu_dtype: storage dtype of m; default each param's own dtype.

    References:
      Zhang, Wang & Chen, "AdamS: Momentum Itself Can Be A Normalizer for LLM
      Pretraining and Post-training", arXiv:2505.16363 (2025).
    """
    check_unit_open("b1", b1)
    check_unit_open("b2", b2)
    check_range("eps", eps, 0.0)
    mu_dtype = resolve_dtype("mu_dtype", mu_dtype, FLOAT_STATE_DTYPES)

    def init_fn(params):
        params = as_arrays(params)
        check_real("scale_by_adams", params)
        leaves = jax.tree.leaves(params)
        return ScaleByAdamsState(m=zeros_like_tree(params, mu_dtype),
                                 nonfinite=vector(len(leaves), 0, jnp.int32, leaves))

    def leaf_update(g, m_prev):
        dt = jnp.promote_types(g.dtype, jnp.float32)
        g = sanitize(g, dt)
        # m = β₁·m_prev + (1−β₁)·g, and v needs m_prev too (see momentum_and_previous)
        m, m_new, m_prev = momentum_and_previous(m_prev, g, b1, dt)
        v = b2 * m_prev**2 + (1 - b2) * g**2
        u = m_new / (jnp.sqrt(v) + eps)
        return u, m

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args  # accepted as optax's transformations do (e.g. value=loss)
        treedef, gs = grad_leaves(updates, state.m)
        check_real("scale_by_adams", gs)
        flagged = nonfinite_sums(gs)
        us, (ms,) = map_leaves(leaf_update, gs, [treedef.flatten_up_to(state.m)], ())
        return treedef.unflatten(us), ScaleByAdamsState(
            m=treedef.unflatten(ms), nonfinite=count_flagged(state.nonfinite, flagged))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adams(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    mu_dtype: Any | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamS optimizer: `scale_by_adams`, decoupled weight decay, learning rate.

    Updates are added to params: `θ ← θ − lr·(u + λ·θ)`. `b1`, `b2`, `eps` and
    `mu_dtype` are those of `scale_by_adams`.

    Args:
      learning_rate: a float ≥ 0 or an optax schedule. Default 1e-3.
      weight_decay: λ ≥ 0 (or a schedule). Default 0.1, the paper's value for
        its pretraining runs (taken over from the AdamW baseline).
      mask: pytree or callable choosing the leaves that decay (optax convention).

    Example:
      >>> import jax.numpy as jnp
      >>> opt = adams(learning_rate=3e-4)
      >>> state = opt.init({"w": jnp.zeros((4, 4))})
    """
    check_learning_rate(learning_rate)
    check_weight_decay(weight_decay)
    return with_decay_and_lr(scale_by_adams(b1, b2, eps, mu_dtype),
                               learning_rate, weight_decay, mask)

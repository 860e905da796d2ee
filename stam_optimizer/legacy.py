"""The 0.1.0 classes `STAM` and `STAMLite`: `init`, then `update` whose updates
are **subtracted** from params (`params − updates`), as in the published Quick Start.

New code should prefer the optax-native `stam` / `stam_lite`, whose updates are
added. Both classes wrap those transformations and compile `update` once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from stam_optimizer.stam import stam
from stam_optimizer.stam_lite import stam_lite


class _Subtracted:
    """Wraps an optax transformation; `update` returns the negated updates, jitted."""

    def __init__(self, tx: optax.GradientTransformation):
        self.tx = tx

        def _update(grads, state, params):
            updates, state = tx.update(grads, state, params)
            return jax.tree.map(jnp.negative, updates), state

        self._update = jax.jit(_update)

    def init(self, params: optax.Params) -> optax.OptState:
        """Returns the initial optimizer state for `params`."""
        return self.tx.init(params)

    def update(
        self, grads: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        """Returns `(updates, new_state)`; apply them as `params − updates`."""
        return self._update(grads, state, params)


class STAM(_Subtracted):
    """STAM with the 0.1.0 interface (updates are subtracted from params).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> opt = STAM(learning_rate=1e-3, adapt_strength=0.2)
      >>> params = {"w": jnp.zeros((10, 5)), "b": jnp.zeros(5)}
      >>> state = opt.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, state, params)
      >>> params = jax.tree.map(lambda p, u: p - u, params, updates)

    Args are those of `stam_optimizer.stam`, with the same defaults and ranges.
    """

    def __init__(
        self,
        learning_rate: optax.ScalarOrSchedule = 1e-3,
        b1_base: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: optax.ScalarOrSchedule = 0.01,
        adapt_strength: float = 0.2,
        tau_decay: float = 0.99,
        fallback_threshold: float = 100.0,
        b1_min: float | None = None,
        mu_dtype: Any | None = None,
        mask: Any | None = None,
    ):
        super().__init__(stam(learning_rate, b1_base, b2, eps, weight_decay, adapt_strength,
                              tau_decay, fallback_threshold, b1_min, mu_dtype, mask))


class STAMLite(_Subtracted):
    """STAMLite with the 0.1.0 interface (updates are subtracted from params).

    Example:
      >>> import jax.numpy as jnp
      >>> opt = STAMLite(learning_rate=1e-3, state_dtype=jnp.bfloat16)
      >>> state = opt.init({"w": jnp.zeros((10, 5))})

    Args are those of `stam_optimizer.stam_lite`, with the same defaults and ranges.
    """

    def __init__(
        self,
        learning_rate: optax.ScalarOrSchedule = 1e-3,
        b1_base: float = 0.9,
        eps: float = 1e-8,
        weight_decay: optax.ScalarOrSchedule = 0.01,
        adapt_strength: float = 0.2,
        moment_decay: float = 0.99,
        beta1_update_interval: int = 5,
        state_dtype: Any = "float32",
        b1_min: float | None = None,
        mask: Any | None = None,
        **quantization: Any,
    ):
        super().__init__(stam_lite(learning_rate, b1_base, eps, weight_decay, adapt_strength,
                                   moment_decay, beta1_update_interval, state_dtype, b1_min,
                                   mask, **quantization))

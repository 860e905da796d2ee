"""stam-optimizer: STAM, STAMLite, AdamS and factored AdamW as optax gradient transformations.

Optax-native (updates are added to params)::

    import optax, stam_optimizer as so
    opt = so.stam(learning_rate=1e-3)          # or so.stam_lite(...), so.adams(...)
    opt = so.factored_adamw(learning_rate=1e-3)  # AdamW, factored second moment
    opt = so.quantized_state(optax.adamw(1e-3), bits=8)  # any optimizer, 8- or 4-bit state

0.1.0-compatible classes (updates are subtracted)::

    from stam_optimizer import STAM, STAMLite
"""

from stam_optimizer import quantize  # the public module of the int8 state (`so.quantize`)
from stam_optimizer.adams import ScaleByAdamsState, adams, scale_by_adams
from stam_optimizer.diagnostics import find_states, tree_beta1, tree_nonfinite
from stam_optimizer.factored_adam import (
    ScaleByFactoredAdamState,
    factored_adamw,
    scale_by_factored_adam,
)
from stam_optimizer.legacy import STAM, STAMLite
from stam_optimizer.quantized_state import (
    QuantizedStateState,
    dequantize_state,
    quantize_state,
    quantized_state,
)
from stam_optimizer.stam import ScaleByStamState, scale_by_stam, stam
from stam_optimizer.stam_lite import ScaleByStamLiteState, scale_by_stam_lite, stam_lite

__version__ = "0.2.0.dev0"

__all__ = [
    "STAM",
    "STAMLite",
    "QuantizedStateState",
    "ScaleByAdamsState",
    "ScaleByFactoredAdamState",
    "ScaleByStamLiteState",
    "ScaleByStamState",
    "adams",
    "dequantize_state",
    "factored_adamw",
    "find_states",
    "quantize",
    "quantize_state",
    "quantized_state",
    "scale_by_adams",
    "scale_by_factored_adam",
    "scale_by_stam",
    "scale_by_stam_lite",
    "stam",
    "stam_lite",
    "tree_beta1",
    "tree_nonfinite",
]

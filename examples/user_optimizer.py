"""An optimizer of your own in stam-bench, without editing the package.

    stam-bench run convex lm --optimizer examples/user_optimizer.py:adamw_nesterov
    stam-bench run gpt --size quick --optimizer nadamw=examples/user_optimizer.py:adamw_nesterov

The factory takes `(learning_rate, weight_decay=...)` and returns an optax
transformation; it joins every suite next to the suite's own optimizers, is tuned
on the same learning-rate grid with the same seeds, and appears in the report
under its name (the factory's, or NAME= before the path).
"""

import optax


def adamw_nesterov(learning_rate, weight_decay=0.01):
    """AdamW with a Nesterov momentum step (optax's `nesterov=True`)."""
    return optax.adamw(learning_rate, weight_decay=weight_decay, nesterov=True)

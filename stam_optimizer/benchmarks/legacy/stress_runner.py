"""The 0.1.0 non-stationary stress test, kept working.

    python stam_optimizer/benchmarks/stress_runner.py --seeds 3 --steps 50 --batch-sizes 4,8,32

The non-stationary MLP (teacher and input mean change at mid-training) with small,
noisy batches, for each batch size; benchmark protocol (learning rate tuned on one
grid for everyone, then `--seeds` final seeds); writes results/stress_shift.json.
"""

from __future__ import annotations

import argparse
import sys

from stam_optimizer.benchmarks.legacy import compat  # noqa: E402
from stam_optimizer.benchmarks.programme import argtypes
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.tasks import nonstationary  # noqa: E402


def _sizes(text: str) -> list[int]:
    sizes = [argtypes.positive(x) for x in text.split(",") if x.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one batch size, e.g. 4,8,32")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=argtypes.positive, default=3, help="final seeds (>= 1)")
    ap.add_argument("--steps", type=argtypes.positive, default=50, help="training steps (>= 1)")
    ap.add_argument("--batch-sizes", type=_sizes, default=[4, 8, 32],
                    help="comma-separated batch sizes (each >= 1)")
    ap.add_argument("--optimizers", type=argtypes.optimizer_names, default=compat.OPTIMIZERS_010)
    ap.add_argument("--output", default="results/stress_shift.json")
    args = ap.parse_args(argv)
    cfg = Config(size="quick", steps=args.steps)
    tasks = [nonstationary.stress(b)(cfg) for b in args.batch_sizes]
    compat.run_tasks(tasks, args.optimizers, args.seeds, args.output, " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The 0.1.0 phase-1 multi-seed comparison on synthetic tasks, kept working.

    python stam_optimizer/benchmarks/phase1_runner.py --seeds 3 --epochs 20

Runs STAM, STAMLite, SGD with momentum, RMSProp, Adagrad, NAdam, LAMB and AdamW on
the convex regression and the non-stationary MLP, each trained for `--epochs`
passes over its training set, with the benchmark protocol (learning rate tuned on
one grid for everyone, then `--seeds` final seeds), and writes
results/phase1_synthetic.json.
"""

from __future__ import annotations

import argparse
import sys

from stam_optimizer.benchmarks.legacy import compat  # noqa: E402
from stam_optimizer.benchmarks.programme import argtypes
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.tasks import convex, nonstationary  # noqa: E402

TRAIN_EXAMPLES = {"linear_regression": 2048, "nonstationary_mlp": 4096}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=argtypes.positive, default=3, help="final seeds (>= 1)")
    ap.add_argument("--epochs", type=argtypes.positive, default=20,
                    help="passes over each task's training set (>= 1)")
    ap.add_argument("--optimizers", type=argtypes.optimizer_names, default=compat.OPTIMIZERS_010)
    ap.add_argument("--output", default="results/phase1_synthetic.json")
    args = ap.parse_args(argv)
    tasks = []
    for name, make in (("linear_regression", convex.linear_regression),
                       ("nonstationary_mlp", nonstationary.nonstationary_mlp)):
        steps = args.epochs * TRAIN_EXAMPLES[name] // 32  # batch size 32
        tasks.append(make(Config(size="quick", steps=steps)))
    compat.run_tasks(tasks, args.optimizers, args.seeds, args.output, " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

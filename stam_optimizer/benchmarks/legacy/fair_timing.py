"""The 0.1.0 fair-timing command, kept working with its flags and output file.

    python stam_optimizer/benchmarks/fair_timing.py --optimizers stam_full,stam_lite,\\
        sgd_momentum,rmsprop,adagrad,nadam,lamb --seeds 2 --warmup-steps 5 \\
        --timed-steps 20 --output results/fair_timing.json

Times a whole jitted train step (forward, backward, update) of the MLP task for
each optimizer, per seed; compile time apart, warm-up excluded,
`block_until_ready` after every step, optimizers interleaved. AdamW is always
timed too, as the reference of the ratios.
"""

from __future__ import annotations

import argparse
import sys

from stam_optimizer.benchmarks.measure import speed  # noqa: E402
from stam_optimizer.benchmarks.programme import records, registry
from stam_optimizer.benchmarks.programme.log import log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default="stam_full,stam_lite,adamw",
                    help="comma-separated registry names")
    ap.add_argument("--seeds", type=int, default=2, help="number of seeds (>= 1)")
    ap.add_argument("--warmup-steps", type=int, default=5, help="warm-up steps (>= 0)")
    ap.add_argument("--timed-steps", type=int, default=20, help="measured steps (>= 1)")
    ap.add_argument("--task", default="mlp", choices=sorted(speed.TRAIN_TASKS))
    ap.add_argument("--output", default="results/fair_timing.json")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.timed_steps < 1 or args.warmup_steps < 0:
        ap.error("--seeds and --timed-steps must be >= 1, --warmup-steps >= 0")
    try:
        names = registry.parse_names(args.optimizers)
    except ValueError as e:
        ap.error(str(e))
    if "adamw" not in names:
        names.append("adamw")
    runs = [speed.time_train_steps(args.task, names, args.timed_steps, args.warmup_steps,
                                   seed, log) for seed in range(args.seeds)]
    records.write_json(args.output, {"environment": records.environment(), "runs": runs,
                                   "method": speed.__doc__.strip()})
    print(speed.train_table(runs))
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

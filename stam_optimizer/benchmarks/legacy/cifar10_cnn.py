"""The 0.1.0 CIFAR-10 small-CNN benchmark, kept working.

    python stam_optimizer/benchmarks/cifar10_cnn.py --optimizer stam_full --epochs 5

Trains the small CNN of the images suite on CIFAR-10 read from `--data-dir`
(the "python version": cifar-10-batches-py/ or cifar-10-python.tar.gz). Unlike
0.1.0 it never downloads: without the files it says where to put them and exits
with status 2. One learning rate (`--lr`), `--seeds` seeds; prints the
validation loss and test accuracy; writes results/cifar10_cnn_<optimizer>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from stam_optimizer.benchmarks.legacy import compat  # noqa: E402
from stam_optimizer.benchmarks.programme import argtypes, records, runner
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.tasks import real_data  # noqa: E402
from stam_optimizer.benchmarks.tasks.data import DatasetMissing

TRAIN_EXAMPLES, BATCH = 45_000, 64


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", type=argtypes.optimizer_names, default="stam_full",
                    help="registry name")
    ap.add_argument("--epochs", type=argtypes.positive, default=5, help="passes (>= 1)")
    ap.add_argument("--steps", type=argtypes.positive, default=None,
                    help="training steps (>= 1); overrides --epochs")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate (> 0)")
    ap.add_argument("--seeds", type=argtypes.positive, default=1, help="seeds (>= 1)")
    ap.add_argument("--data-dir", type=Path, default=Path("data"),
                    help="folder with CIFAR-10 (default: data)")
    ap.add_argument("--output", default=None,
                    help="JSON file (default results/cifar10_cnn_<optimizer>.json)")
    args = ap.parse_args(argv)
    if not args.lr > 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    (name,) = args.optimizer[:1]
    steps = args.steps or args.epochs * TRAIN_EXAMPLES // BATCH
    cfg = Config(size="full", data_dir=args.data_dir, steps=steps)
    try:
        task = real_data.cifar10_cnn(cfg)
    except DatasetMissing as e:
        compat.log(f"cifar10_cnn: {e}")
        return 2
    out, compile_s, run_s = runner.execute(task, name, [args.lr], list(range(args.seeds)))
    final = runner.derived_metrics(task, out)
    rec = {"schema": records.SCHEMA, "kind": "legacy", "command": " ".join(sys.argv),
           "task": task.name, "optimizer": name, "lr": args.lr, "task_info": task.info(),
           "final": {k: runner._clean(v[0, 0]) for k, v in final.items()},
           "eval_steps": runner.eval_steps(task),
           "curves": {"val_loss": runner._clean(out["metrics/val_loss"][0, 0])},
           "timing": {"compile_s": compile_s, "run_s": run_s},
           "environment": records.environment()}
    output = args.output or f"results/cifar10_cnn_{name}.json"
    records.write_json(output, rec)
    print(f"{name}: validation loss {np.nanmean(final['val_loss'][0, 0]):.4f}, "
          f"test accuracy {np.nanmean(final['test_acc'][0, 0]):.3f}")
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The 0.1.0 MNIST sanity check, kept working.

    python stam_optimizer/benchmarks/mnist_sanity.py [--data-dir data]

Trains an MLP with STAM, STAMLite and AdamW on MNIST when its IDX files are in
`--data-dir` (nothing is downloaded); otherwise says so and uses scikit-learn's
bundled digits instead. Benchmark protocol (learning rate tuned on one grid for
everyone, then `--seeds` final seeds); prints validation loss and test accuracy;
writes results/mnist_sanity.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stam_optimizer.benchmarks.legacy import compat  # noqa: E402
from stam_optimizer.benchmarks.programme import argtypes
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.tasks import real_data  # noqa: E402
from stam_optimizer.benchmarks.tasks.data import DatasetMissing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"),
                    help="folder with the MNIST IDX files (default: data)")
    ap.add_argument("--seeds", type=argtypes.positive, default=2, help="final seeds (>= 1)")
    ap.add_argument("--optimizers", type=argtypes.optimizer_names,
                    default="stam_full,stam_lite,adamw")
    ap.add_argument("--output", default="results/mnist_sanity.json")
    args = ap.parse_args(argv)
    cfg = Config(size="quick", data_dir=args.data_dir)
    try:
        task = real_data.mnist_mlp(cfg)
        compat.log(f"using MNIST from {args.data_dir}")
    except DatasetMissing as e:
        compat.log(f"MNIST not found ({e}).\nUsing scikit-learn's bundled digits instead.")
        task = real_data.digits_mlp(cfg)
    out = compat.run_tasks([task], args.optimizers, args.seeds, args.output,
                           " ".join(sys.argv))
    for r in out["runs"]:
        acc = [a for a in r["final"]["extra"].get("test_acc", []) if a is not None]
        if acc:
            print(f"{r['optimizer']}: test accuracy {sum(acc) / len(acc):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

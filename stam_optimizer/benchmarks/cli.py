"""`stam-bench`: the benchmark command line.

    stam-bench list                 optimizers of the registry
    stam-bench speed [options]      update-only and train-step timing
"""

from __future__ import annotations

import argparse
import sys

from stam_optimizer.benchmarks import registry, speed


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _names(text: str) -> list[str]:
    try:
        return registry.parse_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def cmd_list(args: argparse.Namespace) -> int:
    for name in registry.OPTIMIZERS:
        print(name)
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    for t in trees:
        if t not in speed.TREES:
            _log(f"stam-bench speed: unknown tree {t!r}; choose from {', '.join(speed.TREES)}")
            return 2
    out = {"environment": speed.environment(), "update": [], "train_step": [],
           "method": speed.__doc__.strip()}
    for t in trees:
        _log(f"update timing on {t} ({args.steps} interleaved rounds after {args.warmup} warm-up)")
        out["update"].append(speed.time_updates(t, speed.UPDATE_OPTIMIZERS, args.steps,
                                                args.warmup, _log))
        speed.write_json(args.output, out)
    for task in [x for x in args.train_tasks.split(",") if x]:
        _log(f"train-step timing: {task}")
        out["train_step"].append(speed.time_train_steps(
            task, args.train_optimizers, args.steps, args.warmup, 0, _log))
        speed.write_json(args.output, out)
    print("Optimizer update alone (params and state donated), ratio to optax.adamw:\n")
    print(speed.update_table(out["update"]))
    if out["train_step"]:
        print("\nWhole train step (forward, backward, update):\n")
        print(speed.train_table(out["train_step"]))
    print(f"\nwritten: {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stam-bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the optimizers of the registry")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("speed", help="time optimizer updates and train steps fairly",
                       description=speed.__doc__)
    p.add_argument("--trees", default="small200,square8,large64",
                   help=f"comma-separated trees: {', '.join(speed.TREES)}")
    p.add_argument("--steps", type=_positive, default=20, help="measured rounds (>= 1)")
    p.add_argument("--warmup", type=_nonnegative, default=3, help="warm-up steps (>= 0)")
    p.add_argument("--train-tasks", default="mlp,transformer",
                   help="comma-separated train-step tasks (mlp, transformer; empty: none)")
    p.add_argument("--train-optimizers", type=_names,
                   default=list(registry.OPTIMIZERS), help="comma-separated registry names")
    p.add_argument("--output", default="results/speed.json", help="JSON file to write")
    p.set_defaults(func=cmd_speed)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

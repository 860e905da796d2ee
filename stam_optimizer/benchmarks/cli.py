"""`stam-bench`: the benchmark command line.

    stam-bench quick                every suite at small size, then the report (~5 min)
    stam-bench full                 every suite, every registry optimizer, then the report
    stam-bench run SUITE...         chosen suites (--size tiny|quick|full|gpu)
    stam-bench report               rebuild report.md, plots and summary.json from a results folder
    stam-bench list                 optimizers, tasks and suites
    stam-bench speed [options]      update-only and train-step timing
    stam-bench profile [options]    time per kernel of one optimizer update
    stam-bench memory [options]     optimizer-state bytes and compiled step memory
    stam-bench snr [options]        per-entry signal-to-noise ratio of gpt gradients
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stam_optimizer.benchmarks.measure import gradient_snr, kernel_profile, memory, speed
from stam_optimizer.benchmarks.programme import records, registry, scheduler, sizes
from stam_optimizer.benchmarks.programme.argtypes import (
    model_name,
    model_names,
    nonnegative,
    optimizer_names,
    positive,
    positive_float,
)
from stam_optimizer.benchmarks.programme.log import log
from stam_optimizer.benchmarks.programme.records import write_json
from stam_optimizer.benchmarks.programme.suites import SUITES, TASKS


def cmd_list(args: argparse.Namespace) -> int:
    print("optimizers:", ", ".join(registry.names(full=True)))
    others = [n for n, e in registry.ENTRIES.items() if not e.full]
    if others:
        print("  (gpt and ablation suites also:", ", ".join(others) + ")")
    print("tasks:", ", ".join(TASKS))
    print("suites:")
    for name, suite in SUITES.items():
        print(f"  {name:<13} {suite.description}")
    return 0


def _task_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        what = ", ".join(map(repr, unknown)) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown task {what}; choose from {', '.join(TASKS)}")
    return names


def _suite(text: str) -> str:
    if text not in SUITES:
        raise argparse.ArgumentTypeError(f"unknown suite {text!r}; choose from "
                                         f"{', '.join(SUITES)}")
    return text


def _programme(args: argparse.Namespace, suites: list[str], size: str) -> int:
    out = Path(args.out or f"results/{size}")
    try:
        extra = [registry.load(spec) for spec in args.optimizer]
    except ValueError as e:
        log(f"stam-bench: --optimizer: {e}")
        return 2
    log(f"stam-bench: suites {', '.join(suites)} at size {size} -> {out}")
    counts = scheduler.run_programme(suites, size, out, data_dir=args.data_dir,
                                     optimizers=args.optimizers, extra=extra,
                                     workers=args.workers,
                                     force=args.force, log=log,
                                     tasks=getattr(args, "tasks", None))
    log(f"runs: {counts['done']} done, {counts['skipped']} kept from before, "
         f"{counts['failed']} failed, {counts['missing_data']} tasks without data; "
         f"{counts['seconds']:.0f}s")
    if not args.no_report:
        from stam_optimizer.benchmarks.report import report

        print(f"report: {report.build_report(out)}")
    return 1 if counts["failed"] else 0


def cmd_quick(args: argparse.Namespace) -> int:
    return _programme(args, list(SUITES), "quick")


def cmd_full(args: argparse.Namespace) -> int:
    return _programme(args, list(SUITES), "full")


def cmd_run(args: argparse.Namespace) -> int:
    return _programme(args, args.suites, args.size)


def cmd_report(args: argparse.Namespace) -> int:
    from stam_optimizer.benchmarks.report import report, summary

    results = Path(args.results)
    if not (results / "runs").is_dir() and not (results / summary.FILE).is_file():
        log(f"stam-bench report: neither a runs/ folder nor {summary.FILE} in {args.results}; "
            "run stam-bench first")
        return 2
    print(f"report: {report.build_report(args.results, args.out_dir)}")
    return 0


def _tree(text: str) -> str:
    if text not in speed.TREES:
        raise argparse.ArgumentTypeError(f"unknown tree {text!r}; choose from "
                                         f"{', '.join(speed.TREES)}")
    return text


def _trees(text: str) -> list[str]:
    return [_tree(t.strip()) for t in text.split(",") if t.strip()]


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `stam-bench memory`."""
    parser.add_argument("--models", type=model_names, default=list(memory.MODELS),
                        help=f"comma-separated models for state bytes: "
                             f"{', '.join(memory.MODELS)}")
    parser.add_argument("--optimizers", type=optimizer_names, default=registry.names(full=True),
                        help="comma-separated registry names (default: all)")
    parser.add_argument("--compiled-optimizers", type=optimizer_names, default=None,
                        help="registry names whose compiled update and train step are "
                             "measured (default: those of --optimizers)")
    parser.add_argument("--compiled-model", type=model_name, default=memory.DEFAULT_MODEL,
                        help="model whose compiled update memory is measured")
    parser.add_argument("--no-compiled", action="store_true",
                        help="skip the compiled update memory")
    parser.add_argument("--train-batch", type=positive, default=4,
                        help="sequences per train step of the transformer (default 4)")
    parser.add_argument("--train-seq", type=positive, default=256,
                        help="tokens per sequence of the train step, <= 1024 (default 256)")
    parser.add_argument("--no-train-step", action="store_true",
                        help="skip the transformer train step's peak memory")
    parser.add_argument("--output", default="results/memory.json", help="JSON file to write")


def cmd_memory(args: argparse.Namespace) -> int:
    try:
        out = memory.measure(
            list(args.models), list(args.optimizers),
            compiled_optimizers=args.compiled_optimizers, compiled_model=args.compiled_model,
            compiled=not args.no_compiled, train_step=not args.no_train_step,
            train_batch=args.train_batch, train_seq=args.train_seq, output=args.output,
            log=log)
    except ValueError as e:
        log(f"stam-bench memory: {e}")
        return 2
    print(memory.summary(out))
    print(f"\nwritten: {args.output}")
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    out = speed.measure(args.trees, [x for x in args.train_tasks.split(",") if x],
                        args.train_optimizers, args.steps, args.warmup, args.output, log)
    print("Optimizer update alone (params and state donated), ratio to optax.adamw:\n")
    print(speed.update_table(out["update"]))
    if out["train_step"]:
        print("\nWhole train step (forward, backward, update):\n")
        print(speed.train_table(out["train_step"]))
    parents = speed.parent_table(out["update"] + out["train_step"])
    if parents.count("\n") > 1:
        print("\nStorage variants against their float parent (same rounds):\n")
        print(parents)
    print(f"\nwritten: {args.output}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    results = []
    for name in args.optimizers:
        log(f"profiling {name} on {args.tree} ({args.rounds} steps)")
        results.append(kernel_profile.profile_update(args.tree, name, args.rounds, args.warmup))
        print(kernel_profile.table(results[-1], args.top) + "\n")
    write_json(args.output, {"environment": records.environment(), "profiles": results,
                             "method": kernel_profile.__doc__.strip()})
    print(f"written: {args.output}")
    return 0


def _at_least_3(text: str) -> int:
    n = positive(text)
    if n < 3:
        raise argparse.ArgumentTypeError(f"must be an integer >= 3, got {text!r}")
    return n


def _snr_tasks() -> dict:
    from stam_optimizer.benchmarks.tasks import chinchilla, gpt

    return gpt.TASKS | chinchilla.TASKS


def cmd_snr(args: argparse.Namespace) -> int:
    from stam_optimizer.benchmarks.programme.task import Config

    results = []
    for name in args.tasks:
        log(f"snr: {name} at size {args.size} ({args.batches} batches per point)")
        results.append(gradient_snr.measure(_snr_tasks()[name](Config(size=args.size)),
                                            args.lr, args.batches))
    print(gradient_snr.table(results))
    write_json(args.output, {"environment": records.environment(), "results": results,
                             "method": gradient_snr.__doc__.strip()})
    print(f"\nwritten: {args.output}")
    return 0


def _gpt_tasks(text: str) -> list[str]:
    names, known = [t for t in text.split(",") if t], _snr_tasks()
    bad = [t for t in names if t not in known]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--tasks takes gpt-suite task names, got {', '.join(bad) or 'none'}; choose "
            f"from {', '.join(known)}")
    return names


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            if isinstance(default, (list, tuple)):
                default = ",".join(map(str, default))
            text += f" (default: {str(default).replace('%', '%%')})"
        return text


def _common_arguments() -> argparse.ArgumentParser:
    """The options shared by quick, full and run."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default=None,
                        help="results folder (default: results/<size>); re-running resumes")
    common.add_argument("--data-dir", type=Path, default=None,
                        help="folder with MNIST / Fashion-MNIST / CIFAR-10 files (images suite)")
    common.add_argument("--optimizers", type=optimizer_names, default=None,
                        help="comma-separated registry names (default: the suite's set)")
    common.add_argument("--optimizer", action="append", default=[], metavar="SPEC",
                        help="your own optimizer, added to every suite: "
                             "[NAME=]path/to/file.py:factory or [NAME=]module:factory, "
                             "factory(learning_rate, weight_decay=) -> optax "
                             "transformation (repeatable)")
    common.add_argument("--workers", type=positive, default=2,
                        help="jobs compiled and run at once")
    common.add_argument("--force", action="store_true", help="re-run finished runs too")
    common.add_argument("--no-report", action="store_true", help="do not build the report")
    return common


def _add_programme_commands(sub: argparse._SubParsersAction) -> None:
    common = _common_arguments()
    p = sub.add_parser("quick", parents=[common], help="every suite at small size (~5 min)",
                       description="Every suite at small size with the quick optimizer set "
                                   "(STAM, STAMLite, AdamW and what each suite's question "
                                   "needs), then the report.")
    p.set_defaults(func=cmd_quick)
    n_opt = len(registry.names(full=True))
    p = sub.add_parser("full", parents=[common],
                       help=f"every suite, all {n_opt} optimizers of the registry",
                       description=f"Every suite at full size with all {n_opt} optimizers of "
                                   "the registry (stam-bench list), then the report.")
    p.set_defaults(func=cmd_full)
    p = sub.add_parser("run", parents=[common], help="run chosen suites",
                       description="Runs the named suites: " + ", ".join(SUITES))
    p.add_argument("suites", nargs="+", type=_suite, metavar="SUITE")
    p.add_argument("--size", choices=list(sizes.SIZES), default="quick",
                   help="problem size and seeds: tiny (seconds, for tests), quick (as "
                        "stam-bench quick), full (as stam-bench full), gpu (the "
                        "one-Chinchilla task for one GPU; suites gpt and chinchilla)")
    p.add_argument("--tasks", type=_task_names, default=None,
                   help="comma-separated task names: only these tasks of the suites")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="build report.md and plots from a results folder")
    p.add_argument("--results", default="results/quick", help="results folder to read")
    p.add_argument("--out-dir", default=None,
                   help="where to write report.md and the plots (default: --results)")
    p.set_defaults(func=cmd_report)


def _add_measurement_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="optimizer-state bytes per parameter",
                       description=memory.__doc__)
    add_memory_arguments(p)
    p.set_defaults(func=cmd_memory)
    p = sub.add_parser("list", help="list optimizers, tasks and suites")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("speed", help="time optimizer updates and train steps fairly",
                       description=speed.__doc__)
    p.add_argument("--trees", type=_trees, default="small200,square8,large64",
                   help=f"comma-separated trees: {', '.join(speed.TREES)}")
    p.add_argument("--steps", type=positive, default=20, help="measured rounds (>= 1)")
    p.add_argument("--warmup", type=nonnegative, default=3, help="warm-up steps (>= 0)")
    p.add_argument("--train-tasks", default="mlp,transformer",
                   help="comma-separated train-step tasks (mlp, transformer; empty: none)")
    p.add_argument("--train-optimizers", type=optimizer_names,
                   default=registry.names(full=True),
                   help="comma-separated registry names for the train steps (default: all)")
    p.add_argument("--output", default="results/speed.json", help="JSON file to write")
    p.set_defaults(func=cmd_speed)
    p = sub.add_parser("profile", help="time per kernel of optimizer updates",
                       description=kernel_profile.__doc__)
    p.add_argument("--tree", type=_tree, default="single16",
                   help=f"parameter tree: {', '.join(speed.TREES)}")
    p.add_argument("--optimizers", type=optimizer_names, default=["adamw", "stam_full"],
                   help="comma-separated registry names")
    p.add_argument("--rounds", type=positive, default=10, help="profiled steps (>= 1)")
    p.add_argument("--warmup", type=nonnegative, default=3, help="warm-up steps (>= 0)")
    p.add_argument("--top", type=positive, default=12, help="kernels shown per optimizer")
    p.add_argument("--output", default="results/profile.json", help="JSON file to write")
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("snr", help="per-entry signal-to-noise ratio of gpt gradients",
                       description=gradient_snr.__doc__)
    p.add_argument("--tasks", type=_gpt_tasks,
                   default="gpt_d64,chinchilla_small,chinchilla_medium",
                   help="comma-separated gpt or one-Chinchilla task names")
    p.add_argument("--size", choices=("tiny", "full"), default="full",
                   help="task size")
    p.add_argument("--batches", type=_at_least_3, default=gradient_snr.BATCHES,
                   help="minibatch gradients per point (>= 3)")
    p.add_argument("--lr", type=positive_float, default=1e-2,
                   help="AdamW peak learning rate of the trained point (> 0)")
    p.add_argument("--output", default="results/snr.json", help="JSON file to write")
    p.set_defaults(func=cmd_snr)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stam-bench", description=__doc__,
                                 formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_programme_commands(sub)
    _add_measurement_commands(sub)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return ap


INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


def _exit_now(code: int) -> None:
    """Leaves at once, without joining worker threads that are still running."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except scheduler.Interrupted as e:
        kept = e.counts.get("done", 0) + e.counts.get("skipped", 0)
        lost = f"; {e.abandoned} running job(s) abandoned" if e.abandoned else ""
        log(f"stam-bench: stopped by Ctrl-C; {kept} finished runs are on disk{lost}; "
             "run the same command again to resume")
        if e.abandoned:
            _exit_now(INTERRUPTED)
        return INTERRUPTED
    except KeyboardInterrupt:
        log("stam-bench: stopped by Ctrl-C")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

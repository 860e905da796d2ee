"""The 0.1.0 optimizer-state resource report, kept working with its command and output file.

    python stam_optimizer/benchmarks/resource_report.py [--models ...] [--output ...]

For each model prints one line per STAM variant in the 0.1.0 format,

    small_mlp: AdamW state=0.13MB, STAM state=0.13MB, ratio=1.0008x

followed by the same line for STAMLite with float32, bfloat16 and int8 state,
and writes results/resource_report.json. MB is 2**20 bytes. The byte counts
come from `memory.state_bytes` (abstract `tx.init`, every state leaf counted),
so the models are never allocated.
"""

from __future__ import annotations

import argparse
import sys

from stam_optimizer.benchmarks.measure import memory
from stam_optimizer.benchmarks.programme import records  # noqa: E402

# Registry name -> label printed in the report (STAM first, as in 0.1.0).
VARIANTS = {
    "stam_full": "STAM",
    "stam_full_bf16": "STAM bf16 moments",
    "stam_lite": "STAMLite float32",
    "stam_lite_bf16": "STAMLite bf16",
    "stam_lite_int8": "STAMLite int8",
}
DEFAULT_MODELS = ("small_mlp", "medium_mlp", "wide_linear", "transformer")


def report(models: list[str]) -> dict:
    """State bytes of AdamW and each STAM variant per model, with the printed lines."""
    rows = memory.state_rows(models, [memory.BASELINE, *VARIANTS])
    entries, lines = [], []
    for model in models:
        mine = {r["optimizer"]: r for r in rows if r["model"] == model}
        base = mine[memory.BASELINE]
        entry = {"model": model, "params": base["params"],
                 "adamw_state_bytes": base["state_bytes"],
                 "adamw_state_mb": base["state_bytes"] / memory.MB, "variants": {}}
        for name, label in VARIANTS.items():
            r = mine[name]
            entry["variants"][name] = {
                "label": label, "state_bytes": r["state_bytes"],
                "state_mb": r["state_bytes"] / memory.MB,
                "bytes_per_param": r["bytes_per_param"], "ratio_to_adamw": r["ratio_to_adamw"]}
            lines.append(format_line(model, base["state_bytes"], label, r["state_bytes"]))
        entries.append(entry)
    return {"models": entries, "lines": lines}


def format_line(model: str, adamw_bytes: int, label: str, other_bytes: int) -> str:
    """One 0.1.0-style line: `model: AdamW state=…MB, <label> state=…MB, ratio=…x`."""
    return (f"{model}: AdamW state={adamw_bytes / memory.MB:.2f}MB, "
            f"{label} state={other_bytes / memory.MB:.2f}MB, "
            f"ratio={other_bytes / adamw_bytes:.4f}x")


def main(argv: list[str] | None = None) -> int:
    """Prints the report and writes its JSON file; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated models: {', '.join(memory.MODELS)}")
    ap.add_argument("--output", default="results/resource_report.json",
                    help="JSON file to write")
    args = ap.parse_args(argv)
    try:
        models = memory.parse_models(args.models)
    except ValueError as e:
        ap.error(str(e))
    out = {"schema": 1, "kind": "resource_report", "environment": records.environment(),
           "method": __doc__.strip(), **report(models)}
    records.write_json(args.output, out)
    print("\n".join(out["lines"]))
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

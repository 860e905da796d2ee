"""`stam-bench report` on synthetic result folders written in the documented schema.

The data are built so that the expected verdicts follow from the construction:
a shared per-seed level plus a per-optimizer offset that is either far beyond the
task's min_effect (win/loss) or zero with tiny noise (tie).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from stam_optimizer.benchmarks import claims, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = [0, 1, 2, 3, 4]
MIN_EFFECT = 0.02
EVAL_STEPS = [0, 20, 40, 60, 80, 100]
BIG = 0.2  # ten times min_effect: with noise 0.003 on 5 paired seeds, p is tiny
NOISE = 0.003

# task -> optimizer -> offset of the final metric from adamw (negative: better)
OFFSETS = {
    "long_horizon_mlp": {"adamw": 0.0, "stam_full": -BIG, "nadam": -0.75 * BIG,
                         "stam_lite": BIG, "stam_lite_int8": BIG},
    "nonstationary_mlp": {"adamw": 0.0, "stam_full": 0.0, "nadam": -BIG,
                          "stam_lite": BIG, "stam_lite_int8": BIG},
}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _run(task: str, opt: str, offset: float, level: np.ndarray, rng) -> dict:
    """A run file whose final metric is `level + offset` plus small noise per seed."""
    final = level + offset + rng.normal(0, NOISE, size=level.size)
    curves = np.array([np.linspace(2.0, f, len(EVAL_STEPS)) for f in final])
    target = 1.1
    reached = [next((s for s, v in zip(EVAL_STEPS, c) if v <= target), None) for c in curves]
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    tuning = np.array([[1.5, 1.4], [1.2, 1.25], [1.0 + offset, 1.02 + offset], [1.6, np.nan]])
    run = {
        "schema": 1, "kind": "run", "task": task, "suite": "nonstationary", "optimizer": opt,
        "size": "quick",
        "task_info": {"description": f"synthetic {task}", "metric": "val_loss",
                      "min_effect": MIN_EFFECT, "target": target, "steps": 100,
                      "batch_size": 8, "eval_every": 20, "shift_steps": [50]},
        "tuning": {"lrs": lrs, "seeds": [1000, 1001], "metric": tuning.tolist(),
                   "best_lr": 1e-2, "extended": False},
        "final": {"lr": 1e-2, "seeds": SEEDS, "metric": final.tolist(),
                  "extra": {}, "eval_steps": EVAL_STEPS,
                  "curves": {"val_loss": curves.tolist(), "train_loss": curves.tolist()},
                  "steps_to_target": reached},
        "diverged": [False] * len(SEEDS),
        "timing": {"compile_s": 1.0, "run_s": 0.1},
        "environment": {"jax": "0.0-test", "optax": "0.0-test", "cpu": "test cpu",
                        "threads": 2, "python": "3"},
    }
    if opt.startswith("stam"):
        run["beta1"] = {"eval_steps": EVAL_STEPS,
                        "layers": {"w1": [0.9, 0.8, 0.7, 0.85, 0.9, 0.9],
                                   "b1": [0.9, 0.9, 0.6, 0.7, 0.8, 0.9]}}
    return run


def write_runs(root: Path, offsets: dict[str, dict[str, float]], seed: int = 0) -> None:
    """runs/<task>/<optimizer>.json for every (task, optimizer) in `offsets`."""
    rng = np.random.default_rng(seed)
    for task, by_opt in offsets.items():
        level = 1.0 + rng.normal(0, 0.3, size=len(SEEDS))  # large seed-to-seed spread
        for opt, off in by_opt.items():
            _write(root / "runs" / task / f"{opt}.json", _run(task, opt, off, level, rng))


def write_extras(root: Path) -> None:
    """smoke.json, memory.json, speed.json and a sweep where stam_lite is clearly best."""
    bpp = {"adamw": 8.0, "stam_full": 12.0, "stam_lite": 4.0}
    _write(root / "smoke.json", {"schema": 1, "kind": "smoke", "rows": [
        {"optimizer": o, "finite": True, "state_bytes": int(b * 61), "params": 61,
         "bytes_per_param": b} for o, b in bpp.items()], "environment": {}})
    _write(root / "memory.json", {"results": {"mlp": [
        {"optimizer": o, "bytes_per_param": b, "tree": "mlp"} for o, b in bpp.items()]}})
    _write(root / "speed.json", {"environment": {}, "train_step": [], "update": [
        {"tree": "small200", "params": 10, "leaves": 2, "copy_GBps": 1.0, "optimizers": {
            o: {"median_s": 1e-3 * r, "min_s": 1e-3, "max_s": 2e-3, "ratio_to_adamw": r}
            for o, r in {"adamw": 1.0, "stam_full": 1.3, "stam_lite": 0.9}.items()}}]})
    rng = np.random.default_rng(5)
    level = 1.0 + rng.normal(0, 0.3, size=4)
    lrs, wds = [1e-3, 1e-2, 1e-1], [0.0, 0.01]
    for opt, off in {"stam_lite": -BIG, "adamw": 0.0, "stam_full": 0.5 * BIG}.items():
        grid = np.stack([[level + off + 0.1 * abs(i - 1) + 0.05 * k
                          + rng.normal(0, NOISE, size=4) for i in range(3)] for k in range(2)])
        _write(root / "sweeps" / "nonstationary_mlp" / f"{opt}.json", {
            "schema": 1, "kind": "sweep", "task": "nonstationary_mlp", "optimizer": opt,
            "size": "quick", "task_info": {"min_effect": MIN_EFFECT, "metric": "val_loss"},
            "lrs": lrs, "wds": wds, "seeds": [0, 1, 2, 3], "metric": grid.tolist(),
            "timing": {}, "environment": {}})


def section(text: str, heading: str) -> str:
    """The markdown from `heading` up to the next heading of the same or higher level."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    rest = text[start + len(heading):]
    m = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return heading + (rest[:m.start()] if m else rest)


def row(text: str, opt: str) -> str:
    """The first table row of `text` that starts with optimizer `opt`."""
    return next(line for line in text.splitlines() if line.startswith(f"| `{opt}` |"))


def expected_verdict(off: float) -> str:
    return "win" if off <= -MIN_EFFECT else "loss" if off >= MIN_EFFECT else "tie"


def check_images(md: Path) -> list[Path]:
    images = [md.parent / name for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text())]
    for img in images:
        assert img.read_bytes()[:8] == PNG_MAGIC, img
    assert not list(md.parent.glob("*.tmp*"))
    return images


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("results")
    write_runs(root, OFFSETS)
    write_extras(root)
    md = report.build_report(root)
    return md, md.read_text()


def test_report_verdicts_follow_the_construction(full_report):
    md, text = full_report
    assert md.name == "report.md"
    for task, by_opt in OFFSETS.items():
        table = section(text, f"### {task}")
        assert "baseline" in row(table, "adamw")
        for opt, off in by_opt.items():
            if opt != "adamw":
                assert f"**{expected_verdict(off)}**" in row(table, opt), (task, opt)
        # rows are sorted by mean metric, best first
        listed = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
        assert sorted(listed) == sorted(by_opt)
        offsets = [by_opt[o] for o in listed]
        assert offsets == sorted(offsets)


def test_headline_counts_match_the_construction(full_report):
    _, text = full_report
    head = section(text, "## Headline")
    for opt, name in (("stam_full", "STAM"), ("stam_lite", "STAMLite")):
        verdicts = [expected_verdict(OFFSETS[t][opt]) for t in OFFSETS]
        sentence = (f"{name} beat AdamW on {verdicts.count('win')} of {len(OFFSETS)} tasks, "
                    f"tied on {verdicts.count('tie')}, lost on {verdicts.count('loss')}")
        assert sentence in head
    for opt in ("nadam", "stam_lite_int8"):
        verdicts = [expected_verdict(OFFSETS[t][opt]) for t in OFFSETS]
        counts = [str(verdicts.count(v)) for v in ("win", "tie", "loss", "inconclusive")]
        assert row(head, opt) == f"| `{opt}` | " + " | ".join(counts) + f" | {len(OFFSETS)} |"


def test_claims_int8_and_ablation(full_report):
    _, text = full_report
    claims = section(text, "## The 0.1.0 claims")
    assert "**Outcome: reproduced.**" in section(claims, "### (b)")
    assert "**Outcome: reproduced.**" in section(claims, "### (a)")  # stam_lite best by 0.2
    int8 = section(text, "## int8 momentum parity")
    assert f"on {len(OFFSETS)} of {len(OFFSETS)} tasks" in int8 and "tie (parity)" in int8
    ablation = section(text, "## Ablation")
    assert "Not run" in ablation  # no stam_fixed / stam_const_beta in this folder


def test_report_images_exist_and_are_png(full_report):
    md, text = full_report
    images = {p.name for p in check_images(md)}
    for task in OFFSETS:
        assert {f"curves_{task}.png", f"lr_{task}.png", f"beta1_{task}.png"} <= images
    assert {"forest.png", "profile.png", "memory.png", "speed.png"} <= images
    assert {f"sweep_nonstationary_mlp_{o}.png" for o in ("adamw", "stam_lite")} <= images
    assert "not run" not in section(text, "## Memory") + section(text, "## Speed")


def test_partial_results_still_make_a_report(tmp_path):
    write_runs(tmp_path, {"nonstationary_mlp": {"adamw": 0.0, "stam_full": -BIG}})
    out = tmp_path / "elsewhere"
    md = report.build_report(tmp_path, out_dir=out)
    assert md == out / "report.md"
    text = md.read_text()
    assert "STAM beat AdamW on 1 of 1 tasks" in text
    assert "was not compared" in section(text, "## Headline")  # stam_lite absent
    assert "Not run" in section(text, "### (a)") and "Not run" in section(text, "### (b)")
    for heading in ("## Sweeps", "## int8 momentum parity", "## Ablation"):
        assert "not run" in section(text, heading).lower(), heading
    memory = section(text, "## Memory")
    assert "`smoke.json`: not run" in memory and "`memory.json`: not run" in memory
    assert "`speed.json`: not run" in section(text, "## Speed")
    assert len(check_images(md)) >= 3


def test_empty_folder_gives_a_report(tmp_path):
    text = report.build_report(tmp_path).read_text()
    assert "No run files were found" in text


def test_corrupt_files_are_skipped_with_a_warning(tmp_path):
    write_runs(tmp_path, {"nonstationary_mlp": {"adamw": 0.0, "stam_full": -BIG}})
    (tmp_path / "runs" / "nonstationary_mlp" / "nadam.json").write_text('{"schema": 1, "ta')
    _write(tmp_path / "runs" / "other" / "lion.json", {"schema": 1, "kind": "run"})
    (tmp_path / "speed.json").write_text("not json")
    with pytest.warns(UserWarning, match="skipping") as caught:
        runs = report.load_runs(tmp_path)
    assert sorted(r["optimizer"] for r in runs) == ["adamw", "stam_full"]
    messages = " ".join(str(w.message) for w in caught)
    assert "nadam.json" in messages and "lion.json" in messages
    with pytest.warns(UserWarning) as caught:
        text = report.build_report(tmp_path).read_text()
    messages = " ".join(str(w.message) for w in caught)
    assert all(n in messages for n in ("nadam.json", "lion.json", "speed.json"))
    assert "`speed.json`: not run" in section(text, "## Speed")
    assert "**win**" in row(section(text, "### nonstationary_mlp"), "stam_full")
    assert "`nadam`" not in text


@pytest.mark.parametrize("best, outcome", [
    ({"stam_full": -BIG, "nadam": -0.8 * BIG, "lion": 0.5 * BIG}, "reproduced"),
    ({"stam_full": BIG, "nadam": BIG, "lion": 0.5 * BIG}, "not reproduced"),  # adamw best
    ({"stam_full": 0.0, "nadam": 0.0, "lion": 0.0}, "inconclusive"),  # all tied with adamw
])
def test_long_horizon_claim(tmp_path, best, outcome):
    write_runs(tmp_path, {"long_horizon_mlp": {"adamw": 0.0, **best}})
    tasks = report.group(report.load_runs(tmp_path))
    assert claims.claim_long_horizon(tasks).outcome == outcome
    text = report.build_report(tmp_path).read_text()
    assert f"**Outcome: {outcome}.**" in section(text, "### (b)")


def test_sweep_claim_not_reproduced_when_another_optimizer_is_better(tmp_path):
    write_extras(tmp_path)
    sweeps = report.group(report.load_sweeps(tmp_path))
    assert claims.claim_sweep(sweeps).outcome == "reproduced"
    # the same sweeps with adamw as the candidate: stam_lite beats it clearly
    assert claims.claim_sweep(sweeps, name="adamw").outcome == "not reproduced"
    assert claims.claim_sweep({}).outcome == "not run"


def test_ablation_and_tolerant_memory_file(tmp_path):
    offsets = {"adamw": 0.0, "stam_full": -BIG, "stam_fixed": 0.0, "stam_const_beta": -BIG}
    write_runs(tmp_path, {"nonstationary_mlp": offsets})
    _write(tmp_path / "memory.json", {"tables": [[
        {"optimizer": "stam_lite", "bytes_per_param": 4.0},
        {"optimizer": "broken", "bytes_per_param": None}]]})
    text = report.build_report(tmp_path).read_text()
    ablation = section(text, "## Ablation")
    assert "`stam_full` vs `stam_fixed`: 1 wins, 0 ties, 0 losses, 0 inconclusive of 1" in ablation
    pair_rows = [line.split(" | ") for line in ablation.splitlines()
                 if line.startswith("| nonstationary_mlp | `")]
    const = next(r for r in pair_rows if r[2].startswith("`stam_const_beta`"))
    assert const[-1] == "tie |"  # same offset as stam_full: CI well inside ±min_effect
    memory = section(text, "## Memory")
    assert "| `stam_lite` | 4 |" in memory and "broken" not in memory

"""`stam-bench report` on synthetic result folders written in the documented schema.

The data are built so that the expected verdicts follow from the construction:
a shared per-seed level plus a per-optimizer offset that is either far beyond the
task's min_effect (win/loss) or zero with tiny noise (tie).
"""

import datetime
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats as sps

from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.programme import records
from stam_optimizer.benchmarks.report import claims, plots, report, stats, summary

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
    "noisy_shift": {"adamw": 0.0, "stam_full": -BIG, "nadam": 0.0,
                    "stam_lite": BIG, "stam_lite_int8": BIG},
}
# metrics whose curve is another one: noisy_shift's is derived from val_loss
METRICS = {"noisy_shift": "post_shift_val_loss"}
START = 2.0  # every curve starts here at step 0 (ℓ₀)
LAYERS = {"0/w": [0.9, 0.8, 0.7, 0.85, 0.9, 0.9], "0/b": [0.9, 0.9, 0.6, 0.7, 0.8, 0.9],
          "blocks/1/qkv": [0.9, 0.85, 0.8, 0.8, 0.85, 0.9]}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _run(task: str, opt: str, offset: float, level: np.ndarray, rng,
         noise: float = NOISE) -> dict:
    """A run file whose final metric is `level + offset` plus small noise per seed."""
    seeds = list(range(level.size))
    final = level + offset + rng.normal(0, noise, size=level.size)
    curves = np.array([np.linspace(START, f, len(EVAL_STEPS)) for f in final])
    target = 1.1
    reached = [next((s for s, v in zip(EVAL_STEPS, c) if v <= target), None) for c in curves]
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    # at lr 1e-1 adamw's second tuning seed diverges, stam_full's mean jumps to 231
    last = [231.0, 240.0] if opt == "stam_full" else [1.6, np.nan]
    tuning = np.array([[1.5, 1.4], [1.2, 1.25], [1.0 + offset, 1.02 + offset], last])
    run = {
        "schema": 1, "kind": "run", "task": task, "suite": "nonstationary", "optimizer": opt,
        "size": "quick",
        "task_info": {"description": f"synthetic {task}",
                      "metric": METRICS.get(task, "val_loss"),
                      "min_effect": MIN_EFFECT, "target": target, "steps": 100,
                      "batch_size": 8, "eval_every": 20, "shift_steps": [50]},
        "tuning": {"lrs": lrs, "seeds": [1000, 1001], "metric": tuning.tolist(),
                   "best_lr": 1e-2, "extended": False},
        "final": {"lr": 1e-2, "seeds": seeds, "metric": final.tolist(),
                  "extra": {}, "eval_steps": EVAL_STEPS,
                  "curves": {"val_loss": curves.tolist(), "train_loss": curves.tolist()},
                  "steps_to_target": reached},
        # the final seeds at every lr: the tuned lr's values, worse elsewhere
        "lr_sensitivity": {"lrs": lrs, "final_seed_metric": [
            (final + (0.0 if lr == 1e-2 else 0.5)).astype(np.float32).tolist() for lr in lrs]},
        "diverged": [False] * len(seeds),
        "timing": {"compile_s": 1.0, "run_s": 0.1},
        "environment": {"jax": "0.0-test", "optax": "0.0-test", "cpu": "test cpu",
                        "threads": 2, "python": "3"},
    }
    if opt.startswith("stam"):
        layers = LAYERS if opt != "stam_lite" else {k: [0.81] * len(v) for k, v in LAYERS.items()}
        run["beta1"] = {"eval_steps": EVAL_STEPS, "layers": layers}
    return run


def write_runs(root: Path, offsets: dict[str, dict[str, float]], seed: int = 0,
               n_seeds: int = len(SEEDS), noise: float = NOISE) -> None:
    """runs/<task>/<optimizer>.json for every (task, optimizer) in `offsets`."""
    rng = np.random.default_rng(seed)
    for task, by_opt in offsets.items():
        level = 1.0 + rng.normal(0, 0.3, size=n_seeds)  # large seed-to-seed spread
        for opt, off in by_opt.items():
            _write(root / "runs" / task / f"{opt}.json", _run(task, opt, off, level, rng, noise))


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


FIGURES: dict[str, Figure] = {}  # file name -> the figure the full report saved


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("results")
    write_runs(root, OFFSETS)
    write_extras(root)
    real = plots.save

    def keep(fig, path):
        FIGURES[Path(path).name] = fig
        return real(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save", keep)
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
    storage = section(text, "## Low-bit and bf16 state: parity with the float parent")
    assert f"on {len(OFFSETS)} of {len(OFFSETS)}, of which 0 are identical" in storage
    assert "tie (parity)" in storage
    assert "| `stam_lite_int8` | `stam_lite` | 0.01 |" in storage  # at the parent's lr
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
    for heading in ("## Sweeps", "## Low-bit and bf16 state", "## Ablation"):
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
        runs = records.load_runs(tmp_path)
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
    tasks = report.group(records.load_runs(tmp_path))
    assert claims.claim_long_horizon(tasks).outcome == outcome
    text = report.build_report(tmp_path).read_text()
    assert f"**Outcome: {outcome}.**" in section(text, "### (b)")


def test_sweep_claim_not_reproduced_when_another_optimizer_is_better(tmp_path):
    write_extras(tmp_path)
    sweeps = report.group(records.load_sweeps(tmp_path))
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


# --- the figures' contents (captured as the full report saves them) ----------------

def _legend(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def test_noisy_shift_curve_is_drawn_from_val_loss(full_report):
    md, text = full_report
    part = section(text, "### noisy_shift")
    assert "Metric `post_shift_val_loss`" in part
    assert "![noisy_shift curves](curves_noisy_shift.png)" in part
    assert "derived from the `val_loss` curve" in part
    assert (md.parent / "curves_noisy_shift.png").read_bytes()[:8] == PNG_MAGIC
    ax = FIGURES["curves_noisy_shift.png"].axes[0]
    assert ax.get_ylabel().startswith("val_loss")
    assert sorted(_legend(FIGURES["curves_noisy_shift.png"])) == sorted(OFFSETS["noisy_shift"])
    # every task of the report has its curve figure, and a caption only with it
    for task in OFFSETS:
        assert f"![{task} curves](curves_{task}.png)" in section(text, f"### {task}")
    assert report.curve_for("post_shift_val_loss", {"a": {"final": {"curves": {
        "val_loss": [], "train_loss": []}}}}) == "val_loss"
    assert report.curve_for("val_acc", {"a": {"final": {"curves": {"val_loss": []}}}}) is None


def test_forest_legend_names_the_verdict_colours(full_report):
    fig = FIGURES["forest.png"]
    labels = _legend(fig)
    verdicts = {expected_verdict(off) for t in OFFSETS for o, off in OFFSETS[t].items()
                if o != "adamw"}
    assert {v for v in labels if v in stats.VERDICTS} == verdicts
    assert {"±min_effect", "95% CI", "Holm CI"} <= set(labels)
    (ax,) = fig.axes
    legend = ax.get_legend()
    colours = {t.get_text(): h.get_color() for t, h in zip(legend.get_texts(),
                                                           legend.legend_handles)
               if t.get_text() in stats.VERDICTS}
    assert colours == {v: plots.VERDICT_COLORS[v] for v in verdicts}


def test_lr_curves_are_clipped_at_the_start_value_with_divergence_marked(full_report):
    fig = FIGURES["lr_noisy_shift.png"]
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    assert START <= hi <= 1.2 * START  # stam_full's 231 at lr 0.1 does not set the scale
    assert "diverged or worse than ℓ₀ (drawn at ℓ₀)" in _legend(fig)
    assert "ℓ₀: metric at step 0" in _legend(fig)
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert crosses and all(np.allclose(line.get_ydata(), START) for line in crosses)
    assert len(crosses) == len(OFFSETS["noisy_shift"])  # one diverged/too-high lr each


def test_beta1_panels_share_a_readable_y_axis(full_report):
    fig = FIGURES["beta1_noisy_shift.png"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    stam = [o for o in OFFSETS["noisy_shift"] if o.startswith("stam")]
    assert [ax.get_title() for ax in axes] == stam
    first = axes[0]
    for ax in axes[1:]:
        assert first.get_shared_y_axes().joined(first, ax)
        assert ax.get_ylim() == first.get_ylim()
    lo, hi = first.get_ylim()
    assert lo <= 0.6 and hi >= 0.9  # the range of every panel, stam_lite's constant 0.81 too
    assert set(_legend(fig)) == {"layer 0 weight", "layer 0 bias", "block 1 qkv"}
    width, height = fig.get_size_inches()
    assert width / height <= 2.5
    assert plots.layer_label("2/w") == "layer 2 weight" and plots.layer_label("embed") == "embed"


def test_profile_is_skipped_below_three_tasks(full_report, tmp_path):
    _, text = full_report
    assert "![profile](profile.png)" in section(text, "## Performance profile")
    write_runs(tmp_path, {t: OFFSETS[t] for t in list(OFFSETS)[:2]})
    md = report.build_report(tmp_path)
    part = section(md.read_text(), "## Performance profile")
    assert "Not shown: a performance profile needs at least 3 tasks" in part
    assert "profile.png" not in part and not (tmp_path / "profile.png").exists()


# --- families, Holm intervals, detectable effects ----------------------------------

def _judged_rows(text: str, task: str) -> dict[str, list[str]]:
    table = section(text, f"### {task}")
    return {line.split(" | ")[0][3:-1]: line.split(" | ") for line in table.splitlines()
            if line.startswith("| `") and "baseline" not in line}


def test_families_are_named_with_their_size_and_corrected_apart(full_report, tmp_path):
    _, text = full_report
    stam = sorted({o for t in OFFSETS for o in OFFSETS[t] if o.startswith("stam")})
    peers = sorted({o for t in OFFSETS for o in OFFSETS[t] if o != "adamw"} - set(stam))
    n_primary, n_peers = len(stam) * len(OFFSETS), len(peers) * len(OFFSETS)
    assert (f"* primary: STAM family vs adamw: {n_primary} comparisons ({n_primary} with a "
            f"p-value; {len(OFFSETS)} tasks × " + ", ".join(f"`{o}`" for o in stam)) in text
    assert (f"* peers vs adamw: {n_peers} comparisons ({n_peers} with a p-value; "
            f"{len(OFFSETS)} tasks × " + ", ".join(f"`{o}`" for o in peers)) in text
    # Holm p of each row = Holm over its own family only, from scipy's paired t-tests
    runs = report.group(records.load_runs(full_report[0].parent))
    for fam in (stam, peers):
        keys = [(t, o) for t in OFFSETS for o in fam]
        ps = [sps.ttest_rel(runs[t][o]["final"]["metric"],
                            runs[t]["adamw"]["final"]["metric"]).pvalue for t, o in keys]
        for (t, o), p_adj in zip(keys, stats.holm(ps)):
            assert _judged_rows(text, t)[o][5] == f"{p_adj:.3g}"


def test_holm_interval_agrees_with_the_verdict_where_the_raw_one_does_not():
    """The char_lm case: a raw 95% CI far past min_effect, but Holm p >= 0.05 over a
    family of twenty: the Holm CI includes 0 and the verdict is inconclusive."""
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.3, size=4)
    d = np.array([-0.09, -0.06, -0.11, -0.075])  # mean -0.084, t ≈ 7.9, p ≈ 0.004
    tests = {k: (stats.paired_difference(base + d + 0.0005 * k, base), 0.03) for k in range(20)}
    judged = stats.judge(tests, "twenty")
    for j in judged.values():
        assert j.diff.hi < -0.03  # raw CI entirely past min_effect
        assert j.p_holm >= 0.05 and j.verdict == "inconclusive"
        assert j.adj_lo < 0 < j.adj_hi and j.level == pytest.approx(0.05 / 20)
        assert j.family == "twenty" and j.family_size == 20
    ci = sps.ttest_rel(base + d, base).confidence_interval(1 - 0.05 / 20)
    assert (judged[0].adj_lo, judged[0].adj_hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # alone (a family of one) the same difference is a win, and its interval excludes 0
    alone = stats.judge({0: tests[0]})[0]
    assert alone.verdict == "win" and alone.adj_hi < 0 and alone.level == 0.05


def test_table_shows_holm_intervals_and_detectable_effects(full_report):
    _, text = full_report
    runs = report.group(records.load_runs(full_report[0].parent))
    m = {"stam": 3 * len(OFFSETS), "peer": len(OFFSETS)}
    for task in OFFSETS:
        rows = _judged_rows(text, task)
        for opt, cells in rows.items():
            lo, hi = (float(x) for x in re.match(r"\[(\S+), (\S+)\] at", cells[4]).groups())
            assert (lo > 0 or hi < 0) == (float(cells[5]) < 0.05)
            d = np.subtract(runs[task][opt]["final"]["metric"],
                            runs[task]["adamw"]["final"]["metric"])
            size = m["stam" if opt.startswith("stam") else "peer"]
            mde = stats.min_detectable_effect(float(np.std(d, ddof=1)), d.size, 0.05 / size)
            assert cells[7] == f"{mde:.3g}"
        assert "Smallest effect this run could detect here (80% power, 5 seeds" in \
            section(text, f"### {task}")


def test_headline_says_when_the_seeds_cannot_give_a_win(full_report, tmp_path):
    _, text = full_report
    head = section(text, "## Headline")
    assert "With 5 final seeds and 9 comparisons in the primary family" in head
    assert "cannot be expected to produce a win" not in head  # tiny noise: MDE < min_effect
    # 4 seeds with a paired spread ten times min_effect: no comparison had the power
    write_runs(tmp_path, {t: OFFSETS[t] for t in OFFSETS}, n_seeds=4, noise=10 * MIN_EFFECT)
    head = section(report.build_report(tmp_path).read_text(), "## Headline")
    t = stats.win_threshold(4, 0.05 / 9)
    assert "**This run cannot be expected to produce a win for the STAM family:**" in head
    assert f"With 4 final seeds and 9 comparisons in the primary family, a difference is " \
           f"significant only beyond {t:.1f} standard errors" in head
    assert "on 9 of 9 STAM-family comparisons" in head


ABSOLUTE = re.compile(r"(?:^|[\s`(\[\"'])(?:/[\w.-]+){2,}|[A-Za-z]:\\")  # /a/b or C:\


def test_report_names_no_absolute_path(tmp_path):
    results = (tmp_path / "deep" / "results").resolve()
    write_runs(results, {"nonstationary_mlp": OFFSETS["nonstationary_mlp"]})
    write_extras(results)
    here = report.build_report(results).read_text()
    assert "from the run files in this report's folder" in here
    elsewhere = report.build_report(results, tmp_path / "out").read_text()
    assert "from the run files in `../deep/results` (relative to this report)" in elsewhere
    for text in (here, elsewhere):
        assert str(tmp_path) not in text and not ABSOLUTE.search(text), ABSOLUTE.search(text)


def test_committed_full_report_is_current_and_relative():
    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "full"
    text = (folder / "report.md").read_text()
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)
    assert "from the run files in this report's folder" in text
    assert "**Correction families**" in text and "diff: Holm CI" in text  # current format
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (folder / name).is_file(), name


# --- summary.json: the committed form of a results folder ---------------------------------

RAW = ("runs", "sweeps", "signal.json", "cache")  # what a run writes and git does not keep


def rebuilt_from_summary(folder: Path, copy: Path) -> tuple[str, str]:
    """Builds the report of `folder`, copies the folder less its raw files to `copy`
    and builds it there from summary.json alone; returns both reports' text after
    checking that the two summaries are the same file."""
    md = report.build_report(folder).read_text()
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(*RAW))
    assert not (copy / "runs").exists() and (copy / summary.FILE).is_file()
    again = report.build_report(copy).read_text()
    assert (copy / summary.FILE).read_text() == (folder / summary.FILE).read_text()
    return md, again


@pytest.fixture
def fixed_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796083200")  # 2026-12-01 00:00 UTC


def test_report_from_the_summary_equals_the_report_from_a_tiny_run(tmp_path, fixed_date):
    out = tmp_path / "run"
    assert cli.main(["run", "convex", "--size", "tiny", "--optimizers", "adamw,stam_full",
                     "--out", str(out), "--no-report"]) == 0
    md, again = rebuilt_from_summary(out, tmp_path / "committed")
    assert "Generated 2026-12-01 00:00 UTC" in md
    assert again == md
    # the figures of per-step curves are the ones drawn from the raw runs, kept
    for name in ("curves_linear_regression.png", "beta1_linear_regression.png"):
        assert f"]({name})" in md
        assert (tmp_path / "committed" / name).read_bytes() == (out / name).read_bytes()
    # ... and the summary cannot redraw them: without the PNG the report says so
    (tmp_path / "committed" / "curves_linear_regression.png").unlink()
    text = report.build_report(tmp_path / "committed").read_text()
    assert "](curves_linear_regression.png)" not in text
    assert "Curves: drawn from the raw run files (`runs/`), which are not here" in text


def test_report_from_the_summary_equals_the_report_from_synthetic_runs(tmp_path, fixed_date):
    write_runs(tmp_path / "raw", OFFSETS)
    write_extras(tmp_path / "raw")
    md, again = rebuilt_from_summary(tmp_path / "raw", tmp_path / "summary")
    assert again == md
    assert "Not run" not in section(md, "## Sweeps") and "Not run" not in section(
        md, "## The 0.1.0 claims")
    # the figures the summary can draw are drawn from it, and come out the same
    for name in ("forest.png", "lr_noisy_shift.png", "sweep_nonstationary_mlp_adamw.png"):
        assert (tmp_path / "summary" / name).read_bytes() == (tmp_path / "raw" / name).read_bytes()


def test_a_partial_rerun_keeps_the_rest_from_the_summary(tmp_path, fixed_date):
    write_runs(tmp_path, OFFSETS)
    write_extras(tmp_path)
    md = report.build_report(tmp_path).read_text()
    before = (tmp_path / "curves_noisy_shift.png").read_bytes()
    # one optimizer's raw file gone (say, a fresh checkout re-running one suite)
    (tmp_path / "runs" / "noisy_shift" / "adamw.json").unlink()
    shutil.rmtree(tmp_path / "sweeps")
    (tmp_path / "curves_noisy_shift.png").write_bytes(b"kept")
    assert report.build_report(tmp_path).read_text() == md
    # the curves of that task cannot all be drawn: the figure already there is kept
    assert (tmp_path / "curves_noisy_shift.png").read_bytes() == b"kept"
    (tmp_path / "curves_noisy_shift.png").write_bytes(before)
    # a changed raw run wins over the summary's copy of it
    path = tmp_path / "runs" / "noisy_shift" / "stam_full.json"
    run = json.loads(path.read_text())
    run["final"]["metric"] = [v + 1.0 for v in run["final"]["metric"]]
    path.write_text(json.dumps(run))
    text = report.build_report(tmp_path).read_text()
    assert "**loss**" in row(section(text, "### noisy_shift"), "stam_full")


def test_summary_layout_and_what_it_leaves_out(tmp_path):
    write_runs(tmp_path, OFFSETS)
    write_extras(tmp_path)
    report.build_report(tmp_path)
    text = (tmp_path / summary.FILE).read_text()
    data = json.loads(text)
    assert data["schema"] == summary.SCHEMA and data["kind"] == "summary"
    assert data["baseline"] == "adamw"
    # the fixture's metrics are float64 numbers; its other measurements float32 values
    assert data["precision"] == {"float32_except": ["final.metric", "sweep.metric",
                                                    "tuning.metric"]}
    task = data["tasks"]["noisy_shift"]
    assert task["info"]["metric"] == "post_shift_val_loss" and task["curve_start"] == START
    entry = task["optimizers"]["stam_full"]
    assert {"curves", "eval_steps"}.isdisjoint(entry["final"]) and "beta1" not in entry
    assert entry["beta1_layers"] == len(LAYERS)
    assert entry["final"]["metric"] == json.loads(
        (tmp_path / "runs" / "noisy_shift" / "stam_full.json").read_text())["final"]["metric"]
    mean, lo, hi = stats.mean_ci(entry["final"]["metric"])
    assert entry["best"]["loss"] == pytest.approx(mean, rel=1e-4)
    assert entry["best"]["ci"] == pytest.approx([lo, hi], rel=1e-4)
    rows = [c for c in data["comparisons"]
            if (c["task"], c["candidate"]) == ("noisy_shift", "stam_full")]
    assert len(rows) == 1 and rows[0]["verdict"] == "win" and rows[0]["baseline"] == "adamw"
    assert rows[0]["family"] == "primary: STAM family vs adamw"
    assert set(data["sweeps"]["nonstationary_mlp"]) == {"adamw", "stam_full", "stam_lite"}
    # one line per key, numbers of an array on one line
    assert '"seeds": [0, 1, 2, 3, 4]' in text


def test_float32_measurements_are_written_short_and_read_back_exactly(tmp_path):
    values = [float(np.float32(v)) for v in (0.1, 2.785117, 1e-7, 3.0)]
    write_runs(tmp_path, {"noisy_shift": {"adamw": 0.0, "stam_full": -BIG}})
    for opt in ("adamw", "stam_full"):
        path = tmp_path / "runs" / "noisy_shift" / f"{opt}.json"
        run = json.loads(path.read_text())
        run["final"]["metric"] = values + [float(np.float32(1.5))]
        run["tuning"]["metric"] = [[float(np.float32(v)) for v in row]
                                   for row in np.nan_to_num(run["tuning"]["metric"], nan=9.0)]
        path.write_text(json.dumps(run))
    report.build_report(tmp_path)
    text = (tmp_path / summary.FILE).read_text()
    assert '"precision": "float32"' in text and '"metric": [0.1, 2.785117, 1e-07, 3.0, 1.5]' in text
    back = summary.runs_from(summary.load(tmp_path))
    assert next(r for r in back if r["optimizer"] == "adamw")["final"]["metric"] == values + [1.5]
    # a value that is not a float32 keeps its kind of measurement at full precision,
    # in every run; the other kinds stay short
    run = json.loads(path.read_text())
    run["final"]["metric"][0] = 0.1
    run["final"]["extra"] = {"auc": [float(np.float32(2.5)), 0.1]}
    path.write_text(json.dumps(run))
    report.build_report(tmp_path)
    text = (tmp_path / summary.FILE).read_text()
    data = summary.load(tmp_path)
    assert data["precision"] == {"float32_except": ["final.extra.auc", "final.metric"]}
    stam = data["tasks"]["noisy_shift"]["optimizers"]["stam_full"]
    assert stam["final"]["metric"][0] == 0.1 and stam["final"]["extra"]["auc"] == [2.5, 0.1]
    adamw = data["tasks"]["noisy_shift"]["optimizers"]["adamw"]
    assert adamw["final"]["metric"] == values + [1.5]  # read back exactly, from full text
    tuned = [[float(np.float32(v)) for v in row] for row in adamw["tuning"]["metric"]]
    assert adamw["tuning"]["metric"] == tuned and '"metric": [[' in text
    assert "2.7851169" in text  # final.metric in full; tuning metrics short


def test_report_command_accepts_a_folder_with_only_a_summary(tmp_path, fixed_date, capsys):
    assert cli.main(["report", "--results", str(tmp_path)]) == 2
    write_runs(tmp_path / "raw", {"nonstationary_mlp": OFFSETS["nonstationary_mlp"]})
    report.build_report(tmp_path / "raw")
    (tmp_path / "only").mkdir()
    shutil.copy(tmp_path / "raw" / summary.FILE, tmp_path / "only")
    assert cli.main(["report", "--results", str(tmp_path / "only")]) == 0
    assert "| `nadam` |" in (tmp_path / "only" / "report.md").read_text()


COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_committed_report_is_rebuilt_byte_for_byte_from_the_committed_summary(
        tmp_path, monkeypatch):
    text = (COMMITTED / "full" / "report.md").read_text()
    when = re.search(r"^Generated (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", text, flags=re.M)
    epoch = datetime.datetime.strptime(when.group(1), "%Y-%m-%d %H:%M").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(epoch)))
    copy = tmp_path / "full"
    shutil.copytree(COMMITTED / "full", copy, ignore=shutil.ignore_patterns(*RAW))
    monkeypatch.setattr(plots, "save", lambda fig, path: Path(path))  # no PNG rewritten
    assert report.build_report(copy).read_text() == text
    assert (copy / summary.FILE).read_text() == (COMMITTED / "full" / summary.FILE).read_text()


def test_committed_results_are_small_and_hold_no_raw_runs():
    # raw files of a local re-run may sit in a checkout; .gitignore keeps them out
    kept = [p for p in COMMITTED.rglob("*") if p.is_file()
            and not set(p.relative_to(COMMITTED).parts) & set(RAW)]
    assert max(p.stat().st_size for p in kept) < 1_000_000
    assert sum(p.stat().st_size for p in kept) < 5_000_000
    ignored = (COMMITTED.parents[1] / ".gitignore").read_text().split()
    assert {"docs/results/*/runs/", "docs/results/*/signal.json"} <= set(ignored)

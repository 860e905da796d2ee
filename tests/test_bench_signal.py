"""The signal suite (stam-bench run signal) and its report section, at tiny size."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from stam_optimizer.benchmarks.measure import signal_streams as ss
from stam_optimizer.benchmarks.programme import registry, scheduler
from stam_optimizer.benchmarks.programme.sizes import SIZES
from stam_optimizer.benchmarks.programme.suites import SUITES
from stam_optimizer.benchmarks.report import report, signal_report


def test_streams_are_seeded_and_change_at_half():
    a, b = ss.make_stream("noise_up", 8, 40, seed=3), ss.make_stream("noise_up", 8, 40, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (40, 8)
    flip = ss.make_stream("sign_flip", 16, 40)
    assert np.corrcoef(flip[19], flip[20])[0, 1] < -0.9  # the mean flips at step 20
    warm = ss.make_stream("warmup", 16, 40)
    assert np.abs(warm[-1]).mean() > 5 * np.abs(warm[19]).mean()
    with pytest.raises(ValueError, match="unknown stream 'nope'"):
        ss.make_stream("nope", 4, 10)


def test_response_reads_the_extreme_within_the_window():
    beta1 = np.array([0.8, 0.8, 0.8, 0.75, 0.7, 0.78, 0.8])
    assert ss.response(beta1, 3, 3) == pytest.approx(
        {"before": 0.8, "after": 0.8, "delta": -0.1, "steps": 1})
    assert ss.judge("falls", -0.1) == "yes" and ss.judge("rises", -0.1) == "no (opposite)"
    assert ss.judge("constant", 0.005) == "yes" and ss.judge("falls", -0.001) == "no (too small)"


def test_signal_suite_is_in_quick_and_full():
    assert "signal" in SUITES and not SUITES["signal"].tasks
    assert set(ss.adaptive_optimizers("full")) >= {"stam_full", "stam_full_energy", "stam_lite",
                                                   "stam_lite_energy", "stam_lite_int8"}
    assert not set(ss.adaptive_optimizers("full")) & {"stam_fixed", "stam_const_beta"}
    assert set(ss.adaptive_optimizers("quick")) == {"stam_full", "stam_full_energy",
                                                    "stam_full_relative", "stam_lite",
                                                    "stam_lite_energy"}


def test_signal_suite_writes_data_and_the_report_derives_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796083200")
    counts = scheduler.run_programme(["signal"], "tiny", tmp_path, log=lambda m: None,
                                     optimizers=["stam_full", "stam_lite_energy", "adamw"])
    assert counts["failed"] == 0
    data = json.loads((tmp_path / "signal.json").read_text())
    tiny = SIZES["tiny"]
    steps, sizes = tiny.signal_steps, tiny.signal_sizes
    assert data["kind"] == "signal" and data["steps"] == steps and data["sizes"] == list(sizes)
    assert {(r["optimizer"], r["signal"]) for r in data["runs"]} == {
        ("stam_full", "spec"), ("stam_lite_energy", "energy")}
    assert {r["stream"] for r in data["runs"]} == set(ss.STREAMS)
    run = next(r for r in data["runs"] if r["optimizer"] == "stam_lite_energy"
               and r["stream"] == "noise_up")
    assert len(run["beta1"]) == len(data["eval_steps"]) == len(run["z"])
    assert run["response"]["delta"] < -0.02 and run["response"]["matches"] == "yes"

    lines = signal_report.signal_section(tmp_path, tmp_path, data)
    text = "\n".join(lines)
    assert "0.1.0 promise" in text and "`stam_lite_energy`" in text
    for stream in ss.STREAMS:
        assert (tmp_path / f"signal_{stream}.png").stat().st_size > 0
        assert f"signal_{stream}.png" in text
    # the table is the data: the cell for this run shows its before value and change
    r = run["response"]
    assert f"{r['before']:.3f} → {r['before'] + r['delta']:.3f} ({r['delta']:+.3f}" in text

    (tmp_path / "runs").mkdir()
    md = report.build_report(tmp_path).read_text()
    assert "## β₁ signal: what the adaptation responds to" in md
    # summary.json keeps the responses, not the β₁ series; the figures stay as drawn
    kept = json.loads((tmp_path / "summary.json").read_text())["signal"]
    assert "eval_steps" not in kept and not any("beta1" in r for r in kept["runs"])
    copy = tmp_path.parent / f"{tmp_path.name}_summary"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("signal.json", "cache"))
    assert report.build_report(copy).read_text() == md
    assert (copy / "signal_noise_up.png").read_bytes() == (
        tmp_path / "signal_noise_up.png").read_bytes()


def test_report_says_not_run_without_signal_json(tmp_path):
    assert "not run" in "\n".join(signal_report.signal_section(tmp_path, tmp_path, None))


def test_registry_builds_a_constant_beta1_stam():
    from stam_optimizer.benchmarks.programme import registry
    tx = registry.get("stam_const_beta=0.83", 1e-3)
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    _, state = tx.update({"w": np.ones(3, np.float32)}, state, params)
    np.testing.assert_allclose(np.asarray(state[0].beta1), 0.83, rtol=1e-6)
    for bad in ("stam_const_beta=1.5", "stam_const_beta=x"):
        with pytest.raises(ValueError, match="must be a number in"):
            registry.get(bad)


def test_ablation_runs_stam_const_mean_after_stam_full(tmp_path, monkeypatch):
    from stam_optimizer.benchmarks.programme import runner
    from stam_optimizer.benchmarks.programme.suites import Suite
    from stam_optimizer.benchmarks.report import claims

    suites = dict(SUITES)
    suites["ablation"] = Suite("test", ("linear_regression",), member="ablation",
                               narrow_at_quick=False)
    monkeypatch.setattr(registry, "ENTRIES", {
        n: dataclasses.replace(e, ablation=n in ("stam_const_mean", "stam_full_energy",
                                                 "adamw"))
        for n, e in registry.ENTRIES.items()})
    monkeypatch.setattr(scheduler, "SUITES", suites)
    jobs = scheduler.plan(["ablation"], "tiny")
    # the source run is planned even though the suite does not name it, before its user
    order = [j.optimizer for j in jobs]
    assert sorted(order) == ["adamw", "stam_const_mean", "stam_full", "stam_full_energy"]
    assert order.index("stam_full") == order.index("stam_const_mean") - 1
    counts = scheduler.run_programme(["ablation"], "tiny", tmp_path, log=lambda m: None)
    assert counts["failed"] == 0 and counts["done"] == 4
    runs = tmp_path / "runs" / "linear_regression"
    full = json.loads((runs / "stam_full.json").read_text())
    const = json.loads((runs / "stam_const_mean.json").read_text())
    value = float(f"{runner.mean_beta1(full):.4f}")
    assert const["optimizer"] == "stam_const_mean"
    assert const["constant_beta1"] == {"value": value, "from": "stam_full",
                                       "registry_name": f"stam_const_beta={value}"}
    assert 0.72 <= value <= 0.9
    b1 = [v for vs in const["beta1"]["layers"].values() for v in vs]
    np.testing.assert_allclose(b1, value, rtol=1e-6)  # β₁ really was that constant
    again = scheduler.run_programme(["ablation"], "tiny", tmp_path, log=lambda m: None)
    assert again["done"] == 0 and again["skipped"] == 4

    text = "\n".join(claims.ablation_section(report.group(report.load_runs(tmp_path)),
                                             "adamw"))
    assert "### The β₁ signal" in text
    assert f"| linear_regression | {value:.4g} |" in text
    for a, b in (("stam_full_energy", "stam_full"), ("stam_full_energy", "stam_const_mean"),
                 ("stam_full_energy", "adamw"), ("stam_full", "stam_const_mean")):
        assert f"| linear_regression | `{a}` " in text and f"| `{b}` " in text

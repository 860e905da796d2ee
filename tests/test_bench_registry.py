"""The optimizer registry: one entry per optimizer, read by every suite."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import optax
import pytest

from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.programme import registry, runner, scheduler
from stam_optimizer.benchmarks.programme.suites import TASKS
from stam_optimizer.benchmarks.programme.task import Config

DATA = Path(__file__).parent / "data"


def test_every_entry_is_complete_and_consistent():
    for name, e in registry.ENTRIES.items():
        assert e.name == name and e.label and e.notes, name
        assert e.family in registry.FAMILIES
        if e.parent is not None:
            assert e.parent in registry.ENTRIES and e.storage != "float32", name
        if e.depends_on is not None:
            assert e.from_run is not None and e.depends_on in registry.ENTRIES
        if e.signal is not None:
            assert registry.has_beta1_state(name), name
    assert registry.BASELINE in registry.ENTRIES


def test_bad_entries_and_names_are_refused():
    with pytest.raises(ValueError, match="family must be one of"):
        registry.Entry("x", registry.ENTRIES["adamw"].build, family="friends")
    with pytest.raises(ValueError, match="is a registry name already"):
        registry.add(registry.ENTRIES["adamw"])
    with pytest.raises(ValueError, match="unknown optimizer 'nope'; choose from stam_full"):
        registry.entry("nope")


def test_recipe_gives_only_the_fields_that_are_set():
    r = registry.Recipe(b1=0.8, eps=None)
    assert r.given(b1="b1_base", b2="b2", eps="eps") == {"b1_base": 0.8}


@pytest.fixture
def one_more(monkeypatch):
    """A new optimizer added with one entry and nothing else."""
    monkeypatch.setattr(registry, "ENTRIES", dict(registry.ENTRIES))
    registry.add(registry.Entry(
        "my_nadamw", lambda lr, r: optax.nadamw(lr, weight_decay=r.weight_decay,
                                                **r.given(b1="b1", b2="b2", eps="eps")),
        label="NAdamW", decoupled_wd=True, gpt=True, notes="b1 0.9, b2 0.95, eps 1e-8"))
    return "my_nadamw"


def test_one_entry_runs_through_smoke_gpt_memory_and_report(one_more, tmp_path, capsys):
    out = tmp_path / "results"
    code = cli.main(["run", "smoke", "gpt", "--size", "tiny", "--optimizers",
                     f"adamw,{one_more}", "--tasks", "gpt_d16", "--out", str(out)])
    assert code == 0
    smoke = json.loads((out / "smoke.json").read_text())
    assert {r["optimizer"] for r in smoke["rows"]} >= {one_more}  # smoke runs every entry
    run = json.loads((out / "runs" / "gpt_d16" / f"{one_more}.json").read_text())
    assert run["measured"]["recipe"] == "b1 0.9, b2 0.95, eps 1e-8"
    assert np.isfinite(run["final"]["metric"]).all()
    report = (out / "report.md").read_text()
    assert "* `my_nadamw`: b1 0.9, b2 0.95, eps 1e-8" in report  # its recipe notes
    assert "| `my_nadamw` |" in report
    code = cli.main(["memory", "--models", "small_mlp", "--optimizers", one_more,
                     "--no-compiled", "--no-train-step", "--output", str(tmp_path / "m.json")])
    assert code == 0
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert {r["optimizer"] for r in rows} == {one_more, "adamw"}
    # the entry's flags put it in the suites' default sets
    assert one_more in scheduler.optimizers_for("gpt", "gpt_d64", "full", None)
    assert one_more in scheduler.optimizers_for("convex", "linear_regression", "full", None)
    assert one_more not in scheduler.optimizers_for("convex", "linear_regression", "quick",
                                                    None)


def test_an_optimizer_not_linear_in_lr_is_refused_by_a_task_that_scales():
    task = TASKS["linear_regression"](Config(size="tiny"))
    with pytest.raises(ValueError, match="not linear in the learning rate"):
        runner.build(task, "schedule_free_adamw")


@pytest.mark.parametrize("task,names", [("linear_regression", ("adamw", "stam_lite_int8")),
                                        ("gpt_d16", ("muon",))])
def test_same_numbers_as_before_the_registry_entries(task, names, monkeypatch):
    """Records of `stam-bench run convex gpt --size tiny` made before the optimizers
    became registry entries (tests/data); the same seeds give the same numbers."""
    before = json.loads((DATA / "records_2093d11.json").read_text())["runs"][task]
    t = scheduler.sized(TASKS[task](Config(size="tiny")), "tiny")
    tune, final = scheduler.seeds_of(t, "tiny")
    for name in names:
        rec = runner.tune_and_run(t, name, tune, final, "tiny")
        want = before[name]
        assert rec["tuning"]["lrs"] == pytest.approx(want["tuning_lrs"], rel=1e-12)
        assert rec["final"]["lr"] == want["final_lr"]
        # XLA:CPU may vectorise differently on another CPU: float32 rounding only
        np.testing.assert_allclose(rec["tuning"]["metric"], want["tuning_metric"], rtol=2e-6)
        np.testing.assert_allclose(rec["final"]["metric"], want["final_metric"], rtol=2e-6)


def test_user_factory_becomes_an_entry(monkeypatch):
    monkeypatch.setattr(registry, "ENTRIES", dict(registry.ENTRIES))
    name = registry.load("their_adamw=optax:adamw")
    e = registry.entry(name)
    assert e.family == "user" and e.gpt and e.quick is True
    assert dataclasses.replace(e).build is e.build


def test_run_keeps_only_the_named_tasks(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "stress", "--size", "tiny", "--tasks", "nope"])
    err = " ".join(capsys.readouterr().err.split())
    assert "--tasks: unknown task 'nope'" in err
    counts = scheduler.run_programme(["stress"], "tiny", tmp_path, optimizers=["adamw"],
                                     tasks=["stress_b8"], log=lambda m: None)
    assert counts["done"] == 1
    assert [p.parent.name for p in (tmp_path / "runs").glob("*/*.json")] == ["stress_b8"]

"""The benchmark runner and programme: the learning-rate identity the runner relies
on, the tuning protocol, resume after interruption, and a tiny end-to-end run."""

import argparse
import dataclasses
import json
import os
import re
import stat
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.programme import records, registry, runner, scheduler
from stam_optimizer.benchmarks.programme.suites import SUITES, TASKS
from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks import models, quadratic

TINY = Config(size="tiny")


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.full((4,), 0.3)}


def _grads(t):
    return {"w": jnp.cos(jnp.arange(12.0) + t).reshape(3, 4), "b": jnp.sin(jnp.arange(4.0) * t)}


def _three_steps(tx, apply):
    """Parameters after three updates of `tx`, each applied as `apply(params, updates)`."""
    params = _params()
    state = tx.init(params)
    for t in range(3):
        updates, state = tx.update(_grads(t), state, params)
        params = apply(params, updates)
    return jax.tree.leaves(params)


def _scaled(fn):
    """Applies `fn(p, u)` leaf by leaf: the runner's own update rule."""
    return lambda params, updates: jax.tree.map(fn, params, updates)


@pytest.mark.parametrize("name", registry.names(full=True))
def test_update_is_exactly_lr_times_update_at_lr_one(name):
    """The runner builds every optimizer at lr = 1 and multiplies by the run's lr."""
    lr = 0.0123
    ref = _three_steps(registry.get(name, lr), optax.apply_updates)
    got = _three_steps(registry.get(name, 1.0), _scaled(lambda p, u: p + lr * u))
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", registry.names(decoupled_wd=True, full=True))
def test_weight_decay_applied_outside_is_the_optimizers_own(name):
    lr, wd = 0.02, 0.1
    ref = _three_steps(registry.get(name, lr, wd), optax.apply_updates)
    got = _three_steps(registry.get(name, 1.0, 0.0), _scaled(lambda p, u: p + lr * (u - wd * p)))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # one rounding apart


def _hand_loop(task: Task, name: str, lr: float, seed: int) -> float:
    """The training loop written plainly, without the runner's vmap and scans."""
    tx = registry.get(name, lr)
    k_init, k_data, _ = jax.random.split(jax.random.key(seed), 3)
    params = task.init(k_init)
    state = tx.init(params)

    @jax.jit
    def step(params, state, t):
        grads = jax.grad(task.loss)(params, task.batch(jax.random.fold_in(k_data, t), t))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(task.steps):
        params, state = step(params, state, t)
    return float(task.evaluate(params, task.steps)["val_loss"])


@pytest.mark.parametrize("name", ["stam_full", "stam_lite"])  # AdamW: see the lr identity
def test_runner_matches_a_plain_training_loop(name):
    task = dataclasses.replace(TASKS["nonstationary_mlp"](TINY), steps=12, eval_every=4,
                               shift_steps=(6,))
    lrs, seeds = [3e-3, 3e-2], [5, 9]
    out, _, _ = runner.execute(task, name, lrs, seeds)
    assert out["metrics/val_loss"].shape == (2, 1, 2, 4)
    for i, lr in enumerate(lrs):
        for j, seed in enumerate(seeds):
            np.testing.assert_allclose(out["metrics/val_loss"][i, 0, j, -1],
                                       _hand_loop(task, name, lr, seed), rtol=2e-5)


def test_same_seed_same_start_for_every_optimizer():
    task = TASKS["noisy_quadratic_low"](TINY)
    a, _, _ = runner.execute(task, "adamw", [1e-2], [0, 1])
    b, _, _ = runner.execute(task, "sgd_momentum", [1e-1], [0, 1])
    np.testing.assert_array_equal(a["metrics/val_loss"][..., 0], b["metrics/val_loss"][..., 0])
    assert a["metrics/val_loss"][0, 0, 0, 0] != a["metrics/val_loss"][0, 0, 1, 0]


def test_tuning_extends_the_grid_at_an_edge_and_selects_on_tuning_seeds():
    # On the noisy quadratic, AdamW at 1e-5 or 1e-4 barely moves: the best of that
    # grid is its upper edge, so two points beyond it must be added.
    task = dataclasses.replace(quadratic.noisy_quadratic_low(TINY), lr_grid=(1e-5, 1e-4))
    rec = runner.tune_and_run(task, "adamw", [100], [0, 1], "tiny")
    assert rec["tuning"]["extended"]
    np.testing.assert_allclose(rec["tuning"]["lrs"], [1e-5, 1e-4, 1e-3, 1e-2], rtol=1e-9)
    scores = [row[0] for row in rec["tuning"]["metric"]]
    assert rec["final"]["lr"] == rec["tuning"]["lrs"][int(np.argmin(scores))]
    assert rec["final"]["seeds"] == [0, 1] and len(rec["final"]["metric"]) == 2
    assert rec["diverged"] == [False, False]


def test_grid_extension_rule():
    assert runner._grid_extension([1.0, 10.0, 100.0], 1) is None
    np.testing.assert_allclose(runner._grid_extension([1.0, 10.0, 100.0], 0), [0.01, 0.1])
    np.testing.assert_allclose(runner._grid_extension([1.0, 10.0, 100.0], 2), [1e3, 1e4])


def test_divergence_is_recorded_not_hidden():
    task = dataclasses.replace(quadratic.noisy_quadratic_high(TINY), lr_grid=(1e3, 1e4))
    rec = runner.tune_and_run(task, "sgd_momentum", [100], [0], "tiny")
    assert rec["diverged"] == [True]
    assert rec["final"]["metric"] == [None]  # non-finite stored as JSON null
    json.dumps(rec, allow_nan=False)  # the record is valid JSON


def test_patch_convolution_matches_lax_conv():
    for shape in [(2, 40, 3), (2, 7, 6, 2), (1, 28, 28, 1)]:
        spatial = len(shape) - 2
        x = jax.random.normal(jax.random.key(0), shape)
        w = jax.random.normal(jax.random.key(1), (3,) * spatial + (shape[-1], 5))
        dims = ("NWC", "WIO", "NWC") if spatial == 1 else ("NHWC", "HWIO", "NHWC")
        ref = jax.lax.conv_general_dilated(x, w, (2,) * spatial, "SAME", dimension_numbers=dims)
        got = models._patches(x, spatial) @ w.reshape(-1, 5)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_every_task_builds_at_tiny_size(tmp_path):
    cfg = Config(size="tiny", cache_dir=tmp_path)
    for name, make in TASKS.items():
        if name.startswith(("mnist_", "fashion_", "cifar")):
            continue  # need --data-dir; their loaders are tested in test_bench_data
        gpu_only = name in SUITES["chinchilla"].gpu_tasks  # built at its own size
        task = make(dataclasses.replace(cfg, size="gpu") if gpu_only else cfg)
        assert task.steps % task.eval_every == 0 and task.metric
        @jax.jit  # one program per task: loss, evaluation and test together
        def check(key, task=task):
            params = task.init(key)
            metrics = task.evaluate(params, 0)
            if task.test is not None:
                metrics |= task.test(params)
            return task.loss(params, task.batch(jax.random.fold_in(key, 1), 0)), metrics

        loss, metrics = check(jax.random.key(0))
        assert np.isfinite(float(loss)), name
        assert task.metric in (set(metrics) | {"post_shift_val_loss"})


def test_bad_task_and_config_values_are_rejected():
    with pytest.raises(ValueError, match="size must be"):
        Config(size="huge").pick(1, 2, 3)
    with pytest.raises(ValueError, match="multiple of eval_every"):
        dataclasses.replace(TASKS["linear_regression"](TINY), steps=10, eval_every=3)
    with pytest.raises(ValueError, match="unknown suite"):
        scheduler.run_programme(["nope"], "tiny", "unused")
    with pytest.raises(ValueError, match="no decoupled weight decay"):
        runner.sweep(TASKS["linear_regression"](TINY), "nadam", [1e-3], [0.0], [0], "tiny")


def test_quick_plan_covers_every_suite_and_the_issue_questions():
    jobs = scheduler.plan(list(SUITES), "quick")
    tasks = {j.task for j in jobs}
    for name, suite in SUITES.items():
        assert set(suite.tasks if suite.quick_tasks is None else suite.quick_tasks) <= tasks, name
    pairs = {(j.kind, j.task, j.optimizer) for j in jobs}
    assert ("run", "long_horizon_mlp", "nadam") in pairs  # the 0.1.0 long-horizon claim
    assert ("run", "char_lm", "stam_lite_int8") in pairs  # int8 parity
    assert ("sweep", "nonstationary_mlp", "stam_lite") in pairs  # the sweep claim
    assert len(pairs) == len(jobs)  # no job twice
    full = scheduler.plan(["convex"], "full")
    assert {j.optimizer for j in full} == set(registry.names(full=True))


def _json_files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*.json")) if "cache" not in p.parts}


def test_programme_resumes_after_an_interruption(tmp_path, monkeypatch):
    suites, opts = ["convex", "quadratic"], ["adamw", "stam_lite"]
    real = scheduler._summary
    seen = []

    def ctrl_c(job, rec, seconds):  # runs in the main thread as each job finishes
        seen.append(job)
        if len(seen) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C after two finished jobs
        return real(job, rec, seconds)

    monkeypatch.setattr(scheduler, "_summary", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        scheduler.run_programme(suites, "tiny", tmp_path, optimizers=opts, workers=1,
                                log=lambda m: None)
    done = _json_files(tmp_path)
    # the two finished jobs, plus at most the one that was running, are on disk,
    # whole; queued jobs were dropped; no temporary file is left behind
    assert 2 <= len(done) <= 3 and not list(tmp_path.rglob("*.tmp*"))
    for blob in done.values():
        assert json.loads(blob)["kind"] == "run"

    monkeypatch.setattr(scheduler, "_summary", real)
    counts = scheduler.run_programme(suites, "tiny", tmp_path, optimizers=opts, workers=2,
                                     log=lambda m: None)
    assert counts["skipped"] == len(done) and counts["done"] == 6 - len(done)
    assert counts["failed"] == 0
    after = _json_files(tmp_path)
    assert len(after) == 6 and all(after[k] == v for k, v in done.items())  # kept untouched
    again = scheduler.run_programme(suites, "tiny", tmp_path, optimizers=opts,
                                    log=lambda m: None)
    assert again["skipped"] == 6 and again["done"] == 0


def test_tiny_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "res"
    rc = cli.main(["run", "smoke", "nonstationary", "sweep", "--size", "tiny", "--out", str(out),
                   "--optimizers", "adamw,stam_full,stam_lite"])
    assert rc == 0
    rec = json.loads((out / "runs" / "nonstationary_mlp" / "stam_full.json").read_text())
    assert rec["optimizer"] == "stam_full" and rec["task_info"]["shift_steps"]
    assert rec["final"]["lr"] in rec["tuning"]["lrs"]
    assert set(rec["beta1"]["layers"]) == {"0/w", "0/b", "1/w", "1/b", "2/w", "2/b"}
    b1 = np.array([v for v in rec["beta1"]["layers"].values()], float)
    assert np.all((b1 >= 0.5 - 1e-6) & (b1 <= 0.9 + 1e-6))  # within [b1_min, b1_base]
    assert "beta1" not in json.loads((out / "runs" / "nonstationary_mlp" /
                                      "adamw.json").read_text())
    sweep = json.loads((out / "sweeps" / "nonstationary_mlp" / "stam_lite.json").read_text())
    assert np.shape(sweep["metric"]) == (2, 2, 2)  # wd x lr x seed
    smoke = json.loads((out / "smoke.json").read_text())
    assert {r["optimizer"] for r in smoke["rows"]} == set(registry.names(full=True))
    assert all(r["finite"] for r in smoke["rows"])
    report = (out / "report.md").read_text()
    assert "nonstationary_mlp" in report and "stam_full" in report
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_files_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert records.current_umask() == umask
        path = records.write_json(tmp_path / "sub" / "run.json", {"a": 1})
        img = records.write_atomic(tmp_path / "fig.png", b"\x89PNG")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(img.stat().st_mode) == mode
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fig.png", "run.json", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = records.write_json(tmp_path / "run.json", {"good": True})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        records.write_json(path, {"good": False})
    assert json.loads(path.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


class _Held:
    """Wraps `scheduler.run_job` so that, of two workers, the first job to start
    finishes only once the second has started, and later jobs wait for `release`:
    when the first job's summary is printed, the second is certainly running."""

    def __init__(self, real):
        self.real, self.lock, self.calls = real, threading.Lock(), 0
        self.second_started, self.release = threading.Event(), threading.Event()
        self.abandon = False

    def __call__(self, job, task, out, size):
        with self.lock:
            self.calls += 1
            k = self.calls
        if k == 1:
            assert self.second_started.wait(120)
        else:  # the third job too, if a worker starts it before the interrupt
            self.second_started.set()
            assert self.release.wait(120)
            if self.abandon:
                raise RuntimeError("abandoned by the test")
        return self.real(job, task, out, size)


def _interrupt_after_first_summary(monkeypatch):
    real = scheduler._summary
    seen = []

    def ctrl_c(job, rec, seconds):
        seen.append(job)
        if len(seen) == 1:
            raise KeyboardInterrupt  # Ctrl-C as the first job's summary is printed
        return real(job, rec, seconds)

    monkeypatch.setattr(scheduler, "_summary", ctrl_c)


INTERRUPT_ARGS = ["run", "convex", "--size", "tiny", "--workers", "2", "--no-report",
                  "--optimizers", "adamw,stam_lite,adams"]


def test_ctrl_c_waits_for_running_jobs_says_so_and_exits_130(tmp_path, monkeypatch, capsys):
    held = _Held(scheduler.run_job)
    monkeypatch.setattr(scheduler, "run_job", held)
    _interrupt_after_first_summary(monkeypatch)
    real_as_completed = scheduler._as_completed

    def waiting(futures):  # the wait after Ctrl-C lets the held job go on
        held.release.set()
        return real_as_completed(futures)

    monkeypatch.setattr(scheduler, "_as_completed", waiting)
    out = tmp_path / "res"
    rc = cli.main([*INTERRUPT_ARGS, "--out", str(out)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc == 130
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    # the held job is running; the third may have started too when the first ended
    m = re.search(r"interrupted: waiting for (\d) running job\(s\) to finish and be saved "
                  r"\(([^)]*)\); press Ctrl-C again to stop now", text)
    assert m and m[1] in "12" and len(m[2].split(", ")) == int(m[1]), text
    kept = 1 + int(m[1])
    last = captured.err.strip().splitlines()[-1]
    assert last == (f"stam-bench: stopped by Ctrl-C; {kept} finished runs are on disk; "
                    "run the same command again to resume")
    done = _json_files(out)
    assert len(done) == kept and not list(out.rglob("*.tmp*"))
    # resume: the kept files are not rewritten, a dropped job runs
    monkeypatch.undo()
    assert cli.main([*INTERRUPT_ARGS, "--out", str(out)]) == 0
    if kept < 3:
        assert f"resuming: {kept} finished runs kept, {3 - kept} to go" in capsys.readouterr().err
    after = _json_files(out)
    assert len(after) == 3 and all(after[k] == v for k, v in done.items())


def test_second_ctrl_c_stops_at_once_with_one_line(tmp_path, monkeypatch, capsys):
    held = _Held(scheduler.run_job)
    monkeypatch.setattr(scheduler, "run_job", held)
    _interrupt_after_first_summary(monkeypatch)

    def ctrl_c_again(futures):
        raise KeyboardInterrupt

    exits = []

    def exit_now(code):  # instead of os._exit: let the held job end, then leave
        exits.append(code)
        held.abandon = True
        held.release.set()
        raise SystemExit(code)

    monkeypatch.setattr(scheduler, "_as_completed", ctrl_c_again)
    monkeypatch.setattr(cli, "_exit_now", exit_now)
    out = tmp_path / "res"
    with pytest.raises(SystemExit):
        cli.main([*INTERRUPT_ARGS, "--out", str(out)])
    captured = capsys.readouterr()
    assert exits == [130]
    assert "Traceback" not in captured.out + captured.err
    assert re.fullmatch(
        r"stam-bench: stopped by Ctrl-C; 1 finished runs are on disk; [12] running job\(s\) "
        r"abandoned; run the same command again to resume",
        captured.err.strip().splitlines()[-1])
    assert len(_json_files(out)) == 1


def _subparsers():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_option_has_help_and_shows_its_default():
    for name, p in _subparsers().items():
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = formatter._get_help_string(action)
            assert action.help, (name, action.dest)
            if action.default not in (None, False):
                assert "default" in text, (name, action.dest, text)
    run_help = _subparsers()["run"].format_help()
    assert "--size {tiny,quick,full,gpu}" in run_help
    assert "tiny (seconds, for tests)" in run_help and "(default: quick)" in run_help


def test_readme_lists_every_command_and_counts_optimizers_from_the_registry():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("## Benchmarks"):]
    block = block[block.index("```bash"):]
    block = block[:block.index("```", 7)]
    listed = set(re.findall(r"^stam-bench (\w+)", block, flags=re.M))
    assert listed == set(_subparsers()), listed ^ set(_subparsers())
    for n in re.findall(r"all (\d+) optimizers", readme):
        assert int(n) == len(registry.names(full=True))
    full = _subparsers()["full"].format_help()
    assert f"all {len(registry.names(full=True))} optimizers of the registry" in full

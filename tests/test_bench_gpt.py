"""The gpt suite: the GPT model (shapes, causal mask, qk-layernorm and z-loss
against float64 NumPy), the schedule, the LR-sensitivity metric and the spike rule
on hand-worked curves, schedule-free evaluation, and a tiny end-to-end run that
produces the report section."""

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stam_optimizer.benchmarks.programme import records, registry, runner, scheduler
from stam_optimizer.benchmarks.programme.suites import SUITES
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.report import gpt_report, report, summary
from stam_optimizer.benchmarks.tasks import gpt as gpt_tasks
from stam_optimizer.benchmarks.tasks import models

V, D, L, H, T = 11, 16, 2, 2, 6


def _model(qk_norm=False):
    init, apply = models.gpt(V, D, L, H, T, qk_norm=qk_norm)
    return init(jax.random.key(0)), apply


def test_gpt_shapes_untied_head_and_no_biases():
    params, apply = _model()
    logits = apply(params, jnp.zeros((3, T), jnp.int32))
    assert logits.shape == (3, T, V)
    assert params["embed"].shape == (V, D) and params["head"].shape == (D, V)
    names = runner.leaf_names(params)
    assert not [n for n in names if n.endswith(("b", "bias"))], names
    # every matrix is 2-D, every gain 1-D: no bias vector hides under another name
    assert {n.split("/")[-1] for n in names if n.split("/")[-1].startswith("ln")} == {
        "ln1", "ln2", "ln_f"}
    with pytest.raises(ValueError, match="multiple of heads"):
        models.gpt(V, 10, 1, 3, T)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(qk_norm):
    params, apply = _model(qk_norm)
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]], jnp.int32)
    changed = tokens.at[0, 3].set(9)
    a, b = apply(params, tokens), apply(params, changed)
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert not np.allclose(a[:, 3:], b[:, 3:])


def _ln(x, g):
    return g * (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def _gelu(x):  # jax.nn.gelu's default tanh form
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _numpy_gpt(params, tokens, qk_norm):
    """Float64 forward pass written from the formulas, one sequence at a time."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    out = []
    for seq in np.asarray(tokens):
        t = len(seq)
        x = p["embed"][seq] + p["pos"][:t]
        for blk in p["blocks"]:
            h = _ln(x, blk["ln1"]) @ blk["qkv"]
            q, k, v = h[:, :D], h[:, D:2 * D], h[:, 2 * D:]
            heads = []
            for i in range(H):
                s = slice(i * D // H, (i + 1) * D // H)
                qi, ki = q[:, s], k[:, s]
                if qk_norm:
                    qi, ki = _ln(qi, blk["q_ln"]), _ln(ki, blk["k_ln"])
                scores = qi @ ki.T / np.sqrt(D // H)
                scores[np.triu_indices(t, 1)] = -np.inf
                w = np.exp(scores - scores.max(1, keepdims=True))
                heads.append((w / w.sum(1, keepdims=True)) @ v[:, s])
            x = x + np.concatenate(heads, 1) @ blk["proj"]
            x = x + _gelu(_ln(x, blk["ln2"]) @ blk["up"]) @ blk["down"]
        out.append(_ln(x, p["ln_f"]) @ p["head"])
    return np.stack(out)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_gpt_forward_and_qk_layernorm_match_numpy(qk_norm):
    params, apply = _model(qk_norm)
    # non-trivial gains so that a missing or misplaced qk-layernorm shows
    params = jax.tree.map(lambda a: a * 1.5 if a.ndim == 1 else a, params)
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, V)
    np.testing.assert_allclose(apply(params, tokens), _numpy_gpt(params, tokens, qk_norm),
                               rtol=2e-4, atol=2e-5)
    if qk_norm:
        assert not np.allclose(apply(params, tokens), _numpy_gpt(params, tokens, False),
                               atol=1e-3)


def test_z_loss_matches_numpy():
    logits = np.random.default_rng(0).normal(size=(3, 4, 7)) * 3
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(models.z_loss(jnp.asarray(logits, jnp.float32)),
                               1e-4 * np.mean(lse**2), rtol=1e-5)
    np.testing.assert_allclose(models.z_loss(jnp.asarray(logits, jnp.float32), 0.5),
                               0.5 * np.mean(lse**2), rtol=1e-5)


def test_warmup_cosine_schedule():
    f = gpt_tasks.warmup_cosine(steps=110, warmup=10, final_fraction=0.1)
    np.testing.assert_allclose([float(f(t)) for t in (0, 4, 9, 10, 109)],
                               [0.1, 0.5, 1.0, 1.0, 0.1], rtol=1e-6)
    mid = 10 + 99 / 2
    np.testing.assert_allclose(float(f(mid)), 0.55, rtol=1e-6)


def test_lr_sensitivity_on_hand_worked_sweeps():
    # ℓ₀ = 4: [2, 1.5, diverged, 5 -> capped at 4]; ℓ* = 1.5
    assert gpt_report.lr_sensitivity([2.0, 1.5, None, 5.0], 4.0) == pytest.approx(
        (0.5 + 0 + 2.5 + 2.5) / 4)
    assert gpt_report.lr_sensitivity([2.0, float("nan"), float("inf")], 3.0) == pytest.approx(
        (0 + 1 + 1) / 3)
    assert gpt_report.lr_sensitivity([1.0, 1.0], 3.0) == 0.0
    assert math.isnan(gpt_report.lr_sensitivity([None, float("nan")], 3.0))


def test_lr_sensitivity_is_taken_over_the_shared_learning_rates():
    def run(lrs, losses):
        return {"lr_sensitivity": {"lrs": lrs, "final_seed_metric": [[x] for x in losses],
                                   "start_metric": [4.0]}}

    a = run([0.1, 1.0], [2.0, 3.0])
    b = run([0.01, 0.1, 1.0], [1.0, 2.0, 3.0])  # extended downwards: one more lr
    assert gpt_report.common_lrs({"a": a, "b": b}) == [0.1, 1.0]
    np.testing.assert_allclose(gpt_report.seed_sensitivities(b), [(0 + 1 + 2) / 3])
    np.testing.assert_allclose(gpt_report.seed_sensitivities(b, [0.1, 1.0]), [0.5])
    np.testing.assert_allclose(gpt_report.seed_sensitivities(a, [0.1, 1.0]), [0.5])


def test_tuning_check_against_the_final_seeds_hindsight_lr():
    run = {"final": {"lr": 0.1, "metric": [3.0, 3.2]},
           "lr_sensitivity": {"lrs": [0.01, 0.1, 1.0],
                              "final_seed_metric": [[2.9, 2.95], [3.0, 3.2], [None, 1.0]]}}
    # lr 1.0 has the lowest single value but a diverged seed: it is never the hindsight pick
    assert gpt_report.tuning_check(run) == pytest.approx((0.1, 3.1, 0.01, 2.925))
    run["final"] = {"lr": 0.01, "metric": [2.9, 2.95]}
    assert gpt_report.tuning_check(run) == pytest.approx((0.01, 2.925, 0.01, 2.925))


def test_spike_rule_on_hand_worked_curves():
    assert gpt_report.count_spikes([4.0, 3.0, 2.5, 2.4, 2.3]) == 0
    # 2.9 > 1.1 * 2.4: one spike, and two raised points in a row are still one
    assert gpt_report.count_spikes([4.0, 3.0, 2.4, 2.9, 2.4, 2.3]) == 1
    assert gpt_report.count_spikes([4.0, 2.4, 2.9, 2.8, 2.3]) == 1
    assert gpt_report.count_spikes([4.0, 2.4, 2.9, 2.3, 2.6, 2.2]) == 2
    # 2.6 is below 1.1 * 2.4 = 2.64: noise, not a spike
    assert gpt_report.count_spikes([4.0, 2.4, 2.6, 2.3]) == 0
    # a NaN is a divergence, not a spike; the curve stops there
    curve = [4.0, 3.0, float("nan"), 9.0]
    assert gpt_report.count_spikes(curve) == 0 and gpt_report.diverged(curve)
    assert gpt_report.diverged([4.0, None]) and not gpt_report.diverged([4.0, 3.0])
    # a curve of only missing values never ran (a final seed at an lr not chosen)
    assert not gpt_report.ran([None, None]) and not gpt_report.diverged([None, None])


def test_runs_that_never_happened_are_neither_diverged_nor_spiked():
    # a final_at_best task: final seeds at the chosen lr (the second) only
    missing = [None] * 3
    run = {"lr_sensitivity": {"lrs": [0.01, 0.03],
                              "train_loss": [[missing, missing],
                                             [[4.0, 2.4, 2.9, 2.3], [4.0, 3.0, None]]]}}
    assert gpt_report.spike_counts(run) == (1, 1, 1)
    spikes, diverged = summary._spikes(run["lr_sensitivity"]["train_loss"])
    assert spikes == [[0, 0], [1, 0]] and diverged == [[0, 0], [0, 1]]


def test_schedule_free_is_evaluated_at_its_averaged_parameters():
    params = {"w": jnp.ones((2, 2))}
    tx = gpt_tasks.llm_optimizer("schedule_free_adamw", 0.1, steps=10, warmup=2)
    state = tx.init(params)
    p = params
    for _ in range(3):
        u, state = tx.update({"w": jnp.full((2, 2), 0.5)}, state, p)
        p = optax.apply_updates(p, u)
    is_sf = lambda x: isinstance(x, optax.contrib.ScheduleFreeState)  # noqa: E731
    sf = [s for s in jax.tree.leaves(state, is_leaf=is_sf) if is_sf(s)]
    want = optax.contrib.schedule_free_eval_params(sf[0], p)
    got = registry.entry("schedule_free_adamw").eval_params(p, state)
    np.testing.assert_array_equal(got["w"], want["w"])
    assert not np.allclose(got["w"], p["w"])
    assert registry.entry("adamw").eval_params is None


def test_every_recipe_builds_and_gives_finite_updates():
    params = {"embed": jnp.ones((5, 4)), "pos": jnp.ones((3, 4)), "ln_f": jnp.ones(4),
              "head": jnp.ones((4, 5)),
              "blocks": [{"ln1": jnp.ones(4), "qkv": jnp.ones((4, 12))}]}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
    names = [n for n in registry.names(gpt=True)
             if n != "stam_const_mean"] + ["stam_const_beta=0.8"]  # what the job runs
    txs = {n: gpt_tasks.llm_optimizer(n, 1e-2, steps=20, warmup=2) for n in names}

    @jax.jit
    def updates(grads, params):  # one program for every recipe
        return {n: tx.update(grads, tx.init(params), params)[0] for n, tx in txs.items()}

    for name, u in updates(grads, params).items():
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u)), name
    with pytest.raises(ValueError, match="unknown optimizer 'no_such_optimizer'"):
        gpt_tasks.llm_optimizer("no_such_optimizer", 1e-2, 20, 2)
    with pytest.raises(ValueError, match="built from the stam_full run"):
        gpt_tasks.llm_optimizer("stam_const_mean", 1e-2, 20, 2)


def test_constant_mean_beta1_control_is_adamw_at_that_beta1():
    """stam_const_mean's recipe (`stam_const_beta=<b>`) is STAM with α = 0: AdamW with
    b1 = b and the suite's b2, eps, weight decay, schedule and clipping."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    tx = gpt_tasks.llm_optimizer("stam_const_beta=0.8", 1e-2, steps=20, warmup=2)
    mult = gpt_tasks.warmup_cosine(20, 2)
    ref = optax.chain(optax.clip_by_global_norm(gpt_tasks.CLIP_NORM),
                      optax.adamw(lambda t: 1e-2 * mult(t), b1=0.8, b2=gpt_tasks.B2,
                                  eps=gpt_tasks.EPS, weight_decay=gpt_tasks.WEIGHT_DECAY))
    s, r = tx.init(params), ref.init(params)
    p, q = params, params
    for k in range(6):
        g = jax.tree.map(lambda x, k=k: jnp.sin(3.0 * x + k), p)
        u, s = tx.update(g, s, p)
        v, r = ref.update(g, r, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert "β₁ = 0.8" in gpt_tasks.recipe("stam_const_beta=0.8")


def test_clipping_comes_first_in_every_recipe():
    """Gradients 10x or 1000x beyond the clip norm give the same first update."""
    params = {"embed": jnp.ones((5, 4)), "pos": jnp.ones((3, 4)), "ln_f": jnp.ones(4),
              "head": jnp.ones((4, 5)), "blocks": [{"ln1": jnp.ones(4)}]}
    g = jax.tree.map(lambda p: jnp.linspace(-1.0, 1.0, p.size).reshape(p.shape), params)
    tx = gpt_tasks.llm_optimizer("adamw", 1e-2, steps=20, warmup=2)
    a = tx.update(jax.tree.map(lambda x: 10 * x, g), tx.init(params), params)[0]
    b = tx.update(jax.tree.map(lambda x: 1000 * x, g), tx.init(params), params)[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9)


def test_suite_plans_per_size_and_filters_the_signal_variants():
    quick = scheduler.plan(["gpt"], "quick")
    assert {j.task for j in quick} == {v.name for v in gpt_tasks.QUICK_VARIANTS}
    assert {j.optimizer for j in quick} == {"adamw", "stam_full", "stam_lite"}
    short = {v.name for v in gpt_tasks.VARIANTS}
    full = [j for j in scheduler.plan(["gpt"], "full") if j.task in short]
    assert {j.task for j in full} == short
    names = {j.optimizer for j in full}
    assert {"adamw", "stam_full", "stam_lite", "adams", "stam_lite_int8", "adafactor", "lion",
            "muon", "schedule_free_adamw", "stam_const_mean"} <= names
    assert names == set(registry.names(gpt=True))
    assert SUITES["gpt"].tasks[:len(short)] == tuple(v.name for v in gpt_tasks.VARIANTS)
    widest = max(gpt_tasks.WIDTHS)
    assert {(v.qk_norm, v.z_loss) for v in gpt_tasks.VARIANTS if v.d == widest} >= {
        (False, False), (True, False), (False, True)}


def test_tiny_suite_end_to_end_writes_the_report_section(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796083200")
    task = gpt_tasks.TASKS["gpt_d16_qk"](Config(size="tiny"))
    tune, final = scheduler.seeds_of(task, "tiny")
    rec = runner.tune_and_run(task, "adamw", tune, final, "tiny")
    assert rec["measured"]["state_bytes"] == 2 * 4 * rec["measured"]["params"] + 4 + 4
    assert rec["measured"]["train_step_peak_bytes"] > rec["measured"]["state_bytes"]
    sens = rec["lr_sensitivity"]
    assert np.asarray(sens["train_loss"]).shape == (len(sens["lrs"]), len(final),
                                                    task.steps // task.eval_every + 1)
    assert len(sens["start_metric"]) == len(final)
    records.write_json(str(tmp_path / "runs" / task.name / "adamw.json"), rec)
    # a second optimizer, made from the first: better by 0.1 at every lr and seed
    other = json.loads(json.dumps(rec)) | {"optimizer": "stam_full"}
    other["final"]["metric"] = [v - 0.1 for v in rec["final"]["metric"]]
    other["lr_sensitivity"]["final_seed_metric"] = [
        [v - 0.1 for v in row] for row in rec["lr_sensitivity"]["final_seed_metric"]]
    records.write_json(str(tmp_path / "runs" / task.name / "stam_full.json"), other)
    text = report.build_report(tmp_path).read_text()
    section = text[text.index("## GPT suite"):]
    assert "### gpt_d16_qk" in section and "`stam_full`" in section
    # the last stam_full row is the one of the per-task table
    row = [line for line in section.splitlines() if line.startswith("| `stam_full`")][-1]
    assert "-0.1 [-0.1, -0.1]" in row and "**win**" in row  # (a): a constant 0.1 better
    for png in ("gpt_lr_sensitivity.png", "gpt_loss_vs_lr.png", "gpt_memory_gpt_d16_qk.png"):
        assert (tmp_path / png).stat().st_size > 0, png
    # summary.json keeps spikes and divergences, not the training curves: same section
    sens = json.loads((tmp_path / "summary.json").read_text())["tasks"]["gpt_d16_qk"][
        "optimizers"]["adamw"]["lr_sensitivity"]
    assert "train_loss" not in sens and "final_seed_metric" in sens
    copy = tmp_path.parent / f"{tmp_path.name}_summary"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("runs", "cache"))
    assert report.build_report(copy).read_text() == text

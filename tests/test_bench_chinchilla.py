"""The one-Chinchilla regime: the token-budget arithmetic, windows drawn without
replacement, the sizes and optimizer sets, the primary family with its Holm
correction, decisive fraction and seeds needed on hand-made records, the β₁-tuned
AdamW, and a tiny end-to-end run."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats as sps

from stam_optimizer.benchmarks.programme import records, registry, runner, scheduler
from stam_optimizer.benchmarks.programme.suites import SUITES
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.report import chinchilla_report as cr
from stam_optimizer.benchmarks.report import report, stats
from stam_optimizer.benchmarks.tasks import chinchilla as ch
from stam_optimizer.benchmarks.tasks import gpt as gpt_tasks
from stam_optimizer.benchmarks.tasks import source_corpus

# --- the token budget -------------------------------------------------------------------

def test_token_budget_arithmetic():
    assert ch.token_budget(24736, 8, 64, evals=10) == (970, 97)  # 494720 / 512 = 966.25
    assert ch.token_budget(24736, 64, 64, evals=10) == (120, 12)  # 120.8 steps
    assert ch.token_budget(1, 1, 1, evals=10) == (20, 2)
    assert ch.token_budget(1, 64, 64, evals=10) == (1, 1)  # at least one step
    for name, value in (("params", 0), ("batch", 0), ("seq", -1), ("evals", 0)):
        kwargs = {"params": 10, "batch": 2, "seq": 4, "evals": 1} | {name: value}
        with pytest.raises(ValueError, match=name):
            ch.token_budget(**kwargs)


def test_non_embedding_parameters_follow_the_formula():
    for d, layers in ((20, 2), (32, 2), (48, 2), (128, 2), (8, 1)):
        init, _ = ch.gpt(96, d, layers, max(1, d // 16), 64)
        n, total = ch.count_params(jax.eval_shape(init, jax.random.key(0)))
        assert n == layers * (12 * d * d + 2 * d) + d  # blocks and their gains, final gain
        assert total == n + 96 * d + 64 * d + d * 96  # embedding, positions, head


@pytest.mark.parametrize("size", ["full", "tiny", "gpu"])
def test_every_task_trains_on_20_tokens_per_parameter_and_reads_each_window_once(size):
    n_train = len(source_corpus.load_source_corpus("train"))
    for row in ch.regime_table(size):
        every = row["steps"] // ch.EVALS[size]
        assert row["steps"] == every * ch.EVALS[size]
        assert abs(row["tokens"] - 20 * row["params"]) <= every * row["batch"] * row["seq"] / 2
        # windows of seq + 1 characters, read at most once: no character seen twice
        assert row["steps"] * row["batch"] <= n_train // (row["seq"] + 1)


def test_full_regime_widths_and_the_8x_batch():
    rows = {r["task"]: r for r in ch.regime_table("full")}
    base = [r for t, r in rows.items() if not t.endswith("batch8x")]
    assert len({r["d"] for r in base}) >= 3
    assert max(r["params"] for r in base) >= 4 * min(r["params"] for r in base)
    medium, big = rows["chinchilla_medium"], rows["chinchilla_medium_batch8x"]
    middle = sorted(base, key=lambda r: r["params"])[len(base) // 2]
    assert middle is medium and (big["d"], big["layers"]) == (medium["d"], medium["layers"])
    assert big["batch"] == 8 * medium["batch"]
    assert 7.5 <= medium["steps"] / big["steps"] <= 8.5


def test_window_slots_are_a_permutation_for_every_seed():
    n = 101
    p, q = (jnp.asarray(a) for a in ch.window_order(n))
    orders = [np.asarray(ch.window_slots(jax.random.key(s), jnp.arange(n), p, q))
              for s in range(4)]
    for o in orders:
        assert sorted(o.tolist()) == list(range(n))
    assert len({tuple(o) for o in orders}) == 4  # each seed its own order


def test_a_tiny_task_reads_the_windows_of_window_slots(monkeypatch):
    task = ch.TASKS["chinchilla_small"](Config(size="tiny"))
    shape = ch.REGIME["tiny"]["chinchilla_small"]
    vocab = source_corpus.source_vocabulary()
    codes = source_corpus.encode(source_corpus.load_source_corpus("train"), vocab)
    windows = ch._windows(codes, shape.seq)
    p, q = (jnp.asarray(a) for a in ch.window_order(len(windows)))
    key = jax.random.key(7)
    slots = jnp.arange(task.steps * task.batch_size)
    rows = np.asarray(ch.window_slots(key, slots, p, q))
    assert len(set(rows.tolist())) == rows.size  # a whole run: no window twice
    for step in (0, 1, task.steps - 1):
        got = np.asarray(task.batch(key, step))
        want = windows[rows[step * task.batch_size:(step + 1) * task.batch_size]]
        np.testing.assert_array_equal(got, want)


def test_sizes_without_the_regime_are_refused():
    with pytest.raises(ValueError, match="size must be one of"):
        ch.TASKS["chinchilla_small"](Config(size="quick"))
    with pytest.raises(ValueError, match="size must be one of"):
        ch.TASKS["chinchilla_gpu"](Config(size="full"))
    with pytest.raises(ValueError, match="steps cannot be overridden"):
        ch.TASKS["chinchilla_small"](Config(size="tiny", steps=3))


# --- sizes, suites and optimizers ---------------------------------------------------------

def test_sizes_map_to_tasks_and_optimizers():
    short = {v.name for v in gpt_tasks.VARIANTS}
    quick = scheduler.plan(["gpt", "chinchilla"], "quick")
    assert {j.task for j in quick} == {v.name for v in gpt_tasks.QUICK_VARIANTS}
    full = scheduler.plan(["gpt"], "full")
    assert {j.task for j in full} == short | set(ch.FULL_TASKS)
    assert scheduler.plan(["chinchilla"], "full") == [j for j in full if j.task in ch.FULL_TASKS]
    regime = {j.optimizer for j in full if j.task in ch.FULL_TASKS}
    assert regime == set(ch.optimizers("full"))
    assert {"adamw", "stam_full", "stam_lite", "adams", "muon", "stam_const_mean",
            "adamw_b1_0.7", "adamw_b1_0.8", "adamw_b1_0.95"} <= regime
    assert not regime & {"lion", "adafactor", "schedule_free_adamw"}
    gpu = scheduler.plan(["gpt", "chinchilla"], "gpu")
    assert {(j.task, j.optimizer) for j in gpu} == {("chinchilla_gpu", o) for o in ch.CORE}
    with pytest.raises(ValueError, match="gpu"):
        scheduler._check_arguments(["lm"], "gpu", 1)
    assert SUITES["chinchilla"].tasks_at("tiny") == ch.FULL_TASKS


def test_low_bit_members_join_the_family_with_their_float_parent(monkeypatch):
    monkeypatch.setattr(registry, "ENTRIES", dict(registry.ENTRIES))
    registry.add(registry.Entry("lion_4bit", registry.ENTRIES["lion"].build, "Lion 4-bit",
                                storage="int4", parent="lion"))
    family = ch.primary_family()
    assert ("lion_4bit", "lion") in family and ("stam_lite_int8", "stam_lite") in family
    assert ("adamw_8bit", "adamw") in family and ("factored_adamw_4bit", "factored_adamw") \
        in family
    assert not [p for p in family if p[0].endswith("bf16")]  # 16 bits is not low-bit
    for pair in (("stam_full", "adamw"), ("stam_lite", "adamw"), ("adams", "adamw"),
                 ("muon", "adamw"), ("stam_full", "stam_const_mean"),
                 ("stam_full", ch.TUNED_BETA1)):
        assert pair in family
    assert {"lion_4bit", "lion", "adamw_8bit"} <= set(ch.optimizers("full"))
    with pytest.raises(ValueError, match="storage 'packed'"):
        ch.storage_bits("packed")


@pytest.mark.parametrize("task", ch.FULL_TASKS)
def test_every_low_bit_member_stores_the_regimes_models_in_low_bits(task):
    # A member whose leaves all fall below its size threshold would store float
    # state, and its parity comparison would pit an optimizer against itself.
    from stam_optimizer.benchmarks.measure import memory
    s = ch.REGIME["full"][task]
    init, _ = ch.gpt(len(source_corpus.source_vocabulary()), s.d, s.layers, s.heads, s.seq)
    params = jax.eval_shape(init, jax.random.key(0))
    for member, parent in ch.low_bit_pairs():
        bits = ch.storage_bits(registry.ENTRIES[member].storage)
        mine = memory.state_bytes(registry.get(member), params)
        theirs = memory.state_bytes(registry.get(parent), params)
        assert mine <= (bits / 32 + 0.1) * theirs, (member, mine, theirs)


def test_adamw_beta1_entries_keep_their_beta1_under_the_llm_recipe():
    params = {"w": jnp.ones(3)}
    g = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    for b in registry.ADAMW_BETA1_GRID:
        e = registry.entry(f"adamw_b1_{b:g}")
        assert e.decoupled_wd and not e.full and not e.gpt
        tx = e.build(1e-2, gpt_tasks.RECIPE)  # RECIPE says b1 0.9
        ref = optax.adamw(1e-2, b1=b, b2=gpt_tasks.B2, eps=gpt_tasks.EPS,
                          weight_decay=gpt_tasks.WEIGHT_DECAY)
        s, r = tx.init(params), ref.init(params)
        for _ in range(3):
            u, s = tx.update(g, s, params)
            v, r = ref.update(g, r, params)
            np.testing.assert_array_equal(u["w"], v["w"])


# --- the primary family on hand-made records ------------------------------------------------

def _run(opt, task, final, tuning=((2.0,),), min_effect=0.01):
    return {"suite": ch.SUITE, "task": task, "optimizer": opt,
            "task_info": {"min_effect": min_effect, "metric": "heldout_loss"},
            "tuning": {"lrs": [1e-3 * 10**i for i in range(len(tuning))],
                       "metric": [list(t) for t in tuning], "seeds": [1000]},
            "final": {"seeds": list(range(len(final))), "metric": list(final)},
            "measured": {"params": 100, "tokens_per_param": 20, "tokens_per_run": 2000,
                         "steps": 10, "batch": 2, "seq": 100, "d": 4, "layers": 1,
                         "params_total": 150, "state_bytes": 1200}}


def _hand_made():
    rng = np.random.default_rng(0)
    base = 1.5 + 0.05 * rng.standard_normal(8)
    wobble = rng.standard_normal(8)
    tasks = {}
    for t in ("chinchilla_a", "chinchilla_b"):
        runs = {
            "adamw": _run("adamw", t, base, tuning=((2.0, 2.1), (1.9, 1.95))),
            "stam_full": _run("stam_full", t, base - 0.05 + 0.002 * wobble),  # win
            "stam_lite": _run("stam_lite", t, base + 0.001 * wobble),  # tie
            "adams": _run("adams", t, base + 0.004 + 0.02 * wobble),  # inconclusive
            "stam_const_mean": _run("stam_const_mean", t, base + 0.03 + 0.001 * wobble),
            # β₁ 0.8 tunes best (1.8 < 1.9): the tuned AdamW is this run
            "adamw_b1_0.8": _run("adamw_b1_0.8", t, base - 0.04 + 0.001 * wobble,
                                 tuning=((1.8, 1.85),)),
            "adamw_b1_0.7": _run("adamw_b1_0.7", t, base, tuning=((2.5, 2.5),)),
        }
        tasks[t] = runs  # muon and the low-bit member are missing
    tasks["gpt_d16"] = {"adamw": _run("adamw", "gpt_d16", base) | {"suite": "gpt"}}
    return tasks


def test_summary_judges_the_primary_family_with_its_own_holm():
    tasks = _hand_made()
    out = cr.summary(tasks)
    json.dumps(out, allow_nan=False)  # JSON as it is
    assert set(out["tasks"]) == {"chinchilla_a", "chinchilla_b"}  # only the regime
    a = out["tasks"]["chinchilla_a"]
    assert a["params"] == 100 and a["tokens_per_param"] == 20
    assert a["adamw_tuned_b1"]["beta1"] == 0.8 and a["adamw_tuned_b1"]["optimizer"] == \
        "adamw_b1_0.8"
    assert a["adamw_tuned_b1"]["tuning"]["0.9"] == pytest.approx(1.925)
    rows = {(r["task"], r["candidate"], r["baseline"]): r for r in out["primary"]}
    assert set(rows) == {(t, c, b) for t in ("chinchilla_a", "chinchilla_b")
                         for c, b in (("stam_full", "adamw"), ("stam_lite", "adamw"),
                                      ("adams", "adamw"), ("stam_full", "stam_const_mean"),
                                      ("stam_full", ch.TUNED_BETA1))}
    missing = {(r["task"], r["candidate"]) for r in out["missing"]}
    assert ("chinchilla_a", "muon") in missing and ("chinchilla_b", "stam_lite_int8") in missing
    # Holm over the 10 primary comparisons only, by hand
    keys = sorted(rows)
    ps = []
    for k in keys:
        t, c, b = k
        b_run = "adamw_b1_0.8" if b == ch.TUNED_BETA1 else b
        x, y = tasks[t][c]["final"]["metric"], tasks[t][b_run]["final"]["metric"]
        ps.append(sps.ttest_rel(x, y).pvalue)
    m = len(ps)
    order = np.argsort(ps)
    holm = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * ps[j]))
        holm[j] = running
    for k, h, p in zip(keys, holm, ps):
        assert rows[k]["holm_p"] == pytest.approx(h) and rows[k]["p"] == pytest.approx(p)
    win = rows[("chinchilla_a", "stam_full", "adamw")]
    assert win["verdict"] == "win" and win["diff"] == pytest.approx(
        np.mean(np.asarray(tasks["chinchilla_a"]["stam_full"]["final"]["metric"]) -
                tasks["chinchilla_a"]["adamw"]["final"]["metric"]))
    assert win["ci"][0] < win["diff"] < win["ci"][1] and win["seeds_needed"] is None
    assert rows[("chinchilla_a", "stam_lite", "adamw")]["verdict"] == "tie"
    assert rows[("chinchilla_a", "stam_full", "stam_const_mean")]["verdict"] == "win"
    tuned = rows[("chinchilla_a", "stam_full", ch.TUNED_BETA1)]
    assert tuned["baseline_run"] == "adamw_b1_0.8" and tuned["diff"] == pytest.approx(-0.01,
                                                                                     abs=2e-3)
    undecided = rows[("chinchilla_a", "adams", "adamw")]
    assert undecided["verdict"] == "inconclusive" and undecided["seeds_needed"] > 8
    # decisive fraction: 4 of the 5 comparisons per task
    verdicts = [r["verdict"] for r in out["primary"]]
    decisive = sum(v in ("win", "tie", "loss") for v in verdicts)
    assert out["decisive"]["count"] == decisive and out["decisive"]["total"] == 10
    assert out["decisive"]["fraction"] == pytest.approx(decisive / 10)
    assert out["decisive"]["met"] == (decisive / 10 >= 0.8)
    # the secondary family is separate: AdamW at β₁ 0.7 and 0.8 vs AdamW, and so on
    second = {(r["task"], r["candidate"]) for r in out["secondary"]}
    assert ("chinchilla_a", "adamw_b1_0.8") in second and ("chinchilla_a", "stam_full") not in \
        second
    assert not {(r["task"], r["candidate"], r["baseline"]) for r in out["secondary"]} & set(rows)


def test_primary_holm_ignores_the_secondary_comparisons():
    tasks = _hand_made()
    before = cr.summary(tasks)["primary"]
    for runs in tasks.values():
        if "adamw" in runs and "stam_full" in runs:  # ten more secondary runs
            for i in range(5):
                runs[f"extra{i}"] = json.loads(json.dumps(runs["stam_full"])) | {
                    "optimizer": f"extra{i}"}
    after = cr.summary(tasks)
    assert [r["holm_p"] for r in after["primary"]] == [r["holm_p"] for r in before]
    assert len(after["secondary"]) > 10


def test_a_custom_family_and_an_empty_one():
    tasks = _hand_made()
    out = cr.summary(tasks, family=(("stam_full", "adamw"),))
    assert out["decisive"] == {"count": 2, "total": 2, "fraction": 1.0, "target": 0.8,
                               "met": True}
    none = cr.summary({})
    assert none["primary"] == [] and none["decisive"]["fraction"] is None
    assert not none["decisive"]["met"] and cr.section({}) == []


def test_lr_sensitivity_on_the_tuning_seeds_by_hand():
    run = {"tuning": {"lrs": [1e-3, 1e-2], "seeds": [1000, 1001],
                      "metric": [[2.0, 2.2], [1.9, None]]}}  # seed 1001 diverged at 1e-2
    uniform = math.log(96)  # newline and the 95 printable ASCII characters
    assert cr.UNIFORM_LOSS == pytest.approx(uniform)
    # seed 1000: (0.1 + 0)/2; seed 1001: (0 + (ln 96 − 2.2))/2
    want = (0.05 + (uniform - 2.2) / 2) / 2
    assert cr.tuning_sensitivity(run, [1e-3, 1e-2]) == pytest.approx(want)
    assert math.isnan(cr.tuning_sensitivity(run, [1e-3, 3e-2]))  # an lr it was not tuned at
    untuned = {"tuning": {"lrs": [1e-2], "seeds": [], "metric": [[]]}}  # a storage variant
    assert math.isnan(cr.tuning_sensitivity(untuned, [1e-2]))


def test_sensitivity_rows_put_the_short_horizon_beside_the_regime():
    tasks = _hand_made()
    lrs = [1e-3, 1e-2]
    for runs in tasks.values():
        for r in runs.values():
            r["lr_sensitivity"] = {"lrs": r["tuning"]["lrs"],
                                   "train_loss": [[[3.0, 2.5, 2.9, 2.0]] + [[None] * 4] * 7]
                                   + [[[None] * 4] * 8] * (len(r["tuning"]["lrs"]) - 1)}
    short = tasks["gpt_d16"]["adamw"]
    short["tuning"]["lrs"] = [1e-3, 1e-2, 1e-1]
    short["lr_sensitivity"] = {"lrs": [1e-3, 1e-2, 1e-1],
                               "final_seed_metric": [[2.0, 2.1], [1.8, 2.5], [9.0, 9.0]],
                               "start_metric": [3.0, 3.5]}
    rows = cr.sensitivity_rows(tasks, lrs)
    assert set(rows) == {"chinchilla_a", "chinchilla_b", "gpt_d16"}
    # short horizon, per final seed over lrs 1e-3, 1e-2 only: (0.2 + 0)/2 and (0 + 0.4)/2
    assert rows["gpt_d16"]["adamw"]["lr_sensitivity"] == pytest.approx((0.1 + 0.2) / 2)
    assert rows["gpt_d16"]["adamw"]["horizon"] == "short"
    a = rows["chinchilla_a"]["adamw"]  # tuning (2.0, 2.1) at 1e-3, (1.9, 1.95) at 1e-2
    assert a["lr_sensitivity"] == pytest.approx(((0.1 + 0) / 2 + (0.15 + 0) / 2) / 2)
    # one final run trained (2.9 > 1.1·2.5: one spike); the 7 runs of missing values never ran
    assert (a["spikes"], a["spiked_runs"], a["diverged"], a["runs"]) == (1, 1, 0, 1)
    assert rows["chinchilla_a"]["stam_full"]["lr_sensitivity"] is None  # one tuned lr


def test_answers_say_whether_it_is_still_the_beta1_level(tmp_path):
    tasks = _hand_made()
    lines = cr.section(tasks, tmp_path)
    text = "\n".join(lines)
    # stam_full beats its own constant-mean β₁ by 0.08 on the hand-made records
    assert "**chinchilla_a** (d 4, 100 parameters, batch 2): STAM vs AdamW: win" in text
    assert "More than the β₁ level" in text
    assert (tmp_path / "loss_memory.png").stat().st_size > 0
    assert "![loss against memory](loss_memory.png)" in text
    for runs in tasks.values():
        for control in ("stam_const_mean", "adamw_b1_0.8"):  # the β₁ controls match STAM
            if control in runs:
                runs[control] = json.loads(json.dumps(runs["stam_full"])) | {
                    "optimizer": control, "tuning": runs[control]["tuning"]}
    assert "Still the β₁ level" in "\n".join(cr.answers(cr.summary(tasks)))
    for runs in tasks.values():
        if "adamw_b1_0.8" in runs:  # the β₁-tuned AdamW now beats STAM by 0.05
            runs["adamw_b1_0.8"]["final"]["metric"] = [
                x - 0.05 for x in runs["stam_full"]["final"]["metric"]]
    assert "The β₁ level alone does better" in "\n".join(cr.answers(cr.summary(tasks)))
    for runs in tasks.values():
        if "stam_full" in runs:
            runs["stam_full"] = json.loads(json.dumps(runs["adamw"])) | {"optimizer": "stam_full"}
    assert "STAM does not beat AdamW here" in "\n".join(cr.answers(cr.summary(tasks)))


def test_seeds_needed_by_brute_force():
    d = stats.PairedDiff(0.0, math.nan, math.nan, 0.5, 8, 0.01)
    # a tie needs t(n-1)·sd/√n <= 0.01: t(5) = 2.571 > √6, t(6) = 2.447 <= √7
    assert cr.seeds_needed(d, 0.01) == 7
    for mean, sd, effect, level in ((0.02, 0.02, 0.01, 0.05), (-0.015, 0.03, 0.01, 0.005),
                                    (0.004, 0.01, 0.01, 0.05)):
        got = cr.seeds_needed(stats.PairedDiff(mean, 0, 0, 0.5, 8, sd), effect, level)
        if abs(mean) >= effect:
            ok = [stats.min_detectable_effect(sd, n, level) <= abs(mean) for n in range(2, 400)]
        else:
            ok = [sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= effect - abs(mean)
                  for n in range(2, 400)]
        assert got == 2 + ok.index(True)
    assert cr.seeds_needed(stats.PairedDiff(0.0, 0, 0, 1, 8, 0.0), 0.01) is None
    assert cr.seeds_needed(stats.PairedDiff(math.nan, 0, 0, 1, 8, 0.1), 0.01) is None
    assert cr.seeds_needed(stats.PairedDiff(0.0099, 0, 0, 1, 8, 1.0), 0.01, max_seeds=64) is None


# --- a tiny end-to-end run --------------------------------------------------------------

def test_tiny_regime_end_to_end(tmp_path):
    task = ch.TASKS["chinchilla_small"](Config(size="tiny"))
    assert task.final_at_best and task.seed_batches and task.metric == "heldout_loss"
    tune, final = scheduler.seeds_of(task, "tiny")
    rec = runner.tune_and_run(task, "adamw", tune, final, "tiny")
    lrs = rec["tuning"]["lrs"]
    best = lrs.index(rec["final"]["lr"])
    assert set(task.lr_grid) <= set(lrs)
    assert all(v is not None for v in rec["final"]["metric"])
    sens = rec["lr_sensitivity"]["final_seed_metric"]  # final seeds at the chosen lr only
    assert [all(v is None for v in row) for row in sens] == [i != best for i in range(len(lrs))]
    assert rec["measured"]["params"] == 792 and rec["measured"]["tokens_per_param"] == 20
    assert rec["measured"]["windows_per_run"] == task.steps * task.batch_size
    for opt, shift in (("adamw", 0.0), ("stam_full", -0.1), ("stam_lite", 0.0)):
        other = json.loads(json.dumps(rec)) | {"optimizer": opt}
        other["final"]["metric"] = [v + shift for v in rec["final"]["metric"]]
        records.write_json(str(tmp_path / "runs" / task.name / f"{opt}.json"), other)
    runs = {o: records.load_json(tmp_path / "runs" / task.name / f"{o}.json")
            for o in ("adamw", "stam_full", "stam_lite")}
    out = cr.summary({task.name: runs})
    row = {(r["candidate"], r["baseline"]): r for r in out["primary"]}
    assert row[("stam_full", "adamw")]["diff"] == pytest.approx(-0.1)
    assert row[("stam_full", "adamw")]["verdict"] == "win"
    assert row[("stam_lite", "adamw")]["verdict"] == "tie"
    assert out["tasks"][task.name]["adamw_tuned_b1"]["beta1"] == 0.9
    text = report.build_report(tmp_path).read_text()
    assert "## One Chinchilla" in text and "Decisive primary comparisons: 3 of 3" in text
    # summary.json carries the primary family next to the compact runs
    block = json.loads((tmp_path / "summary.json").read_text())["one_chinchilla"]
    assert block["tasks"][task.name]["params"] == 792
    assert block["tasks"][task.name]["tokens_per_param"] == 20
    got = {(r["candidate"], r["baseline"]): r for r in block["primary"]}
    assert got[("stam_full", "adamw")]["verdict"] == "win"
    assert got[("stam_full", "adamw")]["diff"] == pytest.approx(-0.1, abs=1e-4)
    assert set(got[("stam_lite", "adamw")]) >= {"diff", "ci", "holm_p", "verdict"}
    assert block["decisive"]["count"] == 3


def test_gpu_task_runs_at_a_tiny_shape_on_cpu(monkeypatch):
    real = ch.make(Config(size="gpu"), "chinchilla_gpu")
    assert real.steps * real.batch_size <= ch.regime_table("gpu")[0]["tokens"]  # built
    monkeypatch.setitem(ch.REGIME, "gpu", {"chinchilla_gpu": ch.Shape(16, 1, 2, 8)})
    task = ch.make(Config(size="gpu"), "chinchilla_gpu")
    short = dataclasses.replace(task, steps=4, eval_every=2)
    out, _, _ = runner.execute(short, "muon", [1e-2], [0, 1])
    assert np.all(np.isfinite(out["metrics/val_loss"])) and out["test/heldout_loss"].shape == (
        1, 1, 2)


def test_a_low_bit_member_runs_at_its_parents_learning_rate(tmp_path):
    """On the long-run tasks a storage variant is not tuned: its final seeds run at
    the learning rate its parent chose, after the parent, and the parity verdict
    reads them there."""
    def run(names):
        return scheduler.run_programme(["chinchilla"], "tiny", tmp_path, optimizers=names,
                                       workers=1, log=lambda _: None,
                                       tasks=["chinchilla_small"])
    counts = run(["adamw_8bit", "adamw"])  # the member first: it still waits for its parent
    assert counts["done"] == 2 and counts["failed"] == 0
    path = tmp_path / "runs" / "chinchilla_small"
    parent = records.load_json(path / "adamw.json")
    member = records.load_json(path / "adamw_8bit.json")
    lr = parent["final"]["lr"]
    assert member["tuning"]["at_parent_lr"] == lr and member["tuning"]["parent"] == "adamw"
    assert member["tuning"]["lrs"] == [lr] and member["tuning"]["seeds"] == []
    assert member["final"]["lr"] == lr and member["final"]["seeds"] == parent["final"]["seeds"]
    assert list(stats.compare_at_parent_lr({"chinchilla_small": {"adamw": parent,
                                                                  "adamw_8bit": member}},
                                           [("adamw_8bit", "adamw")])) == \
        [("chinchilla_small", "adamw_8bit", "adamw")]
    text = report.build_report(tmp_path).read_text()
    assert f"| `adamw_8bit` | {lr:g} (adamw's) |" in text and "are not tuned" in text
    again = run(["adamw", "adamw_8bit"])  # resumes: both kept
    assert again["done"] == 0 and again["skipped"] == 2
    # a parent that chose another learning rate makes the member's run stale
    task = ch.TASKS["chinchilla_small"](Config(size="tiny"))
    job = scheduler.Job("run", "chinchilla_small", "adamw_8bit")
    assert scheduler.is_done(job, task, tmp_path, "tiny")
    parent["final"]["lr"] = next(x for x in parent["tuning"]["lrs"] if x != lr)
    records.write_json(str(path / "adamw.json"), parent)
    assert not scheduler.is_done(job, task, tmp_path, "tiny")


def test_a_low_bit_member_without_its_parent_says_what_to_run(tmp_path):
    logs = []
    counts = scheduler.run_programme(["chinchilla"], "tiny", tmp_path, optimizers=["adamw_8bit"],
                                     workers=1, log=logs.append, tasks=["chinchilla_small"])
    assert counts["failed"] == 1
    assert any("run adamw on this task first" in line for line in logs)

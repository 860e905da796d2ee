"""The statistics of stam-bench, checked against scipy, hand-worked examples and
plain re-implementations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from stam_optimizer.benchmarks.report.stats import (
    PairedDiff,
    holm,
    holm_levels,
    interval,
    mean_ci,
    min_detectable_effect,
    paired_difference,
    performance_profile,
    steps_to_target,
    verdict,
    win_threshold,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
probabilities = st.floats(0.0, 1.0, allow_nan=False)


# --- mean_ci -----------------------------------------------------------------------

def test_mean_ci_matches_scipy_t_interval():
    x = np.random.default_rng(3).normal(2.0, 0.5, size=7)
    for conf in (0.9, 0.95, 0.99):
        lo, hi = sps.t.interval(conf, df=len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
        mean, got_lo, got_hi = mean_ci(x, conf)
        assert mean == pytest.approx(np.mean(x))
        assert (got_lo, got_hi) == pytest.approx((lo, hi), rel=1e-10)


def test_mean_ci_hand_worked():
    # x = 1..5: mean 3, sample sd sqrt(2.5), standard error sqrt(2.5 / 5) = 0.7071;
    # t(0.975, df=4) = 2.776 from a printed t table, so half-width = 1.963.
    mean, lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert lo == pytest.approx(3 - 2.776 * math.sqrt(0.5), abs=1e-3)
    assert hi == pytest.approx(3 + 2.776 * math.sqrt(0.5), abs=1e-3)


def test_mean_ci_small_and_non_finite():
    m, lo, hi = mean_ci([4.0])
    assert m == 4.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci([]))
    assert all(math.isnan(v) for v in mean_ci([1.0, float("inf"), 2.0]))
    assert all(math.isnan(v) for v in mean_ci([1.0, None, 2.0]))


@given(st.lists(finite, min_size=2, max_size=20))
def test_mean_ci_brackets_the_mean_and_widens_with_confidence(xs):
    m, lo90, hi90 = mean_ci(xs, 0.9)
    _, lo99, hi99 = mean_ci(xs, 0.99)
    assert lo99 <= lo90 + 1e-9 <= m + 1e-9 and m <= hi90 + 1e-9 <= hi99 + 2e-9


# --- paired_difference ---------------------------------------------------------------

def test_paired_difference_matches_ttest_rel():
    rng = np.random.default_rng(0)
    b = rng.normal(1.0, 0.3, size=8)
    a = b - 0.1 + rng.normal(0, 0.05, size=8)
    ref = sps.ttest_rel(a, b)
    for conf in (0.95, 0.8):
        ci = ref.confidence_interval(conf)
        d = paired_difference(a, b, conf)
        assert isinstance(d, PairedDiff) and d.n == 8
        assert d.mean == pytest.approx(np.mean(a - b))
        assert d.p_value == pytest.approx(ref.pvalue, rel=1e-10)
        assert (d.lo, d.hi) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_paired_difference_is_paired_not_two_sample():
    # Large seed-to-seed spread but a constant small shift: paired test finds it.
    base = np.array([1.0, 5.0, 9.0, 13.0, 17.0])
    d = paired_difference(base - 0.1 + np.array([0, 1e-3, -1e-3, 2e-3, 0]), base)
    assert d.p_value < 1e-4
    assert sps.ttest_ind(base - 0.1, base).pvalue > 0.5


def test_paired_difference_edge_cases():
    nan = paired_difference([1.0, float("nan")], [1.0, 2.0])
    assert all(math.isnan(v) for v in nan[:4]) and nan.n == 2
    same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.mean, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (shifted.mean, shifted.lo, shifted.hi, shifted.p_value) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])


@given(st.lists(st.tuples(finite, finite), min_size=3, max_size=15))
def test_paired_difference_is_antisymmetric(pairs):
    a, b = (np.array(v) for v in zip(*pairs))
    ab, ba = paired_difference(a, b), paired_difference(b, a)
    assert ab.mean == pytest.approx(-ba.mean, abs=1e-9)
    if not math.isnan(ab.p_value):
        assert ab.p_value == pytest.approx(ba.p_value, abs=1e-9)
        assert ab.lo == pytest.approx(-ba.hi, abs=1e-6) and ab.hi == pytest.approx(-ba.lo, abs=1e-6)


# --- holm ----------------------------------------------------------------------------

def holm_plain(ps):
    """Holm's adjusted p-values written straight from the definition."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * ps[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def holm_rejects(ps, alpha):
    """The Holm procedure itself: which hypotheses it rejects at level alpha."""
    m = len(ps)
    rejected = set()
    for rank, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        if (m - rank) * ps[i] > alpha:  # p_(k) > alpha / (m - k + 1), without rounding
            break
        rejected.add(i)
    return rejected


def test_holm_textbook_example():
    # Wikipedia, "Holm–Bonferroni method", Example: p = 0.01, 0.04, 0.03, 0.005 at
    # alpha = 0.05. Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, and
    # 0.04*1 = 0.04 raised to 0.06 by monotonicity; H1 and H4 are rejected.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert set(np.flatnonzero(adjusted < 0.05)) == {0, 3}


def test_holm_nan_is_kept_and_not_counted():
    adjusted = holm([0.01, float("nan"), 0.04])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04])
    assert np.all(np.isnan(holm([float("nan")])))
    assert holm([]).shape == (0,)


@given(st.lists(probabilities, min_size=1, max_size=30))
def test_holm_matches_plain_version_and_procedure(ps):
    adjusted = holm(ps)
    np.testing.assert_allclose(adjusted, holm_plain(ps), rtol=1e-12)
    for alpha in (0.01, 0.05, 0.2):
        assert set(np.flatnonzero(adjusted <= alpha)) == holm_rejects(ps, alpha)


@given(st.lists(st.one_of(probabilities, st.just(float("nan"))), min_size=1, max_size=30))
def test_holm_properties(ps):
    p = np.array(ps)
    adjusted = holm(p)
    ok = ~np.isnan(p)
    assert np.array_equal(np.isnan(adjusted), ~ok)
    assert np.all(adjusted[ok] >= p[ok]) and np.all(adjusted[ok] <= 1.0)
    assert np.all(adjusted[ok] <= np.minimum(1.0, ok.sum() * p[ok]) + 1e-12)  # Bonferroni
    by_raw = adjusted[ok][np.argsort(p[ok], kind="stable")]
    assert np.all(np.diff(by_raw) >= 0)


# --- verdict -------------------------------------------------------------------------

@pytest.mark.parametrize("diff, p, expected", [
    (PairedDiff(-0.5, -0.7, -0.3, 0.001, 5), 0.004, "win"),
    (PairedDiff(0.5, 0.3, 0.7, 0.001, 5), 0.004, "loss"),
    (PairedDiff(0.01, -0.05, 0.07, 0.6, 5), 1.0, "tie"),
    (PairedDiff(-0.5, -1.2, 0.2, 0.1, 5), 0.3, "inconclusive"),      # not significant
    (PairedDiff(-0.5, -0.7, -0.3, 0.001, 5), 0.06, "inconclusive"),  # lost to Holm
    (PairedDiff(-0.05, -0.08, -0.02, 0.001, 5), 0.004, "tie"),       # real but too small
    (PairedDiff(-0.05, -0.2, 0.1, 0.001, 5), 0.004, "inconclusive"),  # small, wide CI
    (PairedDiff(float("nan"), float("nan"), float("nan"), float("nan"), 5), 0.01, "inconclusive"),
    (PairedDiff(-0.5, float("nan"), float("nan"), float("nan"), 1), float("nan"), "inconclusive"),
])
def test_verdict(diff, p, expected):
    assert verdict(diff, p, min_effect=0.1) == expected


def test_verdict_min_effect_boundary_counts():
    assert verdict(PairedDiff(-0.1, -0.15, -0.05, 0.01, 5), 0.01, 0.1) == "win"
    assert verdict(PairedDiff(0.0, -0.1, 0.1, 0.9, 5), 0.9, 0.1) == "tie"


# --- steps to target, performance profile ---------------------------------------------

def test_steps_to_target():
    steps = [0, 10, 20, 30]
    assert steps_to_target(steps, [1.0, 0.6, 0.4, 0.3], 0.5) == 20
    assert steps_to_target(steps, [1.0, 0.5, 0.4, 0.3], 0.5) == 10  # <= counts
    assert steps_to_target(steps, [1.0, float("nan"), 0.9, 0.7], 0.5) is None
    assert steps_to_target(steps, [float("-inf"), None, 0.4, 0.3], 0.5) == 20
    assert steps_to_target(steps, [0.1, 0.1, 0.1, 0.1], float("nan")) is None


def test_performance_profile_hand_worked():
    costs = {"A": [100, 200, None, None],
             "B": [200, 100, 300, float("inf")],
             "C": [400, None, 150, None]}
    # Task 4 is solved by nobody and dropped. Best per task: 100, 100, 150, so the
    # ratios are A: 1, 2, inf; B: 2, 1, 2; C: 4, inf, 1.
    prof = performance_profile(costs, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(prof["A"], [1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prof["B"], [1 / 3, 1, 1])
    np.testing.assert_allclose(prof["C"], [1 / 3, 1 / 3, 2 / 3])


def test_performance_profile_degenerate_inputs():
    prof = performance_profile({"A": [None], "B": [None]}, [1.0, 2.0])
    assert np.all(np.isnan(prof["A"])) and np.all(np.isnan(prof["B"]))
    with pytest.raises(ValueError, match="equal lengths"):
        performance_profile({"A": [1, 2], "B": [1]}, [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        performance_profile({"A": [-1]}, [1.0])


costs_lists = st.integers(1, 5).flatmap(lambda n_tasks: st.dictionaries(
    st.sampled_from("ABCDE"),
    st.lists(st.one_of(st.none(), st.integers(1, 1000)), min_size=n_tasks, max_size=n_tasks),
    min_size=1))


@settings(max_examples=60)
@given(costs_lists)
def test_performance_profile_properties(costs):
    taus = [1.0, 1.5, 2.0, 10.0, 1e9]
    prof = performance_profile(costs, taus)
    n_tasks = len(next(iter(costs.values())))
    solved = [t for t in range(n_tasks) if any(c[t] is not None for c in costs.values())]
    if not solved:
        assert all(np.all(np.isnan(v)) for v in prof.values())
        return
    for name, frac in prof.items():
        assert np.all(np.diff(frac) >= 0) and np.all((frac >= 0) & (frac <= 1))
        # at a huge tau, a task counts exactly when this optimizer solved it
        reached = sum(costs[name][t] is not None for t in solved)
        assert frac[-1] == pytest.approx(reached / len(solved))
    # every solved task has a best optimizer, whose ratio is 1
    assert sum(v[0] for v in prof.values()) >= 1 - 1e-12


# --- Holm-consistent intervals, minimum detectable effect -----------------------------

def test_holm_levels_hand_worked():
    # sorted: 0.005 < 0.05/4 and 0.01 < 0.05/3 are rejected; 0.03 >= 0.05/2 stops the
    # procedure, so 0.03 and everything after it are judged at 0.05/2.
    got = holm_levels([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(got, [0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    np.testing.assert_allclose(holm_levels([0.001, 0.002], 0.05), [0.025, 0.05])  # both pass
    np.testing.assert_allclose(holm_levels([0.5, 0.9, 0.7], 0.05), [0.05 / 3] * 3)  # none
    got = holm_levels([float("nan"), 0.01, 0.2], 0.05)
    assert math.isnan(got[0]) and got[1:].tolist() == [0.025, 0.05]
    with pytest.raises(ValueError, match="alpha"):
        holm_levels([0.1], alpha=1.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=1, max_size=8),
       st.integers(0, 2**31 - 1))
def test_holm_adjusted_interval_excludes_zero_iff_holm_rejects(shifts, seed):
    """On paired samples, the interval at the Holm level (scipy's ttest_rel
    interval at 1 - level) excludes 0 exactly for the comparisons Holm rejects."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, size=(len(shifts), 5))
    cand = base + np.array(shifts)[:, None] + rng.normal(0, 0.5, size=base.shape)
    diffs = [paired_difference(c, b) for c, b in zip(cand, base)]
    ps = [d.p_value for d in diffs]
    adjusted, levels = holm(ps), holm_levels(ps, 0.05)
    for d, c, b, p_adj, level in zip(diffs, cand, base, adjusted, levels):
        ci = sps.ttest_rel(c, b).confidence_interval(1 - level)
        assert interval(d, 1 - level) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
        assert (ci.low > 0 or ci.high < 0) == (p_adj < 0.05)


def test_interval_matches_paired_difference_and_rejects_bad_confidence():
    a, b = [1.0, 2.5, 2.0, 4.0], [0.5, 2.0, 2.2, 3.0]
    for conf in (0.5, 0.95, 0.999):
        d = paired_difference(a, b, conf)
        assert interval(d, conf) == pytest.approx((d.lo, d.hi), rel=1e-12)
    assert all(math.isnan(v) for v in interval(PairedDiff(1.0, 0.0, 2.0, 0.1, 4), 0.9))  # no sd
    with pytest.raises(ValueError, match="confidence"):
        interval(paired_difference(a, b), 1.0)


def test_min_detectable_effect_has_the_stated_power_by_simulation():
    # 400k simulated paired experiments with the true effect at the MDE: the
    # two-sided t-test at the level rejects in 80% of them (binomial SE 0.0006)
    rng = np.random.default_rng(0)
    for n, level in ((4, 0.05), (6, 0.05 / 10)):
        mde = min_detectable_effect(1.0, n, level)
        x = rng.normal(mde, 1.0, size=(400_000, n))
        t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
        rate = np.mean(np.abs(t) > sps.t.ppf(1 - level / 2, n - 1))
        assert rate == pytest.approx(0.8, abs=0.004), (n, level)


def test_min_detectable_effect_limits_and_scaling():
    # large n: the normal approximation (z_{1-level/2} + z_{0.8}) sd / sqrt(n)
    n = 5000
    approx = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * 0.3 / math.sqrt(n)
    assert min_detectable_effect(0.3, n, 0.05) == pytest.approx(approx, rel=2e-3)
    one = min_detectable_effect(1.0, 4, 0.01)
    assert min_detectable_effect(2.5, 4, 0.01) == pytest.approx(2.5 * one, rel=1e-8)
    assert min_detectable_effect(1.0, 8, 0.01) < one < min_detectable_effect(1.0, 4, 0.001)
    assert min_detectable_effect(0.0, 4, 0.05) == 0.0
    assert math.isnan(min_detectable_effect(1.0, 1, 0.05))
    assert math.isnan(min_detectable_effect(float("nan"), 4, 0.05))
    with pytest.raises(ValueError, match="level"):
        min_detectable_effect(1.0, 4, 0.0)


def test_win_threshold_is_the_t_quantile():
    # t(0.975, df=3) = 3.182 from a printed table
    assert win_threshold(4, 0.05) == pytest.approx(3.182, abs=1e-3)
    assert math.isnan(win_threshold(1, 0.05))


def test_paired_difference_reports_the_sd_of_the_differences():
    a, b = np.array([1.0, 2.5, 2.0, 4.0]), np.array([0.5, 2.0, 2.2, 3.0])
    assert paired_difference(a, b).sd == pytest.approx(np.std(a - b, ddof=1))
    assert paired_difference([2.0, 3.0], [1.0, 2.0]).sd == 0.0

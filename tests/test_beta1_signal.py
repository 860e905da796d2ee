"""`beta1_signal`: each β₁ rule against its docs/math.md statement in float64 NumPy,
and the picking of rules by name."""

import jax.numpy as jnp
import numpy as np
import pytest

from stam_optimizer import beta1_signal

B1, ALPHA, B1_MIN = 0.9, 0.2, 0.72


def _clip_beta1(s):
    return np.clip(B1 * (1 - ALPHA * s), B1_MIN, B1)


def _stats(rng, n):
    return beta1_signal.StamStats(*(jnp.asarray(rng.uniform(0.1, 2.0, n), jnp.float32)
                                    for _ in range(4)))


def test_stam_spec_rule_against_float64():
    rng = np.random.default_rng(0)
    n = 6
    stats = _stats(rng, n)
    # the last two tensors: one huge σ² (the fallback), one NaN residual sum
    sum_r2 = jnp.asarray(np.r_[rng.uniform(0, 50, n - 2), 1e12, np.nan], jnp.float32)
    sum_abs = jnp.asarray(rng.uniform(0, 20, n), jnp.float32)
    size = jnp.asarray([10, 20, 30, 40, 50, 60], jnp.float32)
    rule = beta1_signal.stam_rule("spec", b1_base=B1, b2=0.999, alpha=ALPHA, tau_decay=0.99,
                                  b1_min=B1_MIN, fallback_threshold=100.0)
    assert rule.terms == (beta1_signal.residual_square, beta1_signal.residual_abs)
    new, beta1 = rule.step(stats, (sum_r2, sum_abs), size, jnp.int32(7))
    f = {k: np.asarray(v, np.float64) for k, v in stats._asdict().items()}
    sigma2 = 0.999 * f["sigma2"] + 0.001 * np.asarray(sum_r2, np.float64) / size
    tau = 0.99 * f["tau"] + 0.01 * np.asarray(sum_abs, np.float64) / size
    z = sigma2 / (tau**2 + 1e-8)
    want = _clip_beta1(z / (1 + z))
    fallback = ~np.isfinite(sigma2) | (sigma2 >= 100 * (tau**2 + 1e-8))
    want = np.where(fallback, B1, want)
    np.testing.assert_allclose(new.sigma2, sigma2, rtol=1e-6)
    np.testing.assert_allclose(new.tau, tau, rtol=1e-6)
    np.testing.assert_allclose(beta1, want, rtol=1e-6)
    assert fallback[-2:].all() and not fallback[:-2].any()
    assert new.res_energy is stats.res_energy and new.grad_energy is stats.grad_energy


def test_stam_energy_rule_against_float64():
    rng = np.random.default_rng(1)
    n = 5
    stats = _stats(rng, n)._replace(grad_energy=jnp.zeros(5, jnp.float32))
    sum_r2 = jnp.asarray(np.r_[rng.uniform(0, 50, n - 1), np.inf], jnp.float32)
    sum_g2 = jnp.asarray(np.r_[rng.uniform(0, 50, n - 2), 0.0, 1.0], jnp.float32)
    size = jnp.asarray([4, 8, 16, 32, 64], jnp.float32)
    rule = beta1_signal.stam_rule("energy", b1_base=B1, b2=0.999, alpha=ALPHA, tau_decay=0.95,
                                  b1_min=B1_MIN, fallback_threshold=100.0)
    assert rule.terms == (beta1_signal.residual_square, beta1_signal.gradient_square)
    new, beta1 = rule.step(stats, (sum_r2, sum_g2), size, jnp.int32(7))
    p = 0.95 * np.asarray(stats.res_energy, np.float64) + 0.05 * np.asarray(sum_r2) / size
    q = 0.05 * np.asarray(sum_g2, np.float64) / size
    with np.errstate(invalid="ignore"):
        z = p / np.maximum(q, np.finfo(np.float32).tiny)
        want = np.where(np.isfinite(z), _clip_beta1(np.minimum(z, 1)), B1)
    np.testing.assert_allclose(new.res_energy[:-1], p[:-1], rtol=1e-6)
    np.testing.assert_allclose(new.grad_energy, q, rtol=1e-6)
    np.testing.assert_allclose(beta1, want, rtol=1e-6)
    assert float(beta1[-1]) == pytest.approx(B1)  # z is not finite: b1_base
    assert new.sigma2 is stats.sigma2 and new.tau is stats.tau


@pytest.mark.parametrize("t", [0, 1, 40])
def test_stam_relative_rule_against_float64(t):
    rng = np.random.default_rng(3)
    n = 5
    stats = _stats(rng, n)
    if t == 0:  # the averages start at 0
        stats = stats._replace(res_energy=jnp.zeros(n, jnp.float32),
                               grad_energy=jnp.zeros(n, jnp.float32))
    sum_r2 = jnp.asarray(np.r_[rng.uniform(0, 50, n - 1), np.inf], jnp.float32)
    size = jnp.asarray([4, 8, 16, 32, 64], jnp.float32)
    rule = beta1_signal.stam_rule("relative", b1_base=B1, b2=0.999, alpha=ALPHA,
                                  tau_decay=0.95, b1_min=B1_MIN, fallback_threshold=100.0)
    assert rule.terms == (beta1_signal.residual_square,)
    new, beta1 = rule.step(stats, (sum_r2,), size, jnp.int32(t))
    mean_r2 = np.asarray(sum_r2, np.float64) / np.asarray(size)
    fast = 0.95 * np.asarray(stats.res_energy, np.float64) + 0.05 * mean_r2
    slow = 0.995 * np.asarray(stats.grad_energy, np.float64) + 0.005 * mean_r2
    with np.errstate(invalid="ignore"):
        z = (fast / (1 - 0.95 ** (t + 1))) / (slow / (1 - 0.995 ** (t + 1)))
        want = np.where(np.isfinite(z), _clip_beta1(z / (1 + z)), B1)
    np.testing.assert_allclose(new.res_energy[:-1], fast[:-1], rtol=1e-6)
    np.testing.assert_allclose(new.grad_energy[:-1], slow[:-1], rtol=1e-6)
    np.testing.assert_allclose(beta1, want, rtol=1e-5)
    assert float(beta1[-1]) == pytest.approx(B1)  # z is not finite: b1_base
    if t == 0:  # both averages hold the same mean(r²): z = 1, s = 1/2
        np.testing.assert_allclose(beta1[:-1], B1 * (1 - ALPHA / 2), rtol=1e-6)
    assert new.sigma2 is stats.sigma2 and new.tau is stats.tau


@pytest.mark.parametrize("signal", beta1_signal.LITE_SIGNALS)
def test_stam_lite_rules_against_float64(signal):
    rng = np.random.default_rng(2)
    n = 4
    p_old = jnp.asarray(rng.uniform(0, 1, n), jnp.float32)
    a_hat = jnp.asarray(rng.normal(size=n), jnp.float32)
    b_hat = jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32)
    b = b_hat * 0.3
    size = jnp.asarray([3, 5, 7, 9], jnp.float32)
    sum_r2 = jnp.asarray(rng.uniform(0, 30, n), jnp.float32)
    rule = beta1_signal.lite_rule(signal, eps=1e-8, rho=0.99, b1_base=B1, alpha=ALPHA,
                                  b1_min=B1_MIN)
    sums = (sum_r2,) if rule.terms else ()
    p_new, cand = rule.step(p_old, sums, size, b, a_hat, b_hat)
    a64, b64 = np.asarray(a_hat, np.float64), np.asarray(b_hat, np.float64)
    if signal == "spec":
        assert rule.terms == () and p_new is p_old
        z = np.maximum(b64 - a64**2, 0) / (b64 + 1e-8)
        want = _clip_beta1(z / (1 + z))
    else:
        assert rule.terms == (beta1_signal.residual_square,)
        p = 0.99 * np.asarray(p_old, np.float64) + 0.01 * np.asarray(sum_r2) / size
        np.testing.assert_allclose(p_new, p, rtol=1e-6)
        want = _clip_beta1(np.minimum(p / np.asarray(b, np.float64), 1))
    np.testing.assert_allclose(cand, want, rtol=1e-6)


def test_rules_are_picked_by_name_and_checked():
    with pytest.raises(ValueError, match="signal must be one of"):
        beta1_signal.lite_rule("noise", eps=1e-8, rho=0.99, b1_base=B1, alpha=ALPHA,
                               b1_min=B1_MIN)
    with pytest.raises(ValueError, match="signal must be one of 'spec', 'energy', got 'relative'"):
        beta1_signal.lite_rule("relative", eps=1e-8, rho=0.99, b1_base=B1, alpha=ALPHA,
                               b1_min=B1_MIN)
    with pytest.raises(TypeError, match="signal must be a string"):
        beta1_signal.stam_rule(None, b1_base=B1, b2=0.999, alpha=ALPHA, tau_decay=0.99,
                               b1_min=B1_MIN, fallback_threshold=100.0)


def test_default_b1_min():
    assert float(beta1_signal.default_b1_min(0.9, 0.2)) == pytest.approx(0.72)
    assert float(beta1_signal.default_b1_min(0.9, 0.5)) == pytest.approx(0.5)
    assert float(beta1_signal.default_b1_min(0.4, 0.2)) == pytest.approx(0.4)

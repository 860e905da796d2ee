"""Independent float64 NumPy implementations of docs/math.md, for the tests only.

Written from docs/math.md alone, one tensor at a time, with plain loops over steps;
they share no code with the package. Each `step` takes a float64 gradient and
the current params and returns the optax-convention update
`-lr·(u + λ·θ)`, the β₁ it used (None for AdamS and factored AdamW) and the size of the update's
terms, `lr·(max|u| + λ·max|θ|)`, against which float rounding is measured.

`signal="energy"` (STAM and STAMLite) replaces the β₁ rule by the energy signal
of docs/signal.md: z = EMA(mean r²) / EMA(mean g²) with matched decays, written
here with both bias corrections spelled out (they cancel in exact arithmetic).
`signal="relative"` (STAM) compares a fast EMA of mean(r²) (decay tau_decay) with a
slow one (decay 1 − (1 − tau_decay)/10), each bias-corrected, s = z/(1+z).
"""

from __future__ import annotations

import numpy as np


def _result(lr, wd, u, theta, beta1):
    theta = np.asarray(theta, np.float64)
    scale = lr * (np.max(np.abs(u), initial=0.0) + wd * np.max(np.abs(theta), initial=0.0))
    return -lr * (u + wd * theta), beta1, scale


def _clean(g):
    g = np.array(g, dtype=np.float64)
    g[~np.isfinite(g)] = 0.0
    return g


class StamRef:
    def __init__(self, shape, lr, wd, b1_base=0.9, b2=0.999, eps=1e-8, alpha=0.2,
                 tau_decay=0.99, threshold=100.0, b1_min=None, signal="spec"):
        self.signal = signal
        self.p_sum = 0.0  # EMA of mean(r²), energy signal
        self.q_sum = 0.0  # EMA of mean(g²), energy signal; slow EMA of mean(r²), relative
        self.mu = np.zeros(shape)
        self.nu = np.zeros(shape)
        self.sigma2 = 0.0
        self.tau = 0.0
        self.prod = 1.0
        self.t = 0
        self.beta1 = b1_base
        self.fallbacks = 0
        self.lr, self.wd = lr, wd
        self.b1_base, self.b2, self.eps, self.alpha = b1_base, b2, eps, alpha
        self.tau_decay, self.threshold = tau_decay, threshold
        self.b1_min = (min(b1_base, max(0.5, b1_base * (1 - alpha)))
                       if b1_min is None else b1_min)

    def step(self, g, theta):
        g = _clean(g)
        b1_base, b2 = self.b1_base, self.b2
        if g.size and self.signal == "relative":
            r = g - self.mu
            d, ds = self.tau_decay, 1 - (1 - self.tau_decay) / 10
            self.p_sum = d * self.p_sum + (1 - d) * np.mean(r * r)
            self.q_sum = ds * self.q_sum + (1 - ds) * np.mean(r * r)  # slow average
            fast = self.p_sum / (1 - d ** (self.t + 1))
            slow = self.q_sum / (1 - ds ** (self.t + 1))
            z = _energy_z(fast, slow)
            if np.isfinite(z):
                s = z / (1 + z)
                self.beta1 = min(max(b1_base * (1 - self.alpha * s), self.b1_min), b1_base)
            else:
                self.beta1 = b1_base
            self.mu = self.beta1 * self.mu + (1 - self.beta1) * g
            self.nu = b2 * self.nu + (1 - b2) * g * g
            self.prod *= self.beta1
        elif g.size and self.signal == "energy":
            r = g - self.mu
            d = self.tau_decay
            self.p_sum = d * self.p_sum + (1 - d) * np.mean(r * r)
            self.q_sum = d * self.q_sum + (1 - d) * np.mean(g * g)
            corr = 1 - d ** (self.t + 1)
            z = _energy_z(self.p_sum / corr, self.q_sum / corr)
            self.beta1 = _energy_beta1(z, b1_base, self.alpha, self.b1_min)
            self.mu = self.beta1 * self.mu + (1 - self.beta1) * g
            self.nu = b2 * self.nu + (1 - b2) * g * g
            self.prod *= self.beta1
        elif g.size:
            r = g - self.mu
            self.sigma2 = b2 * self.sigma2 + (1 - b2) * np.mean(r * r)
            self.tau = self.tau_decay * self.tau + (1 - self.tau_decay) * np.mean(np.abs(r))
            denom = self.tau ** 2 + 1e-8
            z = self.sigma2 / denom
            s = z / (1 + z)
            beta1 = min(max(b1_base * (1 - self.alpha * s), self.b1_min), b1_base)
            if not np.isfinite(self.sigma2) or self.sigma2 >= self.threshold * denom:
                beta1 = b1_base
                self.fallbacks += 1
            self.beta1 = beta1
            self.mu = beta1 * self.mu + (1 - beta1) * g
            self.nu = b2 * self.nu + (1 - b2) * g * g
            self.prod *= beta1
        mu_hat = self.mu / (1 - self.prod) if g.size else self.mu
        nu_hat = self.nu / (1 - b2 ** (self.t + 1))
        u = mu_hat / (np.sqrt(nu_hat) + self.eps)
        self.t += 1
        return _result(self.lr, self.wd, u, theta, self.beta1)


def _energy_z(p_hat, q_hat):
    if q_hat > 0:
        return p_hat / q_hat
    return 0.0 if p_hat == 0 else np.inf


def _energy_beta1(z, b1_base, alpha, b1_min):
    if not np.isfinite(z):
        return b1_base
    return min(max(b1_base * (1 - alpha * min(z, 1.0)), b1_min), b1_base)


class StamLiteRef:
    def __init__(self, shape, lr, wd, b1_base=0.9, eps=1e-8, alpha=0.2, rho=0.99, k=5,
                 b1_min=None, signal="spec"):
        self.signal = signal
        self.p_sum = 0.0  # EMA of mean((g − μ)²), energy signal
        self.mu = np.zeros(shape)
        self.a = 0.0
        self.b = 0.0
        self.beta1 = b1_base
        self.prod = 1.0
        self.t = 0
        self.lr, self.wd = lr, wd
        self.b1_base, self.eps, self.alpha, self.rho, self.k = b1_base, eps, alpha, rho, k
        self.b1_min = (min(b1_base, max(0.5, b1_base * (1 - alpha)))
                       if b1_min is None else b1_min)

    def step(self, g, theta):
        g = _clean(g)
        if g.size == 0:
            self.t += 1
            return _result(self.lr, self.wd, np.zeros(g.shape), theta, self.beta1)
        rho = self.rho
        self.a = rho * self.a + (1 - rho) * np.mean(g)
        self.b = rho * self.b + (1 - rho) * np.mean(g * g)
        a_hat = self.a / (1 - rho ** (self.t + 1))
        b_hat = self.b / (1 - rho ** (self.t + 1))
        if self.signal == "energy":
            r = g - self.mu
            self.p_sum = rho * self.p_sum + (1 - rho) * np.mean(r * r)
            p_hat = self.p_sum / (1 - rho ** (self.t + 1))
            cand = _energy_beta1(_energy_z(p_hat, b_hat), self.b1_base, self.alpha,
                                 self.b1_min)
        else:
            var = max(b_hat - a_hat ** 2, 0.0)
            z = var / (b_hat + self.eps)
            s = z / (1 + z)
            cand = min(max(self.b1_base * (1 - self.alpha * s), self.b1_min), self.b1_base)
            if not np.isfinite(cand):
                cand = self.b1_base
        if self.t % self.k == 0:
            self.beta1 = cand
        self.mu = self.beta1 * self.mu + (1 - self.beta1) * g
        self.prod *= self.beta1
        mu_hat = self.mu / (1 - self.prod)
        u = mu_hat / (np.sqrt(max(b_hat, 0.0)) + self.eps)
        self.t += 1
        return _result(self.lr, self.wd, u, theta, self.beta1)


class AdamsRef:
    def __init__(self, shape, lr, wd, b1=0.9, b2=0.95, eps=1e-8):
        self.m = np.zeros(shape)
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, wd, b1, b2, eps

    def step(self, g, theta):
        g = _clean(g)
        v = self.b2 * self.m ** 2 + (1 - self.b2) * g ** 2
        self.m = self.b1 * self.m + (1 - self.b1) * g
        u = self.m / (np.sqrt(v) + self.eps)
        return _result(self.lr, self.wd, u, theta, None)


class FactoredAdamWRef:
    """docs/math.md, section Factored AdamW: a leaf of shape (..., r, c) with
    r, c ≥ min_dim is factored (row means R, column means C); others keep ν."""

    def __init__(self, shape, lr, wd, b1=0.9, b2=0.999, eps=1e-8, factored_eps=1e-30,
                 min_dim=128):
        self.factored = len(shape) >= 2 and min(shape[-2:]) >= min_dim
        self.mu = np.zeros(shape)
        if self.factored:
            self.row = np.zeros(shape[:-1])
            self.col = np.zeros(shape[:-2] + shape[-1:])
        else:
            self.nu = np.zeros(shape)
        self.t = 0
        self.lr, self.wd = lr, wd
        self.b1, self.b2, self.eps, self.factored_eps = b1, b2, eps, factored_eps

    def step(self, g, theta):
        g = _clean(g)
        b1, b2 = self.b1, self.b2
        self.mu = b1 * self.mu + (1 - b1) * g
        if self.factored:
            self.row = b2 * self.row + (1 - b2) * (np.mean(g * g, axis=-1) + self.factored_eps)
            self.col = b2 * self.col + (1 - b2) * (np.mean(g * g, axis=-2) + self.factored_eps)
            nu = np.zeros(g.shape)
            for lead in np.ndindex(*g.shape[:-2]):  # one matrix at a time
                row, col = self.row[lead], self.col[lead]
                mean_row = np.mean(row)
                nu[lead] = np.outer(row, col) / mean_row if mean_row > 0 else 0.0
        else:
            self.nu = b2 * self.nu + (1 - b2) * g * g
            nu = self.nu
        mu_hat = self.mu / (1 - b1 ** (self.t + 1))
        nu_hat = nu / (1 - b2 ** (self.t + 1))
        u = mu_hat / (np.sqrt(nu_hat) + self.eps)
        self.t += 1
        return _result(self.lr, self.wd, u, theta, None)

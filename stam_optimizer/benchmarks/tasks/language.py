"""Language modelling with a small causal transformer (suite lm): a synthetic
Markov token stream, whose entropy rate bounds the achievable loss, and the
characters of a frozen snapshot of Python standard-library docstrings."""

from __future__ import annotations

import numpy as np

from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks import data
from stam_optimizer.benchmarks.tasks.models import lm_task


def markov_stream(vocab: int, length: int, seed: int = 3) -> tuple[np.ndarray, float]:
    """Tokens of a first-order Markov chain with sparse random transitions
    (Dirichlet 0.1 rows), and the chain's entropy rate in nats/token."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
    cum = trans.cumsum(1)
    u = rng.random(length)
    tokens = np.empty(length, np.int32)
    tokens[0] = 0
    for i in range(1, length):
        tokens[i] = min(np.searchsorted(cum[tokens[i - 1]], u[i]), vocab - 1)
    # stationary distribution from the observed frequencies (long stream)
    pi = np.bincount(tokens, minlength=vocab) / length
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(pi[:, None] * trans * np.log(trans))
    return tokens, float(h)


def markov_lm(cfg: Config) -> Task:
    vocab = 32
    tokens, h = markov_stream(vocab, 60_000)
    (steps, every), layers = cfg.schedule(20, 150, 300, 15), 1
    batch = cfg.pick(4, 8, 8)
    return lm_task("markov_lm", "lm", f"causal transformer (d 32, {layers} layer(s)) on a "
                   f"{vocab}-token Markov stream; entropy rate {h:.3f} nats/token is the floor;"
                   " metric: validation cross-entropy", tokens[:50_000], tokens[50_000:], vocab,
                   d=32, layers=layers, heads=2, seq=32, steps=steps, batch_size=batch,
                   eval_every=every, min_effect=0.02,
                   target=h + 0.15, val_windows=cfg.pick(8, 32, 32))


def char_lm(cfg: Config) -> Task:
    codes, chars = data.encode_chars(data.load_text_corpus())
    split = int(len(codes) * 0.9)
    (steps, every), layers = cfg.schedule(20, 150, 400, 15), 1
    batch, d, seq = cfg.pick(4, 8, 8), 32, 32
    return lm_task("char_lm", "lm", f"causal transformer (d {d}, {layers} layer(s), context "
                   f"{seq}) on characters of Python standard-library docstrings (frozen "
                   "snapshot, PSF license); metric: validation cross-entropy in nats/char",
                   codes[:split], codes[split:], len(chars), d=d, layers=layers, heads=2,
                   seq=seq, steps=steps, batch_size=batch,
                   eval_every=every, min_effect=0.03, target=3.1,
                   val_windows=cfg.pick(8, 32, 32))

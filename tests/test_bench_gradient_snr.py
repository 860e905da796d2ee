"""`stam-bench snr`: the per-entry signal-to-noise ratio of minibatch gradients."""

import json
import math

import jax
import numpy as np
import pytest

from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.measure import gradient_snr, signal_streams
from stam_optimizer.benchmarks.programme.task import Config
from stam_optimizer.benchmarks.tasks import chinchilla


def _samples(snr: float, k: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mean = snr * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return {"w": (mean + rng.normal(size=(k, n))).astype(np.float32)}


def test_summary_recovers_a_known_ratio():
    """Every entry at |mean|/std 0.5: with 400 samples the per-entry estimate has
    sd ≈ 1/√400 = 0.05, so the median over 20,000 entries is within 0.01 of 0.5."""
    out = gradient_snr.summarise(_samples(0.5, 400, 20_000))
    assert out["median"] == pytest.approx(0.5, abs=0.01)
    assert out["q1"] < out["median"] < out["q3"]
    assert out["tensors"]["['w']"]["entries"] == 20_000


def test_pure_noise_reads_as_the_noise_floor():
    """Zero-mean entries: |ḡ|/s is |t_{K−1}|/√K, whose median is `noise_floor`."""
    for k in (8, 64):
        out = gradient_snr.summarise(_samples(0.0, k, 50_000, seed=k))
        assert out["median"] == pytest.approx(gradient_snr.noise_floor(k), rel=0.03)
    assert gradient_snr.noise_floor(64) == pytest.approx(0.6745 / 8, rel=0.02)  # ~ z_0.75/√K


def test_constant_entries_are_left_out():
    g = {"w": np.ones((5, 3), np.float32), "b": np.arange(10, dtype=np.float32).reshape(5, 2)}
    out = gradient_snr.summarise(g)
    assert list(out["tensors"]) == ["['b']"]  # sd 0 everywhere in w: no ratio


def test_tiny_task_end_to_end_and_bad_input(tmp_path, capsys):
    task = chinchilla.TASKS["chinchilla_small"](Config(size="tiny"))
    path = tmp_path / "snr.json"
    assert cli.main(["snr", "--tasks", "chinchilla_small", "--size", "tiny", "--batches", "6",
                     "--output", str(path)]) == 0
    out = json.loads(path.read_text())["results"][0]
    assert list(out["points"]) == ["init", f"after {task.steps // 2} AdamW steps"]
    for point in out["points"].values():
        assert 0 < point["median"] < math.inf
    assert "| chinchilla_small | 4 | init |" in capsys.readouterr().out
    g = jax.device_get(gradient_snr.gradients(task, task.init(jax.random.key(0)),
                                              jax.random.key(1), 3))
    leaf = jax.tree.leaves(g)[0]
    assert leaf.shape[0] == 3 and not np.allclose(leaf[0], leaf[1])  # independent batches
    with pytest.raises(ValueError, match="batches must be >= 3"):
        gradient_snr.measure(task, batches=2)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["snr", "--tasks", "linear_regression"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["snr", "--batches", "2"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["snr", "--lr", "0"])


def test_low_snr_streams_scale_the_mean_only():
    """The low-SNR streams are the noise streams with the mean m scaled by GPT_SNR:
    their difference is (1 − GPT_SNR)·m at every step, m standard normal."""
    rho = signal_streams.GPT_SNR
    for base in ("noise_up", "noise_down"):
        a = signal_streams.make_stream(base, 4096, 20).astype(np.float64)
        b = signal_streams.make_stream(base + "_low_snr", 4096, 20).astype(np.float64)
        diff = a - b
        np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-5)
        assert np.std(diff[0] / (1 - rho)) == pytest.approx(1.0, abs=0.05)

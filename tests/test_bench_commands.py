"""The 0.1.0 benchmark commands run and write their output files (tiny sizes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench_data import make_cifar_batches, make_mnist_arrays, write_cifar_folder, write_mnist

from stam_optimizer.benchmarks.legacy import cifar10_cnn, mnist_sanity, phase1_runner

ROOT = Path(__file__).resolve().parents[1]


def test_stress_runner_file_path_form(tmp_path):
    out = tmp_path / "stress_shift.json"
    proc = subprocess.run(
        [sys.executable, "stam_optimizer/benchmarks/stress_runner.py", "--seeds", "2",
         "--steps", "10", "--batch-sizes", "4,8", "--optimizers", "stam_lite",
         "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [(r["task"], r["optimizer"]) for r in runs] == [
        ("stress_b4", "stam_lite"), ("stress_b8", "stam_lite")]
    assert all(r["task_info"]["steps"] == 10 and r["final"]["seeds"] == [0, 1] for r in runs)
    assert "| stress_b8 | stam_lite |" in proc.stdout


def test_stress_runner_rejects_bad_batch_sizes():
    proc = subprocess.run(
        [sys.executable, "stam_optimizer/benchmarks/stress_runner.py", "--batch-sizes", "4,0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "must be an integer >= 1" in proc.stderr


def test_phase1_runner_epochs_set_the_steps(tmp_path, capsys):
    out = tmp_path / "phase1.json"
    assert phase1_runner.main(["--seeds", "1", "--epochs", "1", "--optimizers", "stam_full",
                               "--output", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    steps = {r["task"]: r["task_info"]["steps"] for r in runs}
    # one pass = 64 and 128 batches of 32, rounded up to 20 evaluation intervals
    assert steps == {"linear_regression": 80, "nonstationary_mlp": 140}


def test_mnist_sanity_uses_local_mnist_or_says_it_uses_digits(tmp_path, capsys):
    out = tmp_path / "sanity.json"
    assert mnist_sanity.main(["--data-dir", str(tmp_path / "none"), "--seeds", "1",
                              "--optimizers", "adamw", "--output", str(out)]) == 0
    assert "Using scikit-learn's bundled digits" in capsys.readouterr().err
    assert json.loads(out.read_text())["runs"][0]["task"] == "digits_mlp"

    write_mnist(tmp_path / "mnist", make_mnist_arrays(0, n_train=40, n_test=10), gz=True)
    assert mnist_sanity.main(["--data-dir", str(tmp_path), "--seeds", "1", "--optimizers",
                              "adamw", "--output", str(out)]) == 0
    assert "using MNIST from" in capsys.readouterr().err
    assert json.loads(out.read_text())["runs"][0]["task"] == "mnist_mlp"


def test_cifar10_cnn_without_data_exits_2_with_a_clear_message(tmp_path, capsys):
    assert cifar10_cnn.main(["--data-dir", str(tmp_path)]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err


def test_cifar10_cnn_trains_on_local_files(tmp_path, capsys):
    write_cifar_folder(tmp_path, make_cifar_batches(0))
    out = tmp_path / "c.json"
    assert cifar10_cnn.main(["--optimizer", "stam_lite", "--steps", "4", "--data-dir",
                             str(tmp_path), "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["optimizer"] == "stam_lite" and rec["task_info"]["steps"] == 4
    assert rec["final"]["test_acc"][0] is not None
    with pytest.raises(SystemExit):
        cifar10_cnn.main(["--optimizer", "adamx"])

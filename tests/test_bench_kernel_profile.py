"""`stam-bench profile`: per-kernel times read back from a jax.profiler trace.

No timing is asserted (only that every kernel the trace names was timed, and
that the bytes per kernel add up to the HLO traffic of the whole update).
"""

import json

import pytest

from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.measure import hlo_traffic, kernel_profile, speed


def test_adamw_profile_times_every_kernel_that_touches_a_tensor():
    result = kernel_profile.profile_update("square8", "adamw", rounds=2, warmup=1)
    rows = result["kernels"]
    tree = speed.make_tree("square8")
    _, _, box = speed.update_runner("adamw", tree, speed.update_grads(tree), 0)
    assert sum(r["bytes"] for r in rows) == hlo_traffic.traffic(box["hlo_text"])["bytes"]
    # Every kernel that reads or writes at least a bias (1024 floats) is timed:
    # at least one per tensor (8 weights + 8 biases).
    big = [r for r in rows if r["bytes"] >= 3 * 4 * 1024]
    assert len(big) >= 16
    assert all(r["seconds"] is not None and r["seconds"] > 0 and r["GBps"] > 0 for r in big)
    assert rows == sorted(rows, key=lambda r: -(r["seconds"] or 0.0))
    assert result["params"] == 8396800 and result["step_median_s"] > 0


def test_kernel_times_without_matching_events_is_an_error():
    with pytest.raises(RuntimeError, match="names none of the program's kernels"):
        kernel_profile.kernel_times(lambda: None, {"no_such_kernel"}, 1)


def test_profile_command_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "profile.json"
    rc = cli.main(["profile", "--tree", "square8", "--optimizers", "stam_lite",
                   "--rounds", "2", "--warmup", "1", "--top", "3", "--output", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    (prof,) = data["profiles"]
    assert prof["optimizer"] == "stam_lite" and prof["tree"] == "square8"
    printed = capsys.readouterr().out
    assert "stam_lite on square8: update" in printed
    assert printed.count("| fusion:") == 3
    assert "their times sum to" in printed


def test_profile_command_rejects_unknown_tree(capsys):
    with pytest.raises(SystemExit):
        cli.main(["profile", "--tree", "huge"])
    err = capsys.readouterr().err
    assert "unknown tree 'huge'; choose from small200, square8, large64, single16" in err

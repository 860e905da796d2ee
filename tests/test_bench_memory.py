"""Optimizer-state memory benchmark (`stam-bench memory`) and the 0.1.0 resource report.

Expected byte counts are rebuilt here from the shapes and from the storage rules
(float32 moments, bfloat16, blockwise int8 with one float32 scale per 256 values,
tensors under 4096 elements kept float32), not read back from memory.py.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stam_optimizer as so
from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.measure import memory
from stam_optimizer.benchmarks.programme import registry
from stam_optimizer.stam_lite import ScaleByStamLiteState

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 256
LIBRARY_MIN_QUANTIZED = 4096  # stam_lite's default min_quantized_size


def _abstract(shapes: dict) -> dict:
    return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def _n(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def _stam_lite_scalar_bytes(params) -> int:
    """Bytes of every field of STAMLite's state except μ, read off its NamedTuple."""
    state = jax.eval_shape(registry.get("stam_lite_int8").init, params)
    (lite,) = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
        x, ScaleByStamLiteState)) if isinstance(s, ScaleByStamLiteState)]
    total = 0
    for field in ScaleByStamLiteState._fields:
        if field == "mu":
            continue
        x = getattr(lite, field)
        total += math.prod(x.shape) * np.dtype(x.dtype).itemsize
    # Nothing else in the chain holds arrays (weight decay and the learning rate are
    # stateless), so the whole state is μ plus these fields.
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(lite))
    return total


def _int8_mu_bytes(shape: tuple[int, ...], min_size: int) -> int:
    """Codes and scales of a tensor of at least `min_size` elements: each row of the
    last axis (n elements) is cut into ceil(n/BLOCK) equal blocks of ceil(n / blocks)
    elements; float32 below."""
    size = math.prod(shape)
    if size < min_size or not shape:
        return 4 * size
    n = shape[-1]
    rows, blocks = size // n, -(-n // BLOCK)
    return rows * blocks * (-(-n // blocks) + 4)


def test_abstract_state_bytes_match_a_real_init():
    shapes = {"w": (40, 30), "b": (30,), "big": (70, 80)}
    params = {k: jnp.ones(s) for k, s in shapes.items()}
    for name in registry.names(full=True):
        real = sum(x.nbytes for x in jax.tree.leaves(registry.get(name).init(params)))
        assert memory.state_bytes(registry.get(name), _abstract(shapes)) == real, name


def test_adamw_state_is_two_float32_moments():
    shapes = {"w": (300, 70), "b": (70,), "v": (5,)}
    n = _n(shapes.values())
    extra = memory.state_bytes(registry.get("adamw"), _abstract(shapes)) - 2 * 4 * n
    assert 0 < extra <= 16 and extra % 4 == 0  # a step counter, nothing param-sized
    # The model zoo: small_mlp 64-128-64 counted from its layer sizes.
    n_small = 64 * 128 + 128 + 128 * 64 + 64
    assert memory.param_count(memory.small_mlp()) == n_small
    got = memory.state_bytes(registry.get("adamw"), memory.small_mlp())
    assert 0 < got - 8 * n_small <= 16


def test_zoo_sizes_match_the_0_1_0_report():
    # 0.1.0 printed AdamW state 0.13MB, 192.07MB and 512.06MB (MB = 2**20 bytes).
    for model, mb in (("small_mlp", "0.13"), ("medium_mlp", "192.07"),
                      ("wide_linear", "512.06")):
        got = memory.state_bytes(registry.get("adamw"), memory.get_model(model)) / 2**20
        assert f"{got:.2f}" == mb, model


def test_stam_lite_float_state_bytes_per_param():
    params = memory.wide_linear()
    n = memory.param_count(params)
    f32 = memory.state_bytes(registry.get("stam_lite"), params) / n
    bf16 = memory.state_bytes(registry.get("stam_lite_bf16"), params) / n
    assert 4.0 < f32 < 4.0 + 1e-4
    assert 2.0 < bf16 < 2.0 + 1e-4
    # Exactly: μ plus the same per-tensor scalars in both.
    scalars = _stam_lite_scalar_bytes(params)
    assert f32 * n == 4 * n + scalars and bf16 * n == 2 * n + scalars


def test_stam_bf16_moments_halve_stam_state():
    params = memory.wide_linear()
    n = memory.param_count(params)
    f32 = memory.state_bytes(registry.get("stam_full"), params)
    bf16 = memory.state_bytes(registry.get("stam_full_bf16"), params)
    # μ and ν drop from 4 to 2 bytes each; the per-tensor scalars stay float32.
    assert f32 - bf16 == 2 * 2 * n
    assert 4.0 < bf16 / n < 4.0 + 1e-4


@pytest.mark.parametrize("size", [5000, 77000, 256 * 40])
def test_int8_state_of_one_big_leaf_is_exact(size):
    params = _abstract({"w": (size,)})
    blocks = math.ceil(size / 256)  # of ceil(size / blocks) elements each
    expected = blocks * math.ceil(size / blocks) + 4 * blocks + _stam_lite_scalar_bytes(params)
    assert memory.state_bytes(registry.get("stam_lite_int8"), params) == expected


def test_int8_transformer_counts_small_float32_leaves_and_meets_target():
    params = memory.transformer()
    sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
    assert any(s < LIBRARY_MIN_QUANTIZED for s in sizes)  # biases and norms are there
    n = sum(sizes)
    scalars = _stam_lite_scalar_bytes(params)
    # the library's default keeps them float32; the benchmark entry quantises them too
    library = memory.state_bytes(so.stam_lite(1e-3, state_dtype="int8"), params)
    assert library == scalars + sum(_int8_mu_bytes(x.shape, LIBRARY_MIN_QUANTIZED)
                                    for x in jax.tree.leaves(params))
    got = memory.state_bytes(registry.get("stam_lite_int8"), params)
    assert got == scalars + sum(_int8_mu_bytes(x.shape, registry.LOW_BIT_MIN_SIZE)
                                for x in jax.tree.leaves(params)) < library
    assert 1 + 4 / 256 < got / n <= 1.10
    assert memory.state_bytes(registry.get("adamw"), params) / got >= 7.3
    target = next(r for r in memory.storage_state() if r["optimizer"] == "stam_lite_int8")
    assert target["parent"] == "stam_lite" and target["storage"] == "int8"
    assert target["bytes_per_param"] == pytest.approx(got / n)
    assert target["times_smaller_than_adamw"] == pytest.approx(
        memory.state_bytes(registry.get("adamw"), params) / got)
    assert target["times_smaller_than_parent"] == pytest.approx(
        memory.state_bytes(registry.get("stam_lite"), params) / got)
    assert any(line.startswith(f"stam_lite_int8 on transformer: {got / n:.4f}")
               for line in memory.storage_lines([target]))


def test_state_rows_ratios():
    rows = memory.state_rows(["small_mlp"], ["adamw", "stam_lite", "sgd_momentum"])
    by = {r["optimizer"]: r for r in rows}
    assert by["adamw"]["ratio_to_adamw"] == 1.0
    for r in rows:
        assert r["ratio_to_adamw"] == r["state_bytes"] / by["adamw"]["state_bytes"]
        assert r["bytes_per_param"] == r["state_bytes"] / r["params"]
    assert by["sgd_momentum"]["ratio_to_adamw"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("name", ["adamw", "stam_lite_int8"])
def test_compiled_memory_donation(name):
    params = memory.small_mlp()
    tx = registry.get(name)
    state = jax.eval_shape(tx.init, params)
    p_bytes, s_bytes = memory.tree_bytes(params), memory.tree_bytes(state)
    plain = memory.compiled_memory(tx, params, donate=False)
    donated = memory.compiled_memory(tx, params, donate=True)
    for r in (plain, donated):
        assert r["argument"] == 2 * p_bytes + s_bytes  # params, grads, state
        # Outputs: new params and state, plus XLA's result tuple (a pointer per buffer).
        leaves = len(jax.tree.leaves((params, state)))
        assert p_bytes + s_bytes <= r["output"] <= p_bytes + s_bytes + 8 * leaves
        assert r["total"] == r["argument"] + r["output"] - r["alias"] + r["temp"]
    assert plain["alias"] == 0
    assert 0 < donated["alias"] <= p_bytes + s_bytes
    assert donated["alias"] >= p_bytes  # at least the params are updated in place
    assert donated["total"] <= plain["total"]


_TRANSFORMER = memory.transformer  # the tests below patch memory.transformer


def _tiny_transformer() -> dict:
    return _TRANSFORMER(vocab=96, d=64, layers=1, ctx=32)


def test_transformer_loss_is_next_token_cross_entropy():
    shapes = _tiny_transformer()
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    params["blocks"][0]["ln1"]["scale"] = jnp.ones(64)
    tokens = jnp.arange(2 * 17, dtype=jnp.int32).reshape(2, 17) % 96
    # All-zero weights: every logit is 0, so the loss is log(vocab) exactly.
    loss = jax.jit(memory.transformer_loss)
    assert float(loss(params, tokens)) == pytest.approx(math.log(96), 1e-6)
    # Embeddings that point at the next token make the loss small.
    emb = jnp.eye(96, 64) * 30.0
    params = dict(params, embed=emb, ln_f={"scale": jnp.ones(64), "bias": jnp.zeros(64)})
    repeat = jnp.full((2, 17), 5, jnp.int32)
    assert float(loss(params, repeat)) < 0.01


@pytest.mark.parametrize("name", ["stam_lite_int8"])  # adamw: test_cli_train_step_table
def test_train_step_memory_against_the_trees(name):
    params = _tiny_transformer()
    tx = registry.get(name)
    state = jax.eval_shape(tx.init, params)
    p_bytes, s_bytes = memory.tree_bytes(params), memory.tree_bytes(state)
    batch, seq, vocab = 3, 16, 96
    tokens = batch * (seq + 1) * 4
    plain = memory.train_step_memory(tx, params, False, batch, seq)
    donated = memory.train_step_memory(tx, params, True, batch, seq)
    leaves = len(jax.tree.leaves((params, state))) + 1  # and the loss
    for r in (plain, donated):
        assert r["argument"] == p_bytes + s_bytes + tokens  # params, state, tokens in
        assert p_bytes + s_bytes + 4 <= r["output"] <= p_bytes + s_bytes + 4 + 8 * leaves
        assert r["total"] == r["argument"] + r["output"] - r["alias"] + r["temp"]
        # The logits (batch, seq, vocab) float32 are an activation the step must hold.
        assert r["temp"] >= batch * seq * vocab * 4
    assert plain["alias"] == 0
    assert p_bytes <= donated["alias"] <= p_bytes + s_bytes
    assert donated["total"] < plain["total"]


def test_step_memory_of_any_loss_and_its_peak():
    """A least-squares step: arguments are exactly params, state and batch; the
    peak is the reported one where the backend gives it, else the total."""
    params = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32)}
    batch = (jax.ShapeDtypeStruct((8, 64), jnp.float32), jax.ShapeDtypeStruct((8, 32), jnp.float32))

    def loss(p, b):
        x, y = b
        return jnp.mean((x @ p["w"] - y) ** 2)

    tx = registry.get("adamw")
    r = memory.step_memory(loss, tx, params, batch)
    p_bytes = 64 * 32 * 4
    s_bytes = memory.state_bytes(tx, params)
    assert r["argument"] == p_bytes + s_bytes + (8 * 64 + 8 * 32) * 4
    assert r["output"] >= p_bytes + s_bytes + 4
    assert memory.peak_bytes(r) == (r["peak_reported"] or r["total"])
    assert memory.peak_bytes(dict(r, peak_reported=None)) == r["total"]
    assert memory.peak_bytes(dict(r, peak_reported=123)) == 123


def test_train_step_memory_rejects_bad_sizes():
    params = _tiny_transformer()
    with pytest.raises(ValueError, match="seq must be <= the model's context 32"):
        memory.train_step_memory(registry.get("adamw"), params, False, 1, 33)
    with pytest.raises(ValueError, match="batch and seq must be >= 1"):
        memory.train_step_memory(registry.get("adamw"), params, False, 0, 8)


class _Memory:
    """`stam-bench memory ARGS` parsed by the CLI's own parser."""

    def parse_args(self, argv):
        return cli.build_parser().parse_args(["memory", *argv])


def _parser() -> _Memory:
    return _Memory()


def _run(args) -> int:
    return args.func(args)


def test_cli_run_writes_json_and_tables(tmp_path, capsys):
    out = tmp_path / "sub" / "memory.json"
    args = _parser().parse_args(["--models", "small_mlp,transformer", "--optimizers",
                                 "stam_lite_int8,stam_lite", "--compiled-model", "small_mlp",
                                 "--output", str(out), "--no-train-step"])
    assert _run(args) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["jax"] == jax.__version__
    rows = data["rows"]
    # adamw is measured as the reference even when not asked for.
    assert {(r["model"], r["optimizer"]) for r in rows} == {
        (m, o) for m in ("small_mlp", "transformer")
        for o in ("stam_lite_int8", "stam_lite", "adamw")}
    for r in rows:
        assert {"model", "optimizer", "params", "state_bytes", "bytes_per_param",
                "ratio_to_adamw"} <= set(r)
    assert len(data["compiled"]) == 6
    for r in data["compiled"]:
        assert {"model", "optimizer", "donated", "argument", "output", "alias", "temp",
                "total"} <= set(r)
        assert r["model"] == "small_mlp"
    int8_row = next(r for r in data["storage"] if r["optimizer"] == "stam_lite_int8")
    assert int8_row["bytes_per_param"] < 1.03  # the documented ~1.02
    printed = capsys.readouterr().out
    int8 = next(r for r in rows if r["model"] == "transformer"
                and r["optimizer"] == "stam_lite_int8")
    assert f"| stam_lite_int8 | {rows[0]['bytes_per_param']:.3f}" in printed
    assert f"{int8['bytes_per_param']:.3f}" in printed
    assert re.search(r"^stam_lite_int8 on transformer: 1\.0\d+ bytes/param", printed, re.M)
    assert "| small_mlp | adamw | yes |" in printed


def test_cli_no_compiled(tmp_path):
    out = tmp_path / "m.json"
    args = _parser().parse_args(["--models", "small_mlp", "--optimizers", "adamw",
                                 "--no-compiled", "--no-train-step", "--output", str(out)])
    assert _run(args) == 0
    data = json.loads(out.read_text())
    assert data["compiled"] == [] and data["train_step"] == []


def test_cli_train_step_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "transformer", _tiny_transformer)
    out = tmp_path / "m.json"
    args = _parser().parse_args(["--models", "small_mlp", "--optimizers", "stam_lite_bf16,lion",
                                 "--compiled-optimizers", "stam_lite_bf16",
                                 "--no-compiled", "--train-batch", "2", "--train-seq", "8",
                                 "--output", str(out)])
    assert _run(args) == 0
    data = json.loads(out.read_text())
    assert {r["optimizer"] for r in data["rows"]} == {"stam_lite_bf16", "lion", "adamw"}
    rows = data["train_step"]
    # the float parent of a storage variant is compiled too (the parent table)
    assert {(r["optimizer"], r["donated"], r["batch"], r["seq"]) for r in rows} == {
        (o, d, 2, 8) for o in ("stam_lite_bf16", "adamw", "stam_lite") for d in (False, True)}
    assert [(r["optimizer"], r["parent"]) for r in data["parents"]] == [
        ("stam_lite_bf16", "stam_lite")]
    base = {r["donated"]: r for r in rows if r["optimizer"] == "adamw"}
    params = _tiny_transformer()
    n, p_bytes = memory.param_count(params), memory.tree_bytes(params)
    for r in rows:
        s_bytes = memory.state_bytes(registry.get(r["optimizer"]), params)
        assert r["state_bytes"] == s_bytes
        assert r["argument"] == p_bytes + s_bytes + 2 * 9 * 4  # params, state, tokens
        assert r["total"] == r["argument"] + r["output"] - r["alias"] + r["temp"]
        b = base[r["donated"]]
        assert r["state_ratio_to_adamw"] == s_bytes / b["state_bytes"]
        assert r["total_ratio_to_adamw"] == r["total"] / b["total"]
        assert r["total_bytes_per_param"] == r["total"] / n
    printed = capsys.readouterr().out
    assert "batch 2 x 8 tokens" in printed
    assert memory.train_step_table(rows) in printed
    args = _parser().parse_args(["--train-seq", "33", "--output", str(tmp_path / "x.json")])
    assert _run(args) == 2
    assert "train_seq (--train-seq) must be in [1, 32]" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--models", "small_mlp,huge_mlp"], "unknown model 'huge_mlp'; choose from small_mlp"),
    (["--models", ","], "no model named"),
    (["--compiled-model", "resnet"], "unknown model 'resnet'"),
    (["--optimizers", "adamx"], "unknown optimizer 'adamx'"),
    (["--train-batch", "0"], "--train-batch: must be an integer >= 1, got 0"),
    (["--train-seq", "x"], "--train-seq: must be an integer >= 1, got 'x'"),
])
def test_bad_arguments_give_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_resource_report_file_path_form(tmp_path):
    out = tmp_path / "resource_report.json"
    proc = subprocess.run(
        [sys.executable, "stam_optimizer/benchmarks/resource_report.py", "--models",
         "small_mlp,transformer", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # The line 0.1.0 printed for small_mlp ("ratio=1.0005x"), in the same format; the
    # ratio now counts the per-tensor fields added since (energy signal, non-finite
    # count), computed here from the abstract states' leaves.
    params = memory.small_mlp()

    def nbytes(tx):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(
            tx.init, params)))

    ratio = nbytes(so.stam()) / nbytes(optax.adamw(1e-3))
    assert 1.0005 < ratio < 1.001  # a few scalars per tensor on 0.13 MB of buffers
    assert lines[0] == ("small_mlp: AdamW state=0.13MB, STAM state=0.13MB, "
                        f"ratio={ratio:.4f}x")
    data = json.loads(out.read_text())
    pattern = re.compile(r"^(\w+): AdamW state=([\d.]+)MB, (.+) state=([\d.]+)MB, "
                         r"ratio=([\d.]+)x$")
    parsed = [pattern.match(line) for line in lines if line.startswith(("small", "trans"))]
    assert len(parsed) == 10 and all(parsed)
    labels = [m.group(3) for m in parsed[:5]]
    assert labels == ["STAM", "STAM bf16 moments", "STAMLite float32", "STAMLite bf16",
                      "STAMLite int8"]
    for entry in data["models"]:
        for v in entry["variants"].values():
            m = next(m for m in parsed if m.group(1) == entry["model"]
                     and m.group(3) == v["label"])
            assert float(m.group(5)) == pytest.approx(
                v["state_bytes"] / entry["adamw_state_bytes"], abs=5e-5)
            assert float(m.group(4)) == pytest.approx(v["state_bytes"] / 2**20, abs=5e-3)
    int8 = data["models"][1]["variants"]["stam_lite_int8"]
    assert data["models"][1]["model"] == "transformer" and int8["bytes_per_param"] <= 1.10


def test_resource_report_rejects_unknown_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "stam_optimizer/benchmarks/resource_report.py", "--models", "vgg",
         "--output", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2 and "unknown model 'vgg'" in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_parent_rows_compare_each_storage_variant_with_its_float_parent(monkeypatch):
    monkeypatch.setattr(memory, "transformer", _tiny_transformer)
    rows = memory.train_step_rows(["stam_lite", "stam_lite_int8"], batch=1, seq=8)
    (row,) = memory.parent_rows(rows)
    assert row["optimizer"] == "stam_lite_int8" and row["parent"] == "stam_lite"
    by = {(r["optimizer"], r["donated"]): r for r in rows}
    assert row["state_saved"] == (by[("stam_lite", True)]["state_bytes"]
                                  - by[("stam_lite_int8", True)]["state_bytes"]) > 0
    assert row["peak_saved"] == by[("stam_lite", True)]["total"] - by[("stam_lite_int8",
                                                                        True)]["total"]
    assert row["peak_share"] == pytest.approx(row["peak_saved"] / row["state_saved"])
    table = memory.parent_table([row])
    assert table.splitlines()[2].startswith("| stam_lite_int8 | stam_lite | ")

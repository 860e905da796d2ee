"""`stam-bench run --optimizer FILE.py:factory`: a user's optimizer joins the suites."""

import json

import pytest

from stam_optimizer.benchmarks import cli
from stam_optimizer.benchmarks.programme import registry, scheduler

FACTORY = '''
import optax

def my_sgd(learning_rate, weight_decay=0.0):
    return optax.sgd(learning_rate, momentum=0.9)

not_callable = 3

def not_an_optimizer(learning_rate, weight_decay=0.0):
    return "sgd"
'''


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "ENTRIES", dict(registry.ENTRIES))
    path = tmp_path / "mine.py"
    path.write_text(FACTORY)
    return path


def test_user_optimizer_runs_in_a_suite(user_file, tmp_path):
    out = tmp_path / "results"
    code = cli.main(["run", "convex", "--size", "tiny", "--optimizers", "adamw",
                     "--optimizer", f"{user_file}:my_sgd", "--out", str(out), "--no-report"])
    assert code == 0
    rec = json.loads((out / "runs" / "linear_regression" / "my_sgd.json").read_text())
    assert rec["optimizer"] == "my_sgd"
    assert all(m is not None for m in rec["final"]["metric"])
    assert (out / "runs" / "linear_regression" / "adamw.json").exists()


def test_user_optimizer_joins_every_suite_plan(user_file):
    name = registry.load(f"sgd9={user_file}:my_sgd")
    assert name == "sgd9"
    jobs = scheduler.plan(["convex", "gpt", "sweep"], "tiny", extra=[name])
    tasks = {j.task for j in jobs if j.optimizer == name}
    assert "linear_regression" in tasks and "gpt_d16" in tasks
    # the lr x wd sweep needs decoupled weight decay, which a user factory does not declare
    assert not [j for j in jobs if j.optimizer == name and j.kind == "sweep"]


def test_module_path_spec(user_file):
    assert registry.load("adamw_mod=optax:adamw") == "adamw_mod"
    assert registry.get("adamw_mod", 1e-3) is not None


@pytest.mark.parametrize("spec, words", [
    ("nocolon.py", "expected"),
    ("{dir}/absent.py:f", "no file"),
    ("{file}:missing", "no callable 'missing'"),
    ("{file}:not_callable", "no callable 'not_callable'"),
    ("{file}:not_an_optimizer", "not an optax transformation"),
    ("adamw={file}:my_sgd", "registry name already"),
    ("no_such_module_xyz:f", "cannot import"),
])
def test_bad_specs_are_refused_by_name(user_file, spec, words):
    spec = spec.format(dir=user_file.parent, file=user_file)
    with pytest.raises(ValueError, match="optimizer spec") as e:
        registry.load(spec)
    assert words in str(e.value)


def test_cli_reports_a_bad_spec(user_file, tmp_path, capsys):
    code = cli.main(["run", "convex", "--size", "tiny", "--optimizer", f"{user_file}:missing",
                     "--out", str(tmp_path / "r"), "--no-report"])
    assert code == 2
    assert "--optimizer" in capsys.readouterr().err


def test_gpt_recipe_builds_a_user_optimizer_at_its_schedule(user_file):
    import jax.numpy as jnp
    import numpy as np

    from stam_optimizer.benchmarks.tasks import gpt

    name = registry.load(f"{user_file}:my_sgd")
    tx = gpt.llm_optimizer(name, 0.1, steps=10, warmup=2)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params), params)
    # step 0 of the warmup: lr 0.1 * 1/2, clipped gradient (norm 0.87 < 1), no momentum yet
    mult = float(gpt.warmup_cosine(10, 2)(0))
    np.testing.assert_allclose(updates["w"], -0.1 * mult * 0.5, rtol=1e-6)

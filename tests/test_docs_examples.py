"""The runnable code blocks of the documentation run, and the pages link only to
files that exist (mkdocs --strict checks the same in CI, for the built site)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page, index", [("index.md", 0), ("usage.md", 1)])
def test_code_block_runs(page, index, capsys):
    code = python_blocks(DOCS / page)[index]
    namespace: dict = {}
    exec(compile(code, f"{page}[{index}]", "exec"), namespace)
    if page == "index.md":
        assert "w" in capsys.readouterr().out  # printed the β₁ tree
    else:
        import jax.numpy as jnp
        import numpy as np

        model, optimizer = namespace["model"], namespace["optimizer"]
        x, y = jnp.ones((4, 784)), jnp.array([1, 2, 3, 4])
        losses = [float(namespace["train_step"](model, optimizer, x, y)) for _ in range(3)]
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_readme_quick_example_runs():
    code = python_blocks(ROOT / "README.md")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["beta1"]) == {"w", "b"}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"])
def test_relative_links_point_to_files(page):
    path = DOCS / page
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), (page, target)

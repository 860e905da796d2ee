"""States saved by an earlier version restore into today's state structure and
continue to the same numbers, bit for bit.

`tests/data/states_v0_2.npz` holds, per optimizer configuration, a state after
five steps, the next gradient, and the updates and state that the next step
gave when the file was written (see `tests/data/make_state_fixture.py`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
from make_state_fixture import CASES, PATH, params  # noqa: E402

FIXTURE = np.load(PATH)
MANIFEST = json.loads(str(FIXTURE["manifest"]))


def _leaves(key: str) -> list[tuple[str, np.ndarray]]:
    """The saved leaves of `key` as (key path, array) pairs."""
    raw, out, at = FIXTURE[key].tobytes(), [], 0
    for path, dtype, shape in MANIFEST[key]:
        dtype = np.dtype(jax.numpy.dtype(dtype))
        n = int(np.prod(shape)) * dtype.itemsize
        out.append((path, np.frombuffer(raw[at:at + n], dtype).reshape(shape)))
        at += n
    assert at == len(raw)
    return out


def _restore(key: str, like):
    """The saved tree of `key`, with the structure of `like` (same key paths, dtypes, shapes)."""
    saved = _leaves(key)
    found, treedef = jax.tree_util.tree_flatten_with_path(like)
    assert [jax.tree_util.keystr(p) for p, _ in found] == [p for p, _ in saved]
    for (path, x), (_, y) in zip(found, saved):
        assert (np.dtype(x.dtype), tuple(x.shape)) == (y.dtype, y.shape), path
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(y) for _, y in saved])


def _assert_bitwise(tree, key: str) -> None:
    got = jax.tree_util.tree_leaves_with_path(tree)
    saved = _leaves(key)
    assert [jax.tree_util.keystr(p) for p, _ in got] == [p for p, _ in saved]
    for (path, x), (_, y) in zip(got, saved):
        x = np.asarray(x)
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        assert x.tobytes() == y.tobytes(), (jax.tree_util.keystr(path), x, y)


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_state_continues_bit_for_bit(name):
    tx = CASES[name]()
    fresh = tx.init(params())
    p = _restore(f"{name}/params", params())
    state = _restore(f"{name}/state", fresh)
    g = _restore(f"{name}/grads", params())
    updates, new_state = tx.update(g, state, p)
    _assert_bitwise(updates, f"{name}/updates")
    _assert_bitwise(new_state, f"{name}/next_state")


def test_the_fixture_is_not_trivial():
    """Every case moved away from the initial state, and the int8 momentum is quantised."""
    for name in CASES:
        state = dict(_leaves(f"{name}/state"))
        fresh = jax.tree_util.tree_leaves_with_path(CASES[name]().init(params()))
        moved = [p for p, x in fresh
                 if x.size and np.asarray(x).tobytes() != state[jax.tree_util.keystr(p)].tobytes()]
        assert len(moved) >= 3, (name, moved)
    assert any(".codes" in path for path, _ in _leaves("stam_lite_int8/state"))

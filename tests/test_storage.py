"""`_storage`: the saturating store of a state buffer and its read-back keep
their plain statements (`plain_store_and_read`, `plain_momentum_and_previous`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stam_optimizer import _storage


@pytest.mark.parametrize("storage", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_saturating_cast_stops_at_the_largest_finite_value(storage):
    big, top = float(jnp.finfo(storage).max), float(jnp.finfo(jnp.float32).max)
    x = jnp.asarray([top, -top, 1.5, -0.25, np.inf, -np.inf], jnp.float32)
    stored = _storage.saturating_cast(x, storage)
    assert stored.dtype == storage
    got = np.asarray(stored, np.float64)
    if storage == jnp.float32:  # nothing to saturate: a plain cast
        np.testing.assert_array_equal(got, np.asarray(x, np.float64))
    else:  # beyond the largest finite value (infinities too): that value
        np.testing.assert_array_equal(got[[0, 1, 4, 5]], [big, -big, big, -big])
    np.testing.assert_array_equal(got[2:4], [1.5, -0.25])


@pytest.mark.parametrize("storage", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("jit", [False, True])
def test_store_and_read_keep_the_plain_contract(storage, jit):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((64, 33)) * 10.0 ** rng.integers(-8, 8, (64, 33)),
                    jnp.float32).at[0, :3].set(jnp.asarray([1e30, -1e30, 7e4]))
    fast, plain = _storage.store_and_read, _storage.plain_store_and_read
    if jit:
        fast = jax.jit(fast, static_argnums=(1, 2))
        plain = jax.jit(plain, static_argnums=(1, 2))
    stored, value = fast(x, storage, jnp.float32)
    want_stored, want_value = plain(x, storage, jnp.float32)
    assert stored.dtype == storage and value.dtype == jnp.float32
    # bit for bit: the barrier changes where XLA reads the buffer, not the numbers
    assert np.asarray(stored).tobytes() == np.asarray(want_stored).tobytes()
    assert np.asarray(value).tobytes() == np.asarray(want_value).tobytes()
    # and the value read is the stored one, rounded to the storage dtype
    np.testing.assert_array_equal(np.asarray(value), np.asarray(stored, np.float32))


def test_store_and_read_reads_behind_a_barrier():
    """The trick itself: the read-back goes through an optimization barrier (XLA:CPU,
    jax 0.10.x); if it is ever dropped, its docstring's measurement is void."""
    text = jax.jit(lambda x: _storage.store_and_read(x, jnp.bfloat16, jnp.float32)).lower(
        jnp.ones((8,), jnp.float32)).as_text()
    assert "optimization_barrier" in text


@pytest.mark.parametrize("store_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("b1", [0.1, 0.9, 0.999])
def test_momentum_and_previous_keep_the_plain_contract(store_dtype, b1):
    rng = np.random.default_rng(3)
    m_prev = jnp.asarray(rng.standard_normal((64, 33)) * 3, store_dtype)
    g = jnp.asarray(rng.standard_normal((64, 33)), jnp.float32)
    b = jnp.float32(b1)
    fast = jax.jit(_storage.momentum_and_previous, static_argnums=3)(m_prev, g, b, jnp.float32)
    plain = jax.jit(_storage.plain_momentum_and_previous, static_argnums=3)(m_prev, g, b,
                                                                       jnp.float32)
    # the stored and read-back momentum are the same computation
    np.testing.assert_array_equal(np.asarray(fast[0]), np.asarray(plain[0]))
    np.testing.assert_array_equal(np.asarray(fast[1]), np.asarray(plain[1]))
    # the recovered m_prev: one rounding of the stored buffer (half its eps,
    # relative) and a few float32 roundings of the recovery, divided by b1
    m_new, gg = np.asarray(plain[1], np.float64), np.asarray(g, np.float64)
    bound = (0.5 * float(jnp.finfo(store_dtype).eps) * np.abs(m_new)
             + 4 * float(jnp.finfo(jnp.float32).eps) * (np.abs(m_new) + np.abs(gg))) / b1
    err = np.abs(np.asarray(fast[2], np.float64) - np.asarray(plain[2], np.float64))
    assert (err <= bound + 1e-30).all(), float((err - bound).max())

"""Test setup: 8 simulated CPU devices (for the mesh tests), before jax loads."""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()


import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops jax's compiled programs after each test module.

    Every XLA:CPU executable holds a few memory mappings of JIT code until it is
    released; an xdist worker that compiled the whole suite reached ~55,000 of
    the kernel's 65,530 (vm.max_map_count), where the next compile dies with a
    segmentation fault. Measured here: ~3 mappings per executable, all returned
    by `jax.clear_caches()`."""
    yield
    jax.clear_caches()
    gc.collect()

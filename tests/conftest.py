"""Shared test fixtures: platforms (CPU always, CUDA when present), bitwise
comparison helpers, and x64 switching.

GPU tests skip on a machine without a CUDA device, unless
``JAX_DEQUANT_REQUIRE_GPU=1``: then a missing GPU (or a build without CUDA
kernels) fails the test instead.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
import pytest

# Tests use float64 throughout; x64 must be on before any array is created.
jax.config.update("jax_enable_x64", True)

# The sharding tests (tests/test_sharding.py) need 8 CPU devices. The count is fixed when JAX
# starts its CPU backend, so it is set here, before anything starts it. Other tests use the first
# CPU device (or the GPU) and are unaffected. An explicit XLA_FLAGS device count wins.
CPU_DEVICES_FOR_SHARDING = 8
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", CPU_DEVICES_FOR_SHARDING)

import jax_dequant as jdq  # noqa: E402

REQUIRE_GPU = os.environ.get("JAX_DEQUANT_REQUIRE_GPU", "0") == "1"


def cuda_devices() -> list:
    try:
        return jax.devices("cuda")
    except RuntimeError:
        return []


def require_platform(platform: str) -> jax.Device:
    """Returns the first device of ``platform``, skipping (or failing) when absent."""
    if platform == "cpu":
        return jax.devices("cpu")[0]
    devices = cuda_devices()
    problem = None
    if not devices:
        problem = "no CUDA device is visible to JAX"
    elif "cuda" not in jdq.KERNEL_PLATFORMS:
        problem = "jax_dequant was built without CUDA kernels"
    if problem:
        if REQUIRE_GPU:
            pytest.fail(f"JAX_DEQUANT_REQUIRE_GPU=1 but {problem}")
        pytest.skip(problem)
    return devices[0]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def platform(request) -> str:
    """Each test using it runs once on the CPU and once on a CUDA GPU."""
    require_platform(request.param)
    return request.param


@pytest.fixture
def device(platform) -> jax.Device:
    return require_platform(platform)


@contextlib.contextmanager
def x64_disabled():
    """Turns jax_enable_x64 off inside the block."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


def assert_bitwise_equal(actual, expected, context: str = "") -> None:
    """Asserts equal shape, dtype and bits; NaNs compare equal to NaNs.

    NaN payloads are not part of the contract (XLA itself does not fix them),
    so any NaN matches any NaN; every other value must match bit for bit,
    including the sign of zero.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    if actual.size == 0:
        return
    if actual.dtype.kind == "f" or actual.dtype.name == "bfloat16":
        actual_nan = np.isnan(actual.astype(np.float64))
        expected_nan = np.isnan(expected.astype(np.float64))
        np.testing.assert_array_equal(actual_nan, expected_nan, err_msg=f"{context}: NaN positions")
        uint = np.dtype(f"uint{actual.dtype.itemsize * 8}")
        a_bits = np.where(actual_nan, 0, actual.view(uint))
        e_bits = np.where(expected_nan, 0, expected.view(uint))
        mismatch = np.flatnonzero(a_bits != e_bits)
        if mismatch.size:
            i = mismatch[0]
            raise AssertionError(
                f"{context}: {mismatch.size} of {actual.size} values differ; first at flat index "
                f"{i}: got {actual.reshape(-1)[i]!r}, expected {expected.reshape(-1)[i]!r}"
            )
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=context)

"""Every instruction-set path of the CPU kernels, bit for bit against the reference.

On x86-64 the CPU kernels run AVX-512 loops (static quantize and dynamic
quantize's quantize pass) and AVX2 + F16C loops (cuda/cpu_simd.h) when the CPU
has them, and baseline loops otherwise. ``set_cpu_avx512`` and ``set_cpu_avx2``
of the compiled library switch between them at run time, so every test here
runs each path on this machine (a path the CPU lacks is skipped). The rows mix special
values (NaN, +-inf, +-0, exact ties, values beyond qmin/qmax, subnormals of
every float type) with random ones, in odd widths so that the vector blocks
have tails, and in sizes that split over XLA's threads mid-row.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_dequant as jdq
from conftest import assert_bitwise_equal
from jax_dequant import _jax_dequant_ffi

CPU = jax.devices("cpu")[0]
FLOATS = ["bfloat16", "float16", "float32"]
# (rows, D): a short row with a tail; one element; a long odd row; rows split
# over threads mid-row; one row split over threads.
SHAPES = [(5, 33), (3, 1), (7, 4097), (40, 4099), (1, 200003)]


@pytest.fixture(params=["avx512", "avx2", "baseline"])
def cpu_isa(request):
    """Runs the test with the AVX-512 loops, the AVX2 loops and the baseline loops; restores
    the default (the widest the CPU has)."""
    want_avx2 = request.param != "baseline"
    want_avx512 = request.param == "avx512"
    try:
        if _jax_dequant_ffi.set_cpu_avx2(want_avx2) != want_avx2:
            pytest.skip("this CPU has no AVX2 + F16C loops")
        if _jax_dequant_ffi.set_cpu_avx512(want_avx512) != want_avx512:
            pytest.skip("this CPU has no AVX-512 F/BW/VL/DQ loops")
        yield request.param
    finally:
        _jax_dequant_ffi.set_cpu_avx2(True)
        _jax_dequant_ffi.set_cpu_avx512(True)


def _special_values(dtype) -> np.ndarray:
    """Values every lane of every block should meet, in x's dtype."""
    info = ml_dtypes.finfo(dtype)
    values = [
        np.nan,
        np.inf,
        -np.inf,
        0.0,
        -0.0,
        float(info.max),
        -float(info.max),
        float(info.smallest_subnormal),
        -float(info.smallest_subnormal),
        float(info.smallest_normal),
        1e-40,  # float32 subnormal; 0 in float16
        2.5,
        -2.5,
        0.5,
        -0.5,
        1.5,
        1000.0,
        -1000.0,
    ]
    return np.array(values, dtype=np.float64).astype(dtype)


def _x(rng, shape, dtype, specials=True) -> np.ndarray:
    """Random rows about N(0, 2) with special values spread over them."""
    x = (rng.standard_normal(shape) * 2.0).astype(dtype)
    if specials:
        flat = x.reshape(-1)
        special = _special_values(dtype)
        where = rng.choice(
            flat.size, size=min(flat.size, 3 * special.size + flat.size // 50), replace=False
        )
        flat[where] = special[np.arange(where.size) % special.size]
    return x


def _scale(rng, rows, dtype) -> np.ndarray:
    """Per-row scales: powers of two (exact reciprocals: x / s ties stay ties),
    random ones, and rows of 0, inf, NaN and a subnormal scale."""
    kinds = [0.25, 2.0**-5, None, 0.0, np.inf, np.nan, 1e-40, None]
    scale = rng.uniform(0.01, 0.1, size=rows)
    for row in range(rows):
        kind = kinds[row % len(kinds)]
        if kind is not None:
            scale[row] = kind
    return scale.astype(dtype)


def _run(fn, *args, **kwargs):
    placed = [None if a is None else jax.device_put(a, CPU) for a in args]
    with jax.default_device(CPU):
        return jax.jit(lambda *a: fn(*a, **kwargs))(*placed)


def _check(op, args, kwargs, context):
    """Our ``op`` against the reference's ``op``, bit for bit, on the CPU."""
    got = _run(getattr(jdq, op), *args, **kwargs)
    want = _run(getattr(jdq.reference, op), *args, **kwargs)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_bitwise_equal(g, w, context)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("x_dtype", FLOATS)
@pytest.mark.parametrize("q_dtype,zero_point", [("int8", False), ("uint8", True)])
def test_quantize(cpu_isa, shape, x_dtype, q_dtype, zero_point):
    rng = np.random.default_rng(sum(shape))
    x = _x(rng, shape, x_dtype)
    scale = _scale(rng, shape[0], "float32" if zero_point else x_dtype)
    zp = rng.integers(0, 256, size=shape[0]).astype(np.int32) if zero_point else None
    _check(
        "quantize_per_token",
        (x, scale, zp),
        dict(dtype=np.dtype(q_dtype)),
        f"{cpu_isa} {shape} {x_dtype} -> {q_dtype}",
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("x_dtype", FLOATS)
@pytest.mark.parametrize("zero_point", [False, True])
def test_fake_quantize_with_scale(cpu_isa, shape, x_dtype, zero_point):
    rng = np.random.default_rng(sum(shape) + 1)
    x = _x(rng, shape, x_dtype)
    scale = _scale(rng, shape[0], x_dtype if zero_point else "float32")
    zp = rng.integers(-128, 128, size=shape[0]).astype(np.int32) if zero_point else None
    _check(
        "fake_quantize_per_token",
        (x, scale, zp),
        dict(dtype=np.int8),
        f"{cpu_isa} {shape} {x_dtype} zp={zero_point}",
    )


def _dynamic_rows(rng, shape, dtype) -> np.ndarray:
    """Rows for the dynamic choice: plain random rows, and rows that are all
    zero, hold a NaN, an inf, only subnormals, or only positive values."""
    x = _x(rng, shape, dtype, specials=False)
    rows = shape[0]
    info = ml_dtypes.finfo(dtype)
    for row in range(rows):
        kind = row % 6
        if kind == 1:
            x[row] = 0
        elif kind == 2:
            x[row, rng.integers(shape[1])] = np.nan
        elif kind == 3:
            x[row, rng.integers(shape[1])] = -np.inf
        elif kind == 4:
            x[row] = np.asarray(info.smallest_subnormal, dtype) * rng.integers(
                -3, 4, size=shape[1]
            ).astype(dtype)
        elif kind == 5:
            x[row] = np.abs(x[row])
    return x


@pytest.mark.parametrize("shape", [(13, 33), (7, 4097), (40, 4099), (300, 1001)])
@pytest.mark.parametrize("x_dtype", FLOATS)
@pytest.mark.parametrize(
    "q_dtype,symmetric,scale_dtype",
    [
        ("int8", True, "float32"),
        ("uint8", False, "float32"),
        ("int8", False, "bfloat16"),
        ("int8", True, "float16"),
    ],
)
def test_quantize_dynamic(cpu_isa, shape, x_dtype, q_dtype, symmetric, scale_dtype):
    rng = np.random.default_rng(sum(shape) + 2)
    x = _dynamic_rows(rng, shape, x_dtype)
    _check(
        "quantize_per_token_dynamic",
        (x,),
        dict(dtype=np.dtype(q_dtype), symmetric=symmetric, scale_dtype=np.dtype(scale_dtype)),
        f"{cpu_isa} {shape} {x_dtype} -> {q_dtype} sym={symmetric} scale={scale_dtype}",
    )


@pytest.mark.parametrize("shape", [(13, 33), (7, 4097), (300, 1001)])
@pytest.mark.parametrize("x_dtype", FLOATS)
@pytest.mark.parametrize("q_dtype", ["int8", "uint8"])
def test_fake_quantize_dynamic(cpu_isa, shape, x_dtype, q_dtype):
    rng = np.random.default_rng(sum(shape) + 3)
    x = _dynamic_rows(rng, shape, x_dtype)
    _check(
        "fake_quantize_per_token",
        (x,),
        dict(dtype=np.dtype(q_dtype)),
        f"{cpu_isa} {shape} {x_dtype} dynamic {q_dtype}",
    )


@pytest.mark.parametrize("x_dtype", FLOATS)
def test_custom_ranges_clamp(cpu_isa, x_dtype):
    """Narrow [qmin, qmax] ranges: most values clamp, on both ends."""
    rng = np.random.default_rng(7)
    x = _x(rng, (9, 1027), x_dtype)
    scale = _scale(rng, 9, "float32")
    zp = rng.integers(3, 10, size=9).astype(np.int32)
    for op in ["quantize_per_token", "fake_quantize_per_token"]:
        _check(
            op,
            (x, scale, zp),
            dict(dtype=np.uint8, qmin=3, qmax=12),
            f"{cpu_isa} {op} uint8 [3, 12]",
        )
        _check(
            op,
            (x, scale, None),
            dict(dtype=np.int8, qmin=-7, qmax=7),
            f"{cpu_isa} {op} int8 [-7, 7]",
        )


@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("q_dtype,zero_point", [("int8", False), ("uint8", True)])
def test_dequantize(cpu_isa, out_dtype, q_dtype, zero_point):
    rng = np.random.default_rng(11)
    shape = (40, 4099)
    low, high = (0, 256) if q_dtype == "uint8" else (-128, 128)
    q = rng.integers(low, high, size=shape).astype(q_dtype)
    scale = _scale(rng, shape[0], "float32")
    zp = rng.integers(-300, 300, size=shape[0]).astype(np.int32) if zero_point else None
    _check(
        "dequantize_per_token",
        (q, scale, zp),
        dict(out_dtype=np.dtype(out_dtype)),
        f"{cpu_isa} {q_dtype} -> {out_dtype}",
    )


@pytest.mark.parametrize("x_dtype", ["float64", "float32"])
def test_float64_compute_runs_the_scalar_loops(cpu_isa, x_dtype):
    """float64 compute (a float64 x or scale) has no AVX2 span: the scalar loop
    runs inside the AVX2-compiled kernel, and must agree too."""
    rng = np.random.default_rng(5)
    x = _x(rng, (6, 1001), x_dtype)
    scale = _scale(rng, 6, "float64")
    if x_dtype == "float64":
        _check(
            "quantize_per_token",
            (x, scale, None),
            dict(dtype=np.int8),
            f"{cpu_isa} float64 quantize",
        )
        _check(
            "fake_quantize_per_token",
            (x, scale, None),
            dict(dtype=np.int8),
            f"{cpu_isa} float64 fake quantize",
        )
    _check(
        "quantize_per_token_dynamic",
        (x,),
        dict(dtype=np.int8, symmetric=False, scale_dtype=np.float64),
        f"{cpu_isa} {x_dtype} dynamic, float64 scale",
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_rows(cpu_isa, data):
    """Random shapes, dtypes and values (any float bits) for all four ops."""
    x_dtype = data.draw(st.sampled_from(FLOATS), label="x_dtype")
    rows = data.draw(st.integers(1, 6), label="rows")
    cols = data.draw(st.integers(1, 80), label="cols")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    bits = np.dtype(f"uint{np.dtype(x_dtype).itemsize * 8}")
    x = rng.integers(0, np.iinfo(bits).max, size=(rows, cols), dtype=bits, endpoint=True)
    x = x.view(x_dtype)
    if data.draw(st.booleans(), label="moderate"):
        x = _x(rng, (rows, cols), x_dtype)
    scale = _scale(rng, rows, "float32")
    zp = rng.integers(0, 256, size=rows).astype(np.int32)
    context = f"{cpu_isa} {x_dtype} ({rows}, {cols}) seed {seed}"
    _check(
        "quantize_per_token",
        (x, scale, zp),
        dict(dtype=np.uint8),
        context,
    )
    _check(
        "fake_quantize_per_token",
        (x, scale, zp),
        dict(dtype=np.uint8),
        context,
    )
    _check(
        "quantize_per_token_dynamic",
        (x,),
        dict(dtype=np.int8, symmetric=True),
        context,
    )
    _check(
        "fake_quantize_per_token",
        (x,),
        dict(dtype=np.uint8),
        context,
    )

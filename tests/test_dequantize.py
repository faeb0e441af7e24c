"""dequantize_per_token: bit-exact against the jnp reference on CPU and CUDA,
every dtype combination and shape form, special values, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_dequant as jdq
from conftest import assert_bitwise_equal, x64_disabled

Q_DTYPES = ["int8", "uint8", "float32", "bfloat16", "float16", "float64"]
SCALE_OUT_PAIRS = [
    ("float32", "float32"),
    ("float32", "bfloat16"),
    ("float32", "float16"),
    ("float32", "float64"),
    ("bfloat16", "bfloat16"),
    ("float16", "float16"),
    ("float64", "float64"),
]


def _levels(rng, dtype, shape):
    """Quantized levels of the given storage dtype (float carriers hold int8 values)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        values = rng.integers(0, 256, size=shape)
        values.reshape(-1)[:2] = [0, 255][: values.size]
    else:
        values = rng.integers(-128, 128, size=shape)
        values.reshape(-1)[:2] = [-128, 127][: values.size]
    return values.astype(dtype)


def _row_values(rng, dtype, shape):
    return (rng.standard_normal(size=shape) * 0.1).astype(dtype)


def _run_both(device, fn, *args, jit=True, **kwargs):
    """Runs our op and the reference on ``device``; returns (ours, reference)."""
    args = [None if a is None else jax.device_put(a, device) for a in args]
    ours = jax.jit(fn, static_argnames=tuple(kwargs)) if jit else fn
    with jax.default_device(device):
        got = ours(*args, **kwargs)
        want = jax.jit(getattr(jdq.reference, fn.__name__), static_argnames=tuple(kwargs))(
            *args, **kwargs
        )
    assert got.devices() == {device}
    return got, want


@pytest.mark.parametrize("q_dtype", Q_DTYPES)
@pytest.mark.parametrize("scale_dtype,out_dtype", SCALE_OUT_PAIRS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_dtype_combination_matches_reference(device, q_dtype, scale_dtype, out_dtype, symmetric):
    rng = np.random.default_rng(0)
    shape = (6, 37)
    q = _levels(rng, q_dtype, shape)
    scale = _row_values(rng, scale_dtype, shape[:-1])
    zero_point = None if symmetric else rng.integers(-20, 20, size=shape[:-1]).astype(np.int32)
    got, want = _run_both(
        device, jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype(out_dtype)
    )
    assert got.dtype == np.dtype(out_dtype)
    assert_bitwise_equal(got, want, f"{q_dtype} {scale_dtype}->{out_dtype} sym={symmetric}")


@pytest.mark.parametrize(
    "shape",
    [(1,), (5,), (3, 1), (4, 4097), (2, 3, 17), (2, 3, 1, 33), (0, 8), (4, 0), (0,), (2, 0, 3),
     (1, 16), (3, 15), (65, 64), (7, 4096)],
)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize(
    "q_dtype,scale_dtype,out_dtype,symmetric",
    [("int8", "float32", "bfloat16", True), ("uint8", "float32", "float32", False),
     ("int8", "bfloat16", "bfloat16", False), ("float32", "float32", "float16", False)],
)
def test_shape_forms(device, shape, keepdims, jit, q_dtype, scale_dtype, out_dtype, symmetric):
    rng = np.random.default_rng(1)
    row_shape = shape[:-1] + ((1,) if keepdims else ())
    q = _levels(rng, q_dtype, shape)
    scale = _row_values(rng, scale_dtype, row_shape)
    zero_point = None if symmetric else rng.integers(-9, 9, size=row_shape).astype(np.int32)
    got, want = _run_both(
        device, jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype(out_dtype),
        jit=jit,
    )
    assert got.shape == shape
    assert_bitwise_equal(got, want, f"shape {shape} keepdims={keepdims}")


def test_unaligned_views_and_odd_widths(device):
    """Slices make XLA pass buffers that are not 16-byte aligned row by row."""
    rng = np.random.default_rng(2)
    q = _levels(rng, "int8", (9, 4099))
    scale = _row_values(rng, "float32", (9,))
    zero_point = rng.integers(-3, 3, size=(9,)).astype(np.int32)

    def sliced(q, scale, zero_point, fn):
        return fn(q[1:, 3:], scale[1:], zero_point[1:], out_dtype=jnp.bfloat16)

    args = [jax.device_put(a, device) for a in (q, scale, zero_point)]
    got = jax.jit(sliced, static_argnums=3)(*args, jdq.dequantize_per_token)
    want = jax.jit(sliced, static_argnums=3)(*args, jdq.reference.dequantize_per_token)
    assert_bitwise_equal(got, want, "sliced")


@pytest.mark.parametrize("scale_dtype,out_dtype", SCALE_OUT_PAIRS)
def test_special_scales(device, scale_dtype, out_dtype):
    finfo = ml_dtypes.finfo(np.dtype(scale_dtype))
    specials = [0.0, -0.0, -0.75, np.inf, -np.inf, np.nan, float(finfo.smallest_subnormal),
                float(finfo.max), float(finfo.tiny), 1.0]
    scale = np.array(specials, dtype=scale_dtype)
    rng = np.random.default_rng(3)
    q = _levels(rng, "int8", (len(specials), 19))
    q[:, 0] = 0  # 0 * inf -> NaN, 0 * nan -> NaN
    for zero_point in (None, np.zeros(len(specials), np.int32)):
        got, want = _run_both(
            device, jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype(out_dtype)
        )
        assert_bitwise_equal(got, want, f"special scales {scale_dtype}->{out_dtype}")


@pytest.mark.parametrize("q_dtype", ["int8", "uint8"])
def test_extreme_zero_points(device, q_dtype):
    info = np.iinfo(np.int32)
    zero_point = np.array([info.min, info.max, 0, -128, 255, 2**24 + 1, -(2**24) - 1], np.int32)
    rng = np.random.default_rng(4)
    q = _levels(rng, q_dtype, (zero_point.size, 40))
    scale = _row_values(rng, "float32", (zero_point.size,))
    for out_dtype in ("float32", "bfloat16", "float16", "float64"):
        got, want = _run_both(
            device, jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype(out_dtype)
        )
        assert_bitwise_equal(got, want, f"extreme zero points -> {out_dtype}")


def test_float_carrier_forward_equals_int8_forward(device):
    rng = np.random.default_rng(5)
    q = _levels(rng, "int8", (5, 70))
    scale = _row_values(rng, "float32", (5,))
    zero_point = rng.integers(-7, 7, size=(5,)).astype(np.int32)
    from_int8, _ = _run_both(device, jdq.dequantize_per_token, q, scale, zero_point)
    for carrier in ("float32", "bfloat16", "float16"):
        from_float, _ = _run_both(
            device, jdq.dequantize_per_token, q.astype(carrier), scale, zero_point
        )
        assert_bitwise_equal(from_float, from_int8, f"{carrier} carrier")


def test_subnormals_follow_the_platform(platform, device):
    """XLA:CPU flushes subnormal inputs and results to zero; XLA:GPU keeps them. So do we."""
    tiny = np.float32(1e-40)  # subnormal in float32
    q = np.array([[1, 2, -3]], np.int8)
    got_subnormal_scale, want = _run_both(
        device, jdq.dequantize_per_token, q, np.array([tiny], np.float32)
    )
    assert_bitwise_equal(got_subnormal_scale, want, "subnormal scale")
    got_subnormal_result, want = _run_both(
        device, jdq.dequantize_per_token, q, np.array([np.float32(1e-39)], np.float32),
        out_dtype=np.dtype(np.float32),
    )
    assert_bitwise_equal(got_subnormal_result, want, "subnormal result")
    values = np.asarray(got_subnormal_scale)
    if platform == "cpu":
        np.testing.assert_array_equal(values, 0.0)
    else:
        np.testing.assert_array_equal(values, q.astype(np.float32) * tiny)
        assert np.all(values[values != 0] != 0.0)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_cases_match_reference(device, data):
    rank = data.draw(st.integers(1, 3), label="rank")
    shape = tuple(data.draw(st.lists(st.integers(0, 9), min_size=rank - 1, max_size=rank - 1)))
    shape += (data.draw(st.integers(0, 300), label="D"),)
    q_dtype = data.draw(st.sampled_from(Q_DTYPES), label="q_dtype")
    scale_dtype, out_dtype = data.draw(st.sampled_from(SCALE_OUT_PAIRS), label="pair")
    symmetric = data.draw(st.booleans(), label="symmetric")
    keepdims = data.draw(st.booleans(), label="keepdims")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    row_shape = shape[:-1] + ((1,) if keepdims else ())
    q = _levels(rng, q_dtype, shape)
    magnitude = 10.0 ** rng.uniform(-6, 3, size=row_shape)
    scale = (magnitude * rng.choice([-1.0, 1.0], size=row_shape)).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(-300, 300, size=row_shape).astype(np.int32)
    got, want = _run_both(
        device, jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype(out_dtype)
    )
    assert_bitwise_equal(got, want, f"{shape} {q_dtype} {scale_dtype}->{out_dtype}")


def test_lowers_to_our_custom_call(platform, device):
    q = np.zeros((4, 8), np.int8)
    scale = np.ones((4,), np.float32)
    jaxpr = jax.make_jaxpr(jdq.dequantize_per_token)(q, scale)
    assert [e.primitive.name for e in jaxpr.eqns] == ["jax_dequant_dequantize_per_token"]
    with jax.default_device(device):
        text = jax.jit(jdq.dequantize_per_token).lower(q, scale).as_text()
    assert "jax_dequant_dequantize_per_token" in text


def test_reference_implementation_is_used_only_when_asked():
    q = np.zeros((4, 8), np.int8)
    scale = np.ones((4,), np.float32)
    with jdq.use_implementation("reference"):
        assert jdq.current_implementation() == "reference"
        # A fresh function: jax caches traces, and the choice is read when tracing.
        jaxpr = jax.make_jaxpr(lambda q, s: jdq.dequantize_per_token(q, s))(q, scale)
    assert "jax_dequant" not in str(jaxpr)
    assert jdq.current_implementation() == "kernel"
    with pytest.raises(ValueError, match="implementation must be one of"):
        with jdq.use_implementation("fast"):
            pass


def _export(fn, platforms, *args):
    checks = [jax.export.DisabledSafetyCheck.custom_call("jax_dequant_dequantize_per_token")]
    return jax.export.export(jax.jit(fn), platforms=platforms, disabled_checks=checks)(*args)


def test_platform_without_kernel_raises_a_clear_error():
    q = np.zeros((4, 8), np.int8)
    scale = np.ones((4,), np.float32)
    with pytest.raises(NotImplementedError, match=r"no kernel for .* on platform\(s\) rocm"):
        _export(jdq.dequantize_per_token, ["rocm"], q, scale)
    if "cuda" in jdq.KERNEL_PLATFORMS:
        assert "jax_dequant" in _export(jdq.dequantize_per_token, ["cuda"], q, scale).mlir_module()
    else:
        with pytest.raises(NotImplementedError, match="no CUDA kernels"):
            _export(jdq.dequantize_per_token, ["cuda"], q, scale)


def test_kernel_plan():
    plan = jdq.kernel_plan(
        "dequantize_per_token", "int8", "bfloat16", scale_dtype="float32", platform="cpu"
    )
    assert plan.available and plan.deterministic and plan.bit_stable
    assert plan.math_precision == "float32" and plan.workspace_bytes == 0
    assert plan.accumulator is None
    f64 = jdq.kernel_plan("dequantize_per_token", "uint8", "float64", platform="cuda")
    assert f64.math_precision == "float64"
    assert f64.available == ("cuda" in jdq.KERNEL_PLATFORMS)
    with pytest.raises(TypeError, match="not supported"):
        jdq.kernel_plan("dequantize_per_token", "int8", "float16", scale_dtype="bfloat16")
    with pytest.raises(ValueError, match="unknown op"):
        jdq.kernel_plan("nope", "int8", "float32")


# --- bad input -----------------------------------------------------------------------------------

_Q = np.zeros((4, 8), np.int8)
_S = np.ones((4,), np.float32)
_ZP = np.zeros((4,), np.int32)

BAD_INPUTS = [
    ("q scalar", dict(q=np.int8(3), scale=np.float32(1)), ValueError, "q must have rank"),
    ("q bool", dict(q=_Q.astype(bool), scale=_S), TypeError, "q must be int8"),
    ("q int16", dict(q=_Q.astype(np.int16), scale=_S), TypeError, "q must be int8"),
    ("q int32", dict(q=_Q.astype(np.int32), scale=_S), TypeError, "q must be int8"),
    ("q complex", dict(q=_Q.astype(np.complex64), scale=_S), TypeError, "q must be int8"),
    ("q string", dict(q="abc", scale=_S), TypeError, "q must be an array"),
    ("q None", dict(q=None, scale=_S), TypeError, "q must be an array"),
    ("scale int", dict(q=_Q, scale=_S.astype(np.int32)), TypeError, "scale must be one of"),
    ("scale complex", dict(q=_Q, scale=_S.astype(np.complex64)), TypeError, "scale must be one of"),
    ("scale bool", dict(q=_Q, scale=_S.astype(bool)), TypeError, "scale must be one of"),
    ("scale wrong length", dict(q=_Q, scale=_S[:3]), ValueError, "scale must have shape"),
    ("scale full shape", dict(q=_Q, scale=np.ones((4, 8), np.float32)), ValueError,
     "scale must have shape"),
    ("scale too many dims", dict(q=_Q, scale=np.ones((4, 1, 1), np.float32)), ValueError,
     "scale must have shape"),
    ("zero_point float", dict(q=_Q, scale=_S, zero_point=_ZP.astype(np.float32)), TypeError,
     "zero_point must be int32"),
    ("zero_point int8", dict(q=_Q, scale=_S, zero_point=_ZP.astype(np.int8)), TypeError,
     "zero_point must be int32"),
    ("zero_point shape", dict(q=_Q, scale=_S, zero_point=_ZP[:2]), ValueError,
     "zero_point must have shape"),
    ("out_dtype int8", dict(q=_Q, scale=_S, out_dtype=np.int8), TypeError, "out_dtype must be"),
    ("out_dtype nonsense", dict(q=_Q, scale=_S, out_dtype="nonsense"), TypeError, "out_dtype"),
    ("bf16 scale f16 out", dict(q=_Q, scale=_S.astype(ml_dtypes.bfloat16), out_dtype=np.float16),
     TypeError, "scale dtype bfloat16 with output dtype float16"),
    ("f16 scale f32 out", dict(q=_Q, scale=_S.astype(np.float16), out_dtype=np.float32),
     TypeError, "scale dtype float16 with output dtype float32"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("jit", [False, True])
def test_bad_input_raises_before_any_kernel(name, kwargs, error, message, jit):
    kwargs = dict(kwargs)
    out_dtype = kwargs.pop("out_dtype", None)
    fn = lambda **kw: jdq.dequantize_per_token(**kw, out_dtype=out_dtype)  # noqa: E731
    if jit and all(isinstance(a, np.ndarray) for a in kwargs.values()):
        fn = jax.jit(fn)
    with pytest.raises(error, match=message):
        fn(**kwargs)
    with pytest.raises(error, match=message):
        jdq.reference.dequantize_per_token(**kwargs, out_dtype=out_dtype)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(q=_Q, scale=_S.astype(np.float64)), "scale is float64 but jax_enable_x64 is off"),
        (dict(q=_Q.astype(np.float64), scale=_S), "q is float64 but jax_enable_x64 is off"),
        (dict(q=_Q, scale=_S, out_dtype=np.float64), "out_dtype is float64"),
    ],
)
def test_float64_without_x64_is_an_error(kwargs, message):
    with x64_disabled():
        with pytest.raises(TypeError, match=message):
            jdq.dequantize_per_token(**kwargs)

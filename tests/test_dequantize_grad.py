"""Differentiation and batching of dequantize_per_token on CPU and CUDA.

Reverse mode against autodiff of the jnp reference (dq bit for bit, dscale within
the error bound of a reassociated sum, and exactly where the sum is exact),
cotangent dtypes, which kernels a gradient launches, determinism, forward mode,
second order, and vmap against Python loops.
"""

from __future__ import annotations

import collections
import math
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jax_dequant as jdq
import numpy_contract as contract
from conftest import assert_bitwise_equal

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
FORWARD = "jax_dequant_dequantize_per_token"
DSCALE = "jax_dequant_dequantize_per_token_dscale"
DQ = "jax_dequant_dequantize_per_token_dq"
DQ_DSCALE = "jax_dequant_dequantize_per_token_dq_dscale"
TANGENT = "jax_dequant_dequantize_per_token_tangent"


# --- helpers -------------------------------------------------------------------------------------


def _levels(rng, dtype, shape, low=-128, high=128):
    """Quantized levels (uint8: 0..255); float carriers hold int8 values."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, size=shape).astype(dtype)
    return rng.integers(low, high, size=shape).astype(dtype)


def _put(device, *arrays):
    return [None if a is None else jax.device_put(a, device) for a in arrays]


def _vjp(fn, q, scale, zero_point, dy, out_dtype):
    """Jitted cotangents ``(ct_q, ct_scale, ct_zero_point)`` of ``fn`` for ``dy``."""

    def pullback(q, scale, zero_point, dy):
        def f(q, scale, zero_point):
            return fn(q, scale, zero_point, out_dtype=out_dtype)

        return jax.vjp(f, q, scale, zero_point)[1](dy)

    return jax.jit(pullback)(q, scale, zero_point, dy)


def _both_vjps(device, q, scale, zero_point, dy, out_dtype):
    """Cotangents from our kernels and from autodiff of the reference, on ``device``."""
    args = _put(device, q, scale, zero_point, dy)
    with jax.default_device(device):
        ours = _vjp(jdq.dequantize_per_token, *args, out_dtype)
        want = _vjp(jdq.reference.dequantize_per_token, *args, out_dtype)
    return ours, want


def _compute(scale_dtype, out_dtype) -> np.dtype:
    f64 = np.dtype(np.float64)
    return f64 if f64 in (np.dtype(scale_dtype), np.dtype(out_dtype)) else np.dtype(np.float32)


def _terms(q, zero_point, dy, compute):
    """The products ``C(dy) * (C(q) - C(zp))`` the contract sums, rounded in C (numpy: no FMA)."""
    levels = np.asarray(q).astype(compute)
    if zero_point is not None:
        levels = levels - np.asarray(zero_point)[..., None].astype(compute)
    return np.asarray(dy).astype(compute) * levels


def _expected_dq(xla_dq, q, scale, dy, scale_dtype, out_dtype):
    """The contract's dq: ``dy * scale`` in C, rounded to q's dtype.

    Autodiff of the reference is the expectation, except where C is float64 and q is a
    16-bit float: there the contract goes through float32 (two roundings, as for a stored
    scale), while XLA's own convert rounds once in jax 0.11.2 (CPU and GPU) and twice in
    0.10.2 and 0.12.0.1 (CPU), so the expectation is computed here.
    """
    q_dtype = np.dtype(q.dtype)
    if _compute(scale_dtype, out_dtype) != np.float64 or q_dtype.itemsize != 2:
        return xla_dq
    row_scale = np.asarray(scale, np.float64).reshape(q.shape[:-1] + (1,))
    product = np.asarray(dy, np.float64) * row_scale
    return product.astype(np.float32).astype(q_dtype)


def _ulp(values, dtype) -> np.ndarray:
    """One unit in the last place of ``dtype`` at each |value| (normal range)."""
    info = ml_dtypes.finfo(np.dtype(dtype))
    magnitude = np.maximum(np.abs(values), float(info.tiny))
    return np.exp2(np.floor(np.log2(magnitude))) * float(info.eps)


def _assert_dscale_close(got, q, zero_point, dy, scale_dtype, out_dtype, context):
    """``got`` is a sum of the contract's terms in some order, rounded to the scale dtype.

    Any order of summing n terms in C is within gamma_{n-1} * sum|t| of the exact
    sum (unit roundoff u of C); rounding to the scale dtype adds at most an ulp.
    """
    compute = _compute(scale_dtype, out_dtype)
    terms = _terms(q, zero_point, dy, compute)
    cols = terms.shape[-1]
    rows = terms.reshape(math.prod(terms.shape[:-1]), cols).astype(np.float64)
    exact = np.array([math.fsum(row) for row in rows])
    u = float(np.finfo(compute).eps) / 2
    gamma = cols * u / (1 - cols * u)
    bound = gamma * np.abs(rows).sum(axis=1)
    bound = bound + _ulp(np.abs(exact) + bound, scale_dtype)
    got = np.asarray(got).astype(np.float64).reshape(-1)
    error = np.abs(got - exact)
    worst = int(np.argmax(error - bound)) if error.size else 0
    assert np.all(error <= bound), (
        f"{context}: dscale row {worst} is {got[worst]!r}, exact sum {exact[worst]!r}, "
        f"error {error[worst]:.3g} > bound {bound[worst]:.3g}"
    )


def _custom_calls(device, fn, *args) -> collections.Counter:
    """The FFI custom calls in the lowered StableHLO of ``jax.jit(fn)``, by target."""
    with jax.default_device(device):
        text = jax.jit(fn).lower(*_put(device, *args)).as_text()
    return collections.Counter(re.findall(r"custom_call @(\w+)\(", text))


# --- reverse mode against autodiff of the reference ----------------------------------------------


@pytest.mark.parametrize("q_dtype", Q_DTYPES)
@pytest.mark.parametrize("scale_dtype,out_dtype", SCALE_OUT_PAIRS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_cotangents_match_reference_autodiff(device, q_dtype, scale_dtype, out_dtype, symmetric):
    rng = np.random.default_rng(10)
    shape = (6, 37)
    q = _levels(rng, q_dtype, shape)
    scale = (rng.standard_normal(shape[:-1]) * 0.1).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(-20, 20, size=shape[:-1]).astype(np.int32)
    dy = rng.standard_normal(shape).astype(out_dtype)
    (ct_q, ct_scale, ct_zp), (want_q, want_scale, want_zp) = _both_vjps(
        device, q, scale, zero_point, dy, np.dtype(out_dtype)
    )
    context = f"{q_dtype} {scale_dtype}->{out_dtype} sym={symmetric}"
    # Integer q and zp get float0 (no gradient); a float carrier gets dq.
    expected_q_dtype = jax.dtypes.float0 if q_dtype in ("int8", "uint8") else np.dtype(q_dtype)
    assert ct_q.dtype == want_q.dtype == expected_q_dtype, context
    assert ct_q.shape == q.shape
    if symmetric:
        assert ct_zp is None and want_zp is None
    else:
        assert ct_zp.dtype == want_zp.dtype == jax.dtypes.float0
    if expected_q_dtype != jax.dtypes.float0:
        want_q = _expected_dq(want_q, q, scale, dy, scale_dtype, out_dtype)
        assert_bitwise_equal(ct_q, want_q, f"dq {context}")
    # dscale has the scale's dtype (float32 for a float32 scale with a 16-bit output).
    assert ct_scale.dtype == want_scale.dtype == np.dtype(scale_dtype), context
    assert ct_scale.shape == scale.shape
    _assert_dscale_close(ct_scale, q, zero_point, dy, scale_dtype, out_dtype, f"ours {context}")
    _assert_dscale_close(want_scale, q, zero_point, dy, scale_dtype, out_dtype, f"ref {context}")


@pytest.mark.parametrize(
    "shape",
    [(1,), (5,), (3, 1), (4, 15), (4, 16), (4, 17), (3, 33), (2, 255), (2, 256), (3, 4097),
     (2, 16384 + 5), (2, 3, 19), (0, 8), (4, 0), (0,), (2, 0, 3)],
)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize(
    "q_dtype,scale_dtype,out_dtype",
    [("int8", "float32", "bfloat16"), ("uint8", "float32", "float32"),
     ("bfloat16", "bfloat16", "bfloat16"), ("float32", "float32", "float16")],
)
def test_cotangents_are_exact_where_the_sum_is_exact(
    device, shape, keepdims, q_dtype, scale_dtype, out_dtype
):
    """Integer dy and levels with sum|terms| < 2^24: every partial sum is exact, so any order
    gives the same bits.

    Covers every row length class of the kernels (one lane, a warp, a block per
    row, partial chunks at both ends), empty arrays, and D = 0 (dscale = 0).
    """
    rng = np.random.default_rng(11)
    row_shape = shape[:-1] + ((1,) if keepdims else ())
    q = _levels(rng, q_dtype, shape)
    scale = rng.integers(-4, 5, size=row_shape).astype(scale_dtype)
    zero_point = rng.integers(-9, 9, size=row_shape).astype(np.int32)
    dy = rng.integers(-2, 3, size=shape).astype(out_dtype)
    (ct_q, ct_scale, _), (want_q, want_scale, _) = _both_vjps(
        device, q, scale, zero_point, dy, np.dtype(out_dtype)
    )
    assert ct_scale.shape == scale.shape
    assert_bitwise_equal(ct_scale, want_scale, f"dscale {shape} keepdims={keepdims}")
    if q_dtype not in ("int8", "uint8"):
        assert_bitwise_equal(ct_q, want_q, f"dq {shape}")
    if shape[-1] == 0:
        np.testing.assert_array_equal(np.asarray(ct_scale), 0)


@pytest.mark.parametrize("q_dtype", ["float16", "bfloat16"])
def test_float64_dq_of_a_16_bit_carrier_goes_through_float32(device, q_dtype):
    """dq = dy * scale in float64, stored to a 16-bit q through float32 (two roundings).

    dy is just above a tie of q's dtype by less than float32 resolves: one rounding would go
    up, two go to the even neighbour below. The second row has the tie's other side.
    """
    info = ml_dtypes.finfo(np.dtype(q_dtype))
    half_step = float(info.eps) / 2  # half an ulp of q's dtype at 1
    above = 1.0 + half_step + 2.0**-40
    below = 1.0 + 3 * half_step - 2.0**-40
    dy = np.array([[above, -above, 1.0, 0.0], [below, -below, 2.0, 0.5]], np.float64)
    q = np.zeros(dy.shape, q_dtype)
    scale = np.ones(2, np.float32)
    (ct_q, _, _), _ = _both_vjps(device, q, scale, None, dy, np.dtype(np.float64))
    want = np.array([[1.0, -1.0, 1.0, 0.0], [1.0 + 4 * half_step, -(1.0 + 4 * half_step), 2.0, 0.5]])
    assert_bitwise_equal(ct_q, want.astype(q_dtype), f"dq {q_dtype} through float32")


@pytest.mark.parametrize("q_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("out_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("cols", [32, 33])
def test_dscale_with_zero_points_of_any_size(device, q_dtype, out_dtype, cols):
    """q - zp is rounded once, as the reference rounds it, for zero points of any size.

    Zero points beyond float32's exact integers (2^24) round when converted, as the reference
    rounds them. D = 32 runs the GPU's aligned dscale kernel, D = 33 its general one. One
    nonzero dy per row makes each sum a single term, so the bits must be the reference's.
    """
    rng = np.random.default_rng(21)
    limit = 1 << 22
    zero_point = np.array(
        [0, 1, -1, 127, -128, 255, limit - 1, limit, -limit, limit + 1, -limit - 1,
         (1 << 24) + 1, -(1 << 24) - 3, 12345679, -(2**31), 2**31 - 1],
        dtype=np.int32,
    )
    rows = zero_point.size
    q = _levels(rng, q_dtype, (rows, cols))
    dy = np.zeros((rows, cols), out_dtype)
    dy[np.arange(rows), rng.integers(0, cols, size=rows)] = rng.choice([1.0, -2.0, 0.5], rows)
    scale = np.ones(rows, np.float32)
    (_, ct_scale, _), (_, want_scale, _) = _both_vjps(
        device, q, scale, zero_point, dy, np.dtype(out_dtype)
    )
    assert_bitwise_equal(ct_scale, want_scale, f"dscale, {q_dtype} levels, D={cols}")


@pytest.mark.parametrize("scale_dtype,out_dtype", [("float32", "bfloat16"), ("float32", "float32")])
def test_special_values(platform, device, scale_dtype, out_dtype):
    """NaN/Inf in dy, special scales, and subnormal dq follow the reference (and the platform)."""
    rng = np.random.default_rng(12)
    rows, cols = 8, 21
    q = _levels(rng, "float32", (rows, cols), -5, 6)
    zero_point = rng.integers(-3, 3, size=rows).astype(np.int32)
    dy = rng.integers(-4, 5, size=(rows, cols)).astype(out_dtype)
    q[0, 3] = zero_point[0] + 1
    dy[0, 3] = np.nan  # NaN in a row -> dscale NaN
    q[1, :] = zero_point[1] + 2
    dy[1, 5] = np.inf  # +inf * positive level -> +inf
    q[2, :] = zero_point[2]
    dy[2, 0] = np.inf  # inf * 0 -> NaN
    q[3, :2] = zero_point[3] + 1
    dy[3, :2] = [np.inf, -np.inf]  # inf - inf -> NaN
    dy[4, :] = 0  # all zero -> +0
    scale = rng.integers(1, 4, size=rows).astype(scale_dtype)
    scale[5] = np.inf
    scale[6] = np.nan
    scale[7] = 2e-38
    dy[7, :] = 0.25  # dq = 0.25 * 2e-38 is subnormal in float32: flushed on the CPU, kept on GPUs
    (ct_q, ct_scale, _), (want_q, want_scale, _) = _both_vjps(
        device, q, scale, zero_point, dy, np.dtype(out_dtype)
    )
    assert_bitwise_equal(ct_q, want_q, "dq with special values")
    assert_bitwise_equal(ct_scale, want_scale, "dscale with special values")
    values = np.asarray(ct_scale)
    assert np.isnan(values[0]) and values[1] == np.inf and np.isnan(values[2])
    assert np.isnan(values[3]) and values[4] == 0 and not np.signbit(values[4])
    subnormal = np.asarray(ct_q)[7]
    if platform == "cpu":
        np.testing.assert_array_equal(subnormal, 0.0)
    else:
        assert np.all(subnormal != 0)


def test_cotangent_dtypes_with_grad():
    """jax.grad over every argument: float0 for integer q and zp, the scale's dtype for dscale."""
    q = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    scale = np.array([0.5, 0.25], np.float32)
    zero_point = np.array([1, -1], np.int32)

    def loss(q, scale, zero_point):
        y = jdq.dequantize_per_token(q, scale, zero_point, out_dtype=jnp.bfloat16)
        return jnp.sum(y.astype(jnp.float32))

    ct_q, ct_scale, ct_zp = jax.grad(loss, argnums=(0, 1, 2), allow_int=True)(q, scale, zero_point)
    assert ct_q.dtype == jax.dtypes.float0 and ct_q.shape == q.shape
    assert ct_zp.dtype == jax.dtypes.float0 and ct_zp.shape == zero_point.shape
    assert ct_scale.dtype == np.float32
    np.testing.assert_array_equal(ct_scale, (q.astype(np.float32) - zero_point[:, None]).sum(1))
    with pytest.raises(TypeError, match="integer"):
        jax.grad(loss)(q, scale, zero_point)
    ct_carrier = jax.grad(loss)(q.astype(jnp.bfloat16), scale, zero_point)
    assert ct_carrier.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(ct_carrier, np.float32), np.repeat(scale, 8).reshape(2, 8)
    )


def test_eager_gradients_equal_jitted(device):
    rng = np.random.default_rng(13)
    q, scale, dy = _put(
        device, _levels(rng, "bfloat16", (5, 40)), rng.random(5).astype(np.float32),
        rng.standard_normal((5, 40)).astype(np.float32),
    )

    def loss(q, scale):
        return jnp.sum(jdq.dequantize_per_token(q, scale) * dy)

    with jax.default_device(device):
        eager = jax.grad(loss, argnums=(0, 1))(q, scale)
        jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(q, scale)
    for a, b in zip(eager, jitted):
        assert_bitwise_equal(a, b, "eager vs jit")


# --- only the needed cotangents are computed -----------------------------------------------------


def test_only_needed_cotangents_are_computed(device):
    rng = np.random.default_rng(14)
    q = _levels(rng, "int8", (4, 32))
    carrier = q.astype(np.float32)
    scale = rng.random(4).astype(np.float32)
    zero_point = rng.integers(-3, 3, size=4).astype(np.int32)
    dy = rng.standard_normal((4, 32)).astype(np.float32)

    def loss(q, scale):
        return jnp.sum(jdq.dequantize_per_token(q, scale, zero_point) * dy)

    backward = {DSCALE, DQ, DQ_DSCALE, TANGENT}

    def launched(fn, *args):
        return {k: v for k, v in _custom_calls(device, fn, *args).items() if k in backward}

    # Integer q: no dq work at all; the scale's cotangent is one dscale pass.
    assert launched(jax.grad(loss, argnums=1), q, scale) == {DSCALE: 1}
    # Frozen scale, float-carrier q: dq only, no dscale work.
    assert launched(jax.grad(loss, argnums=0), carrier, scale) == {DQ: 1}
    # Both: one fused pass over dy.
    assert launched(jax.grad(loss, argnums=(0, 1)), carrier, scale) == {DQ_DSCALE: 1}
    # A carrier that is not differentiated is not differentiated.
    assert launched(jax.grad(loss, argnums=1), carrier, scale) == {DSCALE: 1}
    # Forward mode: the tangent in the scale slot is another dequantize; both tangents fuse.
    jvp_scale = lambda q, s: jax.jvp(lambda s: loss(q, s), (s,), (s,))  # noqa: E731
    jvp_both = lambda q, s: jax.jvp(loss, (q, s), (q, s))  # noqa: E731
    assert launched(jvp_scale, q, scale) == {}
    assert _custom_calls(device, jvp_scale, q, scale)[FORWARD] == 2
    assert launched(jvp_both, carrier, scale) == {TANGENT: 1}


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("q_dtype,out_dtype", [("int8", "bfloat16"), ("bfloat16", "bfloat16"),
                                               ("float32", "float32")])
def test_backward_is_bitwise_deterministic(device, q_dtype, out_dtype):
    """Repeated backward runs give the same bits, and the order is fixed by the shape.

    Row lengths cover a warp or less per row (37), a block per row (8195), and
    rows cut at both ends (odd D).
    """
    rng = np.random.default_rng(15)
    for shape in ((64, 37), (48, 8195)):
        q = _levels(rng, q_dtype, shape)
        scale = rng.random(shape[:-1]).astype(np.float32)
        zero_point = rng.integers(-5, 5, size=shape[:-1]).astype(np.int32)
        dy = rng.standard_normal(shape).astype(out_dtype)
        args = _put(device, q, scale, zero_point, dy)
        with jax.default_device(device):
            runs = [_vjp(jdq.dequantize_per_token, *args, np.dtype(out_dtype)) for _ in range(3)]
        for run in runs[1:]:
            for a, b in zip(run[:2], runs[0][:2]):
                assert_bitwise_equal(a, b, f"repeated run {shape} {q_dtype}")

        # The same rows as a slice of a bigger array (a different buffer, perhaps
        # differently aligned) give the same bits: the order depends on the shape.
        pad = lambda a: np.concatenate([a[:1], a])  # noqa: E731
        big = _put(device, pad(q), pad(scale), pad(zero_point), pad(dy))

        def sliced(q, scale, zero_point, dy):
            return _vjp(
                jdq.dequantize_per_token, q[1:], scale[1:], zero_point[1:], dy[1:],
                np.dtype(out_dtype),
            )

        with jax.default_device(device):
            from_slice = jax.jit(sliced)(*big)
        assert_bitwise_equal(from_slice[1], runs[0][1], f"sliced {shape} {q_dtype}")


ORDER_DTYPES = [
    # (q, scale, dy): chunks of 8, 4, 8, 2 and 8 elements on the GPU.
    ("int8", "float32", "bfloat16"),
    ("uint8", "float32", "float32"),
    ("int8", "float16", "float16"),
    ("int8", "float64", "float64"),
    ("bfloat16", "float32", "bfloat16"),
]


def _dscale_in_documented_order(platform, q, zero_point, dy, scale_dtype, got_dtype):
    terms = _terms(q, zero_point, dy, _compute(scale_dtype, dy.dtype))
    if platform == "cpu":
        sums = contract.dscale_cpu_order(terms)
    else:
        chunk = 16 // max(dy.dtype.itemsize, q.dtype.itemsize)
        sums = contract.dscale_cuda_order(terms, chunk)
    return sums.astype(got_dtype)


def _check_dscale_order(platform, device, shape, dtypes, with_zero_point, seed):
    q_dtype, scale_dtype, out_dtype = dtypes
    rng = np.random.default_rng(seed)
    q = _levels(rng, q_dtype, shape)
    scale = rng.uniform(0.5, 2.0, size=shape[:-1]).astype(scale_dtype)
    zero_point = rng.integers(-3, 4, size=shape[:-1]).astype(np.int32) if with_zero_point else None
    dy = rng.standard_normal(shape).astype(out_dtype)
    if shape[0] > 1 and shape[1] > 2:
        # Infinities of both signs in one row: where they meet decides between inf and NaN.
        dy[0, :: max(shape[1] // 3, 1)] = np.inf
        dy[0, 1] = -np.inf
    args = _put(device, q, scale, zero_point, dy)
    with jax.default_device(device):
        got = np.asarray(_vjp(jdq.dequantize_per_token, *args, np.dtype(out_dtype))[1])
    want = _dscale_in_documented_order(platform, q, zero_point, dy, scale_dtype, got.dtype)
    assert_bitwise_equal(got, want, f"dscale of {shape} {dtypes} on {platform}")


@pytest.mark.parametrize("with_zero_point", [False, True], ids=["symmetric", "zero_point"])
@pytest.mark.parametrize("dtypes", ORDER_DTYPES, ids=lambda d: "-".join(d))
@pytest.mark.parametrize(
    "shape",
    # One term; less than a chunk; odd D (rows cut at both ends); whole chunks in 2 lanes and in
    # 125 chunks; one batch per lane in 32 to 256 lanes (the CUDA kernels' compiled layouts);
    # two batches; a float32 row of 2049 chunks (eight-chunk batches and one more); an odd D of
    # a block per row.
    [(3, 1), (4, 7), (5, 37), (6, 64), (2, 1000), (2, 1024), (3, 2048), (3, 4096), (2, 8192),
     (1, 16384), (3, 8196), (2, 8195)],
)
def test_dscale_bits_follow_the_kernels_documented_order(
    platform, device, shape, dtypes, with_zero_point
):
    """Each kernel's dscale is its documented summation order (tests/numpy_contract.py) bit for
    bit, whichever kernel or launch shape runs the row, zero points or not."""
    _check_dscale_order(platform, device, shape, dtypes, with_zero_point, seed=shape[1])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 9),
    cols=st.one_of(st.integers(1, 300), st.sampled_from([512, 2048, 4096, 8192, 8200])),
    dtypes=st.sampled_from(ORDER_DTYPES),
    with_zero_point=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_dscale_bits_follow_the_kernels_documented_order(
    platform, device, rows, cols, dtypes, with_zero_point, seed
):
    """As above, on random shapes and data."""
    _check_dscale_order(platform, device, (rows, cols), dtypes, with_zero_point, seed)


# --- forward mode and second order ---------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_check_grads_forward_and_reverse_to_second_order(device, symmetric):
    rng = np.random.default_rng(16)
    q = _levels(rng, "float64", (3, 9), -4, 5)
    scale = 0.2 * rng.standard_normal(3)
    zero_point = None if symmetric else rng.integers(-2, 3, size=3).astype(np.int32)
    weights = rng.standard_normal((3, 9))
    q, scale, weights = _put(device, q, scale, weights)

    def loss(q, scale):
        return jnp.sum(jnp.sin(jdq.dequantize_per_token(q, scale, zero_point)) * weights)

    with jax.default_device(device):
        check_grads(loss, (q, scale), order=2, modes=("fwd", "rev"))
        check_grads(lambda s: loss(q, s), (scale,), order=2, modes=("fwd", "rev"))
        check_grads(lambda q: loss(q, scale), (q,), order=2, modes=("fwd", "rev"))
        int_q = q.astype(jnp.int8)
        check_grads(lambda s: loss(int_q, s), (scale,), order=2, modes=("fwd", "rev"))


def _jvp(fn, q, scale, zero_point, q_tangent, scale_tangent, out_dtype):
    """Jitted jax.jvp; a tangent given as None is a symbolic zero (that input is closed over)."""

    def f(q, scale):
        return fn(q, scale, zero_point, out_dtype=out_dtype)

    def jvp(q, scale, q_tangent, scale_tangent):
        if q_tangent is None:
            return jax.jvp(lambda s: f(q, s), (scale,), (scale_tangent,))
        if scale_tangent is None:
            return jax.jvp(lambda q: f(q, scale), (q,), (q_tangent,))
        return jax.jvp(f, (q, scale), (q_tangent, scale_tangent))

    return jax.jit(jvp)(q, scale, q_tangent, scale_tangent)


@pytest.mark.parametrize("scale_dtype,out_dtype", [("float32", "bfloat16"), ("float32", "float32"),
                                                   ("float64", "float64")])
def test_forward_mode_matches_reference(device, scale_dtype, out_dtype):
    rng = np.random.default_rng(17)
    shape = (5, 33)
    q = _levels(rng, "float32", shape)
    scale = rng.standard_normal(5).astype(scale_dtype)
    zero_point = rng.integers(-9, 9, size=5).astype(np.int32)
    q_tangent = rng.standard_normal(shape).astype(np.float32)
    scale_tangent = rng.standard_normal(5).astype(scale_dtype)
    out = np.dtype(out_dtype)
    with jax.default_device(device):
        # One nonzero tangent: the tangent is a dequantize, bit for bit the reference's.
        for tangents in ((q_tangent, None), (None, scale_tangent)):
            args = _put(device, q, scale, zero_point, *tangents)
            (y, t), (want_y, want_t) = (_jvp(fn, *args, out) for fn in (
                jdq.dequantize_per_token, jdq.reference.dequantize_per_token))
            assert_bitwise_equal(y, want_y, "jvp primal")
            assert_bitwise_equal(t, want_t, "jvp tangent")
        # Both: one fused pass, t_q * s + (q - zp) * t_s rounded once (the
        # reference's XLA may contract it into an FMA: compare within the bound).
        args = _put(device, q, scale, zero_point, q_tangent, scale_tangent)
        _, t = _jvp(jdq.dequantize_per_token, *args, out)
        compute = _compute(scale_dtype, out_dtype)
        from_q = q_tangent.astype(compute) * scale.astype(compute)[:, None]
        levels = q.astype(compute) - zero_point[:, None].astype(compute)
        from_scale = levels * scale_tangent.astype(compute)[:, None]
        exact = from_q.astype(np.float64) + from_scale.astype(np.float64)
        u = float(np.finfo(compute).eps)
        bound = u * (np.abs(from_q) + np.abs(from_scale)) + _ulp(exact, out_dtype)
        assert np.all(np.abs(np.asarray(t).astype(np.float64) - exact) <= bound)
        # linearize gives the same tangents as jvp.
        f = lambda q, s: jdq.dequantize_per_token(q, s, zero_point, out_dtype=out)  # noqa: E731
        _, linear = jax.linearize(f, *args[:2])
        assert_bitwise_equal(jax.jit(linear)(*args[3:]), t, "linearize")


def test_jacobians_and_hessian_match_reference(device):
    rng = np.random.default_rng(18)
    q = _levels(rng, "float64", (3, 6), -6, 7)
    scale = rng.standard_normal(3)
    zero_point = rng.integers(-2, 3, size=3).astype(np.int32)
    q, scale = _put(device, q, scale)

    def make(fn):
        return lambda q, s: fn(q, s, zero_point)

    ours, ref = make(jdq.dequantize_per_token), make(jdq.reference.dequantize_per_token)
    with jax.default_device(device):
        for jac in (jax.jacfwd, jax.jacrev):
            got = jac(ours, argnums=(0, 1))(q, scale)
            want = jax.jacfwd(ref, argnums=(0, 1))(q, scale)
            for a, b in zip(got, want):  # equal values (jacrev sums zeros: +0 for -0)
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jac.__name__)
        int_q = q.astype(jnp.int8)
        np.testing.assert_array_equal(
            np.asarray(jax.jacrev(lambda s: ours(int_q, s))(scale)),
            np.asarray(jax.jacfwd(lambda s: ref(int_q, s))(scale)),
        )
        loss = lambda fn: lambda q, s: jnp.sum(fn(q, s) ** 3)  # noqa: E731
        got = jax.hessian(loss(ours), argnums=(0, 1))(q, scale)
        want = jax.hessian(loss(ref), argnums=(0, 1))(q, scale)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_transposing_a_non_linear_use_is_an_error():
    q = np.ones((2, 4), np.float32)
    scale = np.ones(2, np.float32)
    zero_point = np.ones(2, np.int32)
    transpose = jax.linear_transpose(
        lambda q: jdq.dequantize_per_token(q, scale, zero_point), q
    )
    with pytest.raises(NotImplementedError, match="not linear in q with a zero point"):
        transpose(np.ones((2, 4), np.float32))


# --- vmap ----------------------------------------------------------------------------------------

IN_AXES = [(0, 0, 0), (0, 0, None), (0, None, 0), (0, None, None), (None, 0, 0), (None, 0, None),
           (None, None, 0), (1, 1, 1), (1, None, 0), (0, 0, "absent"), (None, 1, "absent")]


def _batched(rng, axes, batch, rows, cols, q_dtype, scale_dtype):
    """Operands with a batch axis where ``axes`` says; returns (args, in_axes, slicer)."""
    q = _levels(rng, q_dtype, (batch, rows, cols))
    scale = rng.standard_normal((batch, rows)).astype(scale_dtype)
    zero_point = rng.integers(-5, 5, size=(batch, rows)).astype(np.int32)
    args, in_axes = [], []
    for array, axis in zip((q, scale, zero_point), axes):
        if axis == "absent":
            args.append(None)
            in_axes.append(None)
        elif axis is None:
            args.append(array[0])
            in_axes.append(None)
        else:
            args.append(np.moveaxis(array, 0, axis))
            in_axes.append(axis)

    def example(i):
        return [a if ax is None else np.take(a, i, axis=ax) for a, ax in zip(args, in_axes)]

    return args, tuple(in_axes), example


def _no_loops(jaxpr) -> None:
    text = str(jaxpr)
    assert not re.search(r"\b(while|scan)\[", text), "vmap lowered to a loop"


@pytest.mark.parametrize("axes", IN_AXES, ids=str)
def test_vmap_forward_with_any_in_axes(device, axes):
    rng = np.random.default_rng(19)
    args, in_axes, example = _batched(rng, axes, 3, 4, 21, "int8", "float32")

    def f(q, scale, zero_point):
        return jdq.dequantize_per_token(q, scale, zero_point, out_dtype=jnp.bfloat16)

    with jax.default_device(device):
        batched = jax.jit(jax.vmap(f, in_axes=in_axes))(*_put(device, *args))
        loop = [jax.jit(f)(*_put(device, *example(i))) for i in range(3)]
        _no_loops(jax.make_jaxpr(jax.vmap(f, in_axes=in_axes))(*args))
    assert_bitwise_equal(batched, np.stack(loop), f"vmap {axes}")


@pytest.mark.parametrize("axes", IN_AXES, ids=str)
@pytest.mark.parametrize("cols", [64, 37])
def test_vmap_of_gradient_matches_loop(platform, device, axes, cols):
    """vmap(grad) is one batched backward call, equal to a Python loop of grads.

    dq is always bit for bit; dscale too when D is a multiple of the CUDA kernel's
    chunk (16 here) or on the CPU, where the order depends on D alone.
    """
    rng = np.random.default_rng(20)
    args, in_axes, example = _batched(rng, axes, 3, 5, cols, "float32", "float32")
    weights = rng.standard_normal((3, 5, cols)).astype(np.float32)

    def loss(q, scale, zero_point, w):
        y = jdq.dequantize_per_token(q, scale, zero_point, out_dtype=jnp.bfloat16)
        return jnp.sum(y.astype(jnp.float32) * w)

    grad = jax.grad(loss, argnums=(0, 1))
    with jax.default_device(device):
        batched = jax.jit(jax.vmap(grad, in_axes=in_axes + (0,)))(*_put(device, *args, weights))
        loop = [jax.jit(grad)(*_put(device, *example(i), weights[i])) for i in range(3)]
        jaxpr = jax.make_jaxpr(jax.vmap(grad, in_axes=in_axes + (0,)))(*args, weights)
    _no_loops(jaxpr)
    assert sum(e.primitive.name == DQ_DSCALE for e in jaxpr.eqns) == 1
    assert_bitwise_equal(batched[0], np.stack([g[0] for g in loop]), f"dq {axes}")
    loop_scale = np.stack([g[1] for g in loop])
    if platform == "cpu" or cols % 16 == 0:
        assert_bitwise_equal(batched[1], loop_scale, f"dscale {axes}")
    else:
        np.testing.assert_allclose(np.asarray(batched[1]), loop_scale, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("axes", [(0, 0, 0), (None, 0, 0), (0, None, None)], ids=str)
def test_gradient_of_vmap_matches_loop(device, axes):
    rng = np.random.default_rng(21)
    args, in_axes, example = _batched(rng, axes, 3, 5, 48, "bfloat16", "float32")
    weights = rng.standard_normal((3, 5, 48)).astype(np.float32)

    def loss(q, scale, zero_point, w):
        return jnp.sum(jdq.dequantize_per_token(q, scale, zero_point) * w)

    def batched_loss(q, scale):
        return jnp.sum(jax.vmap(loss, in_axes=in_axes + (0,))(q, scale, args[2], weights))

    def loop_loss(q, scale):
        return sum(
            loss(*(a if ax is None else jnp.take(a, i, axis=ax)
                   for a, ax in zip((q, scale, args[2]), in_axes)), weights[i])
            for i in range(3)
        )

    with jax.default_device(device):
        q, scale = _put(device, *args[:2])
        got = jax.jit(jax.grad(batched_loss, argnums=(0, 1)))(q, scale)
        want = jax.jit(jax.grad(loop_loss, argnums=(0, 1)))(q, scale)
        _no_loops(jax.make_jaxpr(jax.grad(batched_loss, argnums=(0, 1)))(q, scale))
    for a, b, name in zip(got, want, ("dq", "dscale")):
        assert a.dtype == b.dtype
        if all(ax is not None for ax in in_axes):
            assert_bitwise_equal(a, b, f"{name} {axes}")
        else:  # an unbatched operand's cotangent is summed over the batch by XLA
            np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=1e-2
            )


def test_vmap_of_forward_mode_and_nested_vmap(device):
    rng = np.random.default_rng(22)
    q = _levels(rng, "float32", (2, 3, 4, 16))
    scale = rng.standard_normal((2, 3, 4)).astype(np.float32)
    tangents = rng.standard_normal((2, 3, 4, 16)).astype(np.float32), rng.standard_normal(
        (2, 3, 4)
    ).astype(np.float32)

    def jvp(q, scale, tq, ts):
        return jax.jvp(lambda q, s: jdq.dequantize_per_token(q, s), (q, scale), (tq, ts))[1]

    with jax.default_device(device):
        args = _put(device, q, scale, *tangents)
        nested = jax.jit(jax.vmap(jax.vmap(jvp)))(*args)
        flat = jax.jit(jvp)(*args)
        _no_loops(jax.make_jaxpr(jax.vmap(jax.vmap(jvp)))(*args))
    assert_bitwise_equal(nested, flat, "nested vmap of jvp")


# --- randomized ----------------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_cotangents_match_reference(device, data):
    rank = data.draw(st.integers(1, 3), label="rank")
    shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=rank - 1, max_size=rank - 1)))
    shape += (data.draw(st.integers(0, 600), label="D"),)
    q_dtype = data.draw(st.sampled_from(Q_DTYPES), label="q_dtype")
    scale_dtype, out_dtype = data.draw(st.sampled_from(SCALE_OUT_PAIRS), label="pair")
    symmetric = data.draw(st.booleans(), label="symmetric")
    keepdims = data.draw(st.booleans(), label="keepdims")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    row_shape = shape[:-1] + ((1,) if keepdims else ())
    q = _levels(rng, q_dtype, shape)
    scale = (10.0 ** rng.uniform(-3, 1, size=row_shape)).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(-300, 300, size=row_shape).astype(np.int32)
    # |dscale| stays below ~1e4, inside float16's range, whatever D.
    magnitude = 10.0 ** rng.uniform(-2, 0) * 50 / max(shape[-1], 1)
    dy = (rng.standard_normal(shape) * magnitude).astype(out_dtype)
    (ct_q, ct_scale, _), (want_q, _, _) = _both_vjps(
        device, q, scale, zero_point, dy, np.dtype(out_dtype)
    )
    context = f"{shape} {q_dtype} {scale_dtype}->{out_dtype}"
    if q_dtype not in ("int8", "uint8"):
        want_q = _expected_dq(want_q, q, scale, dy, scale_dtype, out_dtype)
        assert_bitwise_equal(ct_q, want_q, f"dq {context}")
    assert ct_scale.dtype == np.dtype(scale_dtype) and ct_scale.shape == scale.shape
    _assert_dscale_close(
        ct_scale, q, None if zero_point is None else zero_point.reshape(shape[:-1]), dy,
        scale_dtype, out_dtype, context,
    )


# --- plan ----------------------------------------------------------------------------------------


def test_kernel_plan_of_the_backward():
    plan = jdq.kernel_plan(
        "dequantize_per_token_grad", "int8", "bfloat16", scale_dtype="float32", platform="cpu"
    )
    assert plan.available and plan.deterministic and not plan.bit_stable
    assert plan.accumulator == "float32" and plan.math_precision == "float32"
    assert plan.workspace_bytes == 0 and "dscale only" in plan.description
    f64 = jdq.kernel_plan("dequantize_per_token_grad", "float64", "float64", platform="cuda")
    assert f64.accumulator == "float64" and "fused" in f64.description
    assert f64.available == ("cuda" in jdq.KERNEL_PLATFORMS)
    with pytest.raises(TypeError, match="not supported"):
        jdq.kernel_plan("dequantize_per_token_grad", "int8", "float16", scale_dtype="bfloat16")

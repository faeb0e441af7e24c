"""Large shapes that take every path of the fast kernels, bit-exact against the reference.

The small shapes of test_dequantize.py run the kernels' simplest paths. These
arrays are big enough that the CPU kernel splits its work over XLA's threads
(chunks that start and end inside rows, single rows split over threads), and
that each CUDA thread handles several steps of several chunks (the unrolled
main loop, the one-chunk remainder loop, chunks crossing row ends, the last
partial chunk). Special values are spread over whole arrays so that every
vectorized lane and every thread meets them.
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


def _levels(rng, dtype, shape):
    dtype = np.dtype(dtype)
    low, high = (0, 256) if dtype == np.uint8 else (-128, 128)
    return rng.integers(low, high, size=shape).astype(dtype)


def _check(device, q, scale, zero_point, out_dtype, context):
    args = [None if a is None else jax.device_put(a, device) for a in (q, scale, zero_point)]
    ours = jax.jit(jdq.dequantize_per_token, static_argnames="out_dtype")
    reference = jax.jit(jdq.reference.dequantize_per_token, static_argnames="out_dtype")
    got = ours(*args, out_dtype=np.dtype(out_dtype))
    want = reference(*args, out_dtype=np.dtype(out_dtype))
    assert got.devices() == {device}
    assert_bitwise_equal(got, want, context)
    return got


def _run_on(where, fn, args, jit=True):
    """fn(*args) on `where`: arrays of args placed there (None stays None), jitted unless jit=False."""
    placed = [None if a is None else jax.device_put(a, where) for a in args]
    with jax.default_device(where):
        return (jax.jit(fn) if jit else fn)(*placed)


@pytest.mark.parametrize(
    "shape,q_dtype,scale_dtype,out_dtype,symmetric",
    [
        # Row-aligned int8 chunks, several unrolled steps per CUDA thread.
        ((4096, 4096), "int8", "float32", "bfloat16", True),
        # Odd width: chunks cross row ends; a partial last chunk; zero points.
        ((4099, 4097), "int8", "float32", "float16", False),
        # Wide results (64 bytes per chunk: two chunks per step).
        ((1500, 4096), "uint8", "float32", "float32", False),
        # 8-element chunks of a bf16 carrier.
        ((2048, 4100), "bfloat16", "bfloat16", "bfloat16", True),
        # float64 compute, 128 bytes of results per chunk.
        ((700, 2049), "int8", "float64", "float64", False),
        # One row split over CPU threads; many tiny rows.
        ((1, 300007), "int8", "float32", "bfloat16", False),
        ((70001, 3), "int8", "float32", "float16", True),
    ],
)
def test_large_shapes_match_reference(device, shape, q_dtype, scale_dtype, out_dtype, symmetric):
    rng = np.random.default_rng(sum(shape))
    q = _levels(rng, q_dtype, shape)
    scale = (10.0 ** rng.uniform(-4, 1, size=shape[:-1])).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(-200, 200, size=shape[:-1]).astype(np.int32)
    _check(device, q, scale, zero_point, out_dtype, f"{shape} {q_dtype} {scale_dtype}->{out_dtype}")


@pytest.mark.parametrize("out_dtype", ["bfloat16", "float16", "float32"])
def test_special_values_across_a_large_array(device, out_dtype):
    """Every row kind (inf/NaN/zero scales, float16-subnormal, overflowing and
    float32-subnormal results) repeats over an array split across threads."""
    f32 = np.finfo(np.float32)
    row_kinds = np.array(
        [
            1.0,
            np.inf,
            -np.inf,
            np.nan,
            0.0,
            -0.0,
            1e-7,
            3e-6,
            700.0,
            3e36,
            float(f32.tiny),
            float(f32.smallest_subnormal) * 8,
            -0.02,
            6.1e-5 / 127,
        ],
        np.float32,
    )
    rows = 40 * row_kinds.size
    scale = np.tile(row_kinds, rows // row_kinds.size)
    rng = np.random.default_rng(11)
    q = _levels(rng, "int8", (rows, 4111))
    q[:, ::97] = 0  # 0 * inf and 0 * NaN
    zero_point = rng.integers(-3, 3, size=(rows,)).astype(np.int32)
    for zp in (None, zero_point):
        _check(device, q, scale, zp, out_dtype, f"special rows -> {out_dtype} zp={zp is not None}")


def test_repeated_runs_give_identical_bits(device):
    """The threaded and multi-block paths have no race: three runs agree bit for bit."""
    rng = np.random.default_rng(5)
    q = _levels(rng, "int8", (999, 1001))
    scale = rng.uniform(0.001, 0.1, size=(999,)).astype(np.float32)
    first = np.asarray(_check(device, q, scale, None, "float16", "run 0"))
    for run in (1, 2):
        again = np.asarray(_check(device, q, scale, None, "float16", f"run {run}"))
        np.testing.assert_array_equal(first.view(np.uint16), again.view(np.uint16))


Q_DTYPES = ["int8", "uint8", "bfloat16", "float16", "float32"]
PAIRS = [
    ("float32", "bfloat16"),
    ("float32", "float16"),
    ("float32", "float32"),
    ("bfloat16", "bfloat16"),
    ("float16", "float16"),
]


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_large_cases_match_reference(device, data):
    cols = data.draw(st.one_of(st.integers(1, 40), st.integers(1000, 9000)), label="D")
    rows = data.draw(st.integers(max(1, 140_000 // cols), max(2, 600_000 // cols)), label="N")
    q_dtype = data.draw(st.sampled_from(Q_DTYPES), label="q_dtype")
    scale_dtype, out_dtype = data.draw(st.sampled_from(PAIRS), label="pair")
    symmetric = data.draw(st.booleans(), label="symmetric")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    q = _levels(rng, q_dtype if q_dtype in ("int8", "uint8") else "int8", (rows, cols))
    q = q.astype(ml_dtypes.bfloat16 if q_dtype == "bfloat16" else q_dtype)
    scale = 10.0 ** rng.uniform(-6, 3, size=(rows,)) * rng.choice([-1, 1], size=(rows,))
    scale = scale.astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(-300, 300, size=(rows,)).astype(np.int32)
    _check(
        device,
        q,
        scale,
        zero_point,
        out_dtype,
        f"({rows}, {cols}) {q_dtype} {scale_dtype}->{out_dtype} sym={symmetric}",
    )


@pytest.mark.parametrize(
    "shape,x_dtype,scale_dtype,dynamic,symmetric",
    [
        ((1500, 1001), "bfloat16", "float32", False, False),
        ((70001, 3), "float16", "float16", False, True),
        ((300, 4097), "float32", None, True, True),
        ((3000, 129), "bfloat16", None, True, False),
    ],
)
def test_fake_quantize_forward_over_threads_matches_reference(
    device, shape, x_dtype, scale_dtype, dynamic, symmetric
):
    """fake_quantize_per_token's forward splits rows over XLA's CPU threads;
    the reference runs on the CPU, as the contract's exact evaluation."""
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3).astype(x_dtype)
    x[::7, ::5] = 0
    dtype = np.int8 if symmetric else np.uint8
    if dynamic:
        args = (x,)
        kwargs = dict(dtype=dtype)
    else:
        scale = rng.uniform(0.01, 0.05, size=shape[:-1]).astype(scale_dtype)
        zero_point = None if symmetric else rng.integers(100, 156, size=shape[:-1]).astype(np.int32)
        args = (x, scale, zero_point)
        kwargs = dict(dtype=dtype)

    got = _run_on(device, lambda *a: jdq.fake_quantize_per_token(*a, **kwargs), args)
    want = _run_on(cpu, lambda *a: jdq.reference.fake_quantize_per_token(*a, **kwargs), args)
    assert_bitwise_equal(got, want, f"{shape} {x_dtype} dynamic={dynamic} sym={symmetric}")


def _assert_rows_match_alone(device, fn, args, got, context):
    """Rows 0, 1, the middle and the last of `got` (fn(*args), split over threads) have the
    bits of fn on that row alone (too small to split): the split changes nothing and every
    row was written. None arguments stay None."""
    rows = args[0].shape[0]
    for row in (0, 1, rows // 2, rows - 1):
        one = tuple(None if a is None else a[row : row + 1] for a in args)
        alone = _run_on(device, fn, one)
        assert_bitwise_equal(np.asarray(got)[row : row + 1], alone, f"{context} row {row}")


@pytest.mark.parametrize(
    "shape,q_dtype,scale_dtype,out_dtype",
    [
        ((1500, 1001), "int8", "float32", "bfloat16"),
        ((400, 4097), "float32", "float32", "float32"),
        ((70001, 3), "float16", "float16", "float16"),
    ],
)
def test_dequantize_derivatives_over_threads(device, shape, q_dtype, scale_dtype, out_dtype):
    """The backward and the tangent split whole rows over XLA's CPU threads. dq is
    elementwise: bit for bit the reference's. dscale (one sum per row, in the kernel's own
    fixed order) and the fused tangent in q and scale (one rounding of a sum of two
    products, which the reference's XLA may evaluate differently) are checked row by row
    against the same op on that row alone (too small to split): the split changes no bit
    and every row is written. (On the GPU, dscale of a D that is not a multiple of 16 is
    checked by a rerun and an error bound instead; see below.)"""
    rng = np.random.default_rng(sum(shape) + 2)
    q = _levels(rng, "int8", shape).astype(q_dtype)
    scale = rng.uniform(0.01, 0.05, size=shape[:-1]).astype(scale_dtype)
    zero_point = rng.integers(-9, 9, size=shape[:-1]).astype(np.int32)
    dy = rng.standard_normal(shape).astype(out_dtype)
    dy[::89, ::11] = np.nan
    carrier = q_dtype not in ("int8", "uint8")

    def backward(module):
        def run(q_, s, zp, ct):
            if carrier:
                _, pullback = jax.vjp(
                    lambda a, b: module.dequantize_per_token(a, b, zp, out_dtype=out_dtype), q_, s
                )
                return pullback(ct)
            _, pullback = jax.vjp(
                lambda b: module.dequantize_per_token(q_, b, zp, out_dtype=out_dtype), s
            )
            return (None, *pullback(ct))

        return run

    args = (q, scale, zero_point, dy)
    dq, dscale = _run_on(device, backward(jdq), args)
    cpu = jax.devices("cpu")[0]
    if carrier:
        want_dq, _ = _run_on(cpu, backward(jdq.reference), args, jit=False)
        assert_bitwise_equal(dq, want_dq, f"dq {shape} {q_dtype}")

        def tangent(module):
            def run(q_, s, zp, tq, ts):
                return jax.jvp(
                    lambda a, b: module.dequantize_per_token(a, b, zp, out_dtype=out_dtype),
                    (q_, s),
                    (tq, ts),
                )[1]

            return run

        tangents = (q, scale, zero_point, rng.standard_normal(shape).astype(q_dtype),
                    rng.standard_normal(shape[:-1]).astype(scale_dtype))
        got = _run_on(device, tangent(jdq), tangents)
        _assert_rows_match_alone(device, tangent(jdq), tangents, got, f"tangent of {shape}")
    dscale_only = lambda *a: backward(jdq)(*a)[1]  # noqa: E731
    if device.platform == "cpu" or shape[1] % 16 == 0:
        _assert_rows_match_alone(device, dscale_only, args, dscale, f"dscale of {shape}")
    else:
        # On the GPU the chunk cuts of a row whose D is not a multiple of 16 follow its offset
        # in the flat array (README, Determinism), so the row alone may round differently.
        # Checked instead: the same bits run to run, and within the worst-case bound of a
        # float32 sum, B = (D - 1) * 2**-24 * sum |terms|, of the exact sum, plus the final
        # rounding to dscale's dtype (unit roundoff u): B + u * (|exact| + B).
        assert_bitwise_equal(_run_on(device, dscale_only, args), dscale, f"dscale of {shape} rerun")
        _assert_dscale_within_bound(dscale, q, zero_point, dy, f"dscale of {shape}")


def _assert_dscale_within_bound(dscale, q, zero_point, dy, context):
    """dscale is within the worst-case bound of a float32 sum, B = (D - 1) * 2**-24 *
    sum |terms|, of the exact sum, plus the final rounding to dscale's dtype (unit
    roundoff u): B + u * (|exact| + B); NaN exactly where the exact sum is NaN."""
    zero = np.zeros(q.shape[:-1]) if zero_point is None else zero_point
    terms = dy.astype(np.float64) * (q.astype(np.float64) - zero[:, None])
    exact = terms.sum(axis=1)
    sum_bound = (q.shape[1] - 1) * 2.0**-24 * np.abs(terms).sum(axis=1)
    unit_roundoff = float(ml_dtypes.finfo(np.asarray(dscale).dtype).eps) / 2
    bound = sum_bound + unit_roundoff * (np.abs(exact) + sum_bound)
    got = np.asarray(dscale, np.float64)
    finite = np.isfinite(exact)
    assert np.array_equal(np.isnan(got), np.isnan(exact)), f"{context}: NaN rows"
    assert np.all(np.abs(got[finite] - exact[finite]) <= bound[finite]), context


@pytest.mark.parametrize(
    "shape,q_dtype,out_dtype,with_zero_point",
    [
        # Lanes per row 2, 64, 128 and 256 (a block per row). Enough rows that the CUDA
        # kernel runs full 256-thread blocks on every SM; a few rows run smaller blocks.
        ((20000, 64), "int8", "bfloat16", False),
        ((1200, 1024), "uint8", "float32", True),
        ((300, 4096), "int8", "bfloat16", False),
        ((160, 8192), "int8", "float16", True),
        # float32 dy, rows of 2049 chunks: eight chunks loaded at once, lane 0 one more.
        ((150, 8196), "int8", "float32", True),
    ],
)
def test_dscale_of_a_row_does_not_depend_on_the_call(
    device, shape, q_dtype, out_dtype, with_zero_point
):
    """dscale of integer q (D a multiple of 16, aligned buffers: the CUDA kernel's aligned
    path) has the same bits for the first 1, 7 and 40 rows whether they are the whole call
    or part of a call of many rows, whose blocks hold more rows each; and it is within the
    error bound of a float32 sum."""
    rng = np.random.default_rng(shape[1])
    q = _levels(rng, q_dtype, shape)
    scale = rng.uniform(0.01, 0.05, size=shape[:-1]).astype(np.float32)
    zero_point = rng.integers(100, 156, size=shape[:-1]).astype(np.int32) if with_zero_point else None
    dy = rng.standard_normal(shape).astype(out_dtype)

    def dscale_of(q_, s, zp, ct):
        _, pullback = jax.vjp(
            lambda b: jdq.dequantize_per_token(q_, b, zp, out_dtype=out_dtype), s
        )
        return pullback(ct)[0]

    args = (q, scale, zero_point, dy)
    whole = np.asarray(_run_on(device, dscale_of, args))
    _assert_dscale_within_bound(whole, q, zero_point, dy, f"dscale of {shape}")
    for rows in (1, 7, 40):
        part = tuple(None if a is None else a[:rows] for a in args)
        assert_bitwise_equal(
            _run_on(device, dscale_of, part), whole[:rows], f"dscale of {rows} rows of {shape}"
        )


@pytest.mark.parametrize(
    "shape,x_dtype,scale_dtype,symmetric",
    [
        ((1500, 1001), "bfloat16", "float32", False),
        ((400, 4097), "float32", "float32", True),
        ((70001, 3), "float16", "float16", True),
    ],
)
def test_fake_quantize_backward_over_threads(device, shape, x_dtype, scale_dtype, symmetric):
    """The backward splits whole rows over XLA's CPU threads. grad_x is elementwise: bit for
    bit the reference's. grad_scale is one sum per row, in the kernel's own fixed order: each
    row's bits equal those of that row run alone (too small to split), so the split changes
    nothing and every row was written."""
    rng = np.random.default_rng(sum(shape) + 1)
    x = (rng.standard_normal(shape) * 3).astype(x_dtype)
    x[::97, ::13] = np.inf
    x[::89, ::11] = np.nan
    x[::7, ::5] = 0
    scale = rng.uniform(0.01, 0.05, size=shape[:-1]).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(100, 156, size=shape[:-1]).astype(np.int32)
    dtype = np.int8 if symmetric else np.uint8
    cotangent = rng.standard_normal(shape).astype(x_dtype)

    def backward(module):
        def run(xs, s, zp, ct):
            _, pullback = jax.vjp(
                lambda a, b: module.fake_quantize_per_token(a, b, zp, dtype=dtype), xs, s
            )
            return pullback(ct)

        return run

    args = (x, scale, zero_point, cotangent)
    grad_x, grad_scale = _run_on(device, backward(jdq), args)
    want_x, _ = _run_on(jax.devices("cpu")[0], backward(jdq.reference), args, jit=False)
    assert_bitwise_equal(grad_x, want_x, f"grad_x {shape} {x_dtype} sym={symmetric}")
    grad_scale_only = lambda *a: backward(jdq)(*a)[1]  # noqa: E731
    _assert_rows_match_alone(device, grad_scale_only, args, grad_scale, f"grad_scale of {shape}")


@pytest.mark.parametrize(
    "shape,x_dtype,scale_dtype,symmetric",
    [
        # More than 2^19 vectors: the CUDA row-wise map runs several vectors per
        # thread. 4100 % 8 != 0: vectors cross row ends; zero points.
        ((1025, 4100), "bfloat16", "float32", False),
        ((2048, 4096), "float32", "float32", True),
        ((1100, 4096), "float16", "float16", True),
        # Fewer: one vector per thread (rows of whole vectors, or crossing rows).
        ((3, 8192), "bfloat16", "float32", True),
        ((16, 4100), "float32", "float32", False),
        # At most 2^14 elements: one element per thread (one row: no division by D).
        ((1, 4096), "bfloat16", "float32", True),
        ((1, 8191), "float16", "float32", False),
        ((1, 1), "float32", "float32", False),
        ((2, 8192), "float16", "float16", False),
    ],
)
def test_rowwise_ops_at_each_launch_shape_match_reference(
    device, shape, x_dtype, scale_dtype, symmetric
):
    """Dequantize, static quantize, fake quantize and fake quantize's tangent, with
    infinities, NaN and zeros, at each launch shape of the CUDA row-wise map. The
    reference runs eagerly on the CPU (jitted, XLA:CPU would contract the
    tangent's multiply-add into an FMA)."""
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 3).astype(x_dtype)
    x[::97, ::13] = np.inf
    x[::89, ::11] = np.nan
    x[::7, ::5] = 0
    scale = rng.uniform(0.01, 0.05, size=shape[:-1]).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(100, 156, size=shape[:-1]).astype(np.int32)
    dtype = np.int8 if symmetric else np.uint8
    tangent_x = rng.standard_normal(shape).astype(x_dtype)
    tangent_s = rng.standard_normal(shape[:-1]).astype(scale_dtype)

    def ops(module):
        def run(xs, s, zp, tx, ts):
            quantized = module.quantize_per_token(xs, s, zp, dtype=dtype)
            dequantized = module.dequantize_per_token(quantized, s, zp, out_dtype=x.dtype)
            fake, tangent = jax.jvp(
                lambda a, b: module.fake_quantize_per_token(a, b, zp, dtype=dtype), (xs, s), (tx, ts)
            )
            return quantized, dequantized, fake, tangent

        return run

    args = (x, scale, zero_point, tangent_x, tangent_s)
    got = _run_on(device, ops(jdq), args)
    want = _run_on(cpu, ops(jdq.reference), args, jit=False)
    names = ("quantize", "dequantize", "fake quantize", "fake quantize tangent")
    for name, g, w in zip(names, got, want):
        assert_bitwise_equal(g, w, f"{name} {shape} {x_dtype} sym={symmetric}")

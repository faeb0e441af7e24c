"""quantize_per_token: bit-exact against the jnp reference on CPU and CUDA (the reference is
evaluated on the CPU, where XLA divides exactly), every dtype combination and shape form,
ties and near-ties, qmin/qmax, IEEE cases, subnormals per platform, bad input, vmap, and
derivatives; the reference itself is checked against a NumPy evaluation of the contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_dequant as jdq
import numpy_contract as contract
from conftest import assert_bitwise_equal, x64_disabled

CPU = jax.devices("cpu")[0]

# (x dtype, scale dtype): the scale has x's dtype or is float32.
X_SCALE_PAIRS = [
    ("float32", "float32"),
    ("bfloat16", "bfloat16"),
    ("bfloat16", "float32"),
    ("float16", "float16"),
    ("float16", "float32"),
    ("float64", "float64"),
    ("float64", "float32"),
]
STATIC = ("dtype", "qmin", "qmax")


def _put(device, *arrays):
    return [None if a is None else jax.device_put(np.asarray(a), device) for a in arrays]


def ours(device, x, scale, zero_point=None, *, jit=True, **kwargs):
    """Our op on ``device``."""
    fn = jax.jit(jdq.quantize_per_token, static_argnames=STATIC) if jit else jdq.quantize_per_token
    with jax.default_device(device):
        got = fn(*_put(device, x, scale, zero_point), **kwargs)
    assert got.devices() == {device}
    return got


def reference_on_cpu(x, scale, zero_point=None, **kwargs):
    """The package's reference, jitted on the CPU (the GPU divides approximately)."""
    fn = jax.jit(jdq.reference.quantize_per_token, static_argnames=STATIC)
    with jax.default_device(CPU):
        return fn(*_put(CPU, x, scale, zero_point), **kwargs)


def check(device, x, scale, zero_point=None, *, jit=True, context="", **kwargs):
    """Asserts our op on ``device`` equals the CPU reference bit for bit; returns ours."""
    got = ours(device, x, scale, zero_point, jit=jit, **kwargs)
    assert_bitwise_equal(got, reference_on_cpu(x, scale, zero_point, **kwargs), context)
    return np.asarray(got)


def _range(q_dtype, qmin=None, qmax=None):
    info = np.iinfo(q_dtype)
    return (info.min if qmin is None else qmin), (info.max if qmax is None else qmax)


def neighbours(values: np.ndarray, steps) -> np.ndarray:
    """``values`` moved by each of ``steps`` ulps (adjacent representable numbers), stacked
    along a new last axis. Values must be nonzero and finite."""
    values = np.asarray(values)
    uint = np.dtype(f"uint{values.dtype.itemsize * 8}")
    bits = values.view(uint)[..., None].astype(np.int64) + np.asarray(steps, np.int64)
    return bits.astype(uint).view(values.dtype)


def near_tie_inputs(rng, x_dtype, scale_dtype, groups=16):
    """Rows whose scaled values land within a few ulps of a .5 tie, with zero points that
    cancel most of the magnitude (where one rounding and two roundings disagree).

    Each group picks a target ``t = k + 0.5 - zp`` and a value x, and derives the scale
    ``x / t``; its rows use that scale and its 3 neighbours on each side (ulps of the scale
    dtype), and hold x and its neighbours (ulps of x's dtype). With 16-bit scales most
    values are farther from the tie; a power-of-two scale row per group adds exact ties.
    """
    steps = [-3, -2, -1, 0, 1, 2, 3]
    level = rng.integers(-127, 127, groups)
    zero_point = rng.integers(-100, 101, groups).astype(np.int32)
    target = level + 0.5 - zero_point  # a half-integer, never 0
    x = (target * 10.0 ** rng.uniform(-2, 2, groups)).astype(x_dtype)
    scale = (x.astype(np.float64) / target).astype(scale_dtype)
    scales = np.concatenate([neighbours(scale, steps), 2.0 ** rng.integers(-4, 4, (groups, 1))],
                            axis=1).astype(scale_dtype)  # [groups, 8]
    exact_tie = (target[:, None] * scales[:, -1:].astype(np.float64)).astype(x_dtype)
    values = np.concatenate([neighbours(x, steps), exact_tie], axis=1)  # [groups, 8]
    rows = scales.size
    return (
        np.repeat(values, scales.shape[1], axis=0).reshape(rows, -1),
        scales.reshape(rows),
        np.repeat(zero_point, scales.shape[1]),
    )


# --- dtypes and shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype,scale_dtype", X_SCALE_PAIRS)
@pytest.mark.parametrize("q_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_dtype_combination_matches_reference(device, x_dtype, scale_dtype, q_dtype, symmetric):
    rng = np.random.default_rng(0)
    shape = (6, 67)
    x = (rng.standard_normal(shape) * 4).astype(x_dtype)
    scale = rng.uniform(0.01, 0.05, shape[:-1]).astype(scale_dtype)
    low = 0 if q_dtype == "uint8" else -30
    zero_point = None if symmetric else rng.integers(low, low + 60, shape[:-1]).astype(np.int32)
    got = check(device, x, scale, zero_point, dtype=np.dtype(q_dtype),
                context=f"{x_dtype}/{scale_dtype}->{q_dtype}")
    assert got.dtype == np.dtype(q_dtype)
    qmin, qmax = _range(q_dtype)
    # Both ends of the range are reached (values beyond them clip), and values in between too.
    assert got.min() == qmin and got.max() == qmax
    assert len(np.unique(got)) > 20
    expected = contract.quantize(x, scale, zero_point, qmin, qmax)
    np.testing.assert_array_equal(got.astype(np.int64), expected)


@pytest.mark.parametrize(
    "shape",
    [(1,), (5,), (3, 1), (4, 4097), (2, 3, 17), (2, 3, 1, 33), (0, 8), (4, 0), (0,), (2, 0, 3),
     (1, 16), (3, 15), (65, 64), (7, 4096)],
)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize(
    "x_dtype,scale_dtype,q_dtype,symmetric",
    [("bfloat16", "float32", "int8", True), ("float32", "float32", "uint8", False),
     ("float16", "float16", "int8", False), ("float64", "float32", "int8", False)],
)
def test_shape_forms(device, shape, keepdims, jit, x_dtype, scale_dtype, q_dtype, symmetric):
    rng = np.random.default_rng(1)
    row_shape = shape[:-1] + ((1,) if keepdims else ())
    x = (rng.standard_normal(shape) * 2).astype(x_dtype)
    scale = rng.uniform(0.01, 0.05, row_shape).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(0, 60, row_shape).astype(np.int32)
    got = check(device, x, scale, zero_point, dtype=np.dtype(q_dtype), jit=jit,
                context=f"shape {shape} keepdims={keepdims}")
    assert got.shape == shape


def test_unaligned_views_and_odd_widths(device):
    """Slices make XLA hand over buffers whose rows are not 16-byte aligned."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 4099)).astype(jnp.bfloat16)
    scale = rng.uniform(0.01, 0.05, (9,)).astype(np.float32)
    zero_point = rng.integers(-3, 3, size=(9,)).astype(np.int32)

    def sliced(x, scale, zero_point, fn):
        return fn(x[1:, 3:], scale[1:], zero_point[1:])

    args = _put(device, x, scale, zero_point)
    got = jax.jit(sliced, static_argnums=3)(*args, jdq.quantize_per_token)
    want = jax.jit(sliced, static_argnums=3)(*_put(CPU, x, scale, zero_point),
                                             jdq.reference.quantize_per_token)
    assert_bitwise_equal(got, want, "sliced")


# --- ties, near-ties, range --------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", ["float32", "bfloat16", "float16", "float64"])
def test_exact_ties_round_half_to_even(device, x_dtype):
    x = np.array([[2.5, -0.5, 0.5, 1.5, -2.5, 3.5, -3.5, 0.25, 126.5, -127.5]], x_dtype)
    got = check(device, x, np.ones((1,), x_dtype), context="ties, scale 1")
    np.testing.assert_array_equal(got, [[2, 0, 0, 2, -2, 4, -4, 0, 126, -128]])
    # Scale 0.5 (reciprocal 2, exact), zero point 1: 1.25 -> 2.5 + 1 -> 4; 0.75 -> 1.5 + 1 -> 2.
    x = np.array([[1.25, -1.25, 0.25, 0.75]], x_dtype)
    got = check(device, x, np.full((1,), 0.5, x_dtype), np.ones((1,), np.int32), context="zp")
    np.testing.assert_array_equal(got, [[4, -2, 2, 2]])


@pytest.mark.parametrize("x_dtype,scale_dtype", X_SCALE_PAIRS)
@pytest.mark.parametrize("q_dtype", ["int8", "uint8"])
def test_near_ties_match_the_contract(device, x_dtype, scale_dtype, q_dtype):
    """Values a few ulps around k + 0.5 after scaling: kernel == CPU reference == NumPy."""
    rng = np.random.default_rng(3)
    x, scale, zero_point = near_tie_inputs(rng, x_dtype, scale_dtype)
    if q_dtype == "uint8":
        zero_point = zero_point + 128
    got = check(device, x, scale, zero_point, dtype=np.dtype(q_dtype), context="near ties")
    qmin, qmax = _range(q_dtype)
    np.testing.assert_array_equal(
        got.astype(np.int64), contract.quantize(x, scale, zero_point, qmin, qmax)
    )


def test_reference_is_the_contract_where_fma_differs():
    """The jnp reference on the CPU keeps the product's rounding: XLA:CPU would otherwise
    contract x * r + zp into an FMA (one rounding). NumPy rounds each operation."""
    rng = np.random.default_rng(4)
    for x_dtype, scale_dtype in X_SCALE_PAIRS:
        x, scale, zero_point = near_tie_inputs(rng, x_dtype, scale_dtype, groups=64)
        want = contract.quantize(x, scale, zero_point, -128, 127)
        got = np.asarray(reference_on_cpu(x, scale, zero_point)).astype(np.int64)
        np.testing.assert_array_equal(got, want, err_msg=f"{x_dtype}/{scale_dtype}")
    # The float32 inputs do hit values where one rounding (an FMA) and two disagree: the
    # product of two float32 values and an int8-range zero point add exactly in long double.
    x, scale, zero_point = near_tie_inputs(rng, "float32", "float32", groups=64)
    reciprocal = np.float32(1) / scale
    exact = x.astype(np.longdouble) * reciprocal[:, None] + zero_point[:, None]
    one_rounding = np.clip(np.round(exact.astype(np.float32)), -128, 127)
    assert np.any(one_rounding != contract.quantize(x, scale, zero_point, -128, 127))


def test_natural_jnp_expression_differs_only_at_near_ties(device):
    """XLA's compiled ``round(x / s + zp)`` (an FMA on the CPU, an approximate division on
    the GPU) equals our kernel except where the scaled value sits within an ulp of a tie."""
    rng = np.random.default_rng(5)
    tie_x, tie_scale, tie_zp = near_tie_inputs(rng, "float32", "float32", groups=32)
    rows = tie_scale.size
    random_x = (rng.standard_normal(tie_x.shape) * 3).astype(np.float32)
    x = np.concatenate([tie_x, random_x])
    scale = np.concatenate([tie_scale, rng.uniform(0.01, 0.05, rows).astype(np.float32)])
    zero_point = np.concatenate([tie_zp, rng.integers(-50, 50, rows).astype(np.int32)])

    def natural(x, s, zp):
        level = jnp.round(x / s[:, None] + zp[:, None].astype(jnp.float32))
        return jnp.clip(level, -128, 127).astype(jnp.int8)

    with jax.default_device(device):
        theirs = np.asarray(jax.jit(natural)(*_put(device, x, scale, zero_point)))
    got = check(device, x, scale, zero_point, context="natural")
    differ = theirs != got
    exact = x.astype(np.float64) / scale.astype(np.float64)[:, None] + zero_point[:, None]
    distance_to_tie = np.abs(exact - (np.floor(exact) + 0.5))
    tolerance = 2.0**-20 * np.maximum(np.abs(exact), np.abs(zero_point)[:, None] + 1.0)
    assert np.all(distance_to_tie[differ] <= tolerance[differ]), "a difference away from a tie"
    np.testing.assert_array_equal(np.abs(theirs[differ].astype(int) - got[differ]), 1)


@pytest.mark.parametrize(
    "q_dtype,qmin,qmax",
    [("int8", -127, 127), ("int8", -8, 7), ("int8", 0, 0), ("int8", None, 100),
     ("int8", -128, 127), ("uint8", 0, 15), ("uint8", 10, 200), ("uint8", 255, 255),
     ("uint8", 3, None)],
)
def test_custom_ranges_clamp_at_qmin_and_qmax(device, q_dtype, qmin, qmax):
    lo, hi = _range(q_dtype, qmin, qmax)
    scale = np.array([0.5, 0.25], np.float32)  # exact reciprocals
    zero_point = np.array([0, 3], np.int32)
    levels = np.array([lo, hi, lo - 1, hi + 1, lo - 40, hi + 40, (lo + hi) // 2], np.float64)
    x = ((levels[None, :] - zero_point[:, None]) * scale[:, None]).astype(np.float32)
    x = np.concatenate([x, np.full((2, 2), [np.inf, -np.inf], np.float32)], axis=1)
    got = check(device, x, scale, zero_point, dtype=np.dtype(q_dtype), qmin=qmin, qmax=qmax,
                context=f"[{qmin}, {qmax}]")
    expected = np.clip(np.concatenate([np.broadcast_to(levels, (2, 7)), [[hi, lo]] * 2], 1),
                       lo, hi)
    np.testing.assert_array_equal(got, expected)


# --- IEEE cases and subnormals -----------------------------------------------------------------


@pytest.mark.parametrize("x_dtype,scale_dtype", X_SCALE_PAIRS)
def test_ieee_cases(device, x_dtype, scale_dtype):
    big = float(ml_dtypes.finfo(np.dtype(x_dtype)).max)
    row = [np.inf, -np.inf, np.nan, 0.0, -0.0, big, -big, 1.5, -1.5, 1e-3]
    # A large scale whose reciprocal is still normal (so CPU and GPU agree).
    large = {"float16": 65504.0, "bfloat16": 2.0**120, "float32": 2.0**120, "float64": 2.0**1000}
    scale_values = [1.0, 0.0, -0.0, np.inf, -np.inf, np.nan, -2.0,
                    float(ml_dtypes.finfo(np.dtype(scale_dtype)).smallest_normal),
                    large[scale_dtype]]
    x = np.tile(np.array(row, x_dtype), (len(scale_values), 1))
    scale = np.array(scale_values, scale_dtype)
    for zero_point in (None, np.full(len(scale_values), 3, np.int32)):
        got = check(device, x, scale, zero_point, context="ieee")
        np.testing.assert_array_equal(
            got.astype(np.int64), contract.quantize(x, scale, zero_point, -128, 127)
        )
        zp = 0 if zero_point is None else 3
        # scale 1: +-inf saturate, NaN -> zero point.
        np.testing.assert_array_equal(got[0, :3], [127, -128, zp])
        # scale 0: r = inf; 0 * inf is NaN -> zero point, the rest saturates by sign.
        np.testing.assert_array_equal(got[1, :8], [127, -128, zp, zp, zp, 127, -128, 127])
        # NaN scale: every value -> zero point.
        np.testing.assert_array_equal(got[5], zp)


def test_subnormals_follow_the_platform(platform, device):
    """XLA:CPU flushes subnormal inputs to zero, XLA:GPU keeps them; so do our kernels."""
    tiny = np.finfo(np.float32).tiny
    x = np.array([[0.75 * tiny, -0.75 * tiny, 0.25 * tiny, tiny]], np.float32)  # 3 subnormals
    scale = np.array([tiny], np.float32)  # normal; r = 2^126
    got = ours(device, x, scale)
    subnormal_scale = np.array([0.5 * tiny], np.float32)
    x2 = np.array([[tiny, 0.0, -tiny]], np.float32)
    got2 = ours(device, x2, subnormal_scale)
    if platform == "cpu":
        assert_bitwise_equal(got, reference_on_cpu(x, scale), "subnormal x")
        assert_bitwise_equal(got2, reference_on_cpu(x2, subnormal_scale), "subnormal scale")
        np.testing.assert_array_equal(got, [[0, 0, 0, 1]])
        np.testing.assert_array_equal(got2, [[127, 0, -128]])  # r = 1 / 0 = inf
    else:
        np.testing.assert_array_equal(got, contract.quantize(x, scale, None, -128, 127))
        np.testing.assert_array_equal(got, [[1, -1, 0, 1]])
        np.testing.assert_array_equal(got2, [[2, 0, -2]])  # r = 2^127


# --- randomized ----------------------------------------------------------------------------------


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
    x_dtype, scale_dtype = data.draw(st.sampled_from(X_SCALE_PAIRS), label="pair")
    q_dtype = data.draw(st.sampled_from(["int8", "uint8"]), label="q_dtype")
    info = np.iinfo(q_dtype)
    bounds = sorted(data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=2,
                                       max_size=2), label="bounds"))
    use_bounds = data.draw(st.booleans(), label="custom range")
    qmin, qmax = bounds if use_bounds else (None, None)
    symmetric = data.draw(st.booleans(), label="symmetric")
    keepdims = data.draw(st.booleans(), label="keepdims")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    row_shape = shape[:-1] + ((1,) if keepdims else ())
    scale = 10.0 ** rng.uniform(-4, 3, size=row_shape) * rng.choice([-1.0, 1.0], size=row_shape)
    scale = scale.astype(scale_dtype)
    x = rng.standard_normal(shape) * np.abs(scale.astype(np.float64).reshape(shape[:-1] + (1,)))
    with np.errstate(over="ignore"):  # float16 may overflow to inf: one more special
        x = (x * 10.0 ** rng.uniform(0, 3)).astype(x_dtype)
    zero_point = None if symmetric else rng.integers(-300, 300, size=row_shape).astype(np.int32)
    check(device, x, scale, zero_point, dtype=np.dtype(q_dtype), qmin=qmin, qmax=qmax,
          context=f"{shape} {x_dtype}/{scale_dtype}->{q_dtype} [{qmin}, {qmax}]")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_round_trip_within_half_a_step(device, data):
    """dequantize(quantize(x)) is within scale/2 of x wherever x was not clipped."""
    x_dtype, scale_dtype = data.draw(st.sampled_from(X_SCALE_PAIRS), label="pair")
    q_dtype = data.draw(st.sampled_from(["int8", "uint8"]), label="q_dtype")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    scale = (10.0 ** rng.uniform(-3, 2, size=(5,))).astype(scale_dtype)
    zero_point = rng.integers(0 if q_dtype == "uint8" else -128, 128, size=(5,)).astype(np.int32)
    x = (rng.uniform(-300, 300, (5, 99)) * scale.astype(np.float64)[:, None]).astype(x_dtype)
    out_dtype = np.dtype(contract.compute_dtype(x_dtype, scale_dtype))
    with jax.default_device(device):
        args = _put(device, x, scale, zero_point)
        q = jdq.quantize_per_token(*args, dtype=np.dtype(q_dtype))
        back = jdq.dequantize_per_token(q, args[1].astype(np.float32) if out_dtype == np.float32
                                        else args[1], args[2], out_dtype=out_dtype)
    q, back = np.asarray(q).astype(np.int64), np.asarray(back).astype(np.float64)
    info = np.iinfo(q_dtype)
    inside = (q > info.min) & (q < info.max)
    assert inside.sum() > 100
    s = scale.astype(np.float64)[:, None]
    x64 = x.astype(np.float64)
    eps = float(np.finfo(out_dtype).eps)
    error = np.abs(back - x64)
    assert np.all((error <= s / 2 + 4 * eps * (np.abs(x64) + np.abs(back)))[inside])


# --- transformations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_axes",
    [(0, 0, 0), (1, 1, 1), (2, 0, None), (None, 0, 0), (0, None, None), (0, 0, None)],
)
def test_vmap_matches_a_loop(device, in_axes):
    rng = np.random.default_rng(6)
    batch, rows, cols = 3, 4, 21
    shapes = {"x": (rows, cols), "scale": (rows,), "zp": (rows,)}

    def batched(shape, axis):
        return shape if axis is None else shape[:axis] + (batch,) + shape[axis:]

    x = (rng.standard_normal(batched(shapes["x"], in_axes[0])) * 2).astype(np.float32)
    scale = rng.uniform(0.01, 0.05, batched(shapes["scale"], in_axes[1])).astype(np.float32)
    zero_point = rng.integers(-9, 9, batched(shapes["zp"], in_axes[2])).astype(np.int32)
    args = _put(device, x, scale, zero_point)
    with jax.default_device(device):
        got = jax.jit(jax.vmap(jdq.quantize_per_token, in_axes=in_axes))(*args)
        take = lambda a, axis, b: a if axis is None else jnp.take(a, b, axis=axis)  # noqa: E731
        want = jnp.stack([
            jdq.quantize_per_token(*(take(a, ax, b) for a, ax in zip(args, in_axes)))
            for b in range(batch)
        ])
    assert_bitwise_equal(got, want, f"vmap {in_axes}")
    jaxpr = jax.make_jaxpr(jax.vmap(jdq.quantize_per_token, in_axes=in_axes))(*args)
    names = [e.primitive.name for e in jaxpr.eqns]
    assert names.count("jax_dequant_quantize_per_token") == 1  # no loop


def test_grad_is_zero_and_runs_no_kernel(device):
    """q is integer: gradients through it are zero (x and scale), forward mode gives float0."""
    rng = np.random.default_rng(7)
    x, scale = _put(device, rng.standard_normal((4, 33)).astype(np.float32),
                    rng.uniform(0.01, 0.05, (4,)).astype(np.float32))
    zero_point = jax.device_put(np.full((4,), 2, np.int32), device)
    frozen = jax.lax.stop_gradient

    def loss(x, scale):
        q = jdq.quantize_per_token(x, scale, zero_point)
        return jnp.sum(jdq.dequantize_per_token(q, frozen(scale), zero_point))

    with jax.default_device(device):
        dx, dscale = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, scale)
        np.testing.assert_array_equal(dx, np.zeros((4, 33), np.float32))
        np.testing.assert_array_equal(dscale, np.zeros((4,), np.float32))
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, scale)
        names = [e.primitive.name for e in jaxpr.eqns]
        assert names.count("jax_dequant_quantize_per_token") == 1  # the forward only
        # Forward mode: a float0 tangent for the integer output.
        q, q_dot = jax.jvp(lambda x, s: jdq.quantize_per_token(x, s), (x, scale),
                           (jnp.ones_like(x), jnp.ones_like(scale)))
        assert q_dot.dtype == jax.dtypes.float0 and q_dot.shape == q.shape
        value, linear = jax.linearize(loss, x, scale)
        np.testing.assert_array_equal(linear(jnp.ones_like(x), jnp.ones_like(scale)), 0.0)
        # vmap of grad composes.
        per_example = jax.vmap(jax.grad(lambda x: loss(x, scale)))(jnp.stack([x, x]))
        np.testing.assert_array_equal(per_example, 0.0)


def test_lowers_to_our_custom_call(platform, device):
    x = np.zeros((4, 8), np.float32)
    scale = np.ones((4,), np.float32)
    jaxpr = jax.make_jaxpr(jdq.quantize_per_token)(x, scale)
    assert [e.primitive.name for e in jaxpr.eqns] == ["jax_dequant_quantize_per_token"]
    with jax.default_device(device):
        text = jax.jit(jdq.quantize_per_token).lower(x, scale).as_text()
    assert "jax_dequant_quantize_per_token" in text


def test_reference_implementation_is_used_only_when_asked():
    x = np.zeros((4, 8), np.float32)
    scale = np.ones((4,), np.float32)
    with jdq.use_implementation("reference"):
        jaxpr = jax.make_jaxpr(lambda x, s: jdq.quantize_per_token(x, s))(x, scale)
    assert "jax_dequant" not in str(jaxpr)
    jaxpr = jax.make_jaxpr(lambda x, s: jdq.quantize_per_token(x, s))(x, scale)
    assert "jax_dequant_quantize_per_token" in str(jaxpr)


def test_kernel_plan():
    plan = jdq.kernel_plan("quantize_per_token", "bfloat16", "int8", scale_dtype="float32",
                           platform="cpu")
    assert plan.available and plan.deterministic and plan.bit_stable
    assert plan.math_precision == "float32" and plan.workspace_bytes == 0
    f64 = jdq.kernel_plan("quantize_per_token", "float64", "uint8", platform="cuda")
    assert f64.math_precision == "float64"
    assert f64.available == ("cuda" in jdq.KERNEL_PLATFORMS)
    with pytest.raises(TypeError, match="scale dtype bfloat16 with x dtype float16"):
        jdq.kernel_plan("quantize_per_token", "float16", "int8", scale_dtype="bfloat16")
    with pytest.raises(TypeError, match="dtype must be int8 or uint8"):
        jdq.kernel_plan("quantize_per_token", "float32", "int16")


# --- bad input -----------------------------------------------------------------------------------

_X = np.zeros((4, 8), np.float32)
_S = np.ones((4,), np.float32)
_ZP = np.zeros((4,), np.int32)

BAD_INPUTS = [
    ("x scalar", dict(x=np.float32(3), scale=np.float32(1)), ValueError, "x must have rank"),
    ("x int8", dict(x=_X.astype(np.int8), scale=_S), TypeError, "x must be one of"),
    ("x bool", dict(x=_X.astype(bool), scale=_S), TypeError, "x must be one of"),
    ("x int32", dict(x=_X.astype(np.int32), scale=_S), TypeError, "x must be one of"),
    ("x complex", dict(x=_X.astype(np.complex64), scale=_S), TypeError, "x must be one of"),
    ("x None", dict(x=None, scale=_S), TypeError, "x must be an array"),
    ("x string", dict(x="abc", scale=_S), TypeError, "x must be an array"),
    ("scale int", dict(x=_X, scale=_S.astype(np.int32)), TypeError, "scale must be one of"),
    ("scale bool", dict(x=_X, scale=_S.astype(bool)), TypeError, "scale must be one of"),
    ("scale wrong length", dict(x=_X, scale=_S[:3]), ValueError, "scale must have shape"),
    ("scale full shape", dict(x=_X, scale=np.ones((4, 8), np.float32)), ValueError,
     "scale must have shape"),
    ("scale bf16 with f16 x", dict(x=_X.astype(np.float16), scale=_S.astype(jnp.bfloat16)),
     TypeError, "scale dtype bfloat16 with x dtype float16"),
    ("scale f16 with f32 x", dict(x=_X, scale=_S.astype(np.float16)), TypeError,
     "scale dtype float16 with x dtype float32"),
    ("zero_point float", dict(x=_X, scale=_S, zero_point=_ZP.astype(np.float32)), TypeError,
     "zero_point must be int32"),
    ("zero_point int8", dict(x=_X, scale=_S, zero_point=_ZP.astype(np.int8)), TypeError,
     "zero_point must be int32"),
    ("zero_point shape", dict(x=_X, scale=_S, zero_point=_ZP[:2]), ValueError,
     "zero_point must have shape"),
    ("dtype int16", dict(x=_X, scale=_S, dtype=np.int16), TypeError,
     "dtype must be int8 or uint8"),
    ("dtype float32", dict(x=_X, scale=_S, dtype=np.float32), TypeError,
     "dtype must be int8 or uint8"),
    ("dtype nonsense", dict(x=_X, scale=_S, dtype="nonsense"), TypeError, "dtype must be"),
    ("qmin > qmax", dict(x=_X, scale=_S, qmin=5, qmax=4), ValueError, "qmin must be <= qmax"),
    ("qmax above int8", dict(x=_X, scale=_S, qmax=128), ValueError, "qmax must lie in"),
    ("qmin below uint8", dict(x=_X, scale=_S, dtype=np.uint8, qmin=-1), ValueError,
     "qmin must lie in"),
    ("qmax above uint8", dict(x=_X, scale=_S, dtype=np.uint8, qmax=256), ValueError,
     "qmax must lie in"),
    ("qmin float", dict(x=_X, scale=_S, qmin=1.0), TypeError, "qmin must be a Python int"),
    ("qmax bool", dict(x=_X, scale=_S, qmax=True), TypeError, "qmax must be a Python int"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("jit", [False, True])
def test_bad_input_raises_before_any_kernel(name, kwargs, error, message, jit):
    kwargs = dict(kwargs)
    static = {k: kwargs.pop(k) for k in STATIC if k in kwargs}
    fn = lambda **kw: jdq.quantize_per_token(**kw, **static)  # noqa: E731
    if jit and all(isinstance(a, np.ndarray) for a in kwargs.values()):
        fn = jax.jit(fn)
    with pytest.raises(error, match=message):
        fn(**kwargs)
    with pytest.raises(error, match=message):
        jdq.reference.quantize_per_token(**kwargs, **static)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(x=_X.astype(np.float64), scale=_S), "x is float64 but jax_enable_x64 is off"),
        (dict(x=_X, scale=_S.astype(np.float64)), "scale is float64 but jax_enable_x64 is off"),
    ],
)
def test_float64_without_x64_is_an_error(kwargs, message):
    with x64_disabled():
        with pytest.raises(TypeError, match=message):
            jdq.quantize_per_token(**kwargs)

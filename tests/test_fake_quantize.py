"""fake_quantize_per_token: forward bit-exact against the jnp reference on CPU and
CUDA (given and dynamic scale), gradients (clipped STE with endpoints, LSQ) against
jax.grad of the reference, forward mode, vmap, only-needed kernels, bad input.

On the GPU the reference is evaluated on the CPU: XLA:GPU's division is
approximate, the contract's reciprocal is not. Subnormal-dependent cases are
tested per platform.
"""

from __future__ import annotations

import functools
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
from conftest import assert_bitwise_equal, x64_disabled

X_DTYPES = ["float16", "bfloat16", "float32", "float64"]
CPU = jax.devices("cpu")[0]

# (name, storage, static scale?, zero point?)
FORMS = {
    "static int8": ("int8", True, False),
    "static int8 zp": ("int8", True, True),
    "static uint8 zp": ("uint8", True, True),
    "dynamic int8": ("int8", False, False),
    "dynamic uint8": ("uint8", False, False),
}


def _scale_dtypes(x_dtype):
    return [x_dtype] if x_dtype == "float32" else [x_dtype, "float32"]


def _make(rng, shape, x_dtype, form, scale_dtype=None, keepdims=False, spread=1.5):
    """Random x [shape] and the form's scale / zero point (None for dynamic).

    A static scale is about absmax / 127 per row, scaled by U(1/spread, spread)
    so that some values clip and some rows use only part of the range.
    """
    storage, static, has_zp = FORMS[form]
    x = (rng.standard_normal(shape) * rng.choice([0.01, 1.0, 30.0])).astype(x_dtype)
    if not static:
        return x, None, None, storage
    rows = shape[:-1] + ((1,) if keepdims else ())
    absmax = np.abs(x.astype(np.float64)).max(axis=-1, initial=1.0).reshape(rows)
    scale = absmax / 127 * rng.uniform(1 / spread, spread, size=rows)
    scale = scale.astype(scale_dtype or x_dtype)
    zero_point = None
    if has_zp:
        low, high = (100, 156) if storage == "uint8" else (-10, 11)
        zero_point = rng.integers(low, high, size=rows).astype(np.int32)
    return x, scale, zero_point, storage


def _run(fn, device, *args, jit=True, **kwargs):
    args = [None if a is None else jax.device_put(a, device) for a in args]
    call = functools.partial(fn, **kwargs)
    with jax.default_device(device):
        return (jax.jit(call) if jit else call)(*args)


def _both(device, x, scale, zero_point, jit=True, **kwargs):
    """(ours on device, reference on the CPU)."""
    got = _run(jdq.fake_quantize_per_token, device, x, scale, zero_point, jit=jit, **kwargs)
    want = _run(jdq.reference.fake_quantize_per_token, CPU, x, scale, zero_point, **kwargs)
    return got, want


def _vjp(fn, device, x, scale, zero_point, cotangent, **kwargs):
    """(dx, dscale) of fn at (x, scale) for the cotangent; dscale None for a dynamic scale."""

    def pullback(x, scale, zero_point, cotangent):
        if scale is None:
            _, vjp = jax.vjp(lambda x: fn(x, None, zero_point, **kwargs), x)
            return vjp(cotangent)[0], None
        _, vjp = jax.vjp(lambda x, s: fn(x, s, zero_point, **kwargs), x, scale)
        return vjp(cotangent)

    return _run(pullback, device, x, scale, zero_point, cotangent)


def _reference_lsq_terms(x, scale, zero_point, cotangent, qmin, qmax):
    """|dy * lsq| per element in float64, for the reassociation bound of ds."""
    compute = np.dtype(np.float64)
    scale = np.asarray(scale).reshape(x.shape[:-1])
    zp = None if zero_point is None else np.asarray(zero_point).reshape(x.shape[:-1])
    _, lsq = jdq.reference.fake_quantize_slopes(
        jnp.asarray(x, device=CPU), 1 / jnp.asarray(scale, compute, device=CPU),
        None if zp is None else jnp.asarray(zp, device=CPU), qmin, qmax, compute,
    )
    return np.abs(np.asarray(cotangent, np.float64) * np.asarray(lsq))


def _assert_ds_close(got, want, terms, x_dtype, scale_dtype, context=""):
    """ds equals the reference up to reassociation of the row sum and one output rounding."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, context
    compute = jdq._validation.compute_dtype(x_dtype, scale_dtype)
    d = terms.shape[-1] if terms.ndim else 1
    bound = terms.sum(-1).reshape(want.shape) * (2 * d + 4) * float(np.finfo(compute).eps)
    bound += np.abs(want.astype(np.float64)) * 2 * float(ml_dtypes.finfo(got.dtype).eps)
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got64), np.isnan(want64), err_msg=context)
    ok = np.isnan(want64) | (np.abs(got64 - want64) <= bound + 1e-300)
    assert ok.all(), f"{context}: ds {got64[~ok]} != {want64[~ok]} (bound {bound[~ok]})"


def _check_grads_against_reference(device, x, scale, zero_point, **kwargs):
    rng = np.random.default_rng(123)
    cotangent = rng.standard_normal(x.shape).astype(x.dtype)
    got = _vjp(jdq.fake_quantize_per_token, device, x, scale, zero_point, cotangent, **kwargs)
    want = _vjp(jdq.reference.fake_quantize_per_token, CPU, x, scale, zero_point, cotangent,
                **kwargs)
    assert_bitwise_equal(got[0], want[0], "dx")
    if scale is not None:
        info = np.iinfo(kwargs.get("dtype", np.int8))
        qmin = kwargs.get("qmin") if kwargs.get("qmin") is not None else int(info.min)
        qmax = kwargs.get("qmax") if kwargs.get("qmax") is not None else int(info.max)
        terms = _reference_lsq_terms(x, scale, zero_point, cotangent, qmin, qmax)
        _assert_ds_close(got[1], want[1], terms, x.dtype, scale.dtype, "ds")
    return got


# --- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("form", list(FORMS))
def test_every_dtype_matches_reference(device, x_dtype, form):
    rng = np.random.default_rng(0)
    for scale_dtype in _scale_dtypes(x_dtype) if FORMS[form][1] else [None]:
        x, scale, zero_point, storage = _make(rng, (7, 45), x_dtype, form, scale_dtype)
        got, want = _both(device, x, scale, zero_point, dtype=np.dtype(storage))
        assert got.dtype == np.dtype(x_dtype) and got.devices() == {device}
        assert_bitwise_equal(got, want, f"{form} x={x_dtype} scale={scale_dtype}")
        _check_grads_against_reference(device, x, scale, zero_point, dtype=np.dtype(storage))


SHAPES = [(1,), (5,), (3, 1), (4, 4097), (2, 3, 17), (0, 8), (4, 0), (0,), (2, 0, 3), (65, 64),
          (2, 16384)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("form", ["static int8", "static uint8 zp", "dynamic int8", "dynamic uint8"])
def test_shape_forms(device, shape, form):
    rng = np.random.default_rng(1)
    x_dtype = "bfloat16" if form.startswith("dynamic") else "float32"
    storage = FORMS[form][0]
    for keepdims, jit in ((False, True), (True, False)):
        x, scale, zero_point, _ = _make(rng, shape, x_dtype, form, "float32", keepdims)
        got, want = _both(device, x, scale, zero_point, jit=jit, dtype=np.dtype(storage))
        assert got.shape == shape
        assert_bitwise_equal(got, want, f"{shape} {form} keepdims={keepdims} jit={jit}")
    dx, ds = _check_grads_against_reference(device, x, scale, zero_point, dtype=np.dtype(storage))
    if scale is not None:
        assert ds.shape == scale.shape  # keepdims scale: the gradient keeps its shape


@pytest.mark.parametrize(
    "storage,qmin,qmax",
    [("int8", -127, 127), ("int8", -8, 7), ("int8", 0, 100), ("uint8", 10, 200), ("uint8", 0, 15),
     ("int8", -128, -1), ("uint8", 7, 7)],
)
@pytest.mark.parametrize("static", [True, False])
def test_custom_range(device, storage, qmin, qmax, static):
    rng = np.random.default_rng(2)
    form = ("static " + storage + (" zp" if storage == "uint8" else "")) if static else (
        "dynamic " + storage)
    x, scale, zero_point, _ = _make(rng, (6, 130), "float32", form)
    kwargs = dict(dtype=np.dtype(storage), qmin=qmin, qmax=qmax)
    if not static and not (storage == "uint8" and qmin < qmax or qmin <= 0 < qmax):
        with pytest.raises(ValueError, match="dynamic"):
            jdq.fake_quantize_per_token(x, **kwargs)
        return
    got, want = _both(device, x, scale, zero_point, **kwargs)
    assert_bitwise_equal(got, want, f"{form} [{qmin}, {qmax}]")
    levels = np.round(np.asarray(want, np.float64) / (np.asarray(scale, np.float64)[:, None]
                      if static else 1))
    if static and zero_point is None:
        assert levels.min() >= qmin and levels.max() <= qmax
    _check_grads_against_reference(device, x, scale, zero_point, **kwargs)


def test_equals_dequantize_of_quantize(device):
    """The fused forward is bit for bit dequantize(quantize(x)) (no int8 in memory)."""
    rng = np.random.default_rng(3)
    for x_dtype, scale_dtype in (("bfloat16", "float32"), ("float16", "float16"),
                                 ("float32", "float32")):
        x, scale, zero_point, _ = _make(rng, (5, 300), x_dtype, "static uint8 zp", scale_dtype)
        with jax.default_device(CPU):
            q = jdq.reference.quantize_per_token(x, scale, zero_point, dtype=jnp.uint8)
        roundtrip = _run(jdq.dequantize_per_token, device, q, scale, zero_point,
                         out_dtype=np.dtype(x_dtype))
        got = _run(jdq.fake_quantize_per_token, device, x, scale, zero_point, dtype=jnp.uint8)
        assert_bitwise_equal(got, roundtrip, f"{x_dtype}/{scale_dtype}")


def test_reference_is_exact_at_near_ties(device):
    """Products within an ulp of a .5 tie, where an FMA (what XLA:CPU makes of a naive
    `x * r + zp`) rounds differently: the jitted reference, a NumPy evaluation of the
    contract (every operation rounded on its own) and the kernel agree."""
    rng = np.random.default_rng(12)
    scale = rng.uniform(0.01, 1.0, size=64).astype(np.float32)
    reciprocal = np.float32(1) / scale
    ties = rng.integers(-100, 100, size=(64, 32)).astype(np.float32) + np.float32(0.5)
    x = (ties * scale[:, None]).astype(np.float32)
    x = np.nextafter(x, x * rng.choice([0.5, 2.0], size=x.shape).astype(np.float32))
    zero_point = rng.integers(-20, 20, size=64).astype(np.int32)
    zp = zero_point[:, None].astype(np.float32)
    level = np.clip(np.round(x * reciprocal[:, None] + zp), -128, 127) + np.float32(0)
    want = ((level - zp) * scale[:, None]).astype(np.float32)
    fused = np.float32(x.astype(np.float64) * reciprocal[:, None].astype(np.float64) + zp)
    assert np.count_nonzero(np.round(fused) != np.round(x * reciprocal[:, None] + zp)) > 0
    got, reference = _both(device, x, scale, zero_point)
    assert_bitwise_equal(reference, want, "jitted reference vs NumPy")
    assert_bitwise_equal(got, want, "kernel vs NumPy")


def _special_row(dtype, scale):
    """NaN, +-inf, +-0, exact ties of the level grid, the range ends and beyond."""
    ties = [(k + 0.5) * scale for k in (-3, -2, 0, 1, 2, 126)]
    values = [np.nan, np.inf, -np.inf, 0.0, -0.0, 127 * scale, -128 * scale, 127.5 * scale,
              -128.5 * scale, 1e4 * scale, -1e4 * scale, 0.49 * scale, -0.51 * scale] + ties
    return np.array(values, np.float64).astype(dtype)


@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_special_values(device, x_dtype):
    scale = np.array([0.25, 1.0, 0.0, np.inf, np.nan, -0.5, 3.0], np.float32)
    x = np.stack([_special_row(x_dtype, s if np.isfinite(s) and s else 1.0) for s in scale])
    scale = scale.astype(x_dtype if x_dtype != "float32" else "float32")
    for zero_point in (None, np.array([0, 3, -5, 0, 1, 2, -128], np.int32)):
        got, want = _both(device, x, scale, zero_point)
        assert_bitwise_equal(got, want, f"specials {x_dtype} zp={zero_point is not None}")
        _check_grads_against_reference(device, x, scale, zero_point)
    for storage in ("int8", "uint8"):
        got, want = _both(device, x, None, None, dtype=np.dtype(storage))
        assert_bitwise_equal(got, want, f"dynamic specials {x_dtype} {storage}")
        _check_grads_against_reference(device, x, None, None, dtype=np.dtype(storage))


def test_dynamic_rows(device):
    """Zero rows give zeros; a NaN row is all NaN; in a row with an infinity the scale is the
    largest allowed, so the finite values become 0 and the infinity stays infinite."""
    x = np.array(
        [[0.0] * 6, [0.0, -0.0] * 3, [1.0, np.nan, 2.0, 0.0, 0.0, 0.0],
         [np.inf, 1.0, -1.0, 0.0, 0.0, 0.0], [-np.inf, np.inf, 0.0, 0.0, 0.0, 0.0],
         [1e-30, -2e-30, 0.0, 0.0, 0.0, 0.0], [3e38, -3e38, 1.0, 0.0, 0.0, 0.0]],
        np.float32,
    )
    for storage in ("int8", "uint8"):
        got, want = _both(device, x, None, None, dtype=np.dtype(storage))
        assert_bitwise_equal(got, want, f"dynamic rows {storage}")
        got = np.asarray(got)
        np.testing.assert_array_equal(got[:2], 0.0)
        assert np.isnan(got[2]).all()
        np.testing.assert_array_equal(got[3], [np.inf, 0, 0, 0, 0, 0])
        # Both ends infinite: uint8's zero point saturates to 255, where +inf lands (y = 0).
        assert got[4][0] == -np.inf and (got[4][2:] == 0).all()
        assert got[6, 0] > 1e38 and got[6, 1] < -1e38


def test_row_length_variants(device):
    """Rows of many lengths: one warp per row up to many packs per thread, held or re-read."""
    rng = np.random.default_rng(4)
    for x_dtype, cols in (("float32", 7), ("bfloat16", 33), ("float32", 1024), ("bfloat16", 4095),
                          ("float32", 8200), ("bfloat16", 70000)):
        x = (rng.standard_normal((3, cols)) * 4).astype(x_dtype)
        for storage in ("int8", "uint8"):
            got, want = _both(device, x, None, None, dtype=np.dtype(storage))
            assert_bitwise_equal(got, want, f"D={cols} {storage}")
        if cols in (33, 8200):
            scale = (np.abs(x.astype(np.float32)).max(-1) / 100).astype(np.float32)
            _check_grads_against_reference(device, x, scale, None)


def test_unaligned_views(device):
    """Slices make XLA pass buffers that are not 16-byte aligned row by row."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4099)).astype(np.float32)
    scale = (np.abs(x).max(-1) / 120).astype(np.float32)
    cotangent = rng.standard_normal((8, 4096)).astype(np.float32)

    def sliced(x, scale, cotangent, fn):
        y, vjp = jax.vjp(lambda x, s: fn(x[1:, 3:], s[1:]), x, scale)
        dyn = fn(x[1:, 3:])
        return y, vjp(cotangent), dyn

    x_d, s_d, c_d = (jax.device_put(a, device) for a in (x, scale, cotangent))
    got = jax.jit(sliced, static_argnums=3)(x_d, s_d, c_d, jdq.fake_quantize_per_token)
    with jax.default_device(CPU):
        want = jax.jit(sliced, static_argnums=3)(x, scale, cotangent,
                                                 jdq.reference.fake_quantize_per_token)
    assert_bitwise_equal(got[0], want[0], "sliced forward")
    assert_bitwise_equal(got[1][0], want[1][0], "sliced dx")
    np.testing.assert_allclose(got[1][1], want[1][1], rtol=1e-4, atol=1e-3)
    assert_bitwise_equal(got[2], want[2], "sliced dynamic")


def test_subnormals_follow_the_platform(platform, device):
    """A row of subnormals: the CPU flushes it to zeros (scale 1), the GPU keeps it."""
    tiny = np.float32(1e-40)
    x = np.array([[tiny, -2 * tiny, 3 * tiny, 0.0]], np.float32)
    got = np.asarray(_run(jdq.fake_quantize_per_token, device, x, None, None))
    if platform == "cpu":
        want = _run(jdq.reference.fake_quantize_per_token, CPU, x, None, None)
        assert_bitwise_equal(got, want, "cpu subnormal row")
        np.testing.assert_array_equal(got, 0.0)
    else:
        # absmax * (1/127) is below the smallest normal, so the scale is FLT_MIN and every
        # subnormal rounds to level 0: the row fake-quantizes to zeros.
        np.testing.assert_array_equal(got, 0.0)
    # A subnormal scale: flushed to 0 on the CPU (everything becomes 0); kept on the GPU,
    # where 1 / 2^-130 overflows to inf, so nonzero values saturate at qmin/qmax.
    scale = np.array([np.float32(2.0 ** -130)], np.float32)
    got = np.asarray(_run(jdq.fake_quantize_per_token, device, x, scale, None))
    if platform == "cpu":
        want = _run(jdq.reference.fake_quantize_per_token, CPU, x, scale, None)
        assert_bitwise_equal(got, want, "cpu subnormal scale")
        assert np.all(np.isnan(got[0, :3]) | (got[0, :3] == 0))
    else:
        levels = np.where(x > 0, 127.0, np.where(x < 0, -128.0, 0.0))
        np.testing.assert_array_equal(got, (levels * 2.0 ** -130).astype(np.float32))
        assert np.count_nonzero(got) == 3


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_cases_match_reference(device, data):
    rank = data.draw(st.integers(1, 3), label="rank")
    shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=rank - 1, max_size=rank - 1)))
    shape += (data.draw(st.integers(0, 300), label="D"),)
    x_dtype = data.draw(st.sampled_from(X_DTYPES), label="x_dtype")
    static = data.draw(st.booleans(), label="static")
    storage = data.draw(st.sampled_from(["int8", "uint8"]), label="storage")
    info = np.iinfo(storage)
    qmin = data.draw(st.integers(int(info.min), int(info.max)), label="qmin")
    qmax = data.draw(st.integers(qmin, int(info.max)), label="qmax")
    if not static:
        if storage == "int8":
            qmin = min(qmin, 0)
            qmax = max(qmax, 1)
        elif qmin == qmax:
            qmin, qmax = 0, 255
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    magnitude = 10.0 ** rng.uniform(-3, 3)
    x = rng.standard_normal(shape) * magnitude
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])
    mask = rng.random(shape) < 0.03
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    x = x.astype(x_dtype)
    scale = zero_point = None
    if static:
        keepdims = data.draw(st.booleans(), label="keepdims")
        rows = shape[:-1] + ((1,) if keepdims else ())
        scale_dtype = data.draw(st.sampled_from(_scale_dtypes(x_dtype)), label="scale_dtype")
        scale = magnitude / 100 * 10.0 ** rng.uniform(-1, 1, size=rows)
        scale = (scale * rng.choice([-1.0, 1.0], p=[0.1, 0.9], size=rows)).astype(scale_dtype)
        if data.draw(st.booleans(), label="zero_point"):
            zero_point = rng.integers(-300, 300, size=rows).astype(np.int32)
    kwargs = dict(dtype=np.dtype(storage), qmin=qmin, qmax=qmax)
    got, want = _both(device, x, scale, zero_point, **kwargs)
    assert_bitwise_equal(got, want, f"{shape} {x_dtype} static={static} {kwargs}")


# --- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_endpoint_keeps_its_gradient_under_absmax_scaling(device, x_dtype):
    """pytorch/ao #4806: the row max lands exactly on qmax and must keep dy (endpoints included)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 64)).astype(x_dtype)
    x[:, 5] = np.abs(x.astype(np.float32)).max(-1) * 2  # a unique row max
    x[:, 9] = -x[:, 5]  # and its negative: level -127 under symmetric scaling
    absmax = np.abs(x.astype(np.float64)).max(-1)
    absmax_scale = (absmax.astype(np.float32) * np.float32(1 / 127)).astype(np.float32)
    cotangent = np.ones(x.shape, x_dtype)
    for scale in (absmax_scale, None):
        y = np.asarray(_run(jdq.fake_quantize_per_token, device, x, scale, None), np.float64)
        np.testing.assert_allclose(y[:, 5] / absmax_scale, 127, rtol=1e-2)  # level qmax
        dx, _ = _vjp(jdq.fake_quantize_per_token, device, x, scale, None, cotangent)
        np.testing.assert_array_equal(np.asarray(dx, np.float64), 1.0)
    # (Asymmetric uint8 rounds the zero point, which moves the grid by up to half a step:
    # the row's ends land within half a step of qmin/qmax and may round past them. That is
    # the contract's mask too; test_every_dtype_matches_reference checks it.)
    # Just past the end of the range (level qmax + 1) the gradient is 0.
    # 126.5 ties to the even 126 (inside), 127.5 to 128 (outside).
    beyond = np.array([[128.0, 127.0, -128.0, -129.0, 126.5, 127.5]], x_dtype)
    dx, _ = _vjp(jdq.fake_quantize_per_token, device, beyond, np.ones(1, np.float32), None,
                 np.ones(beyond.shape, x_dtype))
    np.testing.assert_array_equal(np.asarray(dx, np.float64), [[0, 1, 1, 0, 1, 0]])


def test_clipped_gradient_and_lsq_by_hand(device):
    """dx = dy inside, 0 outside; ds = sum dy*((q - zp) - x/s) inside + dy*(qbound - zp) outside."""
    # Levels x + 2: 2, 4, -0, 102, -98, 7 (qmax), -8 (qmin), 8, -8 (tie to even), -9.
    x = np.array([[0.3, 1.7, -2.2, 100.0, -100.0, 5.0, -10.0, 5.5, -10.5, -11.0]], np.float64)
    scale = np.array([1.0], np.float64)
    zero_point = np.array([2], np.int32)
    kwargs = dict(qmin=-8, qmax=7)
    cotangent = np.arange(1.0, 11.0)[None]
    dx, ds = _vjp(jdq.fake_quantize_per_token, device, x, scale, zero_point, cotangent, **kwargs)
    levels = np.round(x + 2)
    inside = (levels >= -8) & (levels <= 7)
    np.testing.assert_array_equal(inside[0], [1, 1, 1, 0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(dx, np.where(inside, cotangent, 0.0))
    lsq = np.where(levels > 7, 7 - 2, np.where(levels < -8, -8 - 2, (levels - 2) - x))
    np.testing.assert_allclose(ds, (cotangent * lsq).sum(-1), rtol=1e-12)
    # The int32 zero point gets no gradient: float0, as JAX requires.
    grad_zp = jax.grad(
        lambda zp: jnp.sum(jdq.fake_quantize_per_token(x, scale, zp, **kwargs)), allow_int=True
    )(zero_point)
    assert grad_zp.dtype == jax.dtypes.float0 and grad_zp.shape == zero_point.shape
    # A NaN x has level zp: inside, so dy passes; its LSQ term is NaN.
    dx, ds = _vjp(jdq.fake_quantize_per_token, device, np.array([[np.nan, 1.0]]), scale,
                  zero_point, np.ones((1, 2)), **kwargs)
    np.testing.assert_array_equal(dx, [[1.0, 1.0]])
    assert np.isnan(ds).all()


@pytest.mark.parametrize("x_dtype,scale_dtype",
                         [("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16"),
                          ("float16", "float32"), ("float64", "float64"), ("float64", "float32")])
def test_lsq_scale_gradient_matches_reference(device, x_dtype, scale_dtype):
    rng = np.random.default_rng(7)
    for form in ("static int8", "static uint8 zp"):
        x, scale, zero_point, storage = _make(rng, (33, 1000), x_dtype, form, scale_dtype,
                                              spread=3.0)
        _check_grads_against_reference(device, x, scale, zero_point, dtype=np.dtype(storage))


def test_scale_gradient_is_deterministic(device):
    rng = np.random.default_rng(8)
    x, scale, _, _ = _make(rng, (64, 8192), "bfloat16", "static int8", "float32", spread=3.0)
    cotangent = rng.standard_normal(x.shape).astype(x.dtype)
    first = _vjp(jdq.fake_quantize_per_token, device, x, scale, None, cotangent)[1]
    for _ in range(3):
        again = _vjp(jdq.fake_quantize_per_token, device, x, scale, None, cotangent)[1]
        assert_bitwise_equal(again, first, "ds run to run")


def test_check_grads_where_the_function_is_smooth():
    """With every value clipped, y = (qbound - zp) * s is linear in s: LSQ is the true gradient."""
    x = np.array([[50.0, -60.0, 70.0], [-80.0, 90.0, 100.0]])
    zero_point = np.array([1, -2], np.int32)
    fn = lambda s: jdq.fake_quantize_per_token(x, s, zero_point, qmin=-5, qmax=5)  # noqa: E731
    check_grads(fn, (np.array([0.5, 0.25]),), order=2, modes=("fwd", "rev"))


def _forward_pair_args(device, rng):
    x, scale, zero_point, _ = _make(rng, (3, 20), "float32", "static int8 zp", spread=2.0)
    return [jax.device_put(a, device) for a in (x, scale, zero_point)]


def test_forward_mode(device):
    rng = np.random.default_rng(9)
    x, scale, zero_point = _forward_pair_args(device, rng)
    tangent_x = jax.device_put(rng.standard_normal(x.shape).astype(np.float32), device)
    tangent_s = jax.device_put(rng.standard_normal(scale.shape).astype(np.float32), device)
    fn = lambda x, s: jdq.fake_quantize_per_token(x, s, zero_point)  # noqa: E731
    cpu = [jax.device_put(a, CPU) for a in (x, scale, zero_point, tangent_x, tangent_s)]
    ref = lambda x, s: jdq.reference.fake_quantize_per_token(x, s, cpu[2])  # noqa: E731

    with jax.default_device(device):
        y, t_xs = jax.jvp(fn, (x, scale), (tangent_x, tangent_s))
        _, t_x = jax.jvp(fn, (x, scale), (tangent_x, jnp.zeros_like(scale)))
        _, t_s = jax.jvp(lambda s: fn(x, s), (scale,), (tangent_s,))
        y_lin, linear = jax.linearize(fn, x, scale)
        jac_x_fwd, jac_s_fwd = jax.jacfwd(fn, argnums=(0, 1))(x, scale)
        jac_x_rev, jac_s_rev = jax.jacrev(fn, argnums=(0, 1))(x, scale)
        dyn_t = jax.jvp(jdq.fake_quantize_per_token, (x,), (tangent_x,))[1]
    with jax.default_device(CPU):
        want_y, want_xs = jax.jvp(ref, tuple(cpu[:2]), tuple(cpu[3:]))
        _, want_x = jax.jvp(ref, tuple(cpu[:2]), (cpu[3], jnp.zeros_like(cpu[1])))
        _, want_s = jax.jvp(lambda s: ref(cpu[0], s), (cpu[1],), (cpu[4],))
        want_dyn = jax.jvp(jdq.reference.fake_quantize_per_token, (cpu[0],), (cpu[3],))[1]
    assert_bitwise_equal(y, want_y, "jvp primal")
    assert_bitwise_equal(t_x, want_x, "jvp x tangent")
    assert_bitwise_equal(t_s, want_s, "jvp scale tangent")
    assert_bitwise_equal(dyn_t, want_dyn, "jvp dynamic")
    # Both tangents: XLA may contract the reference's mask*t_x + lsq*t_s into an FMA.
    np.testing.assert_allclose(t_xs, want_xs, rtol=1e-6, atol=1e-6)
    assert_bitwise_equal(y_lin, y, "linearize primal")
    assert_bitwise_equal(linear(tangent_x, jnp.zeros_like(scale)), t_x, "linearize")
    assert_bitwise_equal(jac_x_fwd, jac_x_rev, "jacfwd == jacrev (x)")
    np.testing.assert_allclose(jac_s_fwd, jac_s_rev, rtol=1e-6)
    # The x Jacobian is diagonal per element with the clipped-STE mask on it.
    diag = np.einsum("ndnd->nd", np.asarray(jac_x_fwd))
    assert np.count_nonzero(np.asarray(jac_x_fwd)) == np.count_nonzero(diag)


def test_second_order_is_zero_through_the_straight_through_rule():
    x = np.array([[0.3, 1.7, -2.2, 100.0]])
    scale = np.array([0.5])

    def loss(x, s):
        return jnp.sum(jdq.fake_quantize_per_token(x, s) ** 2)

    hess_s = jax.hessian(loss, argnums=1)(x, scale)
    _, lsq = jdq.reference.fake_quantize_slopes(jnp.asarray(x), 1 / jnp.asarray(scale), None,
                                                -128, 127, np.dtype(np.float64))
    np.testing.assert_allclose(hess_s, [[2 * np.sum(np.asarray(lsq) ** 2)]], rtol=1e-12)
    hess_x = jax.hessian(loss, argnums=0)(x, scale)
    inside = np.array([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(hess_x.reshape(4, 4), 2 * np.diag(inside))


def _custom_calls(fn, *args) -> dict:
    text = jax.jit(fn).lower(*args).as_text()
    names = re.findall(r"custom_call @(jax_dequant_\w+)", text)
    return {name: names.count(name) for name in set(names)}


def test_only_needed_kernels_run():
    rng = np.random.default_rng(10)
    x, scale, _, _ = _make(rng, (4, 32), "bfloat16", "static int8", "float32")
    w = rng.standard_normal(x.shape).astype(x.dtype)
    fq = jdq.fake_quantize_per_token
    forward, dynamic = "jax_dequant_fake_quantize_per_token", "jax_dequant_fake_quantize_per_token_dynamic"
    tangent, backward = forward + "_tangent", forward + "_backward"

    def loss(x, s):
        return jnp.sum((fq(x, s) * w).astype(jnp.float32))

    # Gradient for x only: the element-wise mask kernel, no dscale work at all.
    assert _custom_calls(jax.value_and_grad(loss), x, scale) == {forward: 1, tangent: 1}
    assert _custom_calls(jax.grad(loss), x, scale) == {tangent: 1}
    # x and scale: one fused backward pass for both.
    assert _custom_calls(jax.grad(loss, argnums=(0, 1)), x, scale) == {backward: 1}
    # Scale only: the backward pass without the dx output.
    text = jax.jit(jax.grad(loss, argnums=1)).lower(x, scale).as_text()
    assert re.findall(r"custom_call @(jax_dequant_\w+)", text) == [backward]
    assert "want_grad_x = false" in text
    # A frozen scale in forward mode never forms a scale tangent.
    text = jax.jit(lambda x, t: jax.jvp(lambda x: fq(x, scale), (x,), (t,))).lower(x, x).as_text()
    assert "has_tangent_scale = false" in text
    # Dynamic: the fused forward and the mask kernel; the choice gets no gradient.
    dyn = lambda x: jnp.sum((fq(x) * w).astype(jnp.float32))  # noqa: E731
    assert _custom_calls(jax.value_and_grad(dyn), x) == {dynamic: 1, tangent: 1}
    assert _custom_calls(lambda x: fq(x), x) == {dynamic: 1}


def test_vmap_matches_loop():
    rng = np.random.default_rng(11)
    x3 = rng.standard_normal((3, 5, 40)).astype(np.float32)
    x2 = x3[:, 0]
    s35 = (np.abs(x3).max(-1) / 100).astype(np.float32)
    s3, s53 = s35[:, 0], s35.T.copy()
    zp35 = rng.integers(-4, 4, size=(3, 5)).astype(np.int32)
    zp3 = zp35[:, 0]
    fq = jdq.fake_quantize_per_token

    def grads(x, s, zp, ct):
        _, vjp = jax.vjp(lambda x, s: fq(x, s, zp), x, s)
        return vjp(ct)

    cases = {
        "all on axis 0": ((x3, s35, zp35), (0, 0, 0)),
        "x on axis 1": ((x3, s3, zp3), (1, None, None)),
        "scale only": ((x2, s53, zp3), (None, 0, None)),
        "x on its last axis": ((x3, s3, zp3), (2, None, None)),
    }
    for name, (args, in_axes) in cases.items():
        size = next(a.shape[ax] for a, ax in zip(args, in_axes) if ax is not None)

        def one(i, args=args, in_axes=in_axes):
            return [a if ax is None else np.take(a, i, axis=ax) for a, ax in zip(args, in_axes)]

        batched = jax.vmap(fq, in_axes=in_axes)(*args)
        looped = np.stack([fq(*one(i)) for i in range(size)])
        assert_bitwise_equal(batched, looped, f"forward, {name}")
        ct = rng.standard_normal(batched.shape).astype(np.float32)
        b_dx, b_ds = jax.vmap(grads, in_axes=in_axes + (0,))(*args, ct)
        for i in range(size):
            dx, ds = grads(*one(i), ct[i])
            assert_bitwise_equal(b_dx[i], dx, f"dx, {name}")
            assert_bitwise_equal(b_ds[i], ds, f"ds, {name}")
    # Dynamic form, its gradient, and a batched jvp (jacfwd's path).
    batched = jax.vmap(fq, in_axes=1)(x3)
    assert_bitwise_equal(batched, np.stack([fq(x3[:, i]) for i in range(5)]), "dynamic vmap")
    dyn_grad = jax.vmap(jax.grad(lambda r: jnp.sum(fq(r) * r)))(x3)
    assert_bitwise_equal(dyn_grad[1], jax.grad(lambda r: jnp.sum(fq(r) * r))(x3[1]), "vmap grad")
    tangents = rng.standard_normal((2,) + x2.shape).astype(np.float32)
    jvps = jax.vmap(lambda t: jax.jvp(lambda x: fq(x, s3), (x2,), (t,))[1])(tangents)
    assert_bitwise_equal(jvps[1], jax.jvp(lambda x: fq(x, s3), (x2,), (tangents[1],))[1], "jvp")


# --- plumbing ------------------------------------------------------------------------------------


def test_lowers_to_our_custom_calls(platform, device):
    x = np.zeros((4, 8), np.float32)
    scale = np.ones((4,), np.float32)
    jaxpr = jax.make_jaxpr(jdq.fake_quantize_per_token)(x, scale)
    assert [e.primitive.name for e in jaxpr.eqns] == ["jax_dequant_fake_quantize_per_token"]
    with jax.default_device(device):
        text = jax.jit(jdq.fake_quantize_per_token).lower(x).as_text()
    assert "jax_dequant_fake_quantize_per_token_dynamic" in text


def test_reference_implementation_is_used_only_when_asked():
    x = np.zeros((4, 8), np.float32)
    scale = np.ones((4,), np.float32)
    with jdq.use_implementation("reference"):
        jaxpr = jax.make_jaxpr(lambda x, s: jdq.fake_quantize_per_token(x, s))(x, scale)
        dyn = jax.make_jaxpr(lambda x: jdq.fake_quantize_per_token(x))(x)
    assert "jax_dequant" not in str(jaxpr) and "jax_dequant" not in str(dyn)
    assert "jax_dequant_fake" in str(jax.make_jaxpr(lambda x: jdq.fake_quantize_per_token(x))(x))


def test_kernel_plan():
    static = jdq.kernel_plan("fake_quantize_per_token", "bfloat16", "bfloat16",
                             scale_dtype="float32", platform="cpu")
    assert static.available and static.deterministic and static.workspace_bytes == 0
    assert static.math_precision == "float32" and static.accumulator == "float32"
    assert "dynamic" in jdq.kernel_plan("fake_quantize_per_token", "float32", "float32",
                                        platform="cuda").kernel
    f64 = jdq.kernel_plan("fake_quantize_per_token", "float64", "float64", platform="cpu")
    assert f64.math_precision == "float64"
    with pytest.raises(TypeError, match="returns x's dtype"):
        jdq.kernel_plan("fake_quantize_per_token", "float32", "int8")
    with pytest.raises(TypeError, match="not supported"):
        jdq.kernel_plan("fake_quantize_per_token", "float16", "float16", scale_dtype="bfloat16")


# --- bad input -----------------------------------------------------------------------------------

_X = np.zeros((4, 8), np.float32)
_S = np.ones((4,), np.float32)
_ZP = np.zeros((4,), np.int32)

BAD_INPUTS = [
    ("x scalar", dict(x=np.float32(3)), ValueError, "x must have rank"),
    ("x int8", dict(x=_X.astype(np.int8)), TypeError, "x must be one of"),
    ("x bool", dict(x=_X.astype(bool), scale=_S), TypeError, "x must be one of"),
    ("x complex", dict(x=_X.astype(np.complex64)), TypeError, "x must be one of"),
    ("x string", dict(x="abc"), TypeError, "x must be an array"),
    ("x None", dict(x=None), TypeError, "x must be an array"),
    ("scale int", dict(x=_X, scale=_S.astype(np.int32)), TypeError, "scale must be one of"),
    ("scale wrong length", dict(x=_X, scale=_S[:3]), ValueError, "scale must have shape"),
    ("scale full shape", dict(x=_X, scale=np.ones((4, 8), np.float32)), ValueError,
     "scale must have shape"),
    ("zero_point float", dict(x=_X, scale=_S, zero_point=_ZP.astype(np.float32)), TypeError,
     "zero_point must be int32"),
    ("zero_point shape", dict(x=_X, scale=_S, zero_point=_ZP[:2]), ValueError,
     "zero_point must have shape"),
    ("zero_point without scale", dict(x=_X, zero_point=_ZP), ValueError,
     "zero_point must be None when scale is None"),
    ("dtype int16", dict(x=_X, dtype=np.int16), TypeError, "dtype must be int8 or uint8"),
    ("dtype float32", dict(x=_X, scale=_S, dtype=np.float32), TypeError,
     "dtype must be int8 or uint8"),
    ("qmin > qmax", dict(x=_X, scale=_S, qmin=5, qmax=4), ValueError, "qmin must be <= qmax"),
    ("qmin below int8", dict(x=_X, qmin=-129), ValueError, r"qmin must lie in \[-128, 127\]"),
    ("qmax above uint8", dict(x=_X, dtype=np.uint8, qmax=256), ValueError, "qmax must lie in"),
    ("qmin not an int", dict(x=_X, scale=_S, qmin=1.5), TypeError, "qmin must be a Python int"),
    ("bf16 scale f16 x", dict(x=_X.astype(np.float16), scale=_S.astype(ml_dtypes.bfloat16)),
     TypeError, "scale dtype bfloat16 with x dtype float16"),
    ("f16 scale f32 x", dict(x=_X, scale=_S.astype(np.float16)), TypeError,
     "scale dtype float16 with x dtype float32"),
    ("dynamic int8 qmax 0", dict(x=_X, qmin=-5, qmax=0), ValueError, "qmin <= 0 < qmax"),
    ("dynamic int8 qmin > 0", dict(x=_X, qmin=1, qmax=7), ValueError, "qmin <= 0 < qmax"),
    ("dynamic uint8 empty range", dict(x=_X, dtype=np.uint8, qmin=3, qmax=3), ValueError,
     "needs qmin < qmax"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("jit", [False, True])
def test_bad_input_raises_before_any_kernel(name, kwargs, error, message, jit):
    kwargs = dict(kwargs)
    static = {k: kwargs.pop(k) for k in ("dtype", "qmin", "qmax") if k in kwargs}
    fn = lambda **kw: jdq.fake_quantize_per_token(**kw, **static)  # noqa: E731
    if jit and all(isinstance(a, np.ndarray) for a in kwargs.values()):
        fn = jax.jit(fn)
    with pytest.raises(error, match=message):
        fn(**kwargs)
    with pytest.raises(error, match=message):
        jdq.reference.fake_quantize_per_token(**kwargs, **static)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(x=_X, scale=_S.astype(np.float64)), "scale is float64 but jax_enable_x64 is off"),
        (dict(x=_X.astype(np.float64)), "x is float64 but jax_enable_x64 is off"),
    ],
)
def test_float64_without_x64_is_an_error(kwargs, message):
    with x64_disabled():
        with pytest.raises(TypeError, match=message):
            jdq.fake_quantize_per_token(**kwargs)

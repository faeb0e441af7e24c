"""quantize_per_token_dynamic: the fused kernels equal the jnp reference (evaluated on the CPU)
bit for bit in q, scale and zero point, on CPU and CUDA: every dtype combination, shape forms
(including the row lengths where the CUDA kernel changes strategy), zero, tiny, huge, Inf and
NaN rows, subnormals per platform, bad input, vmap and derivatives; the reference itself is
checked against a NumPy evaluation of the contract."""

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
X_DTYPES = ["float32", "bfloat16", "float16", "float64"]
SCALE_DTYPES = ["float32", "bfloat16", "float16", "float64"]
# (storage dtype, symmetric)
MODES = [("int8", True), ("int8", False), ("uint8", False)]
STATIC = ("dtype", "symmetric", "scale_dtype")
OP = "jax_dequant_quantize_per_token_dynamic"


def ours(device, x, *, jit=True, **kwargs):
    fn = jdq.quantize_per_token_dynamic
    if jit:
        fn = jax.jit(fn, static_argnames=STATIC)
    with jax.default_device(device):
        got = fn(jax.device_put(np.asarray(x), device), **kwargs)
    assert all(g.devices() == {device} for g in got)
    return got


def reference_on_cpu(x, **kwargs):
    fn = jax.jit(jdq.reference.quantize_per_token_dynamic, static_argnames=STATIC)
    with jax.default_device(CPU):
        return fn(jax.device_put(np.asarray(x), CPU), **kwargs)


def check(device, x, *, jit=True, context="", **kwargs):
    """Our (q, scale, zero_point) on ``device`` == the CPU reference's, bit for bit."""
    got = ours(device, x, jit=jit, **kwargs)
    want = reference_on_cpu(x, **kwargs)
    for name, g, w in zip(("q", "scale", "zero_point"), got, want):
        assert_bitwise_equal(g, w, f"{context}: {name}")
    return tuple(np.asarray(g) for g in got)


def check_contract(got, x, dtype, symmetric, scale_dtype, context=""):
    """The NumPy evaluation of the contract agrees too (inputs without subnormals)."""
    want = contract.quantize_dynamic(np.asarray(x), np.dtype(dtype), symmetric, scale_dtype)
    for name, g, w in zip(("q", "scale", "zero_point"), got, want):
        assert_bitwise_equal(g, w, f"{context}: NumPy contract, {name}")


def _rows(rng, shape, dtype, asymmetric_offsets=True):
    """Rows of varied magnitude and offset (all-positive, all-negative and mixed rows)."""
    x = rng.standard_normal(shape)
    if len(shape) > 1 and shape[-1] and asymmetric_offsets:
        offsets = rng.choice([-3.0, 0.0, 0.5, 3.0], size=shape[:-1] + (1,))
        x = x + offsets
    magnitude = 10.0 ** rng.uniform(-2, 2, size=shape[:-1] + (1,))
    return (x * magnitude).astype(dtype)


# --- dtypes and shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
@pytest.mark.parametrize("dtype,symmetric", MODES)
def test_every_dtype_combination_matches_reference(device, x_dtype, scale_dtype, dtype, symmetric):
    rng = np.random.default_rng(0)
    x = _rows(rng, (12, 67), x_dtype)
    kwargs = dict(dtype=np.dtype(dtype), symmetric=symmetric, scale_dtype=np.dtype(scale_dtype))
    got = check(device, x, context=f"{x_dtype}->{dtype} sym={symmetric} {scale_dtype}", **kwargs)
    check_contract(got, x, dtype, symmetric, scale_dtype)
    q, scale, zero_point = got
    assert q.dtype == np.dtype(dtype) and scale.dtype == np.dtype(scale_dtype)
    assert zero_point.dtype == np.int32 and scale.shape == zero_point.shape == (12,)
    info = np.iinfo(dtype)
    if symmetric:
        np.testing.assert_array_equal(zero_point, 0)
        assert np.all(np.abs(q.astype(int)).max(axis=-1) >= 126)  # the absmax lands on +-127
    else:
        # The widened range [min(row, 0), max(row, 0)] spans the levels, within one level
        # (the zero point is rounded, and so is a 16-bit scale); 0 sits at the zero point.
        x64 = x.astype(np.float64)
        low = np.where(x64.min(-1) < 0, q.min(-1), zero_point)
        high = np.where(x64.max(-1) > 0, q.max(-1), zero_point)
        assert np.all(low <= info.min + 1) and np.all(high >= info.max - 1)


# Row lengths where the CUDA kernel changes strategy: a warp per row up to 32 * 64 bytes,
# a block per row (row held in registers) up to 1024 * 64 bytes, longer rows read twice;
# widths that are not a multiple of 16 bytes use scalar loads (8 elements per thread).
SHAPES = [
    ("bfloat16", (3, 1024)), ("bfloat16", (3, 1032)), ("bfloat16", (2, 16384)),
    ("bfloat16", (2, 32768)), ("bfloat16", (1, 32776)), ("float32", (2, 512)),
    ("float32", (3, 520)), ("float32", (2, 16384)), ("float32", (1, 16388)),
    ("float64", (2, 256)), ("float64", (2, 264)), ("float64", (1, 8194)),
    ("bfloat16", (3, 255)), ("bfloat16", (3, 257)), ("bfloat16", (2, 8193)),
    ("float16", (2, 9001)), ("float32", (2, 8195)), ("bfloat16", (1,)), ("float32", (5,)),
    ("float16", (3, 1)), ("bfloat16", (4, 4097)), ("float32", (2, 3, 17)),
    ("float32", (2, 3, 1, 33)), ("bfloat16", (0, 8)), ("float32", (4, 0)), ("float32", (0,)),
    ("float16", (2, 0, 3)), ("bfloat16", (65, 64)), ("float32", (300, 8)),
]


@pytest.mark.parametrize("x_dtype,shape", SHAPES, ids=[f"{d}-{s}" for d, s in SHAPES])
@pytest.mark.parametrize("dtype,symmetric", MODES)
def test_shape_forms(device, x_dtype, shape, dtype, symmetric):
    rng = np.random.default_rng(1)
    x = _rows(rng, shape, x_dtype)
    kwargs = dict(dtype=np.dtype(dtype), symmetric=symmetric)
    got = check(device, x, context=f"{x_dtype} {shape}", **kwargs)
    assert got[0].shape == shape and got[1].shape == shape[:-1] == got[2].shape


@pytest.mark.parametrize("jit", [True, False])
def test_eager_and_jit_agree(device, jit):
    x = _rows(np.random.default_rng(2), (5, 300), "bfloat16")
    check(device, x, jit=jit, dtype=np.dtype("uint8"), symmetric=False,
          scale_dtype=np.dtype("bfloat16"))


# --- edge rows -----------------------------------------------------------------------------------


def _edge_rows(x_dtype):
    finfo = ml_dtypes.finfo(np.dtype(x_dtype))
    tiny, big = float(finfo.smallest_normal), float(finfo.max)
    width = 9
    rows = {
        "zeros": [0.0] * width,
        "negative zeros": [-0.0] * width,
        "tiny": [tiny * k for k in (1, -2, 3, 4, -5, 6, 7, 8, 9)],
        "one value": [0.0] * 4 + [0.75] + [0.0] * 4,
        "all positive": [1.0 + k for k in range(width)],
        "all negative": [-1.0 - k for k in range(width)],
        "huge": [big, -big] + [1.0] * (width - 2),
        "+inf": [np.inf, 1.0, -2.0] + [0.5] * (width - 3),
        "-inf": [-np.inf, 1.0, -2.0] + [0.5] * (width - 3),
        "both infs": [np.inf, -np.inf] + [3.0] * (width - 2),
        "nan": [1.0, np.nan] + [-2.0] * (width - 2),
        "nan and inf": [np.nan, np.inf] + [0.0] * (width - 2),
    }
    return list(rows), np.array(list(rows.values()), x_dtype)


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
@pytest.mark.parametrize("dtype,symmetric", MODES)
def test_edge_rows(device, x_dtype, scale_dtype, dtype, symmetric):
    names, x = _edge_rows(x_dtype)
    kwargs = dict(dtype=np.dtype(dtype), symmetric=symmetric, scale_dtype=np.dtype(scale_dtype))
    q, scale, zero_point = got = check(device, x, context="edge rows", **kwargs)
    check_contract(got, x, dtype, symmetric, scale_dtype, "edge rows")
    row = {name: i for i, name in enumerate(names)}
    info = np.iinfo(dtype)
    compute = contract.compute_dtype(x_dtype, scale_dtype)
    smallest, largest = contract.scale_bounds(scale_dtype, compute)
    scale64 = scale.astype(np.float64)
    for name in ("zeros", "negative zeros"):  # range 0: scale 1, zero point 0, q 0
        assert scale64[row[name]] == 1.0 and zero_point[row[name]] == 0
        np.testing.assert_array_equal(q[row[name]], 0)
    for name in ("nan", "nan and inf"):  # NaN: NaN scale, zero point 0, every level 0
        assert np.isnan(scale64[row[name]]) and zero_point[row[name]] == 0
        np.testing.assert_array_equal(q[row[name]], 0)
    finite_scale = [i for n, i in row.items() if not n.startswith("nan")]
    assert np.all(np.isfinite(scale64[finite_scale]) & (scale64[finite_scale] > 0))
    assert np.all(scale64[finite_scale] >= smallest)
    assert np.all(scale64[finite_scale] <= largest)
    # A tiny row gets the smallest normal scale, on which its values still have distinct levels
    # (when the scale dtype's normal range reaches down as far as x's).
    if x_dtype == scale_dtype:
        assert len(np.unique(q[row["tiny"]])) == len(np.unique(x[row["tiny"]]))
    # Infinities saturate; the rest of the row is on the scale an infinity forces.
    assert scale64[row["+inf"]] == largest and q[row["+inf"], 0] == info.max
    assert q[row["-inf"], 0] == info.min
    if not symmetric:  # one-signed rows: 0 is an end of the range (within the rounding)
        assert zero_point[row["all positive"]] == info.min
        assert q[row["all positive"]].max() >= info.max - 1
        assert zero_point[row["all negative"]] >= info.max - 1
        assert q[row["all negative"]].min() <= info.min + 1


@pytest.mark.parametrize("x_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("width", [64, 4096])
@pytest.mark.parametrize("dtype,symmetric", MODES)
def test_edge_rows_on_the_vector_paths(device, x_dtype, width, dtype, symmetric):
    """The edge rows tiled to widths of whole 16-byte loads: a warp per row (64) and a block
    per row (4096), where symmetric int8 rows take the CUDA kernel compiled for the saturating
    conversion (NaN gives level 0, infinities saturate) and the others the general path."""
    names, rows = _edge_rows(x_dtype)
    x = np.stack([np.resize(row, width) for row in rows])  # each row repeats its edge values
    q, scale, zero_point = check(device, x, context=f"edge rows x{width}",
                                 dtype=np.dtype(dtype), symmetric=symmetric)
    row = {name: i for i, name in enumerate(names)}
    info = np.iinfo(dtype)
    for name in ("nan", "nan and inf"):
        assert np.isnan(scale[row[name]].astype(np.float64))
        np.testing.assert_array_equal(q[row[name]], 0)
    assert q[row["+inf"], 0] == info.max and q[row["-inf"], 0] == info.min


@pytest.mark.parametrize("dtype,symmetric", MODES)
def test_a_nan_anywhere_makes_the_row_nan(device, dtype, symmetric):
    """Wide rows, many of them: where XLA:CPU's own vectorized max would drop a NaN."""
    rng = np.random.default_rng(6)
    x = _rows(rng, (16, 1024), "float32")
    positions = rng.integers(0, 1024, 16)
    x[np.arange(0, 16, 2), positions[::2]] = np.nan  # even rows get a NaN
    q, scale, zero_point = got = check(device, x, dtype=np.dtype(dtype), symmetric=symmetric)
    check_contract(got, x, dtype, symmetric, "float32")
    np.testing.assert_array_equal(np.isnan(scale), np.arange(16) % 2 == 0)
    np.testing.assert_array_equal(q[::2], 0)
    np.testing.assert_array_equal(zero_point[::2], 0)


def test_subnormals_follow_the_platform(platform, device):
    """XLA:CPU flushes subnormal inputs to zero, XLA:GPU keeps them; so do our kernels."""
    tiny = np.finfo(np.float32).tiny
    x = np.array([[0.75 * tiny, -0.25 * tiny, 0.0]], np.float32)  # a row of subnormals
    q, scale, zero_point = ours(device, x)
    if platform == "cpu":
        got = check(device, x)  # == the CPU reference
        np.testing.assert_array_equal(got[0], 0)  # the row reads as zeros: scale 1
        assert got[1][0] == 1.0
    else:
        check_contract((q, scale, zero_point), x, "int8", True, "float32")
        assert np.asarray(scale)[0] == tiny  # the chosen scale clamps to the smallest normal
        np.testing.assert_array_equal(q, [[1, 0, 0]])


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
    shape += (data.draw(st.integers(0, 700), label="D"),)
    x_dtype = data.draw(st.sampled_from(X_DTYPES), label="x_dtype")
    scale_dtype = data.draw(st.sampled_from(SCALE_DTYPES), label="scale_dtype")
    dtype, symmetric = data.draw(st.sampled_from(MODES), label="mode")
    exponent = data.draw(st.floats(-4, 4) if x_dtype == "float16" else st.floats(-30, 30),
                         label="log10 magnitude")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = _rows(rng, shape, np.float64) * 10.0**exponent
    if x.size and data.draw(st.booleans(), label="specials"):
        flat = x.reshape(-1)
        positions = rng.integers(0, flat.size, 3)
        flat[positions] = rng.choice([np.inf, -np.inf, np.nan, 0.0], 3)
    with np.errstate(over="ignore"):  # float16 overflows to inf: one more special
        x = x.astype(x_dtype)
    check(device, x, dtype=np.dtype(dtype), symmetric=symmetric,
          scale_dtype=np.dtype(scale_dtype), context=f"{shape} {x_dtype}->{dtype} {scale_dtype}")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_round_trip_within_half_a_step(device, data):
    """dequantize(quantize_dynamic(x)) is within scale/2 of every element of a finite row, up
    to the rounding of the stored scale (a 16-bit scale can make the range a fraction of a
    step wider than the levels) and of the arithmetic."""
    x_dtype = data.draw(st.sampled_from(X_DTYPES), label="x_dtype")
    scale_dtype = data.draw(st.sampled_from(SCALE_DTYPES), label="scale_dtype")
    dtype, symmetric = data.draw(st.sampled_from(MODES), label="mode")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = _rows(rng, (6, 200), x_dtype)
    compute = contract.compute_dtype(x_dtype, scale_dtype)
    with jax.default_device(device):
        q, scale, zero_point = jdq.quantize_per_token_dynamic(
            jax.device_put(x, device), dtype=np.dtype(dtype), symmetric=symmetric,
            scale_dtype=np.dtype(scale_dtype))
        dq_scale = scale if scale.dtype in (np.float32, compute) else scale.astype(np.float32)
        back = jdq.dequantize_per_token(q, dq_scale, None if symmetric else zero_point,
                                        out_dtype=compute)
    x64, back = x.astype(np.float64), np.asarray(back).astype(np.float64)
    s = np.asarray(scale).astype(np.float64)[:, None]
    span = np.max(x64, -1, initial=0)[:, None] - np.min(x64, -1, initial=0)[:, None]
    eps = float(np.finfo(compute).eps)
    unit = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11, "float64": 2.0**-53}
    arithmetic = 4 * eps * (np.abs(x64) + np.abs(back) + 256 * s)
    error = np.abs(back - x64)
    assert np.all(error <= s / 2 + unit[scale_dtype] * span + arithmetic)
    q = np.asarray(q).astype(int)
    info = np.iinfo(dtype)
    inside = (q > info.min) & (q < info.max)
    assert np.all(error[inside] <= (s / 2 + arithmetic)[inside])


# --- transformations -----------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("dtype,symmetric", MODES)
def test_vmap_matches_a_loop(device, axis, dtype, symmetric):
    rng = np.random.default_rng(3)
    x = np.moveaxis(_rows(rng, (3, 4, 37), "float32"), 0, axis)
    fn = lambda x: jdq.quantize_per_token_dynamic(x, dtype=dtype, symmetric=symmetric)  # noqa
    with jax.default_device(device):
        x = jax.device_put(x, device)
        got = jax.jit(jax.vmap(fn, in_axes=axis))(x)
        loop = [fn(jnp.take(x, b, axis=axis)) for b in range(3)]
    for i, name in enumerate(("q", "scale", "zero_point")):
        assert_bitwise_equal(got[i], jnp.stack([outs[i] for outs in loop]), f"vmap {name}")
    names = [e.primitive.name for e in jax.make_jaxpr(jax.vmap(fn, in_axes=axis))(x).eqns]
    assert names.count(OP) == 1  # no loop


def test_nested_vmap(device):
    x = _rows(np.random.default_rng(4), (2, 3, 5, 19), "bfloat16")
    fn = jdq.quantize_per_token_dynamic
    with jax.default_device(device):
        x = jax.device_put(x, device)
        got = jax.vmap(jax.vmap(fn, in_axes=1), in_axes=0)(x)
        want = fn(x.transpose(0, 2, 1, 3))  # got[a, b] = fn(x[a, :, b])
    for g, w in zip(got, want):
        assert_bitwise_equal(g, w, "nested vmap")


def test_grad_is_zero_and_runs_no_kernel(device):
    """q and the zero point are integers (float0 tangents); the chosen scale is not
    differentiated (zero tangent). Gradients through the op are zeros, not errors."""
    x = jax.device_put(_rows(np.random.default_rng(5), (4, 33), "float32"), device)

    def loss(x):
        q, scale, zero_point = jdq.quantize_per_token_dynamic(x, dtype=jnp.uint8, symmetric=False)
        return jnp.sum(jdq.dequantize_per_token(q, scale, zero_point)) + jnp.sum(scale)

    with jax.default_device(device):
        np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x), np.zeros((4, 33), np.float32))
        names = [e.primitive.name for e in jax.make_jaxpr(jax.grad(loss))(x).eqns]
        assert names.count(OP) == 1  # the forward only
        outs, tangents = jax.jvp(jdq.quantize_per_token_dynamic, (x,), (jnp.ones_like(x),))
        assert tangents[0].dtype == jax.dtypes.float0 and tangents[0].shape == x.shape
        assert tangents[2].dtype == jax.dtypes.float0 and tangents[2].shape == (4,)
        assert tangents[1].dtype == np.float32
        np.testing.assert_array_equal(tangents[1], 0.0)
        np.testing.assert_array_equal(jax.vmap(jax.grad(loss))(jnp.stack([x, x])), 0.0)
        _, linear = jax.linearize(loss, x)
        np.testing.assert_array_equal(linear(jnp.ones_like(x)), 0.0)


def test_one_fused_kernel(platform, device):
    x = np.zeros((4, 8), np.float32)
    jaxpr = jax.make_jaxpr(jdq.quantize_per_token_dynamic)(x)
    assert [e.primitive.name for e in jaxpr.eqns] == [OP]
    with jax.default_device(device):
        text = jax.jit(jdq.quantize_per_token_dynamic).lower(x).as_text()
    assert text.count(OP) == 1


def test_reference_implementation_is_used_only_when_asked():
    x = np.zeros((4, 8), np.float32)
    with jdq.use_implementation("reference"):
        jaxpr = jax.make_jaxpr(lambda x: jdq.quantize_per_token_dynamic(x))(x)
    assert "jax_dequant" not in str(jaxpr)


def test_kernel_plan():
    plan = jdq.kernel_plan("quantize_per_token_dynamic", "bfloat16", "int8", platform="cpu")
    assert plan.available and plan.deterministic and plan.bit_stable
    assert plan.math_precision == "float32" and plan.accumulator == "float32"
    assert plan.workspace_bytes == 0
    f64 = jdq.kernel_plan("quantize_per_token_dynamic", "float16", "uint8",
                          scale_dtype="float64", platform="cuda")
    assert f64.math_precision == "float64"
    assert f64.available == ("cuda" in jdq.KERNEL_PLATFORMS)


# --- bad input -----------------------------------------------------------------------------------

_X = np.zeros((4, 8), np.float32)

BAD_INPUTS = [
    ("x scalar", dict(x=np.float32(3)), ValueError, "x must have rank"),
    ("x int8", dict(x=_X.astype(np.int8)), TypeError, "x must be one of"),
    ("x bool", dict(x=_X.astype(bool)), TypeError, "x must be one of"),
    ("x int32", dict(x=_X.astype(np.int32)), TypeError, "x must be one of"),
    ("x complex", dict(x=_X.astype(np.complex64)), TypeError, "x must be one of"),
    ("x None", dict(x=None), TypeError, "x must be an array"),
    ("x string", dict(x="abc"), TypeError, "x must be an array"),
    ("dtype int16", dict(x=_X, dtype=np.int16), TypeError, "dtype must be int8 or uint8"),
    ("dtype float32", dict(x=_X, dtype=np.float32), TypeError, "dtype must be int8 or uint8"),
    ("dtype nonsense", dict(x=_X, dtype="nonsense"), TypeError, "dtype must be"),
    ("symmetric uint8", dict(x=_X, dtype=np.uint8), ValueError,
     "symmetric=True needs int8 storage"),
    ("symmetric int", dict(x=_X, symmetric=1), TypeError, "symmetric must be a bool"),
    ("symmetric str", dict(x=_X, symmetric="yes"), TypeError, "symmetric must be a bool"),
    ("symmetric None", dict(x=_X, symmetric=None), TypeError, "symmetric must be a bool"),
    ("scale_dtype int8", dict(x=_X, scale_dtype=np.int8), TypeError,
     "scale_dtype must be one of"),
    ("scale_dtype complex", dict(x=_X, scale_dtype=np.complex64), TypeError,
     "scale_dtype must be one of"),
    ("scale_dtype nonsense", dict(x=_X, scale_dtype="nonsense"), TypeError,
     "scale_dtype must be a float dtype"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("jit", [False, True])
def test_bad_input_raises_before_any_kernel(name, kwargs, error, message, jit):
    kwargs = dict(kwargs)
    static = {k: kwargs.pop(k) for k in STATIC if k in kwargs}
    fn = lambda **kw: jdq.quantize_per_token_dynamic(**kw, **static)  # noqa: E731
    if jit and all(isinstance(a, np.ndarray) for a in kwargs.values()):
        fn = jax.jit(fn)
    with pytest.raises(error, match=message):
        fn(**kwargs)
    with pytest.raises(error, match=message):
        jdq.reference.quantize_per_token_dynamic(**kwargs, **static)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(x=_X.astype(np.float64)), "x is float64 but jax_enable_x64 is off"),
        (dict(x=_X, scale_dtype=np.float64), "scale_dtype is float64"),
    ],
)
def test_float64_without_x64_is_an_error(kwargs, message):
    with x64_disabled():
        with pytest.raises(TypeError, match=message):
            jdq.quantize_per_token_dynamic(**kwargs)

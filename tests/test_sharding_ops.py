"""Every op's partitioning on 8 CPU devices: the dequantize backward kernels and
fake quantization (given and dynamic scale). Sharded results are bit-equal to
the single-device ones (sums over a sharded D use integer-valued data so the
partial sums are exact), and the compiled HLO holds only the collectives the
math needs (SPEC.md, Scale-out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jax_dequant as jdq
from conftest import assert_bitwise_equal
from test_sharding import count_collectives, cpu_devices, make_mesh

SPECS = {
    "tokens": (P("x", None), P("x")),
    "d": (P(None, "y"), P(None)),
    "both": (P("x", "y"), P("x")),
}


def _run(fn, specs, *args):
    mesh = make_mesh()
    full_spec, row_spec = specs
    placed = [
        jax.device_put(a, NamedSharding(mesh, full_spec if a.ndim == 2 else row_spec))
        for a in args
    ]
    compiled = jax.jit(fn).lower(*placed).compile()
    single = jax.jit(fn)(*[jax.device_put(a, cpu_devices()[0]) for a in args])
    return compiled(*placed), single, count_collectives(compiled.as_text())


def _total(counts):
    return sum(counts.values())


@pytest.mark.parametrize("layout", list(SPECS))
def test_dequantize_gradient_sums_dscale_over_d_shards_only(layout):
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (8, 64)).astype(np.int8)
    scale = rng.integers(1, 9, (8,)).astype(np.float32) / 8
    zero_point = rng.integers(-3, 3, (8,)).astype(np.int32)
    dy = rng.integers(-4, 4, (8, 64)).astype(np.float32)

    def dscale(scale, q, zero_point, dy):
        _, vjp = jax.vjp(lambda s: jdq.dequantize_per_token(q, s, zero_point), scale)
        return vjp(dy)[0]

    got, want, counts = _run(dscale, SPECS[layout], scale, q, zero_point, dy)
    assert_bitwise_equal(got, want, layout)
    assert counts["all-gather"] == 0, counts
    assert counts["all-reduce"] == (0 if layout == "tokens" else 1), counts


@pytest.mark.parametrize("layout", list(SPECS))
def test_float_carrier_dq_is_local(layout):
    rng = np.random.default_rng(1)
    q = rng.integers(-128, 128, (8, 64)).astype(np.float32)
    scale = rng.random((8,)).astype(np.float32)
    dy = rng.standard_normal((8, 64)).astype(np.float32)

    def dq(q, scale, dy):
        _, vjp = jax.vjp(lambda q: jdq.dequantize_per_token(q, scale), q)
        return vjp(dy)[0]

    got, want, counts = _run(dq, SPECS[layout], q, scale, dy)
    assert_bitwise_equal(got, want, layout)
    assert _total(counts) == 0, counts


@pytest.mark.parametrize("layout", list(SPECS))
def test_fake_quantize_with_a_given_scale_is_local(layout):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    scale = (rng.random((8,)) * 0.05 + 0.01).astype(np.float32)
    got, want, counts = _run(jdq.fake_quantize_per_token, SPECS[layout], x, scale)
    assert_bitwise_equal(got, want, layout)
    assert _total(counts) == 0, counts


@pytest.mark.parametrize("layout", list(SPECS))
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_dynamic_fake_quantize_reduces_row_statistics_across_d(layout, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    x[2, 5] = np.nan
    x[3, :] = 0.0
    x[4, 40] = 300.0  # the row's max sits on another D shard than most values

    def fake(x):
        return jdq.fake_quantize_per_token(x, dtype=jnp.dtype(dtype))

    got, want, counts = _run(fake, SPECS[layout], x)
    assert_bitwise_equal(got, want, f"{layout} {dtype}")
    assert counts["all-gather"] == 0, counts
    if layout == "tokens":
        assert _total(counts) == 0, counts
    else:
        assert 1 <= counts["all-reduce"] <= 3, counts  # NaN flag and max (and min), maybe combined


def test_fake_quantize_gradients_sum_ds_over_d_shards():
    rng = np.random.default_rng(4)
    x = (rng.integers(-40, 40, (8, 64)) / 4).astype(np.float32)
    scale = np.full((8,), 0.25, np.float32)
    dy = rng.integers(-3, 3, (8, 64)).astype(np.float32)

    def grads(x, scale, dy):
        _, vjp = jax.vjp(lambda x, s: jdq.fake_quantize_per_token(x, s), x, scale)
        return vjp(dy)

    (got_dx, got_ds), (want_dx, want_ds), counts = _run(grads, SPECS["both"], x, scale, dy)
    assert_bitwise_equal(got_dx, want_dx, "dx")
    assert_bitwise_equal(got_ds, want_ds, "ds")
    assert counts["all-gather"] == 0 and counts["all-reduce"] == 1, counts


@pytest.mark.parametrize("layout", list(SPECS))
def test_quantize_is_local(layout):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    scale = (rng.random((8,)) * 0.05 + 0.01).astype(np.float32)
    zero_point = rng.integers(-9, 9, (8,)).astype(np.int32)
    got, want, counts = _run(jdq.quantize_per_token, SPECS[layout], x, scale, zero_point)
    assert_bitwise_equal(got, want, layout)
    assert _total(counts) == 0, counts


@pytest.mark.parametrize("layout", list(SPECS))
@pytest.mark.parametrize(
    "x_dtype,dtype,symmetric,scale_dtype",
    [("float32", "int8", True, "float32"), ("bfloat16", "uint8", False, "bfloat16"),
     ("float32", "int8", False, "float64"), ("float16", "int8", True, "float16")],
)
def test_dynamic_quantize_reduces_row_statistics_across_d(
    layout, x_dtype, dtype, symmetric, scale_dtype
):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 64)).astype(x_dtype)
    x[2, 5] = np.nan
    x[3, :] = 0.0
    x[4, 40] = 300.0  # the row's max sits on another D shard than most values
    x[5, :] = np.abs(x[5, :])  # one-signed rows: 0 is an end of the range
    x[6, :] = -np.abs(x[6, :])

    def quantize(x):
        return jdq.quantize_per_token_dynamic(
            x, dtype=jnp.dtype(dtype), symmetric=symmetric, scale_dtype=jnp.dtype(scale_dtype)
        )

    got, want, counts = _run(quantize, SPECS[layout], x)
    for name, g, w in zip(("q", "scale", "zero_point"), got, want):
        assert_bitwise_equal(g, w, f"{layout} {x_dtype}->{dtype} {scale_dtype}: {name}")
    assert counts["all-gather"] == 0, counts
    if layout == "tokens":
        assert _total(counts) == 0, counts
    else:
        assert 1 <= counts["all-reduce"] <= 3, counts  # NaN flag and max (and min), maybe combined

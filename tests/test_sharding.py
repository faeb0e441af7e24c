"""Scale-out (SPEC.md): sharded jax.jit, jax.shard_map, explicit-axis meshes, jax.export and
CUDA graphs.

The sharding tests run on 8 CPU devices (tests/conftest.py asks JAX for them before it starts),
so they run on any machine, a GPU one included; with fewer devices they fail, never skip. Each
sharded result is compared bit for bit with the unsharded one, and the collectives in the
compiled HLO are counted against what the math needs: none for an op that is elementwise along
D, one all-reduce (psum) for a sum over a sharded D, one all-reduce (pmax) for a row maximum.

Only dequantize_per_token exists on this branch. The ReduceOverD and RowStatistics declarations
are exercised through small jnp stand-in primitives, partitioned by the same machinery; the
real backward and dynamic-quantization primitives adopt it with their declaration.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jax_dequant as jdq
from conftest import CPU_DEVICES_FOR_SHARDING, assert_bitwise_equal, cuda_devices, require_platform
from jax_dequant import _native, _partitioning
from jax_dequant._primitive_utils import define_primitive

AXIS_TYPE = getattr(jax.sharding, "AxisType", None)
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
_COLLECTIVE_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
DEQUANT_TARGET = "jax_dequant_dequantize_per_token"

# --- helpers --------------------------------------------------------------------------------------


def cpu_devices() -> list:
    """The 8 CPU devices the sharding tests need; fails (never skips) with fewer."""
    devices = jax.devices("cpu")
    if len(devices) < CPU_DEVICES_FOR_SHARDING:
        pytest.fail(
            f"the sharding tests need {CPU_DEVICES_FOR_SHARDING} CPU devices, JAX has "
            f"{len(devices)}: tests/conftest.py sets jax_num_cpu_devices before JAX starts; "
            "something started the CPU backend earlier or XLA_FLAGS asks for fewer "
            "(--xla_force_host_platform_device_count)"
        )
    return devices[:CPU_DEVICES_FOR_SHARDING]


def make_mesh(axis_type: str = "auto", shape=(4, 2), names=("x", "y")) -> jax.sharding.Mesh:
    devices = np.array(cpu_devices()).reshape(shape)
    if AXIS_TYPE is None:
        if axis_type != "auto":
            pytest.skip(f"jax {jax.__version__} has no jax.sharding.AxisType (explicit meshes)")
        return jax.sharding.Mesh(devices, names)
    kind = AXIS_TYPE.Explicit if axis_type == "explicit" else AXIS_TYPE.Auto
    return jax.sharding.Mesh(devices, names, axis_types=(kind,) * len(names))


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective ops in compiled HLO text, by kind (async pairs count once, at -start)."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        for match in _COLLECTIVE_OP.finditer(line):
            counts[match.group(1)] += 1
    return counts


def no_collectives() -> dict[str, int]:
    return dict.fromkeys(COLLECTIVES, 0)


def custom_call_result_shapes(hlo_text: str, target: str) -> list[str]:
    """The result shapes (e.g. ``f32[4,32]``) of the custom calls to ``target``."""
    shapes = []
    for line in hlo_text.splitlines():
        if f'custom_call_target="{target}"' in line:
            match = re.search(r"=\s*(\S+?\[[0-9,]*\])\S*\s+custom-call\(", line)
            assert match, line
            shapes.append(match.group(1))
    return shapes


def hlo_shape(dtype, shape) -> str:
    names = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}
    return f"{names[np.dtype(dtype).name]}[{','.join(str(d) for d in shape)}]"


@pytest.fixture(params=["shardy", "gspmd"])
def partitioner(request):
    """Runs the test under both of JAX's partitioners."""
    previous = jax.config.jax_use_shardy_partitioner
    jax.config.update("jax_use_shardy_partitioner", request.param == "shardy")
    try:
        yield request.param
    finally:
        jax.config.update("jax_use_shardy_partitioner", previous)


def _levels(rng, dtype, shape):
    low, high = (0, 256) if np.dtype(dtype) == np.uint8 else (-128, 128)
    return rng.integers(low, high, size=shape).astype(dtype)


def _dequant_args(rng, shape, q_dtype, scale_dtype, symmetric):
    q = _levels(rng, "uint8" if q_dtype == "uint8" else "int8", shape).astype(q_dtype)
    scale = (rng.standard_normal(size=shape[:-1]) * 0.05).astype(scale_dtype)
    zero_point = None if symmetric else rng.integers(-9, 9, size=shape[:-1]).astype(np.int32)
    return q, scale, zero_point


def _unsharded(fn, *args, **kwargs):
    """``fn`` run on one CPU device: the result sharded runs must reproduce bit for bit."""
    device = cpu_devices()[0]
    args = [None if a is None else jax.device_put(np.asarray(a), device) for a in args]
    return jax.jit(fn, static_argnames=tuple(kwargs))(*args, **kwargs)


def _put(mesh, array, spec):
    return None if array is None else jax.device_put(array, NamedSharding(mesh, spec))


# --- dequantize_per_token: elementwise along D ----------------------------------------------------

SHARDING_CASES = [
    # name, q shape, q spec, spec of scale and zero point
    ("tokens", (16, 48), P("x"), P("x")),
    ("tokens over both axes, rank 3", (8, 3, 16), P(("x", "y")), P(("x", "y"))),
    ("two token dims", (4, 6, 40), P("x", "y"), P("x", "y")),
    ("D", (8, 64), P(None, "x"), P()),
    ("tokens and D", (16, 64), P("x", "y"), P("x")),
    ("D over both axes", (6, 64), P(None, ("x", "y")), P()),
    ("one row sharded along D", (64,), P("x"), P()),
    ("per-row operands replicated", (16, 32), P("x", "y"), P()),
    ("D = 0", (8, 0), P("x", "y"), P("x")),
    ("no rows", (0, 16), P("x", "y"), P("x")),
]
DTYPE_CASES = [
    ("int8", "float32", "bfloat16", True),
    ("uint8", "float32", "float32", False),
    ("float32", "bfloat16", "bfloat16", False),
]


@pytest.mark.parametrize("case", SHARDING_CASES, ids=[c[0] for c in SHARDING_CASES])
@pytest.mark.parametrize("dtypes", DTYPE_CASES, ids=["-".join(map(str, d)) for d in DTYPE_CASES])
@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_dequantize_runs_on_local_shards_without_collectives(case, dtypes, axis_type, partitioner):
    name, shape, q_spec, row_spec = case
    q_dtype, scale_dtype, out_dtype, symmetric = dtypes
    if axis_type == "explicit" and 0 in shape:
        pytest.skip(
            "JAX bug, not ours: on an explicit mesh an empty sharded result comes back with "
            "full-size shards and cannot be read; plain jnp ops fail the same way"
        )
    mesh = make_mesh(axis_type)
    rng = np.random.default_rng(len(name))
    q, scale, zero_point = _dequant_args(rng, shape, q_dtype, scale_dtype, symmetric)
    want = _unsharded(jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype(out_dtype))

    args = (_put(mesh, q, q_spec), _put(mesh, scale, row_spec), _put(mesh, zero_point, row_spec))
    fn = jax.jit(jdq.dequantize_per_token, static_argnames="out_dtype")
    got = fn(*args, out_dtype=np.dtype(out_dtype))
    assert_bitwise_equal(got, want, f"{name} {dtypes} {axis_type} {partitioner}")
    text = fn.lower(*args, out_dtype=np.dtype(out_dtype)).compile().as_text()
    assert count_collectives(text) == no_collectives(), f"{name}: collectives added"
    if 0 in shape:  # XLA folds an empty result into a (replicated) constant: no call left
        return
    assert got.sharding.is_equivalent_to(args[0].sharding, len(shape)), got.sharding
    local = args[0].sharding.shard_shape(shape)
    assert custom_call_result_shapes(text, DEQUANT_TARGET) == [hlo_shape(out_dtype, local)]


def test_sharded_abstract_values_keep_the_sharding():
    """The abstract eval keeps the input's sharding (explicit meshes carry it in the types)."""
    mesh = make_mesh("explicit")
    q = _put(mesh, np.zeros((8, 16), np.int8), P("x", "y"))
    scale = _put(mesh, np.ones((8,), np.float32), P("x"))
    seen = []

    def fn(q, scale):
        y = jdq.dequantize_per_token(q, scale, out_dtype=jnp.bfloat16)
        seen.append(jax.typeof(y).sharding.spec)
        return y

    out = jax.jit(fn)(q, scale)
    assert seen == [P("x", "y")]
    assert out.sharding.spec == P("x", "y")
    assert jax.eval_shape(jdq.dequantize_per_token, q, scale).sharding.spec == P("x", "y")


def test_conflicting_operand_shardings_are_resharded_correctly(partitioner):
    """q sharded along D on the axis that shards the scale's rows: correct, q keeps its layout."""
    mesh = make_mesh()
    rng = np.random.default_rng(7)
    q, scale, zero_point = _dequant_args(rng, (16, 64), "int8", "float32", False)
    want = _unsharded(jdq.dequantize_per_token, q, scale, zero_point)
    args = (_put(mesh, q, P(None, "x")), _put(mesh, scale, P("x")), _put(mesh, zero_point, P("x")))
    fn = jax.jit(jdq.dequantize_per_token)
    got = fn(*args)
    assert_bitwise_equal(got, want, "conflicting shardings")
    assert got.sharding.is_equivalent_to(args[0].sharding, 2)
    counts = count_collectives(fn.lower(*args).compile().as_text())
    # Only the per-row operands move (gathered to the rows q has); q itself never does.
    assert counts["all-reduce"] == counts["all-to-all"] == counts["collective-permute"] == 0


def test_uneven_shards(partitioner):
    """Token and D dims that the mesh does not divide: XLA pads the shards; results are exact."""
    mesh = make_mesh()
    rng = np.random.default_rng(8)
    q, scale, zero_point = _dequant_args(rng, (13, 37), "int8", "float32", False)
    want = _unsharded(jdq.dequantize_per_token, q, scale, zero_point)

    def fn(q, scale, zero_point):
        q = lax.with_sharding_constraint(q, NamedSharding(mesh, P("x", "y")))
        return jdq.dequantize_per_token(q, scale, zero_point)

    assert_bitwise_equal(jax.jit(fn)(q, scale, zero_point), want, "uneven")


def test_vmap_inside_sharded_jit(partitioner):
    mesh = make_mesh()
    q, scale, _ = _dequant_args(np.random.default_rng(9), (4, 6, 32), "int8", "float32", True)
    want = _unsharded(jax.vmap(jdq.dequantize_per_token), q, scale)
    args = (_put(mesh, q, P("x", None, "y")), _put(mesh, scale, P("x")))
    fn = jax.jit(jax.vmap(jdq.dequantize_per_token))
    assert_bitwise_equal(fn(*args), want, "vmap")
    assert count_collectives(fn.lower(*args).compile().as_text()) == no_collectives()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_shardings(data):
    """Random shapes and random assignments of mesh axes to dims."""
    mesh = make_mesh()
    rank = data.draw(st.integers(1, 3), label="rank")
    assignment = data.draw(
        st.lists(st.sampled_from([None, "x", "y", ("x", "y")]), min_size=rank, max_size=rank),
        label="spec",
    )
    used: list[str] = []
    spec = []
    for entry in assignment:  # each mesh axis shards at most one dim
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else entry)
        spec.append(None if not axes or set(axes) & set(used) else entry)
        used += list(axes) if spec[-1] is not None else []
    sizes = {"x": 4, "y": 2}
    shape = []
    for entry in spec:
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else entry)
        step = int(np.prod([sizes[a] for a in axes])) if axes else 1
        shape.append(step * data.draw(st.integers(0 if len(shape) == rank - 1 else 1, 5)))
    shape = tuple(shape)
    symmetric = data.draw(st.booleans(), label="symmetric")
    q, scale, zero_point = _dequant_args(
        np.random.default_rng(data.draw(st.integers(0, 2**16))), shape, "int8", "float32", symmetric
    )
    want = _unsharded(jdq.dequantize_per_token, q, scale, zero_point, out_dtype=np.dtype("float16"))
    q_spec = P(*spec)
    row_spec = P(*spec[:-1])
    args = (_put(mesh, q, q_spec), _put(mesh, scale, row_spec), _put(mesh, zero_point, row_spec))
    fn = jax.jit(jdq.dequantize_per_token, static_argnames="out_dtype")
    got = fn(*args, out_dtype=np.dtype("float16"))
    assert_bitwise_equal(got, want, f"{shape} {q_spec}")
    text = fn.lower(*args, out_dtype=np.dtype("float16")).compile().as_text()
    assert count_collectives(text) == no_collectives(), f"{shape} {q_spec}"


# --- shard_map ------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_inside_shard_map_every_axis_manual(axis_type):
    mesh = make_mesh(axis_type)
    rng = np.random.default_rng(10)
    q, scale, zero_point = _dequant_args(rng, (16, 64), "uint8", "float32", False)
    want = _unsharded(jdq.dequantize_per_token, q, scale, zero_point)
    specs = (P("x", "y"), P("x"), P("x"))
    args = [_put(mesh, a, s) for a, s in zip((q, scale, zero_point), specs)]
    fn = jax.jit(
        jax.shard_map(jdq.dequantize_per_token, mesh=mesh, in_specs=specs, out_specs=P("x", "y"))
    )
    assert_bitwise_equal(fn(*args), want, "shard_map")
    text = fn.lower(*args).compile().as_text()
    assert count_collectives(text) == no_collectives()
    assert custom_call_result_shapes(text, DEQUANT_TARGET) == ["f32[4,32]"]


@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_inside_shard_map_with_an_automatic_axis(axis_type):
    """Manual over x, y left to the partitioner. Token dims sharded over y stay sharded: no
    collective on an Auto mesh, and on an Explicit mesh none beyond those jax.shard_map itself
    adds to bring inputs to its in_specs (the jnp reference gets the same, or more). A D sharded
    over the automatic axis is gathered first (documented)."""
    mesh = make_mesh(axis_type)
    q, scale, _ = _dequant_args(np.random.default_rng(11), (4, 8, 32), "int8", "float32", True)
    want = _unsharded(jdq.dequantize_per_token, q, scale)

    def in_shard_map(op):
        return jax.jit(
            jax.shard_map(
                op, mesh=mesh, in_specs=(P("x"), P("x")), out_specs=P("x"), axis_names={"x"}
            )
        )

    fn = in_shard_map(jdq.dequantize_per_token)
    tokens = (_put(mesh, q, P("x", "y")), _put(mesh, scale, P("x", "y")))
    assert_bitwise_equal(fn(*tokens), want, "shard_map, tokens on the automatic axis")
    ours = count_collectives(fn.lower(*tokens).compile().as_text())
    jnp_reference = in_shard_map(jdq.reference.dequantize_per_token).lower(*tokens).compile()
    theirs = count_collectives(jnp_reference.as_text())
    assert all(ours[kind] <= theirs[kind] for kind in COLLECTIVES), (ours, theirs)
    if axis_type == "auto":
        assert ours == no_collectives()
    d_sharded = (_put(mesh, q, P("x", None, "y")), _put(mesh, scale, P("x")))
    assert_bitwise_equal(fn(*d_sharded), want, "shard_map, D on the automatic axis")


# --- the other D-axis declarations, through stand-in primitives -----------------------------------
# Stand-ins lowered to jnp instead of an FFI call: what is tested is the partitioning machinery
# (which shardings, which collectives, bit-equal results), which is the same for FFI calls.


def _register_standin(name, impl, abstract_eval, rule, multiple_results=True):
    outer = define_primitive(name, multiple_results)
    outer.def_abstract_eval(abstract_eval)
    inner = define_primitive(name + "_shard", multiple_results)
    inner.def_abstract_eval(abstract_eval)
    lowering = mlir.lower_fun(impl, multiple_results=multiple_results)
    mlir.register_lowering(inner, lowering)
    _partitioning.register_partitioned_lowerings(outer, inner, rule, ["cpu"], lowering)
    return outer


def _backward_impl(dy, q, scale, zero_point, *, dscale_dtype):
    """Stand-in for a fused dequantize backward: dq = dy * scale, dscale = sum_d dy * (q - zp)."""
    levels = q.astype(jnp.float32) - zero_point[..., None].astype(jnp.float32)
    dscale = jnp.sum(dy.astype(jnp.float32) * levels, axis=-1)
    dq = (dy.astype(jnp.float32) * scale[..., None].astype(jnp.float32)).astype(dy.dtype)
    return dq, dscale.astype(dscale_dtype)


def _backward_abstract_eval(dy, q, scale, zero_point, *, dscale_dtype):
    return dy.update(weak_type=False), _partitioning.row_aval(dy, dscale_dtype)


standin_backward_p = _register_standin(
    "jdq_test_standin_backward",
    _backward_impl,
    _backward_abstract_eval,
    _partitioning.ReduceOverD(
        partial_params=lambda params: {**params, "dscale_dtype": np.dtype(np.float32)}
    ),
)

_QMAX = 127.0


def _quantize_with_absmax(x, absmax):
    scale = jnp.where(absmax > 0, absmax * np.float32(1 / _QMAX), np.float32(1))
    q = jnp.clip(jnp.round(x * (1 / scale)[..., None]), -_QMAX, _QMAX).astype(jnp.int8)
    # One of the package's partitioned primitives inside another's per-shard computation, as
    # dynamic quantization will quantize with the global scale: it lowers to its FFI call there.
    return q, scale, jdq.dequantize_per_token(q, scale)


def _dynamic_impl(x):
    """Stand-in for symmetric dynamic quantization: scale = absmax(row) / 127, and the
    round trip dequantize(q, scale)."""
    return _quantize_with_absmax(x, jnp.max(jnp.abs(x), axis=-1))


def _dynamic_sharded(d_axes, x):
    """Local absmax, the row's max across the D shards, then the local quantization."""
    return _quantize_with_absmax(x, lax.pmax(jnp.max(jnp.abs(x), axis=-1), d_axes))


def _dynamic_abstract_eval(x):
    int8 = x.update(dtype=np.dtype(np.int8), weak_type=False)
    return int8, _partitioning.row_aval(x, np.float32), x.update(weak_type=False)


standin_dynamic_p = _register_standin(
    "jdq_test_standin_dynamic",
    _dynamic_impl,
    _dynamic_abstract_eval,
    _partitioning.RowStatistics(sharded=_dynamic_sharded),
)


def _backward(dy, q, scale, zero_point):
    return tuple(
        standin_backward_p.bind(dy, q, scale, zero_point, dscale_dtype=np.dtype(jnp.bfloat16))
    )


def _backward_args(rng, shape):
    # Small integers: every sum is exact in float32, so its order cannot change the bits and
    # the sharded sum (partials + psum) must equal the unsharded one exactly.
    dy = rng.integers(-8, 9, size=shape).astype(np.float32)
    q = rng.integers(-128, 128, size=shape).astype(np.float32)
    scale = (rng.standard_normal(size=shape[:-1]) * 0.1).astype(np.float32)
    zero_point = rng.integers(-5, 5, size=shape[:-1]).astype(np.int32)
    return dy, q, scale, zero_point


REDUCE_CASES = [
    # name, shape, full spec, expected all-reduces
    ("tokens", (16, 64), P("x"), 0),
    ("two token dims", (4, 2, 24), P("x", "y"), 0),
    ("D", (16, 64), P(None, "y"), 1),
    ("tokens and D", (16, 64), P("x", "y"), 1),
    ("D over both axes", (6, 64), P(None, ("x", "y")), 1),
]


@pytest.mark.parametrize("case", REDUCE_CASES, ids=[c[0] for c in REDUCE_CASES])
@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_reduce_over_d_adds_one_psum_when_d_is_sharded(case, axis_type, partitioner):
    name, shape, spec, all_reduces = case
    mesh = make_mesh(axis_type)
    dy, q, scale, zero_point = _backward_args(np.random.default_rng(12), shape)
    want = _unsharded(_backward, dy, q, scale, zero_point)
    row_spec = P(*tuple(spec)[: len(shape) - 1])
    specs = (spec, spec, row_spec, row_spec)
    args = [_put(mesh, a, s) for a, s in zip((dy, q, scale, zero_point), specs)]
    fn = jax.jit(_backward)
    dq, dscale = fn(*args)
    assert_bitwise_equal(dq, want[0], f"{name}: dq")
    assert_bitwise_equal(dscale, want[1], f"{name}: dscale")
    assert dq.sharding.is_equivalent_to(args[0].sharding, len(shape))
    assert dscale.sharding.is_equivalent_to(NamedSharding(mesh, row_spec), len(shape) - 1)

    text = fn.lower(*args).compile().as_text()
    assert count_collectives(text) == {**no_collectives(), "all-reduce": all_reduces}, name
    if all_reduces:  # the partial sums travel unrounded (float32), then become bfloat16
        reduced = [line for line in text.splitlines() if _COLLECTIVE_OP.search(line)]
        assert all(re.search(r"=\s*f32\[", line) for line in reduced), reduced


def test_reduce_over_an_uneven_d_gathers_instead_of_summing_padding(partitioner):
    mesh = make_mesh()
    dy, q, scale, zero_point = _backward_args(np.random.default_rng(13), (8, 33))
    want = _unsharded(_backward, dy, q, scale, zero_point)

    def fn(dy, q, scale, zero_point):
        sharding = NamedSharding(mesh, P("x", "y"))
        dy, q = (lax.with_sharding_constraint(a, sharding) for a in (dy, q))
        return _backward(dy, q, scale, zero_point)

    got = jax.jit(fn)(dy, q, scale, zero_point)
    assert_bitwise_equal(got[0], want[0], "uneven D: dq")
    assert_bitwise_equal(got[1], want[1], "uneven D: dscale")
    assert count_collectives(jax.jit(fn).lower(dy, q, scale, zero_point).compile().as_text())[
        "all-reduce"
    ] == 0


ROW_STAT_CASES = [
    ("tokens", (16, 64), P("x"), 0),
    ("D", (16, 64), P(None, "y"), 1),
    ("tokens and D", (16, 64), P("x", "y"), 1),
    ("D over both axes", (4, 64), P(None, ("x", "y")), 1),
]


@pytest.mark.parametrize("case", ROW_STAT_CASES, ids=[c[0] for c in ROW_STAT_CASES])
@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_row_statistics_add_one_cross_shard_max_when_d_is_sharded(case, axis_type, partitioner):
    name, shape, spec, all_reduces = case
    mesh = make_mesh(axis_type)
    rng = np.random.default_rng(14)
    x = (rng.standard_normal(size=shape) * 3).astype(np.float32)
    x[0] = 0.0  # a row of zeros: scale 1
    x[1, -1] = 50.0  # the row max in the last D shard
    fn = jax.jit(lambda x: tuple(standin_dynamic_p.bind(x)))
    want = _unsharded(fn, x)
    arg = _put(mesh, x, spec)
    q, scale, round_trip = fn(arg)
    assert_bitwise_equal(q, want[0], f"{name}: q")
    assert_bitwise_equal(scale, want[1], f"{name}: scale")
    assert_bitwise_equal(round_trip, want[2], f"{name}: dequantized")
    assert q.sharding.is_equivalent_to(arg.sharding, len(shape))
    assert round_trip.sharding.is_equivalent_to(arg.sharding, len(shape))
    assert scale.sharding.is_equivalent_to(NamedSharding(mesh, P(*tuple(spec)[:1])), 1)
    text = fn.lower(arg).compile().as_text()
    assert count_collectives(text) == {**no_collectives(), "all-reduce": all_reduces}, name
    local = arg.sharding.shard_shape(shape)
    assert custom_call_result_shapes(text, DEQUANT_TARGET) == [hlo_shape("float32", local)]


def test_row_aval_keeps_token_sharding_in_explicit_meshes():
    mesh = make_mesh("explicit")
    x = _put(mesh, np.ones((8, 16), np.float32), P("x", "y"))
    q, scale, round_trip = jax.eval_shape(lambda x: tuple(standin_dynamic_p.bind(x)), x)
    assert q.sharding.spec == round_trip.sharding.spec == P("x", "y")
    assert scale.sharding.spec == P("x")


def test_sharding_rule_strings():
    rule = _partitioning.sharding_rule_string
    assert rule((2, 1, 1), (2,), 2) == "a d, a, a -> a d"
    assert rule((3, 3, 2, 2), (3, 2), 3) == "a b d, a b d, a b, a b -> a b d, a b"
    assert rule((1, 0), (1,), 1) == "d,  -> d"
    assert rule((5, 4), (4,), 5) == "t0 t1 t2 t3 d, t0 t1 t2 t3 -> t0 t1 t2 t3"


# --- jax.export -----------------------------------------------------------------------------------


def _every_op(q, scale, zero_point):
    """A function that uses dequantize and the quantize ops (static and dynamic)."""
    y = jdq.dequantize_per_token(q, scale, zero_point, out_dtype=jnp.bfloat16)
    x = y.astype(jnp.float32)
    return (
        y,
        jdq.dequantize_per_token(q[..., ::2], scale),
        jdq.quantize_per_token(x, scale, zero_point),
        *jdq.quantize_per_token_dynamic(x, dtype=jnp.uint8, symmetric=False),
    )


def _every_op_args(rng, shape=(6, 40)):
    q, scale, zero_point = _dequant_args(rng, shape, "int8", "float32", False)
    return q, scale, zero_point


def _custom_call_targets(mlir_text: str) -> set[str]:
    return set(re.findall(r"stablehlo\.custom_call @([\w.$]+)\(", mlir_text))


def test_export_disabled_checks_cover_every_target():
    checks = jdq.export_disabled_checks()
    assert {c.is_custom_call() for c in checks} == set(_native.FFI_TARGETS)
    assert DEQUANT_TARGET in _native.FFI_TARGETS
    args = _every_op_args(np.random.default_rng(15))
    exported = jax.export.export(jax.jit(_every_op), disabled_checks=checks)(*args)
    used = _custom_call_targets(exported.mlir_module())
    assert used and used <= set(_native.FFI_TARGETS), used


def test_export_without_the_disabled_checks_is_refused():
    args = _every_op_args(np.random.default_rng(16))
    with pytest.raises(ValueError, match="no compatibility guarantees"):
        jax.export.export(jax.jit(_every_op))(*args)


def test_export_round_trip(platform, device):
    rng = np.random.default_rng(17)
    args = [jax.device_put(a, device) for a in _every_op_args(rng)]
    want = jax.jit(_every_op)(*args)
    platforms = [platform]
    if set(_native.KERNEL_PLATFORMS) >= {"cpu", "cuda"}:
        platforms = ["cpu", "cuda"]  # one artifact for both
    exported = jax.export.export(
        jax.jit(_every_op), platforms=platforms, disabled_checks=jdq.export_disabled_checks()
    )(*args)
    restored = jax.export.deserialize(exported.serialize())
    assert restored.platforms == tuple(platforms)
    got = restored.call(*args)
    for g, w in zip(got, want):
        assert g.devices() == {device}
        assert_bitwise_equal(g, w, f"export round trip on {platform}")
    # The exported module is the FFI call itself, not a custom_partitioning callback.
    assert "CustomSPMDPartitioning" not in exported.mlir_module()


def test_export_runs_in_a_fresh_process(platform, device, tmp_path):
    """The serialized bytes carry no Python state: a new process that imports jax_dequant runs
    them and gets the same bits."""
    rng = np.random.default_rng(18)
    args = _every_op_args(rng)
    exported = jax.export.export(
        jax.jit(_every_op), platforms=[platform], disabled_checks=jdq.export_disabled_checks()
    )(*args)
    (tmp_path / "fn.bin").write_bytes(exported.serialize())
    np.savez(tmp_path / "args.npz", *args)
    script = textwrap.dedent(
        f"""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import jax_dequant  # registers the FFI targets the module calls
        exported = jax.export.deserialize(open({str(tmp_path / 'fn.bin')!r}, "rb").read())
        loaded = np.load({str(tmp_path / 'args.npz')!r})
        device = jax.devices({platform!r})[0]
        args = [jax.device_put(loaded[f"arr_{{i}}"], device) for i in range(len(loaded.files))]
        outs = exported.call(*args)
        np.savez({str(tmp_path / 'out.npz')!r}, *[np.asarray(o).view(np.uint16) for o in outs[:1]],
                 *[np.asarray(o) for o in outs[1:]])
        """
    )
    _run_python(script)
    out = np.load(tmp_path / "out.npz")
    want = jax.jit(_every_op)(*[jax.device_put(a, device) for a in args])
    assert_bitwise_equal(out["arr_0"].view(jnp.bfloat16), want[0], "fresh process: bf16 output")
    assert_bitwise_equal(out["arr_1"], want[1], "fresh process: f32 output")


@pytest.mark.parametrize("d_sharded", [False, True])
def test_sharded_export_round_trip(d_sharded):
    """Exported with sharded inputs: the deserialized module still runs on the token shards
    without collectives (XLA batch-partitions the call); a sharded D is gathered first."""
    mesh = make_mesh()
    rng = np.random.default_rng(19)
    q, scale, zero_point = _dequant_args(rng, (16, 64), "int8", "float32", False)
    want = _unsharded(jdq.dequantize_per_token, q, scale, zero_point)
    q_sharding = NamedSharding(mesh, P("x", "y" if d_sharded else None))
    row_sharding = NamedSharding(mesh, P("x"))
    specs = [
        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
        for a, s in zip((q, scale, zero_point), (q_sharding, row_sharding, row_sharding))
    ]
    exported = jax.export.export(
        jax.jit(jdq.dequantize_per_token),
        platforms=["cpu"],  # the mesh is of CPU devices, also on a GPU machine
        disabled_checks=jdq.export_disabled_checks(),
    )(*specs)
    restored = jax.export.deserialize(exported.serialize())
    assert restored.nr_devices == CPU_DEVICES_FOR_SHARDING
    args = (
        jax.device_put(q, q_sharding),
        jax.device_put(scale, row_sharding),
        jax.device_put(zero_point, row_sharding),
    )
    fn = jax.jit(restored.call)
    assert_bitwise_equal(fn(*args), want, f"sharded export, D sharded={d_sharded}")
    counts = count_collectives(fn.lower(*args).compile().as_text())
    if d_sharded:
        assert counts["all-reduce"] == 0 and counts["all-gather"] >= 1
    else:
        assert counts == no_collectives()


# --- CUDA graphs (XLA command buffers) ------------------------------------------------------------

_COMMAND_BUFFER_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
import jax_dequant as jdq

def chain(q, scale, zero_point):
    # Eight of our calls, each fed by a fusion of the last result: one long run of commands.
    # (No `zeros + y`: XLA folds it to y and keeps a -0.0 that the eager add makes +0.0.)
    total = None
    for _ in range(8):
        y = jdq.dequantize_per_token(q, scale, zero_point)
        total = y if total is None else total + y
        q = (jnp.round(y * 3.0) % 100).astype(jnp.int8)
    return total

device = jax.devices("cuda")[0]
fn = jax.jit(chain)
rng = np.random.default_rng(0)
equal = []
for trial in range(2):  # the second call, with new buffers, runs the recorded graph again
    q = rng.integers(-128, 128, size=(96, 1000)).astype(np.int8)
    scale = (rng.standard_normal(96) * 0.05).astype(np.float32)
    zero_point = rng.integers(-5, 5, size=96).astype(np.int32)
    args = [jax.device_put(a, device) for a in (q, scale, zero_point)]
    got = np.asarray(fn(*args))
    want = np.asarray(chain(*args))  # eager: op by op, each kernel and jnp op on its own
    equal.append(bool(np.array_equal(got.view(np.uint32), want.view(np.uint32))))
text = fn.lower(*args).compile().as_text()
in_command_buffer = any(
    block.lstrip().startswith("%command_buffer") and 'custom_call_target="jax_dequant_' in block
    for block in text.split("\\n\\n")
)
print(json.dumps({"equal": equal, "in_command_buffer": in_command_buffer}))
"""


@pytest.mark.gpu
def test_cuda_graphs_run_our_custom_calls():
    """A jitted chain of our ops with XLA's command buffers enabled for custom calls: the results
    match op-by-op execution on two calls with new inputs. XLA_FLAGS are read when the GPU
    backend starts, so this runs in a fresh process.

    Whether XLA recorded the calls into a graph is not asserted: XLA older than 0.11 shows
    command buffers as ``%command_buffer`` computations in the compiled HLO, newer XLA forms
    them from the thunk sequence, invisible in the HLO text (seen with jax 0.11.2 on an H100).
    The handlers declare kCmdBufferCompatible; what keeps them legal in a graph (no
    allocation, no sync, only XLA's stream) is a property of the code."""
    require_platform("cuda")
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL"
    output = _run_python(_COMMAND_BUFFER_SCRIPT, extra_env={"XLA_FLAGS": flags.strip()})
    result = json.loads(output.strip().splitlines()[-1])
    assert result["equal"] == [True, True], result


def _run_python(script: str, extra_env: dict | None = None) -> str:
    """Runs ``script`` in a new interpreter that imports this jax_dequant; returns stdout."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(jdq.__file__)))
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, f"subprocess failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


# --- several GPUs ---------------------------------------------------------------------------------


@pytest.mark.gpu
def test_sharded_on_several_gpus():
    """Tokens and D sharded over every visible GPU: no collective, same bits as one GPU."""
    require_platform("cuda")
    devices = cuda_devices()
    if len(devices) < 2:
        pytest.skip(f"needs at least 2 GPUs, {len(devices)} visible (8 CPU devices cover it)")
    n = len(devices)
    shape = (n // 2, 2) if n % 2 == 0 else (n, 1)
    mesh = jax.sharding.Mesh(np.array(devices).reshape(shape), ("x", "y"))
    rng = np.random.default_rng(20)
    q, scale, zero_point = _dequant_args(rng, (8 * n, 4096), "int8", "float32", False)
    fn = jax.jit(jdq.dequantize_per_token, static_argnames="out_dtype")
    one_gpu = [jax.device_put(a, devices[0]) for a in (q, scale, zero_point)]
    want = fn(*one_gpu, out_dtype=jnp.bfloat16)
    args = (_put(mesh, q, P("x", "y")), _put(mesh, scale, P("x")), _put(mesh, zero_point, P("x")))
    assert_bitwise_equal(fn(*args, out_dtype=jnp.bfloat16), want, "several GPUs")
    text = fn.lower(*args, out_dtype=jnp.bfloat16).compile().as_text()
    assert count_collectives(text) == no_collectives()

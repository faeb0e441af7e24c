"""Partitioning of the row-wise primitives: each device runs the op on its shard.

Every op of the package works on rows: its operands and results are either
*full* arrays ``[..., D]`` (``q``, ``x``, ``y``, ``dy``) or *per-row* arrays
``[...]`` (``scale``, ``zero_point``, ``dscale``). They are told apart by rank:
a full array has the rank of the op's widest operand, a per-row array one less.
An op declares, next to its primitive, what sharding the ``D`` axis means for
it (SPEC.md, Scale-out):

* :data:`ELEMENTWISE` (dequantize, quantize, fake quantize with a given scale):
  every output element depends on its own input element and on per-row values.
  Shards of the token dims *and* of ``D`` compute locally; per-row operands are
  replicated along the ``D`` mesh axes. No collective.
* :class:`ReduceOverD` (``dscale``): per-row results are sums over ``D``. Each
  device sums its ``D`` shard, then a ``psum`` over the ``D`` mesh axes adds
  the partial sums. Full results (a fused ``dq``) stay elementwise.
* :class:`RowStatistics` (dynamic quantization): per-row results are
  statistics of the whole row (absmax, min/max). The op supplies the sharded
  computation: local statistics, then ``pmax``/``pmin`` over the ``D`` mesh
  axes, then the local quantization with the global scale.

Declaring it (one argument next to the primitive's lowering)::

    register_ffi_lowerings(dequantize_p, FFI_TARGET, partitioning=ELEMENTWISE)
    register_ffi_lowerings(dscale_p, TARGET, partitioning=ReduceOverD(partial_params=...))
    register_ffi_lowerings(dynamic_p, TARGET, partitioning=RowStatistics(sharded=...))

and abstract evals build per-row results with :func:`row_aval` (full ones with
``aval.update``), so shardings and ``shard_map``'s varying axes are kept.

Mechanism (the pattern of TransformerEngine-JAX): the primitive users bind is
the *outer* one and carries the abstract eval, JVP/transpose and batching
rules. ``register_ffi_lowerings`` gives it an *inner* twin that lowers straight
to the FFI call, and :func:`register_partitioned_lowerings` lowers the outer
one, with ``mlir.lower_fun``, to a :func:`jax.experimental.custom_partitioning`
function that binds the inner one. ``custom_partitioning`` gets both a Shardy
sharding rule (einsum-like: token factors shared by every operand and result,
one ``d`` factor for the row width) and GSPMD callbacks, so either partitioner
works, and a ``partition`` callback that picks the shardings above and builds
the per-shard computation. On one device it inlines the inner call.

Two cases lower the outer primitive to the FFI call itself instead, marked
*batch partitionable* (the token dims are XLA's batch dims; ``D`` is gathered
if sharded), with a Shardy rule that lets token shardings flow through it:

* ``jax.export``: ``custom_partitioning``'s callbacks are Python objects of
  the exporting process and cannot be serialized. A deserialized module still
  runs sharded along tokens, in any process that imported ``jax_dequant``.
* inside ``jax.shard_map`` (and inside the per-shard computations above): with
  every mesh axis manual the call is local anyway; with some axes left
  automatic, ``custom_partitioning`` would need the deprecated ``with mesh:``
  environment, and XLA rejects the shardings it produces there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import SdyShardingRule, custom_partitioning
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_dequant import _compat

D_FACTOR = "d"
"""The factor name of the row width in the Shardy sharding rules."""

# --- declarations ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RowwisePartitioning:
    """Base of the declarations; ``d_axis`` names the behaviour along ``D``."""

    d_axis: str = "elementwise"


@dataclasses.dataclass(frozen=True)
class Elementwise(RowwisePartitioning):
    """Outputs are elementwise along ``D``: every shard computes locally."""

    d_axis: str = "elementwise"


@dataclasses.dataclass(frozen=True)
class ReduceOverD(RowwisePartitioning):
    """Per-row results are sums over ``D``: local partial sums, then a ``psum``.

    Attributes:
        partial_params: maps the primitive's params to the params of the
            shard-local partial sum (e.g. to return it in the accumulator
            dtype so the ``psum`` adds unrounded partials); the summed
            per-row results are then cast to the primitive's output dtype.
            None: the partial sums use the primitive's own params.
    """

    d_axis: str = "reduce"
    partial_params: Callable[[dict], dict] | None = None


@dataclasses.dataclass(frozen=True)
class RowStatistics(RowwisePartitioning):
    """Per-row results are statistics of the whole row (dynamic quantization).

    Attributes:
        sharded: ``sharded(d_axes, *local_operands, **params) -> results`` runs
            the op on one shard when ``D`` is sharded over the mesh axes
            ``d_axes`` (a tuple of names for ``lax.pmax``/``lax.pmin``): local
            row statistics, a cross-shard max/min, then the local results
            computed from the global statistics (same bits as the unsharded
            kernel). It returns what the primitive returns, with the local
            shapes. When ``D`` is not sharded the kernel runs as is.
    """

    d_axis: str = "row_statistics"
    sharded: Callable[..., Any] | None = None


ELEMENTWISE = Elementwise()
"""Declaration for ops elementwise along ``D`` (dequantize, quantize, fake quantize)."""


# --- sharding helpers -----------------------------------------------------------------------------


def _entries(sharding: Any, ndim: int) -> list[tuple[str, ...]]:
    """The mesh axes of each dim of a NamedSharding, as tuples (empty: unsharded)."""
    spec = tuple(getattr(sharding, "spec", ()) or ())
    entries = []
    for i in range(ndim):
        entry = spec[i] if i < len(spec) else None
        if entry is None or entry is P.UNCONSTRAINED:
            entries.append(())
        elif isinstance(entry, str):
            entries.append((entry,))
        else:
            entries.append(tuple(entry))
    return entries


def _axes_size(mesh: Any, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[name] for name in axes)


def choose_layout(
    mesh: Any,
    rule: RowwisePartitioning,
    arg_shapes: Sequence[Any],
    full_rank: int,
) -> list[tuple[str, ...]]:
    """Chooses the mesh axes of every dim of the op's full ``[..., D]`` layout.

    Full operands are read first, then per-row ones; a dim takes the axes of
    the first operand that shards it with axes not used yet. Per-row operands
    and results then take the layout without its last entry. For ops that
    reduce over ``D`` a ``D`` that the ``D`` axes do not divide evenly is
    gathered (padding would enter the sums); elementwise ops keep any
    sharding.

    Args:
        mesh: the mesh of the shardings.
        rule: the op's declaration.
        arg_shapes: the operands (``jax.ShapeDtypeStruct`` with shardings).
        full_rank: rank of the full operands.

    Returns:
        One tuple of mesh axis names per dim of a full array.
    """
    layout: list[tuple[str, ...]] = [()] * full_rank
    used: set[str] = set()

    def take(dim: int, axes: tuple[str, ...]) -> None:
        if axes and not layout[dim] and not used.intersection(axes):
            layout[dim] = axes
            used.update(axes)

    full = [a for a in arg_shapes if len(a.shape) == full_rank]
    rows = [a for a in arg_shapes if len(a.shape) == full_rank - 1]
    for arg in full:
        for dim, axes in enumerate(_entries(arg.sharding, full_rank)):
            take(dim, axes)
    for arg in rows:
        for dim, axes in enumerate(_entries(arg.sharding, full_rank - 1)):
            take(dim, axes)
    if rule.d_axis != "elementwise" and layout[-1] and full:
        width = full[0].shape[-1]
        if width % _axes_size(mesh, layout[-1]):
            layout[-1] = ()
    return layout


def _spec(layout: Sequence[tuple[str, ...]]) -> P:
    return P(*[(axes[0] if len(axes) == 1 else axes) if axes else None for axes in layout])


def _sharding_for(mesh: Any, layout: Sequence[tuple[str, ...]], ndim: int, full_rank: int):
    if ndim == full_rank:
        return NamedSharding(mesh, _spec(layout))
    if ndim == full_rank - 1:
        return NamedSharding(mesh, _spec(layout[:-1]))
    raise ValueError(
        f"jax_dequant partitioning: an array of rank {ndim} is neither full (rank {full_rank}) "
        f"nor per-row (rank {full_rank - 1})"
    )


def sharding_rule_string(in_ranks: Sequence[int], out_ranks: Sequence[int], full_rank: int) -> str:
    """The Shardy rule: shared token factors, and ``d`` for the row width.

    E.g. ranks ``(3, 2, 2) -> (3,)`` give ``"a b d, a b, a b -> a b d"``.
    """
    tokens = [string.ascii_lowercase[i] for i in range(full_rank - 1)]
    if D_FACTOR in tokens:  # keep "d" for the row width only
        tokens = [f"t{i}" for i in range(full_rank - 1)]

    def factors(rank: int) -> str:
        if rank == full_rank:
            return " ".join(tokens + [D_FACTOR])
        return " ".join(tokens)

    return (
        ", ".join(factors(r) for r in in_ranks) + " -> " + ", ".join(factors(r) for r in out_ranks)
    )


def row_aval(full_aval: Any, dtype: Any) -> Any:
    """The abstract value of a per-row result of a full ``[..., D]`` operand.

    Keeps the operand's sharding on the token dims (explicit-axis meshes) and
    its varying manual axes (``shard_map``), so abstract evals of per-row
    results stay sharding-aware: use it where dequantize uses ``aval.update``.

    Args:
        full_aval: the ``ShapedArray`` of a full operand.
        dtype: the result's dtype.

    Returns:
        A ``ShapedArray`` of shape ``full_aval.shape[:-1]``.
    """
    sharding = getattr(full_aval, "sharding", None)
    kwargs = {}
    if sharding is not None and getattr(sharding, "spec", None) is not None:
        spec = tuple(sharding.spec) + (None,) * (full_aval.ndim - len(sharding.spec))
        kwargs["sharding"] = sharding.update(spec=P(*spec[:-1]))
    return full_aval.update(
        shape=tuple(full_aval.shape[:-1]), dtype=np.dtype(dtype), weak_type=False, **kwargs
    )


# --- lowering -------------------------------------------------------------------------------------


def _flat(results: Any) -> list:
    return list(results) if isinstance(results, (tuple, list)) else [results]


def _local_computation(
    inner: jax.extend.core.Primitive,
    rule: RowwisePartitioning,
    params: dict,
    d_axes: tuple[str, ...],
    full_rank: int,
    result_dtypes: Sequence[np.dtype],
):
    """The per-shard function for ``custom_partitioning``'s partition callback."""

    def bind(*args, **kw):
        out = inner.bind(*args, **kw)
        return tuple(out) if inner.multiple_results else out

    if not d_axes or rule.d_axis == "elementwise":
        return lambda *args: bind(*args, **params)

    if rule.d_axis == "reduce":

        def reduce_over_d(*args):
            local = params if rule.partial_params is None else rule.partial_params(dict(params))
            outs = _flat(bind(*args, **local))
            summed = []
            for out, dtype in zip(outs, result_dtypes):
                if out.ndim == full_rank - 1:
                    out = lax.psum(out, d_axes).astype(dtype)
                summed.append(out)
            return tuple(summed) if inner.multiple_results else summed[0]

        return reduce_over_d

    if rule.d_axis == "row_statistics":
        if rule.sharded is None:
            raise ValueError(f"{inner.name}: RowStatistics needs a `sharded` function")

        def row_statistics(*args):
            out = rule.sharded(d_axes, *args, **params)
            return tuple(out) if inner.multiple_results else out

        return row_statistics

    raise ValueError(f"{inner.name}: unknown D-axis behaviour {rule.d_axis!r}")


@functools.lru_cache(maxsize=None)
def _partitioned_function(
    inner: jax.extend.core.Primitive,
    rule: RowwisePartitioning,
    params_key: tuple,
    in_ranks: tuple[int, ...],
    out_ranks: tuple[int, ...],
) -> custom_partitioning:
    params = dict(params_key)
    full_rank = max(in_ranks)

    def call(*args):
        out = inner.bind(*args, **params)
        return tuple(out) if inner.multiple_results else out

    function = custom_partitioning(call)

    def result_shardings(mesh, layout, result_shape):
        shardings = [
            _sharding_for(mesh, layout, len(r.shape), full_rank) for r in _flat(result_shape)
        ]
        return tuple(shardings) if inner.multiple_results else shardings[0]

    def infer_sharding_from_operands(mesh, arg_shapes, result_shape):
        layout = choose_layout(mesh, rule, arg_shapes, full_rank)
        return result_shardings(mesh, layout, result_shape)

    def partition(mesh, arg_shapes, result_shape):
        layout = choose_layout(mesh, rule, arg_shapes, full_rank)
        arg_shardings = tuple(
            _sharding_for(mesh, layout, len(a.shape), full_rank) for a in arg_shapes
        )
        dtypes = [np.dtype(r.dtype) for r in _flat(result_shape)]
        local = _local_computation(inner, rule, params, layout[-1], full_rank, dtypes)
        return mesh, local, result_shardings(mesh, layout, result_shape), arg_shardings

    function.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer_sharding_from_operands,
        sharding_rule=sharding_rule_string(in_ranks, out_ranks, full_rank),
    )
    return function


def _params_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _for_export(ctx: mlir.LoweringRuleContext) -> bool:
    parameters = getattr(ctx.module_context, "lowering_parameters", None)
    return bool(getattr(parameters, "for_export", False))


def _inside_shard_map(ctx: mlir.LoweringRuleContext) -> bool:
    # jax.shard_map lowers its body with a concrete mesh in the axis context; jax.jit's context
    # has none. With every mesh axis manual the call is already local; with some left automatic
    # custom_partitioning would need the legacy `with mesh:` environment (and XLA rejects the
    # shardings it then produces), so the batch-partitionable call serves both.
    return getattr(ctx.module_context.axis_context, "manual_axes", None) is not None


def batch_partitionable_lowering(
    ffi_lowering: Callable[..., Any],
) -> Callable[..., Any]:
    """Wraps an FFI lowering so XLA partitions the call along the token dims.

    The token dims (all but the last of a full operand) become XLA's batch
    dims (``num_batch_dims`` frontend attribute; the target must be registered
    with ``jax.ffi.register_ffi_target_as_batch_partitionable``). Under Shardy
    a sharding rule says the same, so shardings propagate through the call;
    each full array gets its own ``D`` factor, as XLA gathers ``D`` here.
    """

    def lowering(ctx, *args, **attributes):
        in_ranks = [len(a.shape) for a in ctx.avals_in]
        out_ranks = [len(a.shape) for a in ctx.avals_out]
        full_rank = max(in_ranks)
        results = ffi_lowering(ctx, *args, **attributes)
        if full_rank < 2:  # one row: nothing to partition
            return results
        owner = _result_owner(results)
        owner.attributes["mhlo.frontend_attributes"] = mlir.ir_attribute(
            {"num_batch_dims": str(full_rank - 1)}
        )
        if jax.config.jax_use_shardy_partitioner:
            rule = batch_sharding_rule(in_ranks, out_ranks, full_rank)
            owner.attributes["sdy.sharding_rule"] = _compat.sdy_sharding_rule_attribute(
                rule, [v.type for v in owner.operands], [v.type for v in owner.results]
            )
        return results

    return lowering


def batch_sharding_rule(
    in_ranks: Sequence[int], out_ranks: Sequence[int], full_rank: int
) -> SdyShardingRule:
    """Shardy rule of the batch-partitionable call: shared token factors, a ``D`` per array."""
    tokens = tuple(f"t{i}" for i in range(full_rank - 1))
    widths = iter(f"w{i}" for i in range(len(in_ranks) + len(out_ranks)))

    def factors(rank: int) -> tuple[str, ...]:
        return tokens + (next(widths),) if rank == full_rank else tokens

    return SdyShardingRule(
        operand_mappings=tuple(factors(r) for r in in_ranks),
        result_mappings=tuple(factors(r) for r in out_ranks),
    )


def _result_owner(results: Any):
    first = results[0] if isinstance(results, (list, tuple)) else results
    if isinstance(first, (list, tuple)):
        first = first[0]
    return first.owner


def register_partitioned_lowerings(
    primitive: jax.extend.core.Primitive,
    inner: jax.extend.core.Primitive,
    rule: RowwisePartitioning,
    platforms: Sequence[str],
    direct_lowering: Callable[..., Any],
) -> None:
    """Lowers ``primitive`` through ``custom_partitioning`` to ``inner`` on ``platforms``.

    Args:
        primitive: the outer primitive users bind.
        inner: its twin that lowers to the FFI call, with the same params.
        rule: the op's declaration.
        platforms: the platforms with a kernel.
        direct_lowering: ``(ctx, *args, **params)`` lowering straight to the
            FFI call (batch partitionable), used when lowering for
            ``jax.export`` and inside ``jax.shard_map``.
    """

    def lowering(ctx, *args, **params):
        if _for_export(ctx) or _inside_shard_map(ctx):
            return direct_lowering(ctx, *args, **params)
        in_ranks = tuple(len(a.shape) for a in ctx.avals_in)
        out_ranks = tuple(len(a.shape) for a in ctx.avals_out)
        function = _partitioned_function(inner, rule, _params_key(params), in_ranks, out_ranks)

        def apply(*operands):
            return _flat(function(*operands))

        return mlir.lower_fun(apply, multiple_results=True)(ctx, *args)

    for platform in platforms:
        mlir.register_lowering(primitive, lowering, platform=platform)
    _compat.require_devices_during_lowering(primitive)

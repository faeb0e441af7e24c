"""Machinery shared by every primitive: eager impl, FFI lowerings per platform,
and the clear error for a platform that has no kernel.

Each op module (``dequantize.py``, ...) keeps its own abstract eval, lowering,
batching, differentiation and partitioning rules side by side; this module only
holds what would otherwise be repeated in each of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.extend
from jax.interpreters import mlir

from jax_dequant import _native, _partitioning
from jax_dequant._partitioning import RowwisePartitioning


def define_primitive(name: str, multiple_results: bool = False) -> jax.extend.core.Primitive:
    """Creates a primitive whose eager evaluation compiles and runs it with ``jax.jit``.

    Args:
        name: the primitive's name, as it appears in jaxprs.
        multiple_results: whether it returns a tuple of arrays.

    Returns:
        The primitive, with its impl rule defined.
    """
    primitive = jax.extend.core.Primitive(name)
    primitive.multiple_results = multiple_results

    @functools.lru_cache(maxsize=None)
    def compiled(**params):
        return jax.jit(functools.partial(primitive.bind, **params))

    def impl(*args, **params):
        # Under jax.disable_jit the jit above would call bind, and bind this impl, forever.
        with jax.disable_jit(False):
            return compiled(**params)(*args)

    primitive.def_impl(impl)
    return primitive


def register_ffi_lowerings(
    primitive: jax.extend.core.Primitive,
    target_name: str,
    attributes: Callable[..., dict] | None = None,
    partitioning: RowwisePartitioning | None = None,
) -> None:
    """Lowers ``primitive`` to the FFI target ``target_name`` on every platform we built.

    Platforms without a kernel in this build get a lowering that raises an
    error saying so and how to fix it.

    With ``partitioning`` (see ``jax_dequant._partitioning``) the primitive
    also runs sharded: under ``jax.jit`` with sharded operands each device
    calls the kernel on its shard, adding only the collectives the declared
    ``D``-axis behaviour needs; ``jax.export`` gets the FFI call itself,
    batch partitionable along the token dims.

    Args:
        primitive: the primitive.
        target_name: the FFI target registered by ``_native``.
        attributes: maps the primitive's params to the FFI attributes; by
            default no attribute is passed.
        partitioning: the op's declaration: ``ELEMENTWISE``,
            ``ReduceOverD(...)`` or ``RowStatistics(...)``. None: XLA treats
            the call as one opaque op (gathers sharded operands).
    """
    ffi_rule = jax.ffi.ffi_lowering(target_name)

    def lowering(ctx, *args, **params):
        return ffi_rule(ctx, *args, **(attributes(**params) if attributes else {}))

    platforms = sorted(_native.KERNEL_PLATFORMS)
    no_kernel = functools.partial(_no_kernel_lowering, primitive.name)
    if partitioning is None:
        for platform in platforms:
            mlir.register_lowering(primitive, lowering, platform=platform)
        mlir.register_lowering(primitive, no_kernel)
        return

    inner = inner_primitive(primitive)
    for platform in platforms:
        mlir.register_lowering(inner, lowering, platform=platform)
    mlir.register_lowering(inner, no_kernel)
    jax.ffi.register_ffi_target_as_batch_partitionable(target_name)
    _partitioning.register_partitioned_lowerings(
        primitive,
        inner,
        partitioning,
        platforms,
        direct_lowering=_partitioning.batch_partitionable_lowering(lowering),
    )
    mlir.register_lowering(primitive, no_kernel)


def inner_primitive(primitive: jax.extend.core.Primitive) -> jax.extend.core.Primitive:
    """The twin of ``primitive`` that lowers straight to its FFI call.

    It has the outer primitive's params and abstract eval (looked up when
    used, so the op module may define its abstract eval in any order) and is
    bound only inside the partitioned lowering of the outer primitive.
    """
    inner = define_primitive(primitive.name + "_shard", primitive.multiple_results)
    inner.def_effectful_abstract_eval(
        lambda *avals, **params: primitive.abstract_eval(*avals, **params)
    )
    return inner


def _no_kernel_lowering(name: str, ctx, *args, **params):
    platforms: Sequence[str] = getattr(ctx.module_context, "platforms", ("unknown",))
    missing = [p for p in platforms if p not in _native.KERNEL_PLATFORMS]
    hint = (
        " This build has no CUDA kernels: rebuild with nvcc on PATH (JAX_DEQUANT_CUDA=ON makes a "
        "missing nvcc an error), see BUILD_NOTES.md."
        if "cuda" in missing
        else ""
    )
    raise NotImplementedError(
        f"jax_dequant: no kernel for {name} on platform(s) {', '.join(missing)}; kernels exist for "
        f"{', '.join(sorted(_native.KERNEL_PLATFORMS))}.{hint} To run the jnp reference instead, "
        "set JAX_DEQUANT_IMPLEMENTATION=reference or use "
        "jax_dequant.use_implementation('reference')."
    )

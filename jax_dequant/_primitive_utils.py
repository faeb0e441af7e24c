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

from jax_dequant import _native


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

    primitive.def_impl(lambda *args, **params: compiled(**params)(*args))
    return primitive


def register_ffi_lowerings(
    primitive: jax.extend.core.Primitive,
    target_name: str,
    attributes: Callable[..., dict] | None = None,
) -> None:
    """Lowers ``primitive`` to the FFI target ``target_name`` on every platform we built.

    Platforms without a kernel in this build get a lowering that raises an
    error saying so and how to fix it.

    Args:
        primitive: the primitive.
        target_name: the FFI target registered by ``_native``.
        attributes: maps the primitive's params to the FFI attributes; by
            default no attribute is passed.
    """
    ffi_rule = jax.ffi.ffi_lowering(target_name)

    def lowering(ctx, *args, **params):
        return ffi_rule(ctx, *args, **(attributes(**params) if attributes else {}))

    for platform in sorted(_native.KERNEL_PLATFORMS):
        mlir.register_lowering(primitive, lowering, platform=platform)
    mlir.register_lowering(primitive, functools.partial(_no_kernel_lowering, primitive.name))


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

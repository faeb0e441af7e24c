"""Loads the compiled FFI library and registers its handlers with XLA.

Importing this module registers every FFI target of the library for each
platform it was built for (always ``cpu``; ``CUDA`` when built with CUDA).
"""

from __future__ import annotations

import importlib.metadata

import jax

try:
    from jax_dequant import _jax_dequant_ffi as _ffi_library
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "jax_dequant's compiled library (_jax_dequant_ffi) could not be imported. Install the "
        "package with `pip install .` (which builds it) rather than importing it from the source "
        "tree; see BUILD_NOTES.md."
    ) from error

BUILD_INFO: dict = dict(_ffi_library.build_info())
"""What the library was built with: ``with_cuda``, ``cuda_architectures``,
``jaxlib_version`` (whose FFI headers it was compiled against) and
``ffi_api_version``."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _check_jaxlib_compatible() -> None:
    runtime = importlib.metadata.version("jaxlib")
    built = BUILD_INFO["jaxlib_version"]
    if _version_tuple(runtime) < _version_tuple(built):
        raise ImportError(
            f"jax_dequant was compiled against the XLA FFI headers of jaxlib {built}, but jaxlib "
            f"{runtime} is installed. The FFI ABI is forward compatible only: rebuild against this "
            "jaxlib with `pip install --no-build-isolation .` (see BUILD_NOTES.md)."
        )


def _register_targets() -> tuple[frozenset[str], frozenset[str]]:
    platforms = set()
    names = set()
    for xla_platform, targets in _ffi_library.registrations().items():
        for name, capsule in targets.items():
            jax.ffi.register_ffi_target(name, capsule, platform=xla_platform)
            platforms.add(xla_platform.lower())
            names.add(name)
    return frozenset(platforms), frozenset(names)


_check_jaxlib_compatible()

KERNEL_PLATFORMS, FFI_TARGETS = _register_targets()
"""``KERNEL_PLATFORMS``: JAX platform names (``cpu``, ``cuda``) for which this
build has kernels. ``FFI_TARGETS``: the names of every FFI target registered."""

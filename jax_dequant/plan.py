"""Plan introspection: which kernel serves an op for a dtype pair and platform,
and what it guarantees.

Each op module registers a planner with :func:`register_planner`; users call
:func:`kernel_plan`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jax_dequant import _native
from jax_dequant import _validation as v


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """What runs an op and what it guarantees.

    Attributes:
        op: the public op name, e.g. ``"dequantize_per_token"``.
        platform: ``"cpu"`` or ``"cuda"``.
        kernel: the FFI target and the kernel variant that serves the op.
        available: whether this build has that kernel (False: the op raises
            at lowering on this platform).
        math_precision: the compute type C of the contract.
        accumulator: dtype of any reduction's accumulator, None without one.
        deterministic: same inputs give the same bits on every run.
        bit_stable: results match the jnp reference bit for bit.
        workspace_bytes: scratch memory the kernel needs (always 0 here).
        description: a sentence on how the kernel works.
    """

    op: str
    platform: str
    kernel: str
    available: bool
    math_precision: str
    accumulator: str | None
    deterministic: bool
    bit_stable: bool
    workspace_bytes: int
    description: str


Planner = Callable[[np.dtype, np.dtype, np.dtype | None, str], KernelPlan]
_PLANNERS: dict[str, Planner] = {}


def register_planner(op: str, planner: Planner) -> None:
    """Registers the planner of ``op``; called once by each op module."""
    _PLANNERS[op] = planner


def kernel_plan(
    op: str,
    in_dtype: Any,
    out_dtype: Any,
    *,
    scale_dtype: Any = None,
    platform: str | None = None,
) -> KernelPlan:
    """Tells which kernel serves ``op`` for a dtype pair on a platform.

    Args:
        op: a public op name, e.g. ``"dequantize_per_token"``.
        in_dtype: the op's input dtype (``q`` for dequantize, ``x`` for the
            quantize ops).
        out_dtype: the op's output dtype.
        scale_dtype: the scale dtype where the op takes one; defaults to the
            float side of the pair.
        platform: ``"cpu"`` or ``"cuda"``; defaults to JAX's default backend.

    Returns:
        The :class:`KernelPlan`.

    Raises:
        ValueError: unknown op or platform.
        TypeError: a dtype combination the op does not support.
    """
    if op not in _PLANNERS:
        raise ValueError(f"kernel_plan: unknown op {op!r}; known: {sorted(_PLANNERS)}")
    platform = (platform or jax.default_backend()).lower()
    if platform == "gpu":
        platform = "cuda"
    if platform not in ("cpu", "cuda"):
        raise ValueError(f"kernel_plan: platform must be 'cpu' or 'cuda', got {platform!r}")
    return _PLANNERS[op](
        np.dtype(in_dtype),
        np.dtype(out_dtype),
        None if scale_dtype is None else np.dtype(scale_dtype),
        platform,
    )


def is_available(platform: str) -> bool:
    """Whether this build has kernels for ``platform``."""
    return platform in _native.KERNEL_PLATFORMS


def precision_name(*dtypes: np.dtype) -> str:
    """Name of the contract's compute type C for the given scale/output dtypes."""
    return v.compute_dtype(*dtypes).name

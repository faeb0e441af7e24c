"""dequantize_per_token: the public op and its primitive, all rules side by side.

``dequantize_p(q, scale[, zero_point], out_dtype)`` computes
``to_out((C(q) - C(zp)) * C(scale))`` per row, with ``q: [..., D]`` and the
per-row operands of shape ``q.shape[:-1]``. It lowers to the FFI target
``jax_dequant_dequantize_per_token`` on CPU and CUDA.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import batching

from jax_dequant import _config, plan, reference
from jax_dequant import _validation as v
from jax_dequant._partitioning import ELEMENTWISE
from jax_dequant._primitive_utils import define_primitive, register_ffi_lowerings

FFI_TARGET = "jax_dequant_dequantize_per_token"

dequantize_p = define_primitive("jax_dequant_dequantize_per_token")


def dequantize_per_token(
    q: Any, scale: Any, zero_point: Any = None, *, out_dtype: Any = None
) -> jax.Array:
    """Dequantizes per row: ``y[..., d] = (q[..., d] - zero_point[...]) * scale[...]``.

    Args:
        q: quantized values ``[..., D]``: int8 or uint8 storage, or a float
            array holding integer values (the QAT float carrier, which gets a
            straight-through gradient).
        scale: per-row scale, float32/float64/float16/bfloat16, shape
            ``q.shape[:-1]`` or ``q.shape[:-1] + (1,)``.
        zero_point: per-row int32 zero point of the same shape, or None for
            the symmetric form.
        out_dtype: output float dtype; defaults to ``scale.dtype``. Allowed:
            ``out_dtype == scale.dtype``, or any float output with a float32
            scale.

    Returns:
        An array of shape ``q.shape`` and dtype ``out_dtype``, computed in
        float32 (float64 when the scale or output is float64) with one
        rounding to the output type.

    Raises:
        TypeError: an argument of the wrong dtype, a disallowed (scale,
            output) pair, or float64 without ``jax_enable_x64``.
        ValueError: a rank-0 ``q`` or a per-row argument of the wrong shape.
        NotImplementedError: at lowering, on a platform this build has no
            kernel for.
    """
    op = "dequantize_per_token"
    q, scale, zero_point, out_dtype = reference.check_dequantize_args(
        op, q, scale, zero_point, out_dtype
    )
    if _config.current_implementation() == "reference":
        return reference._dequantize(q, scale, zero_point, out_dtype)
    operands = (q, scale) if zero_point is None else (q, scale, zero_point)
    return dequantize_p.bind(*operands, out_dtype=np.dtype(out_dtype))


# --- abstract evaluation -------------------------------------------------------------------------


def _dequantize_abstract_eval(q, scale, *zero_point, out_dtype):
    return q.update(dtype=out_dtype, weak_type=False)


dequantize_p.def_abstract_eval(_dequantize_abstract_eval)

# --- lowering and partitioning -------------------------------------------------------------------
# Elementwise along D: sharding q along any dim runs the kernel on each shard with the per-row
# operands replicated along the D mesh axes; no collective.

register_ffi_lowerings(dequantize_p, FFI_TARGET, partitioning=ELEMENTWISE)

# --- batching ------------------------------------------------------------------------------------


def move_batch_axis_to_front(operands, batch_dims, size: int) -> list[jax.Array]:
    """Moves each operand's batch axis to the front, broadcasting unbatched ones.

    The batch axis becomes one more leading (token) dimension, so a batched
    per-row op is the same op on more rows: no loop.
    """
    moved = []
    for operand, axis in zip(operands, batch_dims):
        if axis is None:
            moved.append(jnp.broadcast_to(operand, (size,) + operand.shape))
        else:
            moved.append(jnp.moveaxis(operand, axis, 0))
    return moved


def batch_size(operands, batch_dims) -> int:
    """The size of the vmapped axis, read off the first batched operand."""
    return next(
        op.shape[axis] for op, axis in zip(operands, batch_dims) if axis is not None
    )


def _dequantize_batch(operands, batch_dims, *, out_dtype):
    size = batch_size(operands, batch_dims)
    operands = move_batch_axis_to_front(operands, batch_dims, size)
    return dequantize_p.bind(*operands, out_dtype=out_dtype), 0


batching.primitive_batchers[dequantize_p] = _dequantize_batch

# --- plan introspection --------------------------------------------------------------------------


def check_plan_dtypes(op: str, in_dtype, out_dtype, scale_dtype) -> np.dtype:
    """Checks a dequantize (or dequantize gradient) plan's dtypes.

    Returns:
        The scale dtype, defaulting to ``out_dtype``.

    Raises:
        TypeError: a dtype or (scale, output) pair the op does not support.
    """
    if in_dtype not in v.STORAGE_DTYPES + v.FLOAT_DTYPES:
        raise TypeError(f"kernel_plan: {op} takes int8/uint8 or a float carrier, got {in_dtype}")
    scale_dtype = out_dtype if scale_dtype is None else scale_dtype
    v.check_float_dtype(op, "out_dtype", out_dtype)
    v.check_float_dtype(op, "scale_dtype", scale_dtype)
    v.check_scale_out_pair(op, scale_dtype, out_dtype)
    return scale_dtype


def _plan(in_dtype, out_dtype, scale_dtype, platform) -> plan.KernelPlan:
    op = "dequantize_per_token"
    scale_dtype = check_plan_dtypes(op, in_dtype, out_dtype, scale_dtype)
    if platform == "cuda":
        description = (
            "the row-wise map kernel: 16-byte vectors of the wider array, each warp access one "
            "contiguous stretch, every load issued before any use, rows by a multiply-high; a "
            "scalar variant (one element per thread) for unaligned buffers and arrays of at most "
            "2^14 elements"
        )
    else:
        description = (
            "row loop with a per-row scale, AVX2 + F16C or baseline (chosen at run time), split "
            "over XLA's threads, a fresh output prefaulted"
        )
    return plan.KernelPlan(
        op=op,
        platform=platform,
        kernel=f"{FFI_TARGET} ({platform})",
        available=plan.is_available(platform),
        math_precision=plan.precision_name(scale_dtype, out_dtype),
        accumulator=None,
        deterministic=True,
        bit_stable=True,
        workspace_bytes=0,
        description=description,
    )


plan.register_planner("dequantize_per_token", _plan)

# --- differentiation -----------------------------------------------------------------------------
# JVP and transpose rules of dequantize_p, and the backward primitives they bind, live in the
# sibling module dequantize_grad.py (four more primitives with their own rules); importing it
# registers them whenever this op is imported.

from jax_dequant import dequantize_grad as _dequantize_grad  # noqa: E402,F401

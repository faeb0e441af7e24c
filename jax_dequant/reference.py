"""The jnp reference of every op: the numerics contract of SPEC.md, written so
that XLA's rewrites cannot change its meaning.

Every test compares our kernels against these functions. They are also the
explicit reference path (``use_implementation('reference')``); they are never
used as a silent fallback.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_dequant import _validation as v


def dequantize_per_token(
    q: Any, scale: Any, zero_point: Any = None, *, out_dtype: Any = None
) -> jax.Array:
    """Reference dequantization: ``to_out((C(q) - C(zp)) * C(scale))``.

    Args:
        q: int8/uint8 (or float carrier) array ``[..., D]``.
        scale: per-row float scale, shape ``q.shape[:-1]`` (optionally ``+ (1,)``).
        zero_point: per-row int32 zero point, or None for symmetric.
        out_dtype: output float dtype; defaults to ``scale.dtype``.

    Returns:
        The dequantized array, shape ``q.shape``, dtype ``out_dtype``.

    Raises:
        TypeError, ValueError: as :func:`jax_dequant.dequantize_per_token`.
    """
    args = check_dequantize_args("dequantize_per_token", q, scale, zero_point, out_dtype)
    return _dequantize(*args)


def check_dequantize_args(op: str, q: Any, scale: Any, zero_point: Any, out_dtype: Any):
    """Validates dequantize arguments.

    Returns:
        ``(q, scale, zero_point, out_dtype)`` with the per-row arrays reshaped
        to ``q.shape[:-1]`` and ``out_dtype`` resolved.

    Raises:
        TypeError, ValueError: naming the bad argument.
    """
    q = v.as_array(op, "q", q)
    v.check_storage_or_carrier(op, "q", q)
    row_shape = tuple(q.shape[:-1])
    scale = v.check_scale(op, scale, row_shape)
    zero_point = v.check_zero_point(op, zero_point, row_shape)
    scale_dtype = np.dtype(scale.dtype)
    out_dtype = v.check_float_dtype(op, "out_dtype", scale_dtype if out_dtype is None else out_dtype)
    v.check_scale_out_pair(op, scale_dtype, out_dtype)
    return q, scale, zero_point, out_dtype


def _dequantize(q, scale, zero_point, out_dtype):
    compute = v.compute_dtype(scale.dtype, out_dtype)
    levels = q.astype(compute)
    if zero_point is not None:
        levels = levels - zero_point[..., None].astype(compute)
    return (levels * scale[..., None].astype(compute)).astype(out_dtype)

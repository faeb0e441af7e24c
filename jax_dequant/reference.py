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


# --- quantize ------------------------------------------------------------------------------------
#
# XLA would contract `x * r + zp` into an FMA on the CPU, and XLA:GPU divides
# approximately; the contract needs the product rounded on its own and a
# correctly rounded reciprocal. An optimization barrier alone does not stop
# the FMA: jax 0.10's XLA:CPU drops the barrier before fusion and still emits
# fma(x, r, zp). What does stop it is an operation between the multiply and
# the add: the select that maps a NaN product to 0 (which is the contract's
# "NaN -> zero point" anyway). tests/test_quantize.py checks the reference
# against a NumPy evaluation of the contract on near-ties, so a future XLA that
# sees through this fails loudly. Evaluate these references on the CPU (tests
# do) for the contract's exact reciprocal.


def quantize_per_token(
    x: Any,
    scale: Any,
    zero_point: Any = None,
    *,
    dtype: Any = jnp.int8,
    qmin: int | None = None,
    qmax: int | None = None,
) -> jax.Array:
    """Reference static quantization: ``clamp(rne(C(x) * r + C(zp)), qmin, qmax)``.

    ``r = 1 / C(scale)`` is rounded once per row and the product ``C(x) * r`` is
    rounded before the add (two roundings, no FMA). ``+-inf`` saturate; NaN maps
    to the zero point (clamped to the range).

    Args:
        x: float input ``[..., D]``.
        scale: per-row scale, shape ``x.shape[:-1]`` (optionally ``+ (1,)``),
            of x's dtype or float32.
        zero_point: per-row int32 zero point, or None for symmetric.
        dtype: storage dtype, int8 or uint8.
        qmin: lower clamp bound; defaults to the storage type's minimum.
        qmax: upper clamp bound; defaults to the storage type's maximum.

    Returns:
        The quantized array, shape ``x.shape``, dtype ``dtype``.

    Raises:
        TypeError, ValueError: as :func:`jax_dequant.quantize_per_token`.
    """
    args = check_quantize_args("quantize_per_token", x, scale, zero_point, dtype, qmin, qmax)
    return _quantize(*args)


def check_quantize_args(op, x, scale, zero_point, dtype, qmin, qmax):
    """Validates static quantize arguments.

    Returns:
        ``(x, scale, zero_point, dtype, qmin, qmax)`` with per-row arrays of
        shape ``x.shape[:-1]``.

    Raises:
        TypeError, ValueError: naming the bad argument.
    """
    x = v.check_float_input(op, "x", x)
    row_shape = tuple(x.shape[:-1])
    scale = v.check_scale(op, scale, row_shape)
    zero_point = v.check_zero_point(op, zero_point, row_shape)
    v.check_scale_out_pair(op, np.dtype(scale.dtype), np.dtype(x.dtype), other="x")
    dtype = v.check_storage_dtype(op, dtype)
    qmin, qmax = v.check_quant_range(op, dtype, qmin, qmax)
    return x, scale, zero_point, dtype, qmin, qmax


def quantized_levels(x, reciprocal, zero_point, qmin, qmax, compute):
    """``clamp(rne(C(x) * r + C(zp)), qmin, qmax)`` as C values (NaN -> zp).

    Args:
        x: input ``[..., D]``.
        reciprocal: per-row ``1 / C(scale)`` in C, shape ``x.shape[:-1]``.
        zero_point: per-row int32 zero point or None.
        qmin, qmax: clamp bounds.
        compute: the compute dtype C.

    Returns:
        The clamped levels, dtype C.
    """
    product = jax.lax.optimization_barrier(x.astype(compute) * reciprocal[..., None])
    # NaN -> 0, so that NaN lands on the zero point; this select also keeps
    # XLA from fusing the multiply and the add into an FMA (see above).
    product = jnp.where(jnp.isnan(product), compute.type(0), product)
    zero = (
        jnp.zeros((), compute) if zero_point is None else zero_point[..., None].astype(compute)
    )
    level = jnp.round(product + zero)
    return jnp.clip(level, compute.type(qmin), compute.type(qmax))


def _quantize(x, scale, zero_point, dtype, qmin, qmax):
    compute = v.compute_dtype(x.dtype, scale.dtype)
    reciprocal = 1 / scale.astype(compute)
    return quantized_levels(x, reciprocal, zero_point, qmin, qmax, compute).astype(dtype)


# --- dynamic quantize ----------------------------------------------------------------------------


def quantize_per_token_dynamic(
    x: Any, *, dtype: Any = jnp.int8, symmetric: bool = True, scale_dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reference dynamic quantization: choose each row's scale (and zero point), then quantize.

    Symmetric (int8): ``scale = absmax(row) * C(1/qmax)``, zero point 0.
    Asymmetric (int8 or uint8): the range is widened to include 0
    (``lo = min(min(row), 0)``, ``hi = max(max(row), 0)``),
    ``scale = (hi - lo) * C(1/(qmax - qmin))`` and
    ``zp = clamp(rne(qmin - lo / scale), qmin, qmax)`` (a true division by the
    stored scale). A zero-range row gets scale 1 and zero point 0. Every
    non-NaN row's scale is clamped to [smallest normal, largest finite] of
    ``scale_dtype`` (so tiny rows never get a zero or subnormal scale and huge
    or infinite rows never an infinite one). A row containing NaN gets a NaN
    scale, zero point 0 (clamped to the range), and all its values quantize to
    the zero point. The row is then quantized with the stored (rounded) scale.

    Args:
        x: float input ``[..., D]``.
        dtype: storage dtype, int8 or uint8.
        symmetric: symmetric (int8 only) or asymmetric.
        scale_dtype: float dtype of the returned scale.

    Returns:
        ``(q, scale, zero_point)``: ``q`` of shape ``x.shape`` and dtype
        ``dtype``; ``scale`` (``scale_dtype``) and ``zero_point`` (int32) of
        shape ``x.shape[:-1]``.

    Raises:
        TypeError, ValueError: as :func:`jax_dequant.quantize_per_token_dynamic`.
    """
    args = check_dynamic_args("quantize_per_token_dynamic", x, dtype, symmetric, scale_dtype)
    return _quantize_dynamic(*args)


def check_dynamic_args(op, x, dtype, symmetric, scale_dtype):
    """Validates dynamic quantize arguments.

    Returns:
        ``(x, dtype, symmetric, scale_dtype)``.

    Raises:
        TypeError, ValueError: naming the bad argument.
    """
    x = v.check_float_input(op, "x", x)
    dtype = v.check_storage_dtype(op, dtype)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"{op}: symmetric must be a bool, got {type(symmetric).__name__}")
    if symmetric and dtype == np.uint8:
        raise ValueError(f"{op}: symmetric=True needs int8 storage, got uint8; use symmetric=False")
    # Any float scale_dtype goes with any float x: the scale is computed in C and
    # only stored in scale_dtype.
    scale_dtype = v.check_float_dtype(op, "scale_dtype", scale_dtype)
    return x, dtype, bool(symmetric), scale_dtype


def scale_bounds(scale_dtype, compute) -> tuple[Any, Any]:
    """The range a dynamically chosen scale is clamped to, as C values.

    Lower: the smallest normal number of ``scale_dtype``. Upper: the largest
    finite ``scale_dtype`` value, but at most ``1 / smallest normal of C``
    (2^126 for float32), so that ``1 / scale`` is never subnormal and rows with
    an infinity behave the same where subnormals are flushed (CPU) and where
    they are kept (GPU).

    Args:
        scale_dtype: dtype the scale is stored in.
        compute: the compute dtype C.

    Returns:
        ``(smallest_normal, largest)`` as scalars of dtype C.
    """
    finfo = jnp.finfo(scale_dtype)
    largest = min(float(finfo.max), 1.0 / float(jnp.finfo(compute).tiny))
    return compute.type(float(finfo.tiny)), compute.type(largest)


def store_scale(scale, scale_dtype):
    """Rounds a scale computed in C to ``scale_dtype``.

    A float64 value is stored as float16/bfloat16 through float32 (two
    roundings): that is what XLA's convert does on CPU and GPU and what the
    kernels do; written out here so that it cannot depend on XLA's choice.

    Args:
        scale: the scale in C.
        scale_dtype: the storage dtype.

    Returns:
        The scale as ``scale_dtype``.
    """
    scale_dtype = np.dtype(scale_dtype)
    if scale.dtype == np.float64 and scale_dtype.itemsize == 2:
        scale = scale.astype(np.float32)
    return scale.astype(scale_dtype)


def choose_scale(x, dtype, symmetric, scale_dtype, qmin=None, qmax=None):
    """The dynamic choice of each row's scale and zero point (see quantize_per_token_dynamic).

    Args:
        x: float input ``[..., D]``.
        dtype: storage dtype.
        symmetric: symmetric or asymmetric choice.
        scale_dtype: dtype of the stored scale.
        qmin, qmax: the quantized range; default the storage type's.

    Returns:
        ``(scale, zero_point)``: the stored scale (``scale_dtype``) and the
        int32 zero point, shape ``x.shape[:-1]``.
    """
    info = np.iinfo(dtype)
    qmin = info.min if qmin is None else qmin
    qmax = info.max if qmax is None else qmax
    compute = v.compute_dtype(x.dtype, scale_dtype)
    c = compute.type
    values = x.astype(compute)
    smallest_normal, largest = scale_bounds(scale_dtype, compute)
    # XLA:CPU's vectorized row reductions can drop a NaN (jax 0.10 and 0.12: a
    # max over rows of 1024 values ignores it), so a row's NaN is applied
    # explicitly: the row's range (and so its scale) becomes NaN.
    has_nan = jnp.any(jnp.isnan(values), axis=-1)
    nan = c(np.nan)
    if symmetric:
        absmax = jnp.where(has_nan, nan, jnp.max(jnp.abs(values), axis=-1, initial=c(0)))
        scale = jnp.where(absmax == 0, c(1), absmax * c(1.0 / qmax))
        lo = hi = None
    else:
        lo = jnp.where(has_nan, nan, jnp.min(values, axis=-1, initial=c(0)))
        hi = jnp.where(has_nan, nan, jnp.max(values, axis=-1, initial=c(0)))
        span = hi - lo
        scale = jnp.where(span == 0, c(1), span * c(1.0 / (qmax - qmin)))
    scale = jnp.where(scale < smallest_normal, smallest_normal, scale)
    scale = store_scale(jnp.where(scale > largest, largest, scale), scale_dtype)
    if symmetric:
        return scale, jnp.zeros(x.shape[:-1], jnp.int32)
    level = jnp.round(c(qmin) - lo / scale.astype(compute))
    level = jnp.clip(jnp.where(jnp.isnan(level), c(0), level), c(qmin), c(qmax))
    zero_point = jnp.where(hi - lo == 0, c(0), level).astype(jnp.int32)
    return scale, zero_point


def _quantize_dynamic(x, dtype, symmetric, scale_dtype):
    scale, zero_point = choose_scale(x, dtype, symmetric, scale_dtype)
    compute = v.compute_dtype(x.dtype, scale_dtype)
    info = np.iinfo(dtype)
    reciprocal = 1 / scale.astype(compute)
    levels = quantized_levels(
        x, reciprocal, None if symmetric else zero_point, int(info.min), int(info.max), compute
    )
    return levels.astype(dtype), scale, zero_point

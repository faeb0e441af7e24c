"""The jnp reference of every op: the numerics contract of SPEC.md, written so
that XLA's rewrites cannot change its meaning.

Every test compares our kernels against these functions. They are also the
explicit reference path (``use_implementation('reference')``); they are never
used as a silent fallback.
"""

from __future__ import annotations

import functools
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
# correctly rounded reciprocal. An optimization barrier does not keep the product
# apart: XLA:CPU removes barriers before fusion, and LLVM then contracts the
# fused multiply and add (and folds identities such as a float64 round trip).
# rounded_product() puts a select between the product and its users, which no
# FMA can cross. Evaluate these references on the CPU (tests do) for the
# contract's exact reciprocal.


def rounded_product(x, reciprocal, compute):
    """``C(x) * r`` rounded to C on its own, so that no consumer can fuse it into an FMA.

    The select returns x itself where x is NaN, where the product is NaN too;
    its only purpose is to sit between the multiply and whatever adds to it.

    Args:
        x: input ``[..., D]``.
        reciprocal: per-row ``1 / C(scale)`` in C, shape ``x.shape[:-1]``.
        compute: the compute dtype C.

    Returns:
        The rounded products, dtype C.
    """
    values = x.astype(compute)
    return jnp.where(jnp.isnan(values), values, values * reciprocal[..., None])


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
    product = rounded_product(x, reciprocal, compute)
    zero = (
        jnp.zeros((), compute) if zero_point is None else zero_point[..., None].astype(compute)
    )
    level = jnp.round(product + zero)
    level = jnp.where(jnp.isnan(level), jnp.broadcast_to(zero, level.shape), level)
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
    roundings): that is what the kernels do, and what XLA's convert does in
    jax 0.10.2 and 0.12.0.1 on the CPU (jax 0.11.2's rounds once); written out here so that it
    cannot depend on XLA's choice.

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
    # XLA:CPU's max/min reductions do not propagate NaN for every shape (its
    # library-backed reduce fusions drop them), so a NaN in a row is applied explicitly.
    row_nan = jnp.any(jnp.isnan(values), axis=-1)
    if symmetric:
        absmax = jnp.max(jnp.abs(values), axis=-1, initial=c(0))
        absmax = jnp.where(row_nan, c(np.nan), absmax)
        scale = jnp.where(absmax == 0, c(1), absmax * c(1.0 / qmax))
        lo = hi = None
    else:
        lo = jnp.where(row_nan, c(np.nan), jnp.min(values, axis=-1, initial=c(0)))
        hi = jnp.where(row_nan, c(np.nan), jnp.max(values, axis=-1, initial=c(0)))
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


# --- fake quantize -------------------------------------------------------------------------------
#
# The forward is the contract exactly (quantized_levels, then (q - zp) * s in C
# with one rounding to x's type). Its derivatives are custom JVP rules, so
# that jax.grad / jax.jvp of this reference are the ground truth for the
# kernels' gradients: the clipped straight-through estimator for x (endpoints
# included) and the LSQ gradient for a given scale; a dynamically chosen scale
# gets no gradient.


def fake_quantize_per_token(
    x: Any,
    scale: Any = None,
    zero_point: Any = None,
    *,
    dtype: Any = jnp.int8,
    qmin: int | None = None,
    qmax: int | None = None,
) -> jax.Array:
    """Reference fake quantization: quantize then dequantize, in one expression.

    ``y = to_x((clamp(rne(C(x) * r + C(zp)), qmin, qmax) - C(zp)) * C(s))``
    with ``r = 1 / C(s)`` rounded once per row. With ``scale=None`` each row's
    scale (float32) and zero point are chosen as by
    :func:`quantize_per_token_dynamic` (see
    :func:`check_fake_quantize_dynamic_args` for which form), and no gradient
    flows into that choice.

    Args:
        x: float input ``[..., D]``.
        scale: per-row scale (x's dtype or float32), or None for the dynamic
            choice.
        zero_point: per-row int32 zero point, or None for symmetric; must be
            None when ``scale`` is None.
        dtype: the simulated storage dtype, int8 or uint8.
        qmin: lower clamp bound; defaults to the storage type's minimum.
        qmax: upper clamp bound; defaults to the storage type's maximum.

    Returns:
        The fake-quantized array, shape and dtype of ``x``.

    Raises:
        TypeError, ValueError: as :func:`jax_dequant.fake_quantize_per_token`.
    """
    op = "fake_quantize_per_token"
    if scale is None:
        x, qmin, qmax, symmetric = check_fake_quantize_dynamic_args(
            op, x, zero_point, dtype, qmin, qmax
        )
        return _fake_quantize_dynamic(x, qmin, qmax, symmetric)
    x, scale, zero_point, _, qmin, qmax = check_quantize_args(
        op, x, scale, zero_point, dtype, qmin, qmax
    )
    return _fake_quantize(x, scale, zero_point, qmin, qmax)


def check_fake_quantize_dynamic_args(op, x, zero_point, dtype, qmin, qmax):
    """Validates fake quantization with ``scale=None`` and picks its form.

    int8 storage is symmetric (zero point 0, ``scale = absmax * (1/qmax)``),
    which needs ``qmin <= 0 < qmax``; uint8 storage is asymmetric (the zero
    point is chosen too), which needs ``qmin < qmax``. A ``zero_point`` without
    a ``scale`` is an error: the dynamic form chooses its own.

    Returns:
        ``(x, qmin, qmax, symmetric)``.

    Raises:
        TypeError, ValueError: naming the bad argument.
    """
    x = v.check_float_input(op, "x", x)
    dtype = v.check_storage_dtype(op, dtype)
    qmin, qmax = v.check_quant_range(op, dtype, qmin, qmax)
    if zero_point is not None:
        raise ValueError(
            f"{op}: zero_point must be None when scale is None (the dynamic form chooses its own "
            f"zero point), got a {type(zero_point).__name__}"
        )
    symmetric = dtype == np.int8
    if symmetric and not qmin <= 0 < qmax:
        raise ValueError(
            f"{op}: a dynamic symmetric (int8) scale needs qmin <= 0 < qmax, got qmin={qmin}, "
            f"qmax={qmax}"
        )
    if not symmetric and qmin == qmax:
        raise ValueError(
            f"{op}: a dynamic asymmetric (uint8) scale needs qmin < qmax, got qmin=qmax={qmin}"
        )
    return x, qmin, qmax, bool(symmetric)


def fake_quantize_slopes(x, reciprocal, zero_point, qmin, qmax, compute):
    """The derivative terms of fake quantization (numerics.h fake_quantize_slopes).

    Args:
        x: input ``[..., D]``.
        reciprocal: per-row ``1 / C(scale)`` in C.
        zero_point: per-row int32 zero point or None.
        qmin, qmax: clamp bounds.
        compute: the compute dtype C.

    Returns:
        ``(inside, lsq)``: ``inside`` is the clipped straight-through mask
        ``qmin <= rne(x * r + zp) <= qmax`` (endpoints included; a NaN x has
        level zp); ``lsq`` (dtype C) is the LSQ derivative with respect to the
        scale, ``(level - zp) - x * r`` inside and ``qbound - zp`` where the
        level is clipped to ``qbound``.
    """
    product = rounded_product(x, reciprocal, compute)
    zero = (
        jnp.zeros((), compute) if zero_point is None else zero_point[..., None].astype(compute)
    )
    level = jnp.round(product + zero)
    level = jnp.where(jnp.isnan(level), jnp.broadcast_to(zero, level.shape), level)
    low, high = compute.type(qmin), compute.type(qmax)
    lsq = jnp.where(
        level < low, low - zero, jnp.where(level > high, high - zero, (level - zero) - product)
    )
    return (level >= low) & (level <= high), lsq


def _fake_quantize_value(x, scale, zero_point, qmin, qmax):
    compute = v.compute_dtype(x.dtype, scale.dtype)
    reciprocal = 1 / scale.astype(compute)
    levels = quantized_levels(x, reciprocal, zero_point, qmin, qmax, compute)
    # The levels as stored integers (a -0 level is 0), so that fake quantization is
    # dequantize(quantize(x)) bit for bit; XLA would fold a `+ 0` away.
    levels = levels.astype(jnp.int32).astype(compute)
    zero = jnp.zeros((), compute) if zero_point is None else zero_point[..., None].astype(compute)
    return ((levels - zero) * scale[..., None].astype(compute)).astype(x.dtype)


def _is_symbolic_zero(tangent) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _fake_quantize(x, scale, zero_point, qmin, qmax):
    return _fake_quantize_value(x, scale, zero_point, qmin, qmax)


def _fake_quantize_jvp(qmin, qmax, primals, tangents):
    x, scale, zero_point = primals
    tangent_x, tangent_scale, _ = tangents
    y = _fake_quantize_value(x, scale, zero_point, qmin, qmax)
    compute = v.compute_dtype(x.dtype, scale.dtype)
    inside, lsq = fake_quantize_slopes(
        x, 1 / scale.astype(compute), zero_point, qmin, qmax, compute
    )
    x_zero, scale_zero = _is_symbolic_zero(tangent_x), _is_symbolic_zero(tangent_scale)
    if x_zero and scale_zero:
        return y, jnp.zeros_like(y)
    if scale_zero:
        return y, jnp.where(inside, tangent_x, jnp.zeros_like(tangent_x))
    scale_term = lsq * tangent_scale.astype(compute)[..., None]
    if x_zero:
        return y, scale_term.astype(x.dtype)
    passed = tangent_x.astype(compute)
    passed = jnp.where(inside, passed, jnp.zeros_like(passed))
    return y, (passed + scale_term).astype(x.dtype)


_fake_quantize.defjvp(_fake_quantize_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _fake_quantize_dynamic(x, qmin, qmax, symmetric):
    scale, zero_point = _dynamic_choice(x, qmin, qmax, symmetric)
    return _fake_quantize_value(x, scale, zero_point, qmin, qmax)


def _dynamic_choice(x, qmin, qmax, symmetric):
    dtype = np.int8 if symmetric else np.uint8
    scale, zero_point = choose_scale(x, dtype, symmetric, np.dtype(np.float32), qmin, qmax)
    return scale, None if symmetric else zero_point


def _fake_quantize_dynamic_jvp(qmin, qmax, symmetric, primals, tangents):
    (x,), (tangent_x,) = primals, tangents
    scale, zero_point = _dynamic_choice(x, qmin, qmax, symmetric)
    y = _fake_quantize_value(x, scale, zero_point, qmin, qmax)
    if _is_symbolic_zero(tangent_x):
        return y, jnp.zeros_like(y)
    compute = v.compute_dtype(x.dtype, scale.dtype)
    inside, _ = fake_quantize_slopes(x, 1 / scale.astype(compute), zero_point, qmin, qmax, compute)
    return y, jnp.where(inside, tangent_x, jnp.zeros_like(tangent_x))


_fake_quantize_dynamic.defjvp(_fake_quantize_dynamic_jvp, symbolic_zeros=True)

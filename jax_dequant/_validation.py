"""Argument checks shared by every public op.

Every check runs at trace time, before anything is lowered, and raises
``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or value)
with a message that names the op, the argument, what was expected and what
was given. Nothing reaches a kernel that the kernel cannot handle.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STORAGE_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
FLOAT_DTYPES = (
    np.dtype(jnp.float16),
    np.dtype(jnp.bfloat16),
    np.dtype(np.float32),
    np.dtype(np.float64),
)
ZERO_POINT_DTYPE = np.dtype(np.int32)


def x64_enabled() -> bool:
    """Returns whether JAX keeps float64 arrays (``jax_enable_x64``)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def _names(dtypes: tuple[np.dtype, ...]) -> str:
    return ", ".join(_dtype_name(d) for d in dtypes)


def as_array(op: str, name: str, value: Any) -> jax.Array:
    """Converts ``value`` to a JAX array without silently changing its dtype.

    Args:
        op: public op name, for messages.
        name: argument name, for messages.
        value: an array, a tracer, a NumPy array or a Python number/list.

    Returns:
        The value as a JAX array (or tracer) of the same dtype.

    Raises:
        TypeError: if the value is not array-like, or is float64 while
            ``jax_enable_x64`` is off (JAX would silently make it float32).
    """
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{op}: {name} must be an array, got {type(value).__name__}")
    dtype = getattr(value, "dtype", None)
    if dtype is not None and np.dtype(dtype) == np.float64 and not x64_enabled():
        raise TypeError(
            f"{op}: {name} is float64 but jax_enable_x64 is off (JAX would silently turn it "
            "into float32); enable x64 with jax.config.update('jax_enable_x64', True) or pass "
            "float32"
        )
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{op}: {name} must be an array, got {type(value).__name__}") from error


def check_float_dtype(op: str, name: str, dtype: Any) -> np.dtype:
    """Checks that ``dtype`` is one of float16, bfloat16, float32, float64.

    Args:
        op: public op name, for messages.
        name: argument name, for messages.
        dtype: anything ``np.dtype`` accepts.

    Returns:
        The dtype as ``np.dtype``.

    Raises:
        TypeError: for any other dtype, or float64 without ``jax_enable_x64``.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{op}: {name} must be a float dtype, got {dtype!r}") from error
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be one of {_names(FLOAT_DTYPES)}, got {dtype.name}")
    if dtype == np.float64 and not x64_enabled():
        raise TypeError(
            f"{op}: {name} is float64 but jax_enable_x64 is off; enable it with "
            "jax.config.update('jax_enable_x64', True)"
        )
    return dtype


def check_storage_or_carrier(op: str, name: str, array: jax.Array) -> np.dtype:
    """Checks quantized storage: int8, uint8, or a float carrier of integer values.

    Args:
        op: public op name, for messages.
        name: argument name, for messages.
        array: the quantized array.

    Returns:
        Its dtype.

    Raises:
        TypeError: for bool, other integer widths, complex and the like.
        ValueError: for a rank-0 array.
    """
    dtype = np.dtype(array.dtype)
    if dtype not in STORAGE_DTYPES and dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be int8 or uint8 (or a float carrier: {_names(FLOAT_DTYPES)}), "
            f"got {dtype.name}"
        )
    if array.ndim < 1:
        raise ValueError(f"{op}: {name} must have rank >= 1 ([..., D]), got a scalar")
    return dtype


def check_per_row(
    op: str, name: str, array: jax.Array, row_shape: tuple[int, ...]
) -> jax.Array:
    """Checks a per-row parameter's shape and returns it with shape ``row_shape``.

    Args:
        op: public op name, for messages.
        name: argument name, for messages.
        array: the per-row parameter.
        row_shape: ``x.shape[:-1]``; ``row_shape + (1,)`` is accepted too.

    Returns:
        ``array`` reshaped to ``row_shape`` (a free reshape).

    Raises:
        ValueError: if the shape is neither of the two accepted ones.
    """
    if array.shape not in (tuple(row_shape), tuple(row_shape) + (1,)):
        raise ValueError(
            f"{op}: {name} must have shape {tuple(row_shape)} or {tuple(row_shape) + (1,)} "
            f"(one value per row), got {tuple(array.shape)}"
        )
    return array.reshape(row_shape)


def check_scale(op: str, scale: Any, row_shape: tuple[int, ...]) -> jax.Array:
    """Checks a per-row scale: a float array of shape ``row_shape`` (or with a trailing 1).

    Args:
        op: public op name, for messages.
        scale: the scale argument.
        row_shape: the rows' shape, ``x.shape[:-1]``.

    Returns:
        The scale as an array of shape ``row_shape``.

    Raises:
        TypeError: wrong dtype or not an array.
        ValueError: wrong shape.
    """
    scale = as_array(op, "scale", scale)
    check_float_dtype(op, "scale", scale.dtype)
    return check_per_row(op, "scale", scale, row_shape)


def check_zero_point(op: str, zero_point: Any, row_shape: tuple[int, ...]) -> jax.Array | None:
    """Checks an optional per-row int32 zero point.

    Args:
        op: public op name, for messages.
        zero_point: None (symmetric) or the zero point.
        row_shape: the rows' shape.

    Returns:
        None, or the zero point as an int32 array of shape ``row_shape``.

    Raises:
        TypeError: not int32.
        ValueError: wrong shape.
    """
    if zero_point is None:
        return None
    zero_point = as_array(op, "zero_point", zero_point)
    if np.dtype(zero_point.dtype) != ZERO_POINT_DTYPE:
        raise TypeError(f"{op}: zero_point must be int32, got {np.dtype(zero_point.dtype).name}")
    return check_per_row(op, "zero_point", zero_point, row_shape)


def check_scale_out_pair(
    op: str, scale_dtype: np.dtype, out_dtype: np.dtype, other: str = "output"
) -> None:
    """Checks the (scale, output) dtype pair: equal, or a float32 scale.

    Args:
        op: public op name, for messages.
        scale_dtype: the scale's dtype.
        out_dtype: the dtype the scale goes with.
        other: what ``out_dtype`` is the dtype of, for messages (``"output"``
            for dequantize, ``"x"`` for the quantize ops).

    Raises:
        TypeError: for any other pair.
    """
    if scale_dtype != out_dtype and scale_dtype != np.float32:
        raise TypeError(
            f"{op}: scale dtype {scale_dtype.name} with {other} dtype {out_dtype.name} is not "
            f"supported; the scale must have the {other} dtype or be float32"
        )


def compute_dtype(*dtypes: np.dtype) -> np.dtype:
    """The contract's compute type C: float64 if any given dtype is float64, else float32."""
    return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dtypes) else np.dtype(
        np.float32
    )


def check_storage_dtype(op: str, dtype: Any) -> np.dtype:
    """Checks a quantized storage dtype: int8 or uint8.

    Raises:
        TypeError: for any other dtype.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{op}: dtype must be int8 or uint8, got {dtype!r}") from error
    if dtype not in STORAGE_DTYPES:
        raise TypeError(f"{op}: dtype must be int8 or uint8, got {dtype.name}")
    return dtype


def check_quant_range(op: str, dtype: np.dtype, qmin: Any, qmax: Any) -> tuple[int, int]:
    """Resolves and checks ``[qmin, qmax]`` against the storage type.

    Args:
        op: public op name, for messages.
        dtype: the storage dtype (int8 or uint8).
        qmin: lower bound or None (the storage type's minimum).
        qmax: upper bound or None (the storage type's maximum).

    Returns:
        ``(qmin, qmax)`` as Python ints.

    Raises:
        TypeError: a bound that is not an integer.
        ValueError: a bound outside the storage type, or ``qmin > qmax``.
    """
    info = np.iinfo(dtype)
    bounds = []
    for name, value, default in (("qmin", qmin, info.min), ("qmax", qmax, info.max)):
        if value is None:
            bounds.append(int(default))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{op}: {name} must be a Python int, got {type(value).__name__}")
        if not info.min <= int(value) <= info.max:
            raise ValueError(
                f"{op}: {name} must lie in [{info.min}, {info.max}] for {dtype.name} storage, "
                f"got {int(value)}"
            )
        bounds.append(int(value))
    if bounds[0] > bounds[1]:
        raise ValueError(f"{op}: qmin must be <= qmax, got qmin={bounds[0]}, qmax={bounds[1]}")
    return bounds[0], bounds[1]


def check_float_input(op: str, name: str, value: Any) -> jax.Array:
    """Checks a float input ``[..., D]`` (float16, bfloat16, float32, float64).

    Returns:
        The input as a JAX array.

    Raises:
        TypeError: not an array of a supported float dtype.
        ValueError: rank 0.
    """
    array = as_array(op, name, value)
    check_float_dtype(op, name, array.dtype)
    if array.ndim < 1:
        raise ValueError(f"{op}: {name} must have rank >= 1 ([..., D]), got a scalar")
    return array

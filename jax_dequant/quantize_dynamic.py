"""quantize_per_token_dynamic: the public op and its primitive, all rules side by side.

``quantize_dynamic_p(x, dtype, symmetric, scale_dtype, qmin, qmax)`` has three
results ``(q, scale, zero_point)``. Per row it reduces the range (absmax, or
min and max widened to include 0), chooses the scale in C and stores it as
``scale_dtype``, chooses the zero point from the stored scale, and quantizes the
row with the stored scale, all in one fused kernel. It lowers to the FFI
target ``jax_dequant_quantize_per_token_dynamic`` on CPU and CUDA.

It lives apart from the static op (``quantize.py``) because it is a different
primitive with different rules: one operand and three results, its own kernel
(a row reduction fused with the quantization) and its own planner.

Differentiation: ``q`` and ``zero_point`` are integers (float0 tangents); the
chosen ``scale`` is treated as a non-differentiable choice, like
``jax.lax.stop_gradient`` (its tangent is zero), as SPEC.md says for the
dynamic scale of ``fake_quantize_per_token``. No kernel runs for a derivative.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching

from jax_dequant import _config, plan, reference
from jax_dequant import _validation as v
from jax_dequant._partitioning import RowStatistics, row_aval
from jax_dequant._primitive_utils import define_primitive, register_ffi_lowerings
from jax_dequant._row_statistics import sharded_dynamic
from jax_dequant.quantize import integer_output_tangent, quantize_p

FFI_TARGET = "jax_dequant_quantize_per_token_dynamic"

quantize_dynamic_p = define_primitive(
    "jax_dequant_quantize_per_token_dynamic", multiple_results=True
)


def quantize_per_token_dynamic(
    x: Any, *, dtype: Any = jnp.int8, symmetric: bool = True, scale_dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Chooses each row's scale (and zero point) from the row, then quantizes the row.

    Symmetric (int8 only): ``scale = absmax(row) * (1/127)``, zero point 0.
    Asymmetric (int8 or uint8): with ``lo = min(min(row), 0)`` and
    ``hi = max(max(row), 0)``, ``scale = (hi - lo) * (1/(qmax - qmin))`` and
    ``zero_point = clamp(rne(qmin - lo / scale), qmin, qmax)``, using the full
    range of ``dtype``. The scale is computed in C (float64 when ``x`` or
    ``scale_dtype`` is float64, else float32) and stored as ``scale_dtype``; the
    row is quantized with the stored scale exactly as
    :func:`jax_dequant.quantize_per_token` does, so
    ``dequantize_per_token(q, scale, zero_point)`` is within half a step of x.

    Edge cases: a row whose range is 0 (all zeros, or D = 0) gets scale 1 and
    zero point 0. Every row without NaN gets a finite scale of at least the
    smallest normal ``scale_dtype`` number (tiny rows) and at most
    min(largest finite ``scale_dtype``, 2^126) (2^1022 when C is float64), so
    rows holding an infinity get a finite scale and their infinities saturate.
    A row holding a NaN gets a NaN scale, zero point 0, and all its values
    quantize to 0.

    Args:
        x: float input ``[..., D]`` (float16, bfloat16, float32, float64).
        dtype: storage dtype, ``int8`` or ``uint8``.
        symmetric: symmetric (int8 only) or asymmetric.
        scale_dtype: float dtype of the returned scale (any float dtype, with
            any ``x``).

    Returns:
        ``(q, scale, zero_point)``: ``q`` of shape ``x.shape`` and dtype
        ``dtype``; ``scale`` (``scale_dtype``) and ``zero_point`` (int32, zeros
        when symmetric) of shape ``x.shape[:-1]``.

    Raises:
        TypeError: an argument of the wrong dtype or kind, a non-bool
            ``symmetric``, or float64 without ``jax_enable_x64``.
        ValueError: a rank-0 ``x``, or ``symmetric=True`` with uint8.
        NotImplementedError: at lowering, on a platform this build has no
            kernel for.
    """
    op = "quantize_per_token_dynamic"
    x, dtype, symmetric, scale_dtype = reference.check_dynamic_args(
        op, x, dtype, symmetric, scale_dtype
    )
    if _config.current_implementation() == "reference":
        return reference._quantize_dynamic(x, dtype, symmetric, scale_dtype)
    info = np.iinfo(dtype)
    q, scale, zero_point = quantize_dynamic_p.bind(
        x,
        dtype=np.dtype(dtype),
        symmetric=symmetric,
        scale_dtype=np.dtype(scale_dtype),
        qmin=int(info.min),
        qmax=int(info.max),
    )
    return q, scale, zero_point


# --- abstract evaluation -------------------------------------------------------------------------


def _quantize_dynamic_abstract_eval(x, *, dtype, symmetric, scale_dtype, qmin, qmax):
    return (
        x.update(dtype=dtype, weak_type=False),
        row_aval(x, scale_dtype),
        row_aval(x, np.int32),
    )


quantize_dynamic_p.def_abstract_eval(_quantize_dynamic_abstract_eval)

# --- lowering and partitioning -------------------------------------------------------------------


def _attributes(*, dtype, symmetric, scale_dtype, qmin, qmax) -> dict:
    return {"symmetric": bool(symmetric), "qmin": np.int32(qmin), "qmax": np.int32(qmax)}


def _finish_shard(x, scale, zero_point, *, dtype, symmetric, scale_dtype, qmin, qmax):
    """Quantizes a D shard with the row's global scale (chosen from all shards).

    The static kernel takes a scale of x's dtype or float32, so the stored scale
    is handed over in C (exact: C holds every scale dtype it goes with), and x
    in C when only the scale made C float64: the same arithmetic, the same bits
    as the fused kernel on the whole row.
    """
    if v.compute_dtype(x.dtype, scale_dtype) == np.float64:
        operands = (x.astype(np.float64), scale.astype(np.float64))
    else:
        operands = (x, scale.astype(np.float32))
    if not symmetric:
        operands += (zero_point,)
    q = quantize_p.bind(*operands, dtype=dtype, qmin=qmin, qmax=qmax)
    return q, scale, zero_point


# Row statistics: with D sharded, each device reduces its shard, one cross-shard
# max/min makes the range global, and the shard is quantized with that scale.
register_ffi_lowerings(
    quantize_dynamic_p,
    FFI_TARGET,
    _attributes,
    partitioning=RowStatistics(
        sharded=sharded_dynamic(_finish_shard, lambda params: params["scale_dtype"])
    ),
)

# --- batching ------------------------------------------------------------------------------------


def _quantize_dynamic_batch(operands, batch_dims, **params):
    (x,), (axis,) = operands, batch_dims
    outs = quantize_dynamic_p.bind(jnp.moveaxis(x, axis, 0), **params)
    return outs, (0, 0, 0)


batching.primitive_batchers[quantize_dynamic_p] = _quantize_dynamic_batch

# --- differentiation -----------------------------------------------------------------------------


def _quantize_dynamic_jvp(primals, tangents, **params):
    q, scale, zero_point = quantize_dynamic_p.bind(*primals, **params)
    scale_tangent = ad.Zero(jax.typeof(scale).to_tangent_aval())
    return (q, scale, zero_point), (
        integer_output_tangent(q),
        scale_tangent,
        integer_output_tangent(zero_point),
    )


ad.primitive_jvps[quantize_dynamic_p] = _quantize_dynamic_jvp

# --- plan introspection --------------------------------------------------------------------------


def _plan(in_dtype, out_dtype, scale_dtype, platform) -> plan.KernelPlan:
    op = "quantize_per_token_dynamic"
    in_dtype = v.check_float_dtype(op, "x", in_dtype)
    v.check_storage_dtype(op, out_dtype)
    scale_dtype = v.check_float_dtype(
        op, "scale_dtype", np.float32 if scale_dtype is None else scale_dtype
    )
    compute = plan.precision_name(scale_dtype, in_dtype)
    if platform == "cuda":
        description = (
            "one fused kernel: a warp per row (short rows) or a block per row reads the row once "
            "with 16-byte loads into registers, reduces its range in a fixed order, computes the "
            "scale and zero point, and quantizes from registers; rows longer than a block holds "
            "(32768 bfloat16 values) are read a second time"
        )
    else:
        description = (
            "row loop: the row's range (vectorized min/max), then scale and zero point, then the "
            "row quantized from cache (AVX-512 where the CPU has it); rows over XLA's threads"
        )
    return plan.KernelPlan(
        op=op,
        platform=platform,
        kernel=f"{FFI_TARGET} ({platform})",
        available=plan.is_available(platform),
        math_precision=compute,
        accumulator=compute,
        deterministic=True,
        bit_stable=True,
        workspace_bytes=0,
        description=description,
    )


plan.register_planner("quantize_per_token_dynamic", _plan)

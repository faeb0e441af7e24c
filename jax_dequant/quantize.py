"""quantize_per_token: the public op and its primitive, all rules side by side.

``quantize_p(x, scale[, zero_point], dtype, qmin, qmax)`` computes
``clamp(rne(C(x) * r + C(zp)), qmin, qmax)`` per row, with ``r = 1 / C(scale)``
rounded once per row and the product rounded before the add. It lowers to the
FFI target ``jax_dequant_quantize_per_token`` on CPU and CUDA.

The output is integer, so the op is piecewise constant: its JVP is a symbolic
zero (a float0 tangent), and reverse mode gives zero cotangents for ``x`` and
``scale`` without launching any kernel.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching

from jax_dequant import _config, plan, reference
from jax_dequant import _validation as v
from jax_dequant._partitioning import ELEMENTWISE
from jax_dequant._primitive_utils import define_primitive, register_ffi_lowerings
from jax_dequant.dequantize import batch_size, move_batch_axis_to_front

FFI_TARGET = "jax_dequant_quantize_per_token"

quantize_p = define_primitive("jax_dequant_quantize_per_token")


def quantize_per_token(
    x: Any,
    scale: Any,
    zero_point: Any = None,
    *,
    dtype: Any = jnp.int8,
    qmin: int | None = None,
    qmax: int | None = None,
) -> jax.Array:
    """Quantizes per row: ``q = clamp(rne(x * (1 / scale) + zero_point), qmin, qmax)``.

    The reciprocal ``1 / scale`` is computed once per row, correctly rounded;
    the product is rounded before the zero point is added (two roundings, no
    FMA), then rounded half to even and clamped. This is bit for bit PyTorch's
    ``quantized_decomposed.quantize_per_token``. ``+-inf`` saturate to
    ``qmax``/``qmin``; NaN maps to the zero point (clamped to the range); a zero
    scale gives an infinite reciprocal.

    Args:
        x: float input ``[..., D]`` (float16, bfloat16, float32, float64).
        scale: per-row scale of shape ``x.shape[:-1]`` or ``x.shape[:-1] + (1,)``,
            of x's dtype or float32.
        zero_point: per-row int32 zero point of the same shape, or None for
            the symmetric form.
        dtype: storage dtype, ``int8`` or ``uint8``.
        qmin: lower clamp bound; defaults to the storage type's minimum.
        qmax: upper clamp bound; defaults to the storage type's maximum.

    Returns:
        The levels, shape ``x.shape``, dtype ``dtype``. Computed in float32
        (float64 when ``x`` or ``scale`` is float64).

    Raises:
        TypeError: an argument of the wrong dtype or kind, a disallowed
            (scale, x) pair, a non-integer bound, or float64 without
            ``jax_enable_x64``.
        ValueError: a rank-0 ``x``, a per-row argument of the wrong shape,
            a bound outside the storage type, or ``qmin > qmax``.
        NotImplementedError: at lowering, on a platform this build has no
            kernel for.
    """
    op = "quantize_per_token"
    x, scale, zero_point, dtype, qmin, qmax = reference.check_quantize_args(
        op, x, scale, zero_point, dtype, qmin, qmax
    )
    if _config.current_implementation() == "reference":
        return reference._quantize(x, scale, zero_point, dtype, qmin, qmax)
    operands = (x, scale) if zero_point is None else (x, scale, zero_point)
    return quantize_p.bind(*operands, dtype=np.dtype(dtype), qmin=qmin, qmax=qmax)


# --- abstract evaluation -------------------------------------------------------------------------


def _quantize_abstract_eval(x, scale, *zero_point, dtype, qmin, qmax):
    return x.update(dtype=dtype, weak_type=False)


quantize_p.def_abstract_eval(_quantize_abstract_eval)

# --- lowering and partitioning -------------------------------------------------------------------


def _attributes(*, dtype, qmin, qmax) -> dict:
    return {"qmin": np.int32(qmin), "qmax": np.int32(qmax)}


# Elementwise along D: every shard quantizes locally, no collective.
register_ffi_lowerings(quantize_p, FFI_TARGET, _attributes, partitioning=ELEMENTWISE)

# --- batching ------------------------------------------------------------------------------------


def _quantize_batch(operands, batch_dims, **params):
    size = batch_size(operands, batch_dims)
    operands = move_batch_axis_to_front(operands, batch_dims, size)
    return quantize_p.bind(*operands, **params), 0


batching.primitive_batchers[quantize_p] = _quantize_batch

# --- differentiation -----------------------------------------------------------------------------


def integer_output_tangent(primal_out: jax.Array) -> ad.Zero:
    """The symbolic-zero tangent of an integer output: float0, as JAX requires."""
    return ad.Zero(jax.typeof(primal_out).to_tangent_aval())


def _quantize_jvp(primals, tangents, **params):
    # Piecewise constant in x and scale: nothing to differentiate, no kernel.
    out = quantize_p.bind(*primals, **params)
    return out, integer_output_tangent(out)


ad.primitive_jvps[quantize_p] = _quantize_jvp

# --- plan introspection --------------------------------------------------------------------------


def _plan(in_dtype, out_dtype, scale_dtype, platform) -> plan.KernelPlan:
    op = "quantize_per_token"
    in_dtype = v.check_float_dtype(op, "x", in_dtype)
    v.check_storage_dtype(op, out_dtype)
    scale_dtype = in_dtype if scale_dtype is None else v.check_float_dtype(op, "scale", scale_dtype)
    v.check_scale_out_pair(op, scale_dtype, in_dtype, other="x")
    if platform == "cuda":
        description = (
            "the row-wise map kernel: 16-byte vectors of x, every load issued before any use, one "
            "correctly rounded reciprocal per row of a thread's vectors; without a zero point and "
            "with the full range, levels packed by saturating conversions; a scalar variant for "
            "unaligned buffers and arrays of at most 2^14 elements"
        )
    else:
        description = (
            "row loop with a per-row reciprocal, AVX-512, AVX2 + F16C or baseline (chosen at run "
            "time), split over XLA's threads, a fresh output prefaulted"
        )
    return plan.KernelPlan(
        op=op,
        platform=platform,
        kernel=f"{FFI_TARGET} ({platform})",
        available=plan.is_available(platform),
        math_precision=plan.precision_name(scale_dtype, in_dtype),
        accumulator=None,
        deterministic=True,
        bit_stable=True,
        workspace_bytes=0,
        description=description,
    )


plan.register_planner("quantize_per_token", _plan)

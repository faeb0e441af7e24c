"""fake_quantize_per_token: the public op and its primitives, all rules side by side.

Four primitives, each lowered to its own FFI target on CPU and CUDA:

- ``fake_quantize_p(x, scale[, zero_point])``: the forward with a given
  per-row scale, ``to_x((clamp(rne(C(x) * r + C(zp)), qmin, qmax) - C(zp)) * C(s))``.
- ``fake_quantize_dynamic_p(x) -> (y, scale, zero_point)``: the forward with
  the scale (float32) and zero point chosen per row as by dynamic quantization,
  fused with the row reduction. The public op returns only ``y``; the chosen
  scale and zero point are outputs so that the derivative can use them.
- ``fake_quantize_tangent_p(x, scale[, t_x][, t_s][, zero_point])``: the
  tangent ``mask * t_x + lsq * t_s``, linear in ``(t_x, t_s)``; either may be
  absent (a symbolic zero). With only ``t_x`` it is diagonal, hence its own
  transpose: the x-only backward pass is this kernel applied to the cotangent.
- ``fake_quantize_backward_p(cotangent, x, scale[, zero_point]) -> ([dx,] ds)``:
  the transpose when the scale is differentiated, one pass over x and the
  cotangent that gives dx (if wanted) and the per-row ``ds`` sum together.

Differentiation: the JVP of the forward primitives emits the tangent
primitive, with a symbolic-zero tangent simply left out (a frozen scale never
reaches the ds kernel; a dynamic scale never has a tangent). Reverse mode is
JAX's linearize-and-transpose through the tangent primitive's transpose rule.
Derivatives of the derivative kernels with respect to x and the scale are
zero, which is what the straight-through convention says (inside the range
fake quantization acts as the identity, and ``lsq`` is constant in x and s).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching

from jax_dequant import _config, plan, reference
from jax_dequant import _validation as v
from jax_dequant._partitioning import ELEMENTWISE, ReduceOverD, RowStatistics, row_aval
from jax_dequant._primitive_utils import define_primitive, register_ffi_lowerings
from jax_dequant._row_statistics import sharded_dynamic
from jax_dequant.dequantize import batch_size, move_batch_axis_to_front

FFI_TARGET = "jax_dequant_fake_quantize_per_token"
DYNAMIC_FFI_TARGET = "jax_dequant_fake_quantize_per_token_dynamic"
TANGENT_FFI_TARGET = "jax_dequant_fake_quantize_per_token_tangent"
BACKWARD_FFI_TARGET = "jax_dequant_fake_quantize_per_token_backward"

fake_quantize_p = define_primitive(FFI_TARGET)
fake_quantize_dynamic_p = define_primitive(DYNAMIC_FFI_TARGET, multiple_results=True)
fake_quantize_tangent_p = define_primitive(TANGENT_FFI_TARGET)
fake_quantize_backward_p = define_primitive(BACKWARD_FFI_TARGET, multiple_results=True)


def fake_quantize_per_token(
    x: Any,
    scale: Any = None,
    zero_point: Any = None,
    *,
    dtype: Any = jnp.int8,
    qmin: int | None = None,
    qmax: int | None = None,
) -> jax.Array:
    """Fake quantization per row: quantize to ``dtype`` and dequantize, in one kernel.

    ``y = to_x((clamp(rne(C(x) * r + C(zp)), qmin, qmax) - C(zp)) * C(s))``
    with ``r = 1 / C(s)`` rounded once per row, bit for bit as
    ``dequantize_per_token(quantize_per_token(x, s, zp), s, zp)``.

    With ``scale=None`` each row's scale is chosen from the row, as by
    ``quantize_per_token_dynamic`` with ``scale_dtype=float32``: int8 is
    symmetric (``scale = absmax * (1/qmax)``, zero point 0), uint8 is
    asymmetric (the zero point is chosen too); ``qmin``/``qmax`` enter the
    choice. No gradient flows into that choice. A row containing NaN gets a NaN
    scale, so its whole output row is NaN.

    Gradients (forward and reverse mode): ``dx = dy`` where
    ``qmin <= rne(x * r + zp) <= qmax`` (clipped straight-through, both
    endpoints included; a NaN x has level zp) and 0 elsewhere. A given scale
    gets the LSQ gradient ``ds = sum_d dy * ((q - zp) - x * r)`` over the
    values inside the range plus ``sum_d dy * (qbound - zp)`` over the clipped
    ones, accumulated in C in a fixed order. ``zero_point`` gets no gradient.

    Args:
        x: float input ``[..., D]``: float16, bfloat16, float32 or float64.
        scale: per-row scale of x's dtype or float32, shape ``x.shape[:-1]``
            or ``x.shape[:-1] + (1,)``; None chooses it per row.
        zero_point: per-row int32 zero point of the same shape, or None for
            the symmetric form; must be None when ``scale`` is None.
        dtype: the simulated storage dtype, int8 or uint8.
        qmin: lower clamp bound; defaults to the storage type's minimum.
        qmax: upper clamp bound; defaults to the storage type's maximum.

    Returns:
        The fake-quantized array, with x's shape and dtype.

    Raises:
        TypeError: an argument of the wrong dtype, a disallowed (scale, x)
            dtype pair, or float64 without ``jax_enable_x64``.
        ValueError: a rank-0 ``x``, a per-row argument of the wrong shape, a
            ``qmin``/``qmax`` outside the storage type or ``qmin > qmax``, a
            ``zero_point`` without a ``scale``, or a range the dynamic choice
            cannot use (int8 needs ``qmin <= 0 < qmax``, uint8 ``qmin < qmax``).
        NotImplementedError: at lowering, on a platform this build has no
            kernel for.
    """
    op = "fake_quantize_per_token"
    if scale is None:
        x, qmin, qmax, symmetric = reference.check_fake_quantize_dynamic_args(
            op, x, zero_point, dtype, qmin, qmax
        )
        if _config.current_implementation() == "reference":
            return reference._fake_quantize_dynamic(x, qmin, qmax, symmetric)
        y, _, _ = fake_quantize_dynamic_p.bind(x, qmin=qmin, qmax=qmax, symmetric=symmetric)
        return y
    x, scale, zero_point, _, qmin, qmax = reference.check_quantize_args(
        op, x, scale, zero_point, dtype, qmin, qmax
    )
    if _config.current_implementation() == "reference":
        return reference._fake_quantize(x, scale, zero_point, qmin, qmax)
    operands = (x, scale) if zero_point is None else (x, scale, zero_point)
    return fake_quantize_p.bind(*operands, qmin=qmin, qmax=qmax)


# --- abstract evaluation -------------------------------------------------------------------------


def _like(aval):
    return aval.update(weak_type=False)


def _fake_quantize_abstract_eval(x, scale, *zero_point, qmin, qmax):
    return _like(x)


def _dynamic_abstract_eval(x, *, qmin, qmax, symmetric):
    rows = x.shape[:-1]
    return [
        _like(x),
        row_aval(x, np.float32),
        row_aval(x, np.int32),
    ]


def _tangent_abstract_eval(x, scale, *rest, has_tangent_x, has_tangent_scale, qmin, qmax):
    return _like(x)


def _backward_abstract_eval(cotangent, x, scale, *zero_point, want_grad_x, qmin, qmax):
    return ([_like(x)] if want_grad_x else []) + [_like(scale)]


fake_quantize_p.def_abstract_eval(_fake_quantize_abstract_eval)
fake_quantize_dynamic_p.def_abstract_eval(_dynamic_abstract_eval)
fake_quantize_tangent_p.def_abstract_eval(_tangent_abstract_eval)
fake_quantize_backward_p.def_abstract_eval(_backward_abstract_eval)

# --- lowering ------------------------------------------------------------------------------------


def _range_attributes(qmin, qmax, **flags):
    return {"qmin": np.int32(qmin), "qmax": np.int32(qmax), **flags}


def _finish_dynamic_shard(x, scale, zero_point, *, qmin, qmax, symmetric):
    operands = (x, scale) if symmetric else (x, scale, zero_point)
    return fake_quantize_p.bind(*operands, qmin=qmin, qmax=qmax), scale, zero_point


register_ffi_lowerings(
    fake_quantize_p, FFI_TARGET, _range_attributes, partitioning=ELEMENTWISE
)
register_ffi_lowerings(
    fake_quantize_dynamic_p,
    DYNAMIC_FFI_TARGET,
    lambda qmin, qmax, symmetric: _range_attributes(qmin, qmax, symmetric=bool(symmetric)),
    partitioning=RowStatistics(
        sharded=sharded_dynamic(_finish_dynamic_shard, lambda params: np.float32)
    ),
)
register_ffi_lowerings(
    fake_quantize_tangent_p,
    TANGENT_FFI_TARGET,
    lambda qmin, qmax, has_tangent_x, has_tangent_scale: _range_attributes(
        qmin, qmax, has_tangent_x=bool(has_tangent_x), has_tangent_scale=bool(has_tangent_scale)
    ),
    partitioning=ELEMENTWISE,
)
register_ffi_lowerings(
    fake_quantize_backward_p,
    BACKWARD_FFI_TARGET,
    lambda qmin, qmax, want_grad_x: _range_attributes(qmin, qmax, want_grad_x=bool(want_grad_x)),
    partitioning=ReduceOverD(),
)

# --- differentiation -----------------------------------------------------------------------------


def _zero_like(value) -> ad.Zero:
    return ad.Zero(jax.typeof(value).to_tangent_aval())


def _tangent(x, scale, zero_point, tangent_x, tangent_scale, qmin, qmax):
    """``mask * t_x + lsq * t_s`` with symbolic zeros left out; a Zero when both are."""
    has_x = not isinstance(tangent_x, ad.Zero)
    has_scale = not isinstance(tangent_scale, ad.Zero)
    if not has_x and not has_scale:
        return _zero_like(x)
    operands = [x, scale]
    operands += [tangent_x] if has_x else []
    operands += [tangent_scale] if has_scale else []
    operands += list(zero_point)
    return fake_quantize_tangent_p.bind(
        *operands, has_tangent_x=has_x, has_tangent_scale=has_scale, qmin=qmin, qmax=qmax
    )


def _fake_quantize_jvp(primals, tangents, *, qmin, qmax):
    x, scale, *zero_point = primals
    tangent_x, tangent_scale = tangents[:2]
    y = fake_quantize_p.bind(*primals, qmin=qmin, qmax=qmax)
    return y, _tangent(x, scale, zero_point, tangent_x, tangent_scale, qmin, qmax)


def _dynamic_jvp(primals, tangents, *, qmin, qmax, symmetric):
    (x,), (tangent_x,) = primals, tangents
    y, scale, zero_point = fake_quantize_dynamic_p.bind(
        x, qmin=qmin, qmax=qmax, symmetric=symmetric
    )
    # No gradient flows into the chosen scale: it has no tangent.
    zero_points = [] if symmetric else [zero_point]
    tangent_y = _tangent(x, scale, zero_points, tangent_x, _zero_like(scale), qmin, qmax)
    return (y, scale, zero_point), [tangent_y, _zero_like(scale), _zero_like(zero_point)]


def _split_tangent_operands(operands, has_tangent_x, has_tangent_scale):
    x, scale, *rest = operands
    tangent_x = rest.pop(0) if has_tangent_x else None
    tangent_scale = rest.pop(0) if has_tangent_scale else None
    return x, scale, tangent_x, tangent_scale, rest


def _tangent_jvp(primals, tangents, *, has_tangent_x, has_tangent_scale, qmin, qmax):
    # Linear in (t_x, t_s); constant in x and the scale (see the module docstring).
    out = fake_quantize_tangent_p.bind(
        *primals,
        has_tangent_x=has_tangent_x,
        has_tangent_scale=has_tangent_scale,
        qmin=qmin,
        qmax=qmax,
    )
    x, scale, _, _, zero_point = _split_tangent_operands(
        primals, has_tangent_x, has_tangent_scale
    )
    _, _, d_tangent_x, d_tangent_scale, _ = _split_tangent_operands(
        tangents, has_tangent_x, has_tangent_scale
    )
    zero_x = ad.Zero(jax.typeof(x).to_tangent_aval())
    zero_scale = ad.Zero(jax.typeof(scale).to_tangent_aval())
    return out, _tangent(
        x,
        scale,
        zero_point,
        d_tangent_x if has_tangent_x else zero_x,
        d_tangent_scale if has_tangent_scale else zero_scale,
        qmin,
        qmax,
    )


def _backward_jvp(primals, tangents, *, want_grad_x, qmin, qmax):
    # Linear in the cotangent; constant in x and the scale.
    params = dict(want_grad_x=want_grad_x, qmin=qmin, qmax=qmax)
    out = fake_quantize_backward_p.bind(*primals, **params)
    if isinstance(tangents[0], ad.Zero):
        return out, [_zero_like(o) for o in out]
    return out, fake_quantize_backward_p.bind(tangents[0], *primals[1:], **params)


def _check_not_linear(name, value):
    if ad.is_undefined_primal(value):
        raise NotImplementedError(
            f"fake_quantize_per_token: the derivative kernels are not linear in {name}"
        )


def _tangent_transpose(cotangent, *operands, has_tangent_x, has_tangent_scale, qmin, qmax):
    x, scale, tangent_x, tangent_scale, zero_point = _split_tangent_operands(
        operands, has_tangent_x, has_tangent_scale
    )
    _check_not_linear("x", x)
    _check_not_linear("scale", scale)
    want_x = has_tangent_x and ad.is_undefined_primal(tangent_x)
    want_scale = has_tangent_scale and ad.is_undefined_primal(tangent_scale)
    grad_x = grad_scale = None
    if isinstance(cotangent, ad.Zero):
        grad_x = ad.Zero(tangent_x.aval) if want_x else None
        grad_scale = ad.Zero(tangent_scale.aval) if want_scale else None
    elif want_scale:
        # One pass over x and the cotangent gives ds, and dx when it is wanted.
        outs = fake_quantize_backward_p.bind(
            cotangent, x, scale, *zero_point, want_grad_x=want_x, qmin=qmin, qmax=qmax
        )
        grad_x, grad_scale = outs if want_x else (None, outs[0])
    elif want_x:
        # The x part is diagonal: its transpose is the same kernel on the cotangent.
        grad_x = fake_quantize_tangent_p.bind(
            x,
            scale,
            cotangent,
            *zero_point,
            has_tangent_x=True,
            has_tangent_scale=False,
            qmin=qmin,
            qmax=qmax,
        )
    result = [None, None]
    result += [grad_x] if has_tangent_x else []
    result += [grad_scale] if has_tangent_scale else []
    return result + [None] * len(zero_point)


def _backward_transpose(cotangents, cotangent, x, scale, *zero_point, want_grad_x, qmin, qmax):
    _check_not_linear("x", x)
    _check_not_linear("scale", scale)
    if want_grad_x:
        ct_grad_x, ct_grad_scale = cotangents
    else:
        ct_grad_x, (ct_grad_scale,) = ad.Zero(cotangent.aval), cotangents
    result = _tangent(x, scale, zero_point, ct_grad_x, ct_grad_scale, qmin, qmax)
    if isinstance(result, ad.Zero):
        result = ad.Zero(cotangent.aval)
    return [result, None, None] + [None] * len(zero_point)


ad.primitive_jvps[fake_quantize_p] = _fake_quantize_jvp
ad.primitive_jvps[fake_quantize_dynamic_p] = _dynamic_jvp
ad.primitive_jvps[fake_quantize_tangent_p] = _tangent_jvp
ad.primitive_jvps[fake_quantize_backward_p] = _backward_jvp
ad.primitive_transposes[fake_quantize_tangent_p] = _tangent_transpose
ad.primitive_transposes[fake_quantize_backward_p] = _backward_transpose

# --- batching ------------------------------------------------------------------------------------


def _batch_rule(primitive):
    """The batch axis becomes one more leading (token) dimension: no loop."""

    def rule(operands, batch_dims, **params):
        size = batch_size(operands, batch_dims)
        operands = move_batch_axis_to_front(operands, batch_dims, size)
        out = primitive.bind(*operands, **params)
        return out, ([0] * len(out) if primitive.multiple_results else 0)

    return rule


for _primitive in (
    fake_quantize_p,
    fake_quantize_dynamic_p,
    fake_quantize_tangent_p,
    fake_quantize_backward_p,
):
    batching.primitive_batchers[_primitive] = _batch_rule(_primitive)

# --- plan introspection --------------------------------------------------------------------------


def _plan(in_dtype, out_dtype, scale_dtype, platform) -> plan.KernelPlan:
    op = "fake_quantize_per_token"
    v.check_float_dtype(op, "x", in_dtype)
    if out_dtype != in_dtype:
        raise TypeError(f"kernel_plan: {op} returns x's dtype {in_dtype}, got {out_dtype}")
    dynamic = scale_dtype is None
    scale_dtype = np.dtype(np.float32) if dynamic else scale_dtype
    v.check_float_dtype(op, "scale_dtype", scale_dtype)
    v.check_scale_out_pair(op, scale_dtype, in_dtype)
    compute = plan.precision_name(scale_dtype, in_dtype)
    if platform == "cuda":
        forward = (
            "one fused kernel per row group: the row is held in registers while its min/max is "
            "reduced and its scale chosen, then fake quantized"
            if dynamic
            else "the row-wise map kernel (16-byte vectors, loads first; one element per "
            "thread for arrays of at most 2^14 elements) with a per-row reciprocal; without a "
            "zero point the level is an integer"
        )
        backward = (
            "backward: one row-group kernel reads x and dy once for dx and ds, each thread's "
            "packs loaded before the first is used (ds summed per thread, then a fixed "
            "warp-shuffle and shared-memory tree); dx alone is the element-wise tangent kernel"
        )
    else:
        forward = (
            "row loop: min/max reduction, scale choice, fake quantization, rows over XLA's threads"
            if dynamic
            else "row loop with a per-row reciprocal, AVX2 + F16C or baseline, over XLA's threads"
        )
        backward = (
            "backward: one row loop for dx and ds (ds in 8 fixed-order lanes), whole rows over "
            "XLA's threads"
        )
    return plan.KernelPlan(
        op=op,
        platform=platform,
        kernel=f"{DYNAMIC_FFI_TARGET if dynamic else FFI_TARGET} ({platform})",
        available=plan.is_available(platform),
        math_precision=compute,
        accumulator=compute,
        deterministic=True,
        bit_stable=True,
        workspace_bytes=0,
        description=(
            f"{forward}; {backward}. The forward and dx match the reference bit for bit; ds is "
            "deterministic but summed in another order than the reference"
        ),
    )


plan.register_planner("fake_quantize_per_token", _plan)

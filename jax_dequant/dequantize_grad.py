"""Differentiation of dequantize_per_token: JVP, transpose and batching rules, and
the primitives they bind (SPEC.md, Differentiation).

Why a sibling of ``dequantize.py``: the forward op is one primitive, its
derivatives take four more (three reverse-mode kernels and a fused forward-mode
tangent), each with abstract eval, lowering, batching, JVP and transpose rules.
They are kept side by side here, and ``dequantize.py`` imports this module, so
the rules are registered whenever the op is.

The math. ``y = to_out((C(q) - C(zp)) * C(s))`` is linear in the scale and,
without a zero point, in a float-carrier ``q``. Every primitive below is a
product of this form, per row of ``[..., D]`` arrays, computed in the forward's
compute type C:

========================================  ============================================
primitive                                 value
========================================  ============================================
``dequantize_p(q, s[, zp])``              ``to_out((C(q) - C(zp)) C(s))`` (dequantize.py)
``dscale_p(dy, q[, zp])``                 ``to_s(sum_d C(dy) (C(q) - C(zp)))``
``dq_p(dy, s)``                           ``to_q(C(dy) C(s))``
``dq_dscale_p(dy, q, s[, zp])``           both of the above, reading ``dy`` once
``tangent_p(t_q, t_s, q, s[, zp])``       ``to_out(C(t_q) C(s) + (C(q) - C(zp)) C(t_s))``
========================================  ============================================

The family is closed under JVP and transposition, so every derivative of any
order runs our kernels and ``jax.custom_vjp`` is not needed (forward mode works):

- JVP of ``dequantize_p``: ``dequantize_p(q, t_s, zp)`` when only the scale has a
  tangent, ``dequantize_p(t_q, s)`` when only the float-carrier ``q`` has one,
  ``tangent_p`` when both do. Integer ``q`` and ``zp`` only ever have symbolic
  zero tangents (float0), which JAX skips, so nothing is computed for them.
- Transposes: w.r.t. a scale slot, ``dscale_p``; w.r.t. a ``q`` slot, ``dq_p``;
  both at once (``tangent_p``), ``dq_dscale_p``: one pass over ``dy``. A frozen
  scale never reaches ``dscale_p``, an integer ``q`` never reaches ``dq_p``.
- The backward primitives are (bi)linear in their operands: their JVPs and
  transposes are again members of the family (used by second-order AD).

Numerics match autodiff of the jnp reference: ``dq`` and every tangent with a
single nonzero input are bit for bit equal to it; ``dscale`` sums in C in an
order fixed by the shape (cuda/dequantize_grad.cu, cuda/cpu_dequantize_grad.cc),
so it is deterministic but not bitwise XLA's reduction order.

Batching: the vmapped axis becomes one more leading token dimension of every
operand (unbatched ones are broadcast), so a batched call is one call on more
rows, never a loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.interpreters import ad, batching

from jax_dequant import plan
from jax_dequant import _validation as v
from jax_dequant._partitioning import ELEMENTWISE, ReduceOverD, row_aval
from jax_dequant._primitive_utils import define_primitive, register_ffi_lowerings
from jax_dequant.dequantize import (
    batch_size,
    check_plan_dtypes,
    dequantize_p,
    move_batch_axis_to_front,
)

DSCALE_TARGET = "jax_dequant_dequantize_per_token_dscale"
DQ_TARGET = "jax_dequant_dequantize_per_token_dq"
DQ_DSCALE_TARGET = "jax_dequant_dequantize_per_token_dq_dscale"
TANGENT_TARGET = "jax_dequant_dequantize_per_token_tangent"

dscale_p = define_primitive(DSCALE_TARGET)
dq_p = define_primitive(DQ_TARGET)
dq_dscale_p = define_primitive(DQ_DSCALE_TARGET, multiple_results=True)
tangent_p = define_primitive(TANGENT_TARGET)

# --- abstract evaluation -------------------------------------------------------------------------


def _dscale_abstract_eval(dy, q, *zero_point, scale_dtype):
    return row_aval(q, scale_dtype)


def _dq_abstract_eval(dy, scale, *, q_dtype):
    return dy.update(dtype=q_dtype, weak_type=False)


def _dq_dscale_abstract_eval(dy, q, scale, *zero_point):
    return [q.update(weak_type=False), scale.update(weak_type=False)]


def _tangent_abstract_eval(q_tangent, scale_tangent, q, scale, *zero_point, out_dtype):
    return q.update(dtype=out_dtype, weak_type=False)


dscale_p.def_abstract_eval(_dscale_abstract_eval)
dq_p.def_abstract_eval(_dq_abstract_eval)
dq_dscale_p.def_abstract_eval(_dq_dscale_abstract_eval)
tangent_p.def_abstract_eval(_tangent_abstract_eval)

# --- lowering ------------------------------------------------------------------------------------

# Partitioning (SPEC.md, Scale-out): dq and the tangent are elementwise along D;
# dscale is a sum over D, so D shards add partial sums, kept in the accumulator
# type until after the psum.


def _dscale_partial_params(params: dict) -> dict:
    accumulator = np.float64 if params["scale_dtype"] == np.float64 else np.float32
    return {**params, "scale_dtype": np.dtype(accumulator)}


register_ffi_lowerings(
    dscale_p, DSCALE_TARGET, partitioning=ReduceOverD(partial_params=_dscale_partial_params)
)
register_ffi_lowerings(dq_p, DQ_TARGET, partitioning=ELEMENTWISE)
register_ffi_lowerings(dq_dscale_p, DQ_DSCALE_TARGET, partitioning=ReduceOverD())
register_ffi_lowerings(tangent_p, TANGENT_TARGET, partitioning=ELEMENTWISE)

# --- batching ------------------------------------------------------------------------------------


def _batch_as_rows(primitive):
    """Batching rule: the batch axis becomes a leading token dimension of every operand."""

    def rule(operands, batch_dims, **params):
        size = batch_size(operands, batch_dims)
        out = primitive.bind(*move_batch_axis_to_front(operands, batch_dims, size), **params)
        return out, ([0] * len(out) if primitive.multiple_results else 0)

    return rule


for _primitive in (dscale_p, dq_p, dq_dscale_p, tangent_p):
    batching.primitive_batchers[_primitive] = _batch_as_rows(_primitive)

# --- the two product forms every rule is written with --------------------------------------------


def _is_zero(tangent: Any) -> bool:
    """None (no such term), a symbolic zero, or a float0 array (integer arrays' tangents)."""
    return (
        tangent is None
        or type(tangent) is ad.Zero
        or getattr(tangent, "dtype", None) == jax.dtypes.float0
    )


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.aval.shape) if isinstance(x, (ad.Zero, ad.UndefinedPrimal)) else np.shape(x)


def _zero(shape: Sequence[int], dtype: Any) -> ad.Zero:
    return ad.Zero(jax.core.ShapedArray(tuple(shape), np.dtype(dtype)))


def _forward_product(q, q_tangent, scale, scale_tangent, zero_point, out_dtype):
    """``to_out(C(t_q) C(s) + (C(q) - C(zp)) C(t_s))``, skipping zero terms.

    The tangent of ``dequantize_p(q, s, zp)``; linear in ``(t_q, t_s)``. A
    term whose tangent is zero (or None) is skipped, and ``q`` (or ``s``) may
    then be None.
    """
    zero_q, zero_s = _is_zero(q_tangent), _is_zero(scale_tangent)
    if zero_q and zero_s:
        return _zero(_shape(q if q is not None else q_tangent), out_dtype)
    if zero_q:
        return dequantize_p.bind(q, scale_tangent, *zero_point, out_dtype=out_dtype)
    if zero_s:
        return dequantize_p.bind(q_tangent, scale, out_dtype=out_dtype)
    return tangent_p.bind(q_tangent, scale_tangent, q, scale, *zero_point, out_dtype=out_dtype)


def _backward_product(dy, *, dq_scale=None, dscale_q=None, zero_point=(), dq_dtype=None,
                      dscale_dtype=None):
    """``dq = to_q(C(dy) C(dq_scale))`` and ``dscale = to_s(sum_d C(dy) (C(dscale_q) - C(zp)))``.

    Each is computed only when its dtype is given (and its operands are not
    zero); both at once run the fused kernel, which reads ``dy`` once.

    Returns:
        ``(dq, dscale)``, each an array, an ``ad.Zero``, or None when not asked for.
    """
    want_dq, want_dscale = dq_dtype is not None, dscale_dtype is not None
    rows = _shape(dy)[:-1]
    dq = _zero(_shape(dy), dq_dtype) if want_dq else None
    dscale = _zero(rows, dscale_dtype) if want_dscale else None
    if _is_zero(dy):
        return dq, dscale
    want_dq = want_dq and not _is_zero(dq_scale)
    want_dscale = want_dscale and not _is_zero(dscale_q)
    if want_dq and want_dscale:
        assert np.dtype(dscale_q.dtype) == dq_dtype and np.dtype(dq_scale.dtype) == dscale_dtype
        return tuple(dq_dscale_p.bind(dy, dscale_q, dq_scale, *zero_point))
    if want_dq:
        dq = dq_p.bind(dy, dq_scale, q_dtype=np.dtype(dq_dtype))
    if want_dscale:
        dscale = dscale_p.bind(dy, dscale_q, *zero_point, scale_dtype=np.dtype(dscale_dtype))
    return dq, dscale


def _add(a, b):
    """Adds two tangents, either of which may be a symbolic zero."""
    if type(a) is ad.Zero:
        return b
    if type(b) is ad.Zero:
        return a
    return jax.lax.add(a, b)


def _not_linear(primitive, what: str):
    return NotImplementedError(
        f"{primitive.name} is not linear in {what}, so it cannot be transposed that way "
        "(jax_dequant's own rules never do)"
    )


def _dtype(x) -> np.dtype:
    return np.dtype(x.aval.dtype if ad.is_undefined_primal(x) else x.dtype)


# --- dequantize_p: JVP and transpose -------------------------------------------------------------


def _dequantize_jvp(primals, tangents, *, out_dtype):
    q, scale, *zero_point = primals
    q_tangent, scale_tangent = tangents[:2]
    y = dequantize_p.bind(*primals, out_dtype=out_dtype)
    return y, _forward_product(q, q_tangent, scale, scale_tangent, zero_point, out_dtype)


def _dequantize_transpose(ct, q, scale, *zero_point, out_dtype):
    linear_q, linear_scale = ad.is_undefined_primal(q), ad.is_undefined_primal(scale)
    if linear_q and (linear_scale or zero_point):
        raise _not_linear(
            dequantize_p, "q and scale together" if linear_scale else "q with a zero point"
        )
    if linear_q:
        dq, _ = _backward_product(ct, dq_scale=scale, dq_dtype=_dtype(q))
        return [dq, None]
    _, dscale = _backward_product(
        ct, dscale_q=q, zero_point=zero_point, dscale_dtype=_dtype(scale)
    )
    return [None, dscale] + [None] * len(zero_point)


ad.primitive_jvps[dequantize_p] = _dequantize_jvp
ad.primitive_transposes[dequantize_p] = _dequantize_transpose

# --- tangent_p: t_y = t_q * s + (q - zp) * t_s ---------------------------------------------------


def _tangent_jvp(primals, tangents, *, out_dtype):
    q_tangent, scale_tangent, q, scale, *zero_point = primals
    d_q_tangent, d_scale_tangent, d_q, d_scale = tangents[:4]
    out = tangent_p.bind(*primals, out_dtype=out_dtype)
    # Derivative of t_q * s + (q - zp) * t_s in (t_q, t_s), then in (q, s).
    in_tangents = _forward_product(
        q, d_q_tangent, scale, d_scale_tangent, zero_point, out_dtype
    )
    in_primals = _forward_product(q_tangent, d_q, scale_tangent, d_scale, (), out_dtype)
    return out, _add(in_tangents, in_primals)


def _tangent_transpose(ct, q_tangent, scale_tangent, q, scale, *zero_point, out_dtype):
    undefined = {
        name
        for name, x in zip(("t_q", "t_s", "q", "s"), (q_tangent, scale_tangent, q, scale))
        if ad.is_undefined_primal(x)
    }
    cts = dict.fromkeys(("t_q", "t_s", "q", "s"))
    if undefined <= {"t_q", "t_s"}:  # the JVP's use: linear in the tangents, one fused pass
        cts["t_q"], cts["t_s"] = _backward_product(
            ct,
            dq_scale=scale,
            dscale_q=q,
            zero_point=zero_point,
            dq_dtype=_dtype(q_tangent) if "t_q" in undefined else None,
            dscale_dtype=_dtype(scale_tangent) if "t_s" in undefined else None,
        )
    elif undefined <= {"q", "s"} and not ("q" in undefined and zero_point):
        cts["q"], cts["s"] = _backward_product(
            ct,
            dq_scale=scale_tangent,
            dscale_q=q_tangent,
            dq_dtype=_dtype(q) if "q" in undefined else None,
            dscale_dtype=_dtype(scale) if "s" in undefined else None,
        )
    elif undefined == {"t_q", "q"} and not zero_point:
        cts["t_q"], _ = _backward_product(ct, dq_scale=scale, dq_dtype=_dtype(q_tangent))
        cts["q"], _ = _backward_product(ct, dq_scale=scale_tangent, dq_dtype=_dtype(q))
    elif undefined == {"t_s", "s"}:
        _, cts["t_s"] = _backward_product(
            ct, dscale_q=q, zero_point=zero_point, dscale_dtype=_dtype(scale_tangent)
        )
        _, cts["s"] = _backward_product(ct, dscale_q=q_tangent, dscale_dtype=_dtype(scale))
    else:
        raise _not_linear(tangent_p, ", ".join(sorted(undefined)) + " together")
    return [cts["t_q"], cts["t_s"], cts["q"], cts["s"]] + [None] * len(zero_point)


ad.primitive_jvps[tangent_p] = _tangent_jvp
ad.primitive_transposes[tangent_p] = _tangent_transpose

# --- dscale_p: sum_d dy * (q - zp), bilinear in (dy, q) ------------------------------------------


def _dscale_jvp(primals, tangents, *, scale_dtype):
    dy, q, *zero_point = primals
    dy_tangent, q_tangent = tangents[:2]
    out = dscale_p.bind(*primals, scale_dtype=scale_dtype)
    _, from_dy = _backward_product(
        dy_tangent, dscale_q=q, zero_point=zero_point, dscale_dtype=scale_dtype
    )
    _, from_q = _backward_product(dy, dscale_q=q_tangent, dscale_dtype=scale_dtype)
    return out, _add(from_dy, from_q)


def _dscale_transpose(ct, dy, q, *zero_point, scale_dtype):
    linear_dy, linear_q = ad.is_undefined_primal(dy), ad.is_undefined_primal(q)
    if linear_dy and linear_q or linear_q and zero_point:
        raise _not_linear(dscale_p, "dy and q together" if linear_dy else "q with a zero point")
    if linear_dy:  # to_out((C(q) - C(zp)) C(ct)): a dequantize with ct as the scale
        ct_dy = _forward_product(q, None, None, ct, zero_point, _dtype(dy))
        return [ct_dy, None] + [None] * len(zero_point)
    ct_q, _ = _backward_product(dy, dq_scale=ct, dq_dtype=_dtype(q))
    return [None, ct_q]


ad.primitive_jvps[dscale_p] = _dscale_jvp
ad.primitive_transposes[dscale_p] = _dscale_transpose

# --- dq_p: dy * s, bilinear in (dy, s) -----------------------------------------------------------


def _dq_jvp(primals, tangents, *, q_dtype):
    dy, scale = primals
    dy_tangent, scale_tangent = tangents
    out = dq_p.bind(dy, scale, q_dtype=q_dtype)
    from_dy, _ = _backward_product(dy_tangent, dq_scale=scale, dq_dtype=q_dtype)
    from_scale, _ = _backward_product(dy, dq_scale=scale_tangent, dq_dtype=q_dtype)
    return out, _add(from_dy, from_scale)


def _dq_transpose(ct, dy, scale, *, q_dtype):
    linear_dy, linear_scale = ad.is_undefined_primal(dy), ad.is_undefined_primal(scale)
    if linear_dy and linear_scale:
        raise _not_linear(dq_p, "dy and scale together")
    if linear_dy:  # to_out(C(ct) C(s)): a dequantize of ct
        return [_forward_product(None, ct, scale, None, (), _dtype(dy)), None]
    _, ct_scale = _backward_product(dy, dscale_q=ct, dscale_dtype=_dtype(scale))
    return [None, ct_scale]


ad.primitive_jvps[dq_p] = _dq_jvp
ad.primitive_transposes[dq_p] = _dq_transpose

# --- dq_dscale_p: (dy * s, sum_d dy * (q - zp)) --------------------------------------------------


def _dq_dscale_jvp(primals, tangents):
    dy, q, scale, *zero_point = primals
    dy_tangent, q_tangent, scale_tangent = tangents[:3]
    out = dq_dscale_p.bind(*primals)
    dq_dtype, dscale_dtype = np.dtype(q.dtype), np.dtype(scale.dtype)
    # In dy: the same fused pass on the tangent; in (q, s): dy * t_s and sum_d dy * t_q.
    from_dy = _backward_product(
        dy_tangent, dq_scale=scale, dscale_q=q, zero_point=zero_point, dq_dtype=dq_dtype,
        dscale_dtype=dscale_dtype,
    )
    from_qs = _backward_product(
        dy, dq_scale=scale_tangent, dscale_q=q_tangent, dq_dtype=dq_dtype,
        dscale_dtype=dscale_dtype,
    )
    return out, [_add(a, b) for a, b in zip(from_dy, from_qs)]


def _dq_dscale_transpose(cts, dy, q, scale, *zero_point):
    ct_dq, ct_dscale = cts
    linear_dy = ad.is_undefined_primal(dy)
    linear_q, linear_scale = ad.is_undefined_primal(q), ad.is_undefined_primal(scale)
    if linear_dy and (linear_q or linear_scale) or linear_q and zero_point:
        raise _not_linear(
            dq_dscale_p, "dy and q or scale together" if linear_dy else "q with a zero point"
        )
    if linear_dy:
        ct_dy = _forward_product(q, ct_dq, scale, ct_dscale, zero_point, _dtype(dy))
        return [ct_dy, None, None] + [None] * len(zero_point)
    ct_q, ct_scale = _backward_product(
        dy,
        dq_scale=ct_dscale,
        dscale_q=ct_dq,
        dq_dtype=_dtype(q) if linear_q else None,
        dscale_dtype=_dtype(scale) if linear_scale else None,
    )
    return [None, ct_q, ct_scale] + [None] * len(zero_point)


ad.primitive_jvps[dq_dscale_p] = _dq_dscale_jvp
ad.primitive_transposes[dq_dscale_p] = _dq_dscale_transpose

# --- plan introspection --------------------------------------------------------------------------


def _plan(in_dtype, out_dtype, scale_dtype, platform) -> plan.KernelPlan:
    op = "dequantize_per_token_grad"
    scale_dtype = check_plan_dtypes(op, in_dtype, out_dtype, scale_dtype)
    accumulator = v.compute_dtype(scale_dtype, out_dtype).name
    kernels = (
        "dscale only (an integer q gets no gradient)"
        if in_dtype in v.STORAGE_DTYPES
        else "dq, dscale, or both fused in one pass that reads dy once"
    )
    if platform == "cuda":
        layout = (
            "a group of 1 to 256 threads per row (a warp or less for short rows, a block for "
            "long ones), chunks of 16 bytes of the wider array (one load each of dy and q, "
            "contiguous across a warp), per-lane sums in a fixed chunk order, then a shuffle "
            "butterfly and a fixed shared-memory sum; no atomics; the dscale pass alone on rows "
            "of whole aligned chunks runs a leaner kernel with the same order"
        )
    else:
        layout = (
            "row loop with 16 interleaved partial sums added in a fixed tree, vectorized, whole "
            "rows over XLA's threads"
        )
    return plan.KernelPlan(
        op=op,
        platform=platform,
        kernel=f"{DSCALE_TARGET} / {DQ_TARGET} / {DQ_DSCALE_TARGET} ({platform})",
        available=plan.is_available(platform),
        math_precision=plan.precision_name(scale_dtype, out_dtype),
        accumulator=accumulator,
        deterministic=True,
        # dq is bit for bit autodiff of the reference; dscale is summed in our
        # own fixed order, not XLA's, so the op as a whole is not bit-stable.
        bit_stable=False,
        workspace_bytes=0,
        description=f"{kernels}: {layout}. dscale = sum_d dy * (q - zp) accumulated in "
        f"{accumulator}, rounded once to the scale dtype; dq = dy * scale rounded once to q's "
        "dtype, bit for bit the reference's gradient.",
    )


plan.register_planner("dequantize_per_token_grad", _plan)

"""Dynamic (row-statistics) ops on a ``D`` axis split over devices.

When ``D`` is sharded, a dynamic op cannot choose a row's scale from its local
shard. Each device computes its shard's row statistics (absmax, or min and max
widened to include 0, and whether the row holds a NaN), one ``pmax``/``pmin``
over the ``D`` mesh axes makes them global, the scale and zero point are chosen
from them with the reference's exact arithmetic (:func:`reference.choose_scale`
applied to a one- or two-element stand-in row holding the statistics: its
statistics are the same numbers), and the shard is then quantized by the
op's static kernel with that scale: the same bits as the fused kernel on the
whole row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_dequant import _validation as v
from jax_dequant import reference


def global_scale_and_zero_point(
    d_axes: tuple[str, ...],
    x: jax.Array,
    *,
    qmin: int,
    qmax: int,
    symmetric: bool,
    scale_dtype: Any,
) -> tuple[jax.Array, jax.Array]:
    """Chooses each row's scale and zero point from statistics reduced over ``d_axes``.

    Args:
        d_axes: the mesh axes ``D`` is sharded over.
        x: this device's shard ``[..., D_local]``.
        qmin, qmax: the quantized range.
        symmetric: symmetric (absmax) or asymmetric (min/max) choice.
        scale_dtype: dtype of the stored scale.

    Returns:
        ``(scale, zero_point)`` of shape ``x.shape[:-1]``, equal on every
        device of a row.
    """
    compute = v.compute_dtype(x.dtype, scale_dtype)
    values = x.astype(compute)
    zero = compute.type(0)
    has_nan = lax.pmax(jnp.any(jnp.isnan(values), axis=-1).astype(jnp.int32), d_axes) > 0
    if symmetric:
        finite = jnp.where(jnp.isnan(values), zero, jnp.abs(values))
        stats = lax.pmax(jnp.max(finite, axis=-1, initial=zero), d_axes)[..., None]
    else:
        lo = lax.pmin(jnp.min(jnp.where(jnp.isnan(values), zero, values), axis=-1, initial=zero), d_axes)
        hi = lax.pmax(jnp.max(jnp.where(jnp.isnan(values), zero, values), axis=-1, initial=zero), d_axes)
        stats = jnp.stack([lo, hi], axis=-1)
    stats = jnp.where(has_nan[..., None], compute.type(np.nan), stats)
    return reference.choose_scale(stats, np.int32, symmetric, scale_dtype, qmin, qmax)


def sharded_dynamic(
    finish: Callable[[jax.Array, jax.Array, jax.Array], Any],
    scale_dtype_of: Callable[[dict], Any],
) -> Callable[..., Any]:
    """Builds a ``RowStatistics(sharded=...)`` function for a dynamic op.

    Args:
        finish: ``finish(x, scale, zero_point, **params)`` quantizes the local
            shard with the global scale and returns the op's results.
        scale_dtype_of: maps the op's params to its scale dtype.

    Returns:
        ``sharded(d_axes, x, **params)``.
    """

    def sharded(d_axes, x, **params):
        scale, zero_point = global_scale_and_zero_point(
            d_axes,
            x,
            qmin=params["qmin"],
            qmax=params["qmax"],
            symmetric=params["symmetric"],
            scale_dtype=scale_dtype_of(params),
        )
        return finish(x, scale, zero_point, **params)

    return sharded

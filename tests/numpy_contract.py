"""The quantize contract of SPEC.md evaluated with NumPy, independently of XLA.

NumPy rounds each float32/float64 operation on its own (it never contracts a
multiply and an add into an FMA) and divides with correct rounding, so these
functions compute the contract by construction. They check the package's jnp
reference, which XLA compiles and could rewrite. NumPy keeps subnormals (like
XLA:GPU) while XLA:CPU flushes them, so compare them with CPU results only on
inputs without subnormals.
"""

from __future__ import annotations

import numpy as np


def compute_dtype(*dtypes) -> np.dtype:
    """C: float64 when any dtype is float64, else float32."""
    return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dtypes) else np.dtype(
        np.float32
    )


def quantize(x, scale, zero_point, qmin: int, qmax: int, compute=None) -> np.ndarray:
    """``clamp(rne(C(x) * r + C(zp)), qmin, qmax)`` with ``r = 1 / C(scale)`` per row.

    Args:
        x: ``[..., D]`` float array.
        scale: per-row scale, shape ``x.shape[:-1]``.
        zero_point: per-row int32 zero point or None.
        qmin, qmax: clamp bounds.
        compute: the compute dtype; by default from x's and scale's dtypes.

    Returns:
        The levels as int64.
    """
    x = np.asarray(x)
    scale = np.asarray(scale)
    compute = compute or compute_dtype(x.dtype, scale.dtype)
    with np.errstate(all="ignore"):
        reciprocal = compute.type(1) / scale.astype(compute)
        product = x.astype(compute) * reciprocal[..., None]
        zero = (
            np.zeros((), compute)
            if zero_point is None
            else np.asarray(zero_point)[..., None].astype(compute)
        )
        level = np.round(product + zero)  # np.round rounds half to even
        level = np.where(np.isnan(level), np.broadcast_to(zero, level.shape), level)
        return np.clip(level, qmin, qmax).astype(np.int64)


def store_scale(scale: np.ndarray, scale_dtype) -> np.ndarray:
    """Rounds a scale in C to ``scale_dtype`` (float64 -> 16-bit through float32)."""
    scale_dtype = np.dtype(scale_dtype)
    if scale.dtype == np.float64 and scale_dtype.itemsize == 2:
        scale = scale.astype(np.float32)
    return scale.astype(scale_dtype)


def scale_bounds(scale_dtype, compute) -> tuple[float, float]:
    """[smallest normal of scale_dtype, min(largest finite, 1 / smallest normal of C)]."""
    import ml_dtypes

    info = ml_dtypes.finfo(np.dtype(scale_dtype))
    cap = 1.0 / float(ml_dtypes.finfo(compute).smallest_normal)
    return float(info.smallest_normal), min(float(info.max), cap)


def choose_scale(x, symmetric: bool, scale_dtype, qmin: int, qmax: int):
    """The dynamic scale (stored as ``scale_dtype``) and int32 zero point of each row."""
    x = np.asarray(x)
    compute = compute_dtype(x.dtype, scale_dtype)
    c = compute.type
    values = x.astype(compute)
    smallest, largest = scale_bounds(scale_dtype, compute)
    with np.errstate(all="ignore"):
        lo = np.min(values, axis=-1, initial=c(0))  # NaN propagates
        hi = np.max(values, axis=-1, initial=c(0))
        if symmetric:
            absmax = np.maximum(-lo, hi)
            scale = np.where(absmax == 0, c(1), absmax * (c(1) / c(qmax)))
        else:
            span = hi - lo
            scale = np.where(span == 0, c(1), span * (c(1) / (c(qmax) - c(qmin))))
        scale = np.where(scale < c(smallest), c(smallest), scale)
        scale = np.where(scale > c(largest), c(largest), scale)
        stored = store_scale(scale.astype(compute), scale_dtype)
        if symmetric:
            return stored, np.zeros(x.shape[:-1], np.int32)
        level = np.round(c(qmin) - lo / stored.astype(compute))
        level = np.clip(np.where(np.isnan(level), c(0), level), qmin, qmax)
        zero_point = np.where(hi - lo == 0, c(0), level).astype(np.int32)
        return stored, zero_point


def quantize_dynamic(x, dtype, symmetric: bool, scale_dtype):
    """``(q, scale, zero_point)`` of the dynamic contract with the full range of ``dtype``."""
    info = np.iinfo(dtype)
    scale, zero_point = choose_scale(x, symmetric, scale_dtype, int(info.min), int(info.max))
    compute = compute_dtype(np.asarray(x).dtype, scale_dtype)
    q = quantize(
        x, scale, None if symmetric else zero_point, int(info.min), int(info.max), compute
    )
    return q.astype(dtype), scale, zero_point


# --- dscale's summation orders -------------------------------------------------------------------
#
# SPEC.md fixes dscale[n] = sum_d C(dy) (C(q) - C(zp)) "in a fixed order". Each kernel documents
# its own order in its header (cuda/cpu_dequantize_grad.cc, cuda/dequantize_grad.cu); these
# functions add the same rounded terms in those orders, so the kernels' bits can be checked one
# for one, whatever launch shape or kernel variant runs a row.


def _empty_sum(cols: int, compute) -> np.ndarray:
    # Both kernels start a sum of one term from -0 (-0 + t == t), all others from +0.
    return compute.type(-0.0) if cols == 1 else compute.type(0.0)


def dscale_cpu_order(terms: np.ndarray) -> np.ndarray:
    """Row sums in the C++ CPU kernel's order: column d into lane d % 16, then a lane tree.

    Args:
        terms: ``[rows, cols]`` rounded terms ``C(dy) * (C(q) - C(zp))`` in C.

    Returns:
        ``[rows]`` sums in C, before rounding to the cotangent's dtype.
    """
    rows, cols = terms.shape
    lanes_count = 16
    lanes = np.full((rows, lanes_count), _empty_sum(cols, terms.dtype), terms.dtype)
    with np.errstate(all="ignore"):
        for col in range(0, cols, lanes_count):
            block = terms[:, col:col + lanes_count]
            lanes[:, :block.shape[1]] = lanes[:, :block.shape[1]] + block
        width = lanes_count // 2
        while width:
            lanes[:, :width] = lanes[:, :width] + lanes[:, width:2 * width]
            width //= 2
    return lanes[:, 0]


def cuda_dscale_group(cols: int, chunk: int) -> int:
    """Lanes per row of the CUDA kernels: the smallest power of two (at most 256) that gives
    each lane at most 4 chunks (a row not made of whole chunks counts two more)."""
    chunks = cols // chunk if cols % chunk == 0 else cols // chunk + 2
    group = 1
    while group < 256 and group * 4 < chunks:
        group *= 2
    return group


def dscale_cuda_order(terms: np.ndarray, chunk: int) -> np.ndarray:
    """Row sums in the CUDA kernels' order.

    A row ``[start, start + cols)`` of the flat array is cut into chunks at multiples of
    ``chunk`` of the flat index (a partial head, whole chunks, a partial tail); chunk j goes
    to lane ``j % G`` of the row's G lanes (:func:`cuda_dscale_group`), which adds its chunks'
    elements in increasing order. Each warp's lanes are added by a butterfly of shuffles
    (offsets 16, 8, ..., 1, or G/2, ..., 1 for G < 32), then the warps' sums in warp order.

    Args:
        terms: ``[rows, cols]`` rounded terms ``C(dy) * (C(q) - C(zp))`` in C.
        chunk: elements per chunk: 16 bytes of the wider of dy and q.

    Returns:
        ``[rows]`` sums in C, before rounding to the cotangent's dtype.
    """
    rows, cols = terms.shape
    group = cuda_dscale_group(cols, chunk)
    offsets = [o for o in (16, 8, 4, 2, 1) if o < group]
    sums = np.empty(rows, terms.dtype)
    column = np.arange(cols)
    with np.errstate(all="ignore"):
        for row in range(rows):
            start = row * cols
            head = min((chunk - start % chunk) % chunk, cols)
            chunk_number = np.where(column < head, 0, int(head > 0) + (column - head) // chunk)
            lane = chunk_number % group
            order = np.argsort(lane, kind="stable")  # each lane's columns, increasing
            counts = np.bincount(lane, minlength=group)
            position = np.arange(cols) - np.repeat(np.cumsum(counts) - counts, counts)
            # Padding adds +0 to a sum that is never -0 (it starts from +0 whenever a lane
            # has more than one term), which changes nothing.
            by_lane = np.zeros((group, counts.max()), terms.dtype)
            by_lane[lane[order], position] = terms[row, order]
            lanes = np.full(group, _empty_sum(cols, terms.dtype), terms.dtype)
            for step in range(by_lane.shape[1]):
                lanes = lanes + by_lane[:, step]
            for offset in offsets:
                lanes = lanes + lanes[np.arange(group) ^ offset]
            total = lanes[0]
            for warp in range(1, max(group // 32, 1)):
                total = total + lanes[32 * warp]
            sums[row] = total
    return sums

// The numerics contract (SPEC.md, "Numerics") as scalar functions that compile
// for the host and for CUDA devices, so the CPU and GPU kernels evaluate the
// same expression with the same roundings.
//
// Every multiply and add goes through mul_rn/add_rn/sub_rn: on the device these
// are the round-to-nearest intrinsics that nvcc never contracts into an FMA; on
// the host the library is built with -ffp-contract=off.
#ifndef JAX_DEQUANT_NUMERICS_H_
#define JAX_DEQUANT_NUMERICS_H_

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "problem.h"

#if defined(__CUDACC__)
#define JDQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JDQ_HOST_DEVICE inline
#endif

namespace jdq {

// Conversions between a storage type and the compute type C. Each platform
// specializes this for its 16-bit float types (cpu_types.h, cuda_types.cuh).
// A float64 value is stored as float16/bfloat16 through float32 (two
// roundings), which is what XLA's convert does in jax 0.10.2 and 0.12.0.1
// on the CPU (jax 0.11.2's rounds once: tests/test_dequantize_grad.py computes that case).
template <typename T, typename Enable = void>
struct Convert {
  template <typename C>
  static JDQ_HOST_DEVICE C ToCompute(T value) {
    return static_cast<C>(value);
  }
  template <typename C>
  static JDQ_HOST_DEVICE T FromCompute(C value) {
    return static_cast<T>(value);
  }
};

// C = float64 when the output or the scale is float64, else float32.
template <typename ScaleT, typename OutT>
using ComputeType =
    std::conditional_t<std::is_same_v<ScaleT, double> || std::is_same_v<OutT, double>, double,
                       float>;

JDQ_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
JDQ_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
JDQ_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
JDQ_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
JDQ_HOST_DEVICE float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
JDQ_HOST_DEVICE double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

JDQ_HOST_DEVICE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
JDQ_HOST_DEVICE double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// Correctly rounded reciprocal, once per row.
JDQ_HOST_DEVICE float reciprocal_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(a);
#else
  return 1.0f / a;
#endif
}
JDQ_HOST_DEVICE double reciprocal_rn(double a) {
#if defined(__CUDA_ARCH__)
  return __drcp_rn(a);
#else
  return 1.0 / a;
#endif
}

// Round half to even. On the host this is the 2^p trick (exact for p-bit
// significands, vectorizable with plain SSE2, independent of the libm).
template <typename C>
JDQ_HOST_DEVICE C round_half_even(C value) {
#if defined(__CUDA_ARCH__)
  return rint(value);
#else
  constexpr C kTwoToP = std::is_same_v<C, double> ? C(4503599627370496.0) : C(8388608.0f);
  const C magnitude = std::fabs(value);
  const C rounded = magnitude < kTwoToP ? (magnitude + kTwoToP) - kTwoToP : magnitude;
  return std::copysign(rounded, value);
#endif
}

// Dequantize one value: (q - zp) * scale in C, one rounding to the output
// type happens in the caller's Convert<Out>::FromCompute.
template <typename C>
JDQ_HOST_DEVICE C dequantize_value(C q, C zero_point, C scale) {
  return mul_rn(sub_rn(q, zero_point), scale);
}

// Quantize one value: clamp(rne(x * r + zp), qmin, qmax) with two roundings.
// +-inf saturate; NaN acts as 0, i.e. it maps to clamp(zp, qmin, qmax).
template <typename C>
JDQ_HOST_DEVICE int32_t quantize_value(C x, C reciprocal, C zero_point, C qmin, C qmax) {
  const C shifted = add_rn(mul_rn(x, reciprocal), zero_point);
#if defined(__CUDA_ARCH__)
  // The same integer in fewer instructions: one round-to-nearest-even
  // conversion, saturating at the int32 range (which the clamp then narrows,
  // as it would the float), and an integer clamp.
  int32_t level;
  if constexpr (std::is_same_v<C, double>) {
    level = __double2int_rn(shifted);
  } else {
    level = __float2int_rn(shifted);
  }
  const int32_t zero_level = static_cast<int32_t>(zero_point);
  level = shifted != shifted ? zero_level : level;
  return min(max(level, static_cast<int32_t>(qmin)), static_cast<int32_t>(qmax));
#else
  C level = round_half_even(shifted);
  if (level != level) level = zero_point;
  level = level < qmin ? qmin : level;
  level = level > qmax ? qmax : level;
  return static_cast<int32_t>(level);
#endif
}


// NaN-propagating max and min (a NaN anywhere in a row makes the result NaN).
template <typename C>
JDQ_HOST_DEVICE C max_propagate_nan(C a, C b) {
  return (a > b || a != a) ? a : b;
}
template <typename C>
JDQ_HOST_DEVICE C min_propagate_nan(C a, C b) {
  return (a < b || a != a) ? a : b;
}

// Keeps a chosen scale finite and > 0 in the storage type: [smallest normal of
// scale_dtype, min(largest finite of scale_dtype, 1 / smallest normal of C)]
// (reference.scale_bounds), so 1/scale is never subnormal. NaN passes through (a NaN row keeps a NaN
// scale). Comparisons see subnormals as 0 under the CPU's denormals-are-zero
// mode, so a subnormal choice becomes `smallest_normal` on both platforms.
template <typename C>
JDQ_HOST_DEVICE C clamp_scale(C scale, C smallest_normal, C largest) {
  scale = scale < smallest_normal ? smallest_normal : scale;
  return scale > largest ? largest : scale;
}

// Dynamic symmetric scale of a row: absmax * (1/qmax) in C (the constant
// reciprocal rounded once), 1 for an all-zero row, then clamp_scale.
template <typename C>
JDQ_HOST_DEVICE C symmetric_scale(C absmax, C qmax, C smallest_normal, C largest) {
  const C scale = absmax == C(0) ? C(1) : mul_rn(absmax, reciprocal_rn(qmax));
  return clamp_scale(scale, smallest_normal, largest);
}

// Dynamic asymmetric scale of a row whose range was widened to include 0
// (lo <= 0 <= hi): (hi - lo) * (1/(qmax - qmin)), 1 for a zero range.
template <typename C>
JDQ_HOST_DEVICE C asymmetric_scale(C lo, C hi, C qmin, C qmax, C smallest_normal, C largest) {
  const C range = sub_rn(hi, lo);
  const C scale = range == C(0) ? C(1) : mul_rn(range, reciprocal_rn(sub_rn(qmax, qmin)));
  return clamp_scale(scale, smallest_normal, largest);
}

// Dynamic asymmetric zero point: clamp(rne(qmin - lo / scale), qmin, qmax)
// with a true division by the stored (rounded) scale; 0 for a zero range.
// A NaN row acts as 0 (clamped), like NaN inputs of quantize_value.
template <typename C>
JDQ_HOST_DEVICE int32_t asymmetric_zero_point(C lo, C hi, C stored_scale, C qmin, C qmax) {
  if (sub_rn(hi, lo) == C(0)) return 0;
  C level = round_half_even(sub_rn(qmin, div_rn(lo, stored_scale)));
  if (level != level) level = C(0);
  level = level < qmin ? qmin : level;
  level = level > qmax ? qmax : level;
  return static_cast<int32_t>(level);
}

// --- dynamic quantization of a row -----------------------------------------------------------

// Folds one value into a row's range. Starting from lo = hi = 0 this gives the
// range widened to include 0 (lo = min(min(row), 0), hi = max(max(row), 0));
// a NaN anywhere makes both NaN. min/max are exact, so any order of folding
// (and of combining partial ranges) gives the same values, up to the sign of
// a zero and NaN payloads, which change no scale, zero point or level.
template <typename C>
JDQ_HOST_DEVICE void extend_range(C value, C& lo, C& hi) {
  lo = min_propagate_nan(lo, value);
  hi = max_propagate_nan(hi, value);
}

// The scale a dynamic quantizer chooses (in C, before it is stored) for a row
// whose widened range is [lo, hi]: symmetric uses absmax = max(-lo, hi).
template <typename C>
JDQ_HOST_DEVICE C dynamic_scale(C lo, C hi, bool symmetric, C qmin, C qmax, C smallest_normal,
                                C largest) {
  if (symmetric) return symmetric_scale(max_propagate_nan(-lo, hi), qmax, smallest_normal, largest);
  return asymmetric_scale(lo, hi, qmin, qmax, smallest_normal, largest);
}

// The zero point that goes with the stored scale: 0 when symmetric.
template <typename C>
JDQ_HOST_DEVICE int32_t dynamic_zero_point(C lo, C hi, bool symmetric, C stored_scale, C qmin,
                                           C qmax) {
  return symmetric ? 0 : asymmetric_zero_point(lo, hi, stored_scale, qmin, qmax);
}

// The range a chosen scale is clamped to (reference.scale_bounds), as C
// values: the smallest normal number of the scale's storage type, and the
// smaller of its largest finite value and 1 / (smallest normal of C). Host
// side: launchers compute it once and pass it to the kernels.
template <typename C>
struct ScaleRange {
  C smallest_normal;
  C largest;
};

template <typename C>
inline ScaleRange<C> ScaleRangeFor(DType scale_type) {
  double smallest_normal = 0.0;
  double largest = 0.0;
  switch (scale_type) {
    case DType::kF16:
      smallest_normal = 0x1p-14;
      largest = 65504.0;
      break;
    case DType::kBF16:
      smallest_normal = 0x1p-126;
      largest = 0x1.fep127;  // (2 - 2^-7) * 2^127
      break;
    case DType::kF32:
      smallest_normal = 0x1p-126;
      largest = 0x1.fffffep127;  // (2 - 2^-23) * 2^127
      break;
    default:  // float64
      smallest_normal = 0x1p-1022;
      largest = 0x1.fffffffffffffp1023;
      break;
  }
  // 1 / (smallest normal of C).
  const double cap = std::is_same_v<C, double> ? 0x1p1022 : 0x1p126;
  return ScaleRange<C>{static_cast<C>(smallest_normal),
                       static_cast<C>(largest < cap ? largest : cap)};
}

// --- fake quantization (SPEC.md, "fake quant" and "Differentiation") -----------------------------

// The rounded level before clamping, rne(product + zp) with product = x * r
// already rounded; NaN acts as the zero point (as in quantize_value).
template <typename C>
JDQ_HOST_DEVICE C unclamped_level(C product, C zero_point) {
  const C level = round_half_even(add_rn(product, zero_point));
  return level != level ? zero_point : level;
}

// Fake quantize one value: (clamp(rne(x * r + zp), qmin, qmax) - zp) * scale
// in C; the caller rounds once to x's type. The level is quantize_value's, an
// integer: a -0 level becomes +0 (adding +0), so that fake quantization is
// dequantize(quantize(x)) bit for bit, signs of zero included.
template <typename C>
JDQ_HOST_DEVICE C fake_quantize_value(C x, C reciprocal, C zero_point, C scale, C qmin, C qmax) {
  C level = unclamped_level(mul_rn(x, reciprocal), zero_point);
  level = level < qmin ? qmin : level;
  level = level > qmax ? qmax : level;
  return dequantize_value(add_rn(level, C(0)), zero_point, scale);
}

// The derivatives of fake quantization at one value. `inside` is the clipped
// straight-through mask, qmin <= rne(x * r + zp) <= qmax with both endpoints
// included (a NaN x has level zp); `lsq` is the LSQ derivative with respect
// to the scale: (level - zp) - x * r inside, (qbound - zp) where clipped to
// qbound (qmin or qmax). x * r is the same rounded product as the forward's.
template <typename C>
struct FakeQuantizeSlopes {
  bool inside;
  C lsq;
};

template <typename C>
JDQ_HOST_DEVICE FakeQuantizeSlopes<C> fake_quantize_slopes(C x, C reciprocal, C zero_point, C qmin,
                                                           C qmax) {
  const C product = mul_rn(x, reciprocal);
  const C level = unclamped_level(product, zero_point);
  // Branch-free, so that CPU loops over it vectorize.
  const bool below = level < qmin;
  const bool inside = !below && !(level > qmax);
  const C clipped = sub_rn(below ? qmin : qmax, zero_point);
  const C unclipped = sub_rn(sub_rn(level, zero_point), product);
  return {inside, inside ? unclipped : clipped};
}

}  // namespace jdq

#endif  // JAX_DEQUANT_NUMERICS_H_

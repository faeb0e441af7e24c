// The dynamic choice of a row's scale and zero point on the CPU, shared by
// dynamic quantization (cpu_quantize.cc) and the dynamic forward of fake
// quantization (cpu_fake_quantize.cc): the row's range (baseline and AVX2
// loops, cpu_simd.h), then the scale and zero point chosen from it as
// numerics.h dynamic_scale / dynamic_zero_point define them.
#ifndef JAX_DEQUANT_CPU_DYNAMIC_ROW_H_
#define JAX_DEQUANT_CPU_DYNAMIC_ROW_H_

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu_simd.h"
#include "cpu_types.h"
#include "numerics.h"

namespace jdq::cpu {

// Lane-wise range of the row's first columns, in 32-byte vectors of C: lane i
// folds columns i, i + kWidth, ... with min/max (exact, so the lane split
// changes no value) and a NaN flag. Returns how many columns were folded (a
// multiple of kWidth).
template <typename XT, typename C>
struct RowRangeLanes {
  static constexpr int kWidth = 32 / sizeof(C);

  // GCC/Clang vector extensions, as two 16-byte halves (the width of the
  // baseline ISA: wider vectors are split up element by element); the scalar
  // select formulation does not vectorize (its NaN test turns into branches).
  static JDQ_ALWAYS_INLINE int64_t Scalar(const XT* __restrict x, int64_t cols, C* lane_lo,
                                          C* lane_hi, bool* nan) {
    using Int = std::conditional_t<sizeof(C) == 8, int64_t, int32_t>;
    typedef C Vector __attribute__((vector_size(16)));
    typedef Int Mask __attribute__((vector_size(16)));
    constexpr int kHalf = kWidth / 2;
    Vector lo[2] = {};
    Vector hi[2] = {};
    Mask lane_nan[2] = {};
    int64_t col = 0;
    for (; col + kWidth <= cols; col += kWidth) {
      C values[kWidth];
      for (int i = 0; i < kWidth; ++i) values[i] = Convert<XT>::template ToCompute<C>(x[col + i]);
      for (int h = 0; h < 2; ++h) {
        Vector v;
        std::memcpy(&v, values + h * kHalf, sizeof(v));
        // Vector casts are bit casts; comparisons give all-ones lanes where true.
        const Mask below = (Mask)(v < lo[h]);
        const Mask above = (Mask)(v > hi[h]);
        lo[h] = (Vector)(((Mask)v & below) | ((Mask)lo[h] & ~below));
        hi[h] = (Vector)(((Mask)v & above) | ((Mask)hi[h] & ~above));
        lane_nan[h] |= (Mask)(v != v);
      }
    }
    *nan = false;
    for (int i = 0; i < kWidth; ++i) {
      lane_lo[i] = lo[i / kHalf][i % kHalf];
      lane_hi[i] = hi[i / kHalf][i % kHalf];
      *nan = *nan || lane_nan[i / kHalf][i % kHalf] != 0;
    }
    return col;
  }

#if JDQ_CPU_AVX2
  // The same lanes with intrinsics: min(v, lo) is `v < lo ? v : lo` and
  // max(v, hi) `v > hi ? v : hi` (a NaN v keeps the lane), as above.
  static constexpr bool kHasAvx2 = std::is_same_v<C, float> && avx2::kIsFloat32Storage<XT>;

  static JDQ_TARGET_AVX2 inline int64_t Avx2(const XT* __restrict x, int64_t cols, float* lane_lo,
                                             float* lane_hi, bool* nan) {
    __m256 lo = _mm256_setzero_ps();
    __m256 hi = _mm256_setzero_ps();
    __m256 lane_nan = _mm256_setzero_ps();
    int64_t col = 0;
    for (; col + 8 <= cols; col += 8) {
      const __m256 v = avx2::Load8(x + col);
      lo = _mm256_min_ps(v, lo);
      hi = _mm256_max_ps(v, hi);
      lane_nan = _mm256_or_ps(lane_nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    _mm256_storeu_ps(lane_lo, lo);
    _mm256_storeu_ps(lane_hi, hi);
    *nan = _mm256_movemask_ps(lane_nan) != 0;
    return col;
  }
#endif
};

// The row's range widened to include 0, with the NaN rule of extend_range (a
// NaN anywhere makes both ends NaN): the lanes, combined, then the last
// columns.
template <Isa kIsa, typename XT, typename C>
JDQ_ALWAYS_INLINE void RowRange(const XT* __restrict x, int64_t cols, C& lo, C& hi) {
  using Lanes = RowRangeLanes<XT, C>;
  C lane_lo[Lanes::kWidth];
  C lane_hi[Lanes::kWidth];
  bool nan = false;
  int64_t col = 0;
#if JDQ_CPU_AVX2
  if constexpr (kIsa != Isa::kBaseline && Lanes::kHasAvx2) {
    col = Lanes::Avx2(x, cols, lane_lo, lane_hi, &nan);
  } else {
    col = Lanes::Scalar(x, cols, lane_lo, lane_hi, &nan);
  }
#else
  col = Lanes::Scalar(x, cols, lane_lo, lane_hi, &nan);
#endif
  lo = hi = C(0);
  for (int i = 0; i < Lanes::kWidth; ++i) {
    extend_range(lane_lo[i], lo, hi);
    extend_range(lane_hi[i], lo, hi);
  }
  for (; col < cols; ++col) extend_range(Convert<XT>::template ToCompute<C>(x[col]), lo, hi);
  if (nan) lo = hi = std::numeric_limits<C>::quiet_NaN();
}

// A row's dynamic choice: the scale as stored (ScaleT), the stored scale in C,
// and the zero point chosen with it (0 when symmetric).
template <typename ScaleT, typename C>
struct RowChoice {
  ScaleT stored_scale;
  C scale;
  int32_t zero_point;
};

template <typename ScaleT, typename C>
inline RowChoice<ScaleT, C> ChooseRow(C lo, C hi, bool symmetric, C qmin, C qmax,
                                      const ScaleRange<C>& range) {
  const C chosen =
      dynamic_scale(lo, hi, symmetric, qmin, qmax, range.smallest_normal, range.largest);
  const ScaleT stored = Convert<ScaleT>::template FromCompute<C>(chosen);
  const C stored_c = Convert<ScaleT>::template ToCompute<C>(stored);
  return {stored, stored_c, dynamic_zero_point(lo, hi, symmetric, stored_c, qmin, qmax)};
}

}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_DYNAMIC_ROW_H_

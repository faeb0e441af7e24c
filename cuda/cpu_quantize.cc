// CPU quantize kernels, static and dynamic: plain row loops that the compiler
// vectorizes (for AVX2 and the baseline ISA, JDQ_CPU_CLONES), run with
// subnormals flushed to zero like XLA:CPU (ScopedFlushDenormals, cpu_flush.h),
// so that they agree bit for bit with XLA's compiled reference on the CPU.
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "cpu_common.h"
#include "cpu_flush.h"
#include "cpu_kernels.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cpu {
namespace {

// q[d] = clamp(rne(C(x[d]) * reciprocal + zero), qmin, qmax) over one row.
template <typename XT, typename QT, typename C>
JDQ_CPU_CLONES void QuantizeRow(const XT* __restrict x, QT* __restrict q, int64_t cols, C reciprocal, C zero,
                 C qmin, C qmax) {
  for (int64_t col = 0; col < cols; ++col) {
    const C value = Convert<XT>::template ToCompute<C>(x[col]);
    q[col] = static_cast<QT>(quantize_value(value, reciprocal, zero, qmin, qmax));
  }
}

template <typename XT, typename ScaleT, typename QT>
void QuantizeRows(const QuantizeProblem& p) {
  using C = ComputeType<ScaleT, XT>;
  const XT* x = static_cast<const XT*>(p.x);
  const ScaleT* scale = static_cast<const ScaleT*>(p.scale);
  QT* q = static_cast<QT*>(p.q);
  const C qmin = static_cast<C>(p.qmin);
  const C qmax = static_cast<C>(p.qmax);
  for (int64_t row = 0; row < p.rows; ++row) {
    const C reciprocal = reciprocal_rn(Convert<ScaleT>::template ToCompute<C>(scale[row]));
    const C zero = p.zero_point != nullptr ? static_cast<C>(p.zero_point[row]) : C(0);
    QuantizeRow(x + row * p.cols, q + row * p.cols, p.cols, reciprocal, zero, qmin, qmax);
  }
}

// The row's range widened to include 0, with the NaN rule of extend_range (a
// NaN anywhere makes both ends NaN). Written with GCC/Clang vector extensions
// over 32-byte vectors: lane-wise min and max (min/max are exact, so the lane
// split changes no value) and a lane-wise NaN flag, combined at the end. The
// scalar select formulation does not vectorize: its NaN test turns into
// branches.
template <typename XT, typename C>
JDQ_CPU_CLONES void RowRange(const XT* __restrict x, int64_t cols, C& lo, C& hi) {
  using Int = std::conditional_t<sizeof(C) == 8, int64_t, int32_t>;
  constexpr int kWidth = 32 / sizeof(C);
  typedef C Vector __attribute__((vector_size(32)));
  typedef Int Mask __attribute__((vector_size(32)));
  Vector lane_lo = {};
  Vector lane_hi = {};
  Mask lane_nan = {};
  int64_t col = 0;
  for (; col + kWidth <= cols; col += kWidth) {
    C values[kWidth];
    for (int i = 0; i < kWidth; ++i) values[i] = Convert<XT>::template ToCompute<C>(x[col + i]);
    Vector v;
    std::memcpy(&v, values, sizeof(v));
    // Vector casts are bit casts; comparisons give all-ones lanes where true.
    const Mask below = (Mask)(v < lane_lo);
    const Mask above = (Mask)(v > lane_hi);
    lane_lo = (Vector)(((Mask)v & below) | ((Mask)lane_lo & ~below));
    lane_hi = (Vector)(((Mask)v & above) | ((Mask)lane_hi & ~above));
    lane_nan |= (Mask)(v != v);
  }
  bool nan = false;
  lo = hi = C(0);
  for (int i = 0; i < kWidth; ++i) {
    extend_range(lane_lo[i], lo, hi);
    extend_range(lane_hi[i], lo, hi);
    nan = nan || lane_nan[i] != 0;
  }
  for (; col < cols; ++col) extend_range(Convert<XT>::template ToCompute<C>(x[col]), lo, hi);
  if (nan) lo = hi = std::numeric_limits<C>::quiet_NaN();
}

// Per row: the range, the scale (stored as ScaleT) and zero point, then the
// row quantized with the stored scale. The second read of the row hits cache.
template <typename XT, typename ScaleT, typename QT>
void QuantizeDynamicRows(const DynamicQuantizeProblem& p) {
  using C = ComputeType<ScaleT, XT>;
  const XT* x = static_cast<const XT*>(p.x);
  QT* q = static_cast<QT*>(p.q);
  ScaleT* scale = static_cast<ScaleT*>(p.scale);
  const C qmin = static_cast<C>(p.qmin);
  const C qmax = static_cast<C>(p.qmax);
  const ScaleRange<C> range = ScaleRangeFor<C>(p.scale_type);
  for (int64_t row = 0; row < p.rows; ++row) {
    const XT* x_row = x + row * p.cols;
    C lo, hi;
    RowRange(x_row, p.cols, lo, hi);
    const C chosen =
        dynamic_scale(lo, hi, p.symmetric, qmin, qmax, range.smallest_normal, range.largest);
    const ScaleT stored = Convert<ScaleT>::template FromCompute<C>(chosen);
    const C stored_c = Convert<ScaleT>::template ToCompute<C>(stored);
    const int32_t zero_point = dynamic_zero_point(lo, hi, p.symmetric, stored_c, qmin, qmax);
    scale[row] = stored;
    p.zero_point[row] = zero_point;
    QuantizeRow(x_row, q + row * p.cols, p.cols, reciprocal_rn(stored_c),
                static_cast<C>(zero_point), qmin, qmax);
  }
}

}  // namespace

std::string Quantize(const QuantizeProblem& p) {
  ScopedFlushDenormals flush;
  return VisitQuantizeTypes<CpuTypes, false>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        QuantizeRows<XT, ScaleT, QT>(p);
        return std::string();
      });
}

std::string QuantizeDynamic(const DynamicQuantizeProblem& p) {
  ScopedFlushDenormals flush;
  return VisitQuantizeTypes<CpuTypes, true>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        QuantizeDynamicRows<XT, ScaleT, QT>(p);
        return std::string();
      });
}

}  // namespace jdq::cpu

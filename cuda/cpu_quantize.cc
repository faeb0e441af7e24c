// CPU quantize kernels, static and dynamic: plain row loops that the compiler
// vectorizes, run with subnormals flushed to zero like XLA:CPU
// (ScopedFlushDenormals), so that they agree bit for bit with XLA's compiled
// reference on the CPU.
#include <cstdint>
#include <string>

#include "cpu_common.h"
#include "cpu_kernels.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cpu {
namespace {

// q[d] = clamp(rne(C(x[d]) * reciprocal + zero), qmin, qmax) over one row.
template <typename XT, typename QT, typename C>
void QuantizeRow(const XT* __restrict x, QT* __restrict q, int64_t cols, C reciprocal, C zero,
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

// The row's range widened to include 0. Independent partial ranges per lane
// let the compiler vectorize the NaN-propagating min/max; they are combined
// at the end (min/max are exact, so the split changes nothing).
template <typename XT, typename C>
void RowRange(const XT* __restrict x, int64_t cols, C& lo, C& hi) {
  constexpr int kLanes = 16;
  C lane_lo[kLanes];
  C lane_hi[kLanes];
  for (int i = 0; i < kLanes; ++i) lane_lo[i] = lane_hi[i] = C(0);
  int64_t col = 0;
  for (; col + kLanes <= cols; col += kLanes) {
    for (int i = 0; i < kLanes; ++i) {
      extend_range(Convert<XT>::template ToCompute<C>(x[col + i]), lane_lo[i], lane_hi[i]);
    }
  }
  for (; col < cols; ++col) {
    extend_range(Convert<XT>::template ToCompute<C>(x[col]), lane_lo[0], lane_hi[0]);
  }
  lo = hi = C(0);
  for (int i = 0; i < kLanes; ++i) {
    lo = min_propagate_nan(lo, lane_lo[i]);
    hi = max_propagate_nan(hi, lane_hi[i]);
  }
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

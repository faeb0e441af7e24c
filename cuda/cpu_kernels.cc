// CPU kernels: plain row loops that the compiler vectorizes.
//
// Arithmetic runs with subnormals flushed to zero (inputs and results), as
// XLA:CPU does for its own computations, so our results and XLA's compiled
// reference agree bit for bit on the CPU.
#include "cpu_kernels.h"

#include <cstdint>
#include <string>

#include "cpu_flush.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cpu {
namespace {

template <typename QT, typename ScaleT, typename OutT>
void DequantizeRows(const QT* __restrict q, const ScaleT* __restrict scale,
                    const int32_t* __restrict zero_point, OutT* __restrict out, int64_t rows,
                    int64_t cols) {
  using C = ComputeType<ScaleT, OutT>;
  for (int64_t row = 0; row < rows; ++row) {
    const C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
    const C row_zero = zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
    const QT* q_row = q + row * cols;
    OutT* out_row = out + row * cols;
    for (int64_t col = 0; col < cols; ++col) {
      const C level = Convert<QT>::template ToCompute<C>(q_row[col]);
      out_row[col] =
          Convert<OutT>::template FromCompute<C>(dequantize_value(level, row_zero, row_scale));
    }
  }
}

}  // namespace

std::string Dequantize(const DequantizeProblem& p) {
  ScopedFlushDenormals flush;
  return VisitDequantizeTypes<CpuTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        DequantizeRows(static_cast<const QT*>(p.q), static_cast<const ScaleT*>(p.scale),
                       p.zero_point, static_cast<OutT*>(p.out), p.rows, p.cols);
        return std::string();
      });
}

}  // namespace jdq::cpu

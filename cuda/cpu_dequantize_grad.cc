// CPU kernels for the derivatives of dequantize: the backward pass (dq,
// dscale, or both in one pass over dy) and the fused forward-mode tangent.
//
// dscale is accumulated in C over kLanes interleaved partial sums (column d
// goes to lane d % kLanes, in increasing d), which the compiler vectorizes
// without reassociating anything; the lanes are then added in a fixed tree.
// The order depends on the row length alone, so results are deterministic.
// Subnormals are flushed as in the forward kernels (cpu_flush.h).
#include <cstdint>
#include <string>
#include <type_traits>

#include "cpu_flush.h"
#include "cpu_kernels.h"
#include "cpu_parallel.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cpu {
namespace {

constexpr int kLanes = 16;

// Adds the lanes pairwise in a fixed tree: (0+8, 1+9, ...), then (0+4, ...).
template <typename C>
C SumLanes(C* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int lane = 0; lane < width; ++lane) lanes[lane] = add_rn(lanes[lane], lanes[lane + width]);
  }
  return lanes[0];
}

// What a lane's sum starts from. XLA, whose reduction the reference's gradient
// is, starts a sum from +0 but folds a sum of one term into the term itself;
// starting from -0 (the exact identity: -0 + t == t) in that case gives the
// same sign of zero.
template <typename C>
C EmptySum(int64_t cols) {
  return cols == 1 ? -C(0) : C(0);
}

// One pass over each row of dy: dq (kDq) and/or dscale (kDscale). Plain loops
// over restrict pointers (no lambdas: a captured pointer loses `restrict`, and
// the dq stores then block vectorization).
template <typename QT, typename ScaleT, typename OutT, bool kDq, bool kDscale>
void GradRows(const OutT* __restrict dy, const QT* __restrict q, const ScaleT* __restrict scale,
              const int32_t* __restrict zero_point, QT* __restrict dq, ScaleT* __restrict dscale,
              int64_t rows, int64_t cols) {
  using C = ComputeType<ScaleT, OutT>;
  const C empty = EmptySum<C>(cols);
  for (int64_t row = 0; row < rows; ++row) {
    const OutT* __restrict dy_row = dy + row * cols;
    C row_scale = C(0);
    if constexpr (kDq) row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
    if constexpr (kDq && !kDscale) {
      QT* __restrict dq_row = dq + row * cols;
      for (int64_t col = 0; col < cols; ++col) {
        const C grad = Convert<OutT>::template ToCompute<C>(dy_row[col]);
        dq_row[col] = Convert<QT>::template FromCompute<C>(mul_rn(grad, row_scale));
      }
    } else {
      const QT* __restrict q_row = q + row * cols;
      QT* __restrict dq_row = kDq ? dq + row * cols : nullptr;
      const C row_zero = zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
      C lanes[kLanes];
      for (C& lane : lanes) lane = empty;
      int64_t col = 0;
      for (; col + kLanes <= cols; col += kLanes) {
        for (int lane = 0; lane < kLanes; ++lane) {
          const C grad = Convert<OutT>::template ToCompute<C>(dy_row[col + lane]);
          const C level = sub_rn(Convert<QT>::template ToCompute<C>(q_row[col + lane]), row_zero);
          lanes[lane] = add_rn(lanes[lane], mul_rn(grad, level));
          if constexpr (kDq) {
            dq_row[col + lane] = Convert<QT>::template FromCompute<C>(mul_rn(grad, row_scale));
          }
        }
      }
      for (int lane = 0; col + lane < cols; ++lane) {
        const C grad = Convert<OutT>::template ToCompute<C>(dy_row[col + lane]);
        const C level = sub_rn(Convert<QT>::template ToCompute<C>(q_row[col + lane]), row_zero);
        lanes[lane] = add_rn(lanes[lane], mul_rn(grad, level));
        if constexpr (kDq) {
          dq_row[col + lane] = Convert<QT>::template FromCompute<C>(mul_rn(grad, row_scale));
        }
      }
      dscale[row] = Convert<ScaleT>::template FromCompute<C>(SumLanes(lanes));
    }
  }
}

template <typename QT, typename ScaleT, typename OutT>
void TangentRows(const QT* __restrict q_tangent, const ScaleT* __restrict scale_tangent,
                 const QT* __restrict q, const ScaleT* __restrict scale,
                 const int32_t* __restrict zero_point, OutT* __restrict out, int64_t rows,
                 int64_t cols) {
  using C = ComputeType<ScaleT, OutT>;
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t offset = row * cols;
    const C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
    const C row_scale_tangent = Convert<ScaleT>::template ToCompute<C>(scale_tangent[row]);
    const C row_zero = zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
    for (int64_t col = 0; col < cols; ++col) {
      const C from_q =
          mul_rn(Convert<QT>::template ToCompute<C>(q_tangent[offset + col]), row_scale);
      const C level = sub_rn(Convert<QT>::template ToCompute<C>(q[offset + col]), row_zero);
      out[offset + col] = Convert<OutT>::template FromCompute<C>(
          add_rn(from_q, mul_rn(level, row_scale_tangent)));
    }
  }
}

}  // namespace

// Both entry points split whole rows over XLA's threads (cpu_parallel.h): a
// row's dscale is summed by one thread in the order above, so the bits do not
// depend on the split. A fresh dq or tangent output is prefaulted.

std::string DequantizeGrad(const DequantizeGradProblem& p, TaskRunner* runner) {
  const bool want_dq = p.dq != nullptr;
  const bool want_dscale = p.dscale != nullptr;
  if (!want_dq && !want_dscale) return "dequantize_per_token backward: no output requested";
  ScopedFlushDenormals flush;
  return VisitDequantizeTypes<CpuTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        const DequantizeGradProblem problem = p;
        const auto run = [&](auto dq_tag, auto dscale_tag) {
          constexpr bool kDq = decltype(dq_tag)::value;
          constexpr bool kDscale = decltype(dscale_tag)::value;
          QT* const dq_out = kDq ? static_cast<QT*>(p.dq) : nullptr;
          ParallelRowsWriting(p.rows, p.cols, runner, dq_out,
                              [problem](int64_t begin, int64_t end) {
            const int64_t offset = begin * problem.cols;
            QT* dq = Offset(static_cast<QT*>(problem.dq), offset);
            GradRows<QT, ScaleT, OutT, kDq, kDscale>(
                Offset(static_cast<const OutT*>(problem.dy), offset),
                Offset(static_cast<const QT*>(problem.q), offset),
                Offset(static_cast<const ScaleT*>(problem.scale), begin),
                Offset(problem.zero_point, begin), dq,
                Offset(static_cast<ScaleT*>(problem.dscale), begin), end - begin, problem.cols);
          });
          return std::string();
        };
        if constexpr (std::is_integral_v<QT>) {
          if (want_dq) return std::string("dequantize_per_token backward: dq needs a float q");
          return run(std::false_type{}, std::true_type{});
        } else {
          if (want_dq && want_dscale) return run(std::true_type{}, std::true_type{});
          if (want_dq) return run(std::true_type{}, std::false_type{});
          return run(std::false_type{}, std::true_type{});
        }
      });
}

std::string DequantizeTangent(const DequantizeTangentProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitDequantizeTypes<CpuTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        if constexpr (std::is_integral_v<QT>) {
          return std::string("dequantize_per_token tangent: q must be a float carrier");
        } else {
          const DequantizeTangentProblem problem = p;
          ParallelRowsWriting(p.rows, p.cols, runner, static_cast<OutT*>(p.out),
                              [problem](int64_t begin, int64_t end) {
            const int64_t offset = begin * problem.cols;
            OutT* out = static_cast<OutT*>(problem.out) + offset;
            TangentRows(static_cast<const QT*>(problem.q_tangent) + offset,
                        static_cast<const ScaleT*>(problem.scale_tangent) + begin,
                        static_cast<const QT*>(problem.q) + offset,
                        static_cast<const ScaleT*>(problem.scale) + begin,
                        Offset(problem.zero_point, begin), out, end - begin, problem.cols);
          });
          return std::string();
        }
      });
}

}  // namespace jdq::cpu

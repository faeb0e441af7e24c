// CUDA static quantize: the row-wise map kernel (rowwise_map.cuh) with
// QuantizeOp. A thread computes the reciprocal 1 / scale once per row among its
// vectors, after all its loads are issued; without a zero point and with the
// storage type's full range, levels are packed with saturating conversions.
#include <cstdint>
#include <limits>
#include <string>

#include "cuda_kernels.h"
#include "dispatch.h"
#include "rowwise_map.cuh"
#include "rowwise_ops.cuh"

namespace jdq::cuda {
namespace {

using Tuning = RowwiseTuning</*unroll=*/4, /*block=*/128>;

}  // namespace

std::string Quantize(const QuantizeProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitQuantizeTypes<CudaTypes, false>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        using Op = QuantizeOp<XT, ScaleT, QT>;
        using C = typename Op::C;
        const Op op{static_cast<const XT*>(p.x),
                    nullptr,
                    static_cast<QT*>(p.q),
                    static_cast<const ScaleT*>(p.scale),
                    p.zero_point,
                    static_cast<C>(p.qmin),
                    static_cast<C>(p.qmax),
                    p.zero_point == nullptr &&
                        p.qmin == std::numeric_limits<QT>::lowest() &&
                        p.qmax == std::numeric_limits<QT>::max()};
        return RunRowwiseMap<Tuning>(op, p.rows, p.cols, stream, "quantize");
      });
}

}  // namespace jdq::cuda

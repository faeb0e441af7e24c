// CUDA dequantize: the row-wise map kernel (rowwise_map.cuh) with DequantizeOp.
#include <cstdint>
#include <string>

#include "cuda_kernels.h"
#include "dispatch.h"
#include "rowwise_map.cuh"
#include "rowwise_ops.cuh"

namespace jdq::cuda {
namespace {

using Tuning = RowwiseTuning</*unroll=*/2, /*block=*/128>;

}  // namespace

std::string Dequantize(const DequantizeProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitDequantizeTypes<CudaTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        const DequantizeOp<QT, ScaleT, OutT> op{static_cast<const QT*>(p.q), nullptr,
                                                static_cast<OutT*>(p.out),
                                                static_cast<const ScaleT*>(p.scale), p.zero_point};
        return RunRowwiseMap<Tuning>(op, p.rows, p.cols, stream,
                                                            "dequantize");
      });
}

}  // namespace jdq::cuda

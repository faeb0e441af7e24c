// CUDA static quantize kernel.
//
// Like the dequantize kernel, the [rows, cols] input is walked as one flat
// sequence of 16-byte chunks of x (one chunk per thread), so loads are
// full-width whatever cols is; the int8/uint8 levels of a chunk are stored
// together (16 / sizeof(x) bytes). A thread finds its row with one division
// and computes that row's reciprocal 1 / C(scale) once (again only when its
// chunk crosses into the next row).
#include <cstdint>
#include <string>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "cuda_types.cuh"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cuda {
namespace {

constexpr int kThreadsPerBlock = 256;

// One thread quantizes one chunk of kVec consecutive elements. With
// kRowAligned the chunk lies inside one row; otherwise the row may change
// inside the chunk. The last, partial chunk is done element by element.
template <typename XT, typename ScaleT, typename QT, int kVec, bool kRowAligned>
__global__ void __launch_bounds__(kThreadsPerBlock)
    QuantizeKernel(const XT* __restrict__ x, const ScaleT* __restrict__ scale,
                   const int32_t* __restrict__ zero_point, QT* __restrict__ q, int64_t total,
                   int64_t cols, bool narrow_index, int32_t qmin_int, int32_t qmax_int) {
  using C = ComputeType<ScaleT, XT>;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x) * kVec;
  if (first >= total) return;

  const C qmin = static_cast<C>(qmin_int);
  const C qmax = static_cast<C>(qmax_int);
  int64_t row, col;
  RowOf(first, cols, narrow_index, row, col);
  C reciprocal, zero;
  auto load_row = [&]() {
    reciprocal = reciprocal_rn(Convert<ScaleT>::template ToCompute<C>(scale[row]));
    zero = zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
  };
  auto next_element = [&]() {
    if (++col == cols) {
      col = 0;
      ++row;
      load_row();
    }
  };
  auto quantize = [&](XT value) {
    return static_cast<QT>(quantize_value(Convert<XT>::template ToCompute<C>(value), reciprocal,
                                          zero, qmin, qmax));
  };
  load_row();

  if (first + kVec <= total) {
    const Pack<XT, kVec> values = *reinterpret_cast<const Pack<XT, kVec>*>(x + first);
    Pack<QT, kVec> levels;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      levels.v[i] = quantize(values.v[i]);
      if (!kRowAligned && i + 1 < kVec) next_element();
    }
    *reinterpret_cast<Pack<QT, kVec>*>(q + first) = levels;
  } else {
    for (int64_t e = first; e < total; ++e) {
      q[e] = quantize(x[e]);
      if (e + 1 < total) next_element();
    }
  }
}

template <typename XT, typename ScaleT, typename QT, int kVec, bool kRowAligned>
std::string Launch(const QuantizeProblem& p, cudaStream_t stream) {
  const int64_t total = p.rows * p.cols;
  const int64_t chunks = (total + kVec - 1) / kVec;
  const int64_t blocks = (chunks + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > 0x7fffffff) return "quantize: array too large for one launch";
  const bool narrow_index = total < (int64_t{1} << 32);
  QuantizeKernel<XT, ScaleT, QT, kVec, kRowAligned>
      <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
          static_cast<const XT*>(p.x), static_cast<const ScaleT*>(p.scale), p.zero_point,
          static_cast<QT*>(p.q), total, p.cols, narrow_index, p.qmin, p.qmax);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return std::string("quantize kernel launch failed: ") + cudaGetErrorString(status);
  }
  return std::string();
}

}  // namespace

std::string Quantize(const QuantizeProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitQuantizeTypes<CudaTypes, false>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        constexpr int kVec = 16 / sizeof(XT);
        if (!IsAligned(p.x, 16) || !IsAligned(p.q, kVec)) {
          return Launch<XT, ScaleT, QT, 1, true>(p, stream);
        }
        if (p.cols % kVec == 0) return Launch<XT, ScaleT, QT, kVec, true>(p, stream);
        return Launch<XT, ScaleT, QT, kVec, false>(p, stream);
      });
}

}  // namespace jdq::cuda

// CUDA dequantize kernel.
//
// The [rows, cols] array is walked as one flat sequence of chunks (at most 16
// bytes of q and 32 bytes of output per thread), so no row needs to be aligned
// and loads/stores are full-width whatever cols is. Each thread finds its row with one division per chunk (32-bit when
// the array has fewer than 2^32 elements); when a chunk can cross a row end
// (cols not a multiple of the chunk) the row advances element by element.
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

// One thread dequantizes one chunk of kVec consecutive elements. With
// kRowAligned the chunk lies inside one row; otherwise the row may change
// inside the chunk. The last, partial chunk is done element by element.
template <typename QT, typename ScaleT, typename OutT, int kVec, bool kRowAligned>
__global__ void __launch_bounds__(kThreadsPerBlock)
    DequantizeKernel(const QT* __restrict__ q, const ScaleT* __restrict__ scale,
                     const int32_t* __restrict__ zero_point, OutT* __restrict__ out,
                     int64_t total, int64_t cols, bool narrow_index) {
  using C = ComputeType<ScaleT, OutT>;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x) * kVec;
  if (first >= total) return;

  int64_t row, col;
  RowOf(first, cols, narrow_index, row, col);
  C row_scale, row_zero;
  auto load_row = [&]() {
    row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
    row_zero = zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
  };
  auto next_element = [&]() {
    if (++col == cols) {
      col = 0;
      ++row;
      load_row();
    }
  };
  auto dequantize = [&](QT level) {
    return Convert<OutT>::template FromCompute<C>(
        dequantize_value(Convert<QT>::template ToCompute<C>(level), row_zero, row_scale));
  };
  load_row();

  if (first + kVec <= total) {
    const Pack<QT, kVec> levels = *reinterpret_cast<const Pack<QT, kVec>*>(q + first);
    Pack<OutT, kVec> values;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      values.v[i] = dequantize(levels.v[i]);
      if (!kRowAligned && i + 1 < kVec) next_element();
    }
    *reinterpret_cast<Pack<OutT, kVec>*>(out + first) = values;
  } else {
    for (int64_t e = first; e < total; ++e) {
      out[e] = dequantize(q[e]);
      if (e + 1 < total) next_element();
    }
  }
}

template <typename QT, typename ScaleT, typename OutT, int kVec, bool kRowAligned>
std::string Launch(const DequantizeProblem& p, cudaStream_t stream) {
  const int64_t total = p.rows * p.cols;
  const int64_t chunks = (total + kVec - 1) / kVec;
  const int64_t blocks = (chunks + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > 0x7fffffff) return "dequantize: array too large for one launch";
  const bool narrow_index = total < (int64_t{1} << 32);
  DequantizeKernel<QT, ScaleT, OutT, kVec, kRowAligned>
      <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
          static_cast<const QT*>(p.q), static_cast<const ScaleT*>(p.scale), p.zero_point,
          static_cast<OutT*>(p.out), total, p.cols, narrow_index);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return std::string("dequantize kernel launch failed: ") + cudaGetErrorString(status);
  }
  return std::string();
}

}  // namespace

std::string Dequantize(const DequantizeProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitDequantizeTypes<CudaTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        // A chunk is at most 16 bytes of q and at most 32 bytes of output: wider
        // per-thread stores (int8 -> f32 with 16-byte loads would write 64 bytes)
        // measured at 55% of copy bandwidth on an H100, 32 bytes at 93-98%.
        constexpr int kVec = 16 / sizeof(QT) < 32 / sizeof(OutT) ? 16 / sizeof(QT)
                                                                 : 32 / sizeof(OutT);
        constexpr int kInBytes = kVec * sizeof(QT);
        constexpr int kOutBytes = kVec * sizeof(OutT) < 16 ? kVec * sizeof(OutT) : 16;
        if (!IsAligned(p.q, kInBytes) || !IsAligned(p.out, kOutBytes)) {
          return Launch<QT, ScaleT, OutT, 1, true>(p, stream);
        }
        if (p.cols % kVec == 0) return Launch<QT, ScaleT, OutT, kVec, true>(p, stream);
        return Launch<QT, ScaleT, OutT, kVec, false>(p, stream);
      });
}

}  // namespace jdq::cuda

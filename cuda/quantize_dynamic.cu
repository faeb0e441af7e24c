// CUDA dynamic quantize kernel: one fused kernel per row group.
//
// A row is handled by a group of threads: one warp per row for short rows
// (several rows per block), one block per row otherwise. The group reads its
// row once with 16-byte loads into registers (32 elements per thread, so a
// row of up to 32768 elements stays on chip), reduces the row's range
// deterministically (warp butterfly; in a block, warp 0 then combines the
// warps' partial ranges in warp order and chooses the scale, zero point and
// reciprocal, which the block reads from shared memory: the other warps wait
// at the barrier instead of repeating that work, which took dynamic quantize
// from 89% to 98.5% of copy bandwidth at 16384x8192 bf16 on an H200), and
// quantizes from the registers. A row longer than the group can hold is read
// twice: once to reduce, once (mostly from L2) to quantize.
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "cuda_types.cuh"
#include "dispatch.h"
#include "numerics.h"
#include "rowwise_ops.cuh"

namespace jdq::cuda {
namespace {

constexpr int kWarpSize = 32;
// A thread's share of a row held in registers: 32 elements (64 bytes of
// bfloat16, 128 of float32; measured best of 16-128 bytes on an H100, see
// docs/perf.md).
template <typename XT>
constexpr int kBytesPerThread = 32 * static_cast<int>(sizeof(XT));
constexpr int kWarpRowsPerBlock = 8;  // rows per block of the warp-per-row variant
constexpr int kMaxThreads = 1024;
// Block-per-row launches of 16-bit rows with at most kCompactThreads threads
// (rows of up to 8192 elements) are compiled for kCompactMinBlocks resident
// blocks per SM, which caps registers at 40: the kernel is issue- and
// latency-bound (Nsight Compute on bf16 16384x8192: 60 registers, 50%
// occupancy, 73% of issue slots used, 71% of DRAM bandwidth), and 6 blocks of
// 256 instead of 4 took it from 142.8 to 135.8 us. float32 rows, which hold
// twice the registers per element, spill under that cap (219 -> 389 us) and
// keep the default.
constexpr int kCompactThreads = 256;
constexpr int kCompactMinBlocks = 6;

// Chunks of kVec elements a thread holds: kBytes of the row when loads are
// 16 bytes wide; 8 elements when they are scalar (more would spill).
template <typename XT, int kVec, int kBytes>
__host__ __device__ constexpr int ChunksPerThread() {
  return kVec == 1 ? 8 : kBytes / static_cast<int>(sizeof(XT)) / kVec;
}

template <typename C>
struct DynamicParams {
  int64_t rows;
  int64_t cols;
  bool symmetric;
  C qmin;
  C qmax;
  C smallest_normal;
  C largest;
  // Symmetric with the storage type's full range: the launcher then runs the
  // kernel compiled with kSaturating (QuantizeSaturating) where it applies.
  bool saturating;
};

// What quantizing a row needs once its range is known.
template <typename C>
struct RowConstants {
  C reciprocal;  // 1 / stored scale, rounded once
  C zero;        // the zero point
};

// Folds a thread's packs of a row into the row's range (widened to include 0,
// NaN-propagating, as extend_range). Generic: each value in C.
template <typename XT, typename C, int kVec, typename Enable = void>
struct RangeFolder {
  C lo = C(0);
  C hi = C(0);
  __device__ __forceinline__ void Add(const Pack<XT, kVec>& pack) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) extend_range(Convert<XT>::template ToCompute<C>(pack.v[i]), lo, hi);
  }
  __device__ __forceinline__ void Finish(C& out_lo, C& out_hi) const {
    out_lo = lo;
    out_hi = hi;
  }
};

// 16-bit floats in pairs: the paired NaN-propagating min/max instructions
// (exact, like any min/max) fold two values per instruction in their own type;
// the pair is converted to C once, at the end.
template <typename XT>
struct PairOf;
template <>
struct PairOf<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type Zero() { return __float2bfloat162_rn(0.0f); }
};
template <>
struct PairOf<__half> {
  using type = __half2;
  static __device__ __forceinline__ type Zero() { return __float2half2_rn(0.0f); }
};

template <typename XT, typename C, int kVec>
struct RangeFolder<XT, C, kVec, std::void_t<typename PairOf<XT>::type, std::enable_if_t<kVec % 2 == 0>>> {
  using Pair = typename PairOf<XT>::type;
  Pair lo = PairOf<XT>::Zero();
  Pair hi = PairOf<XT>::Zero();
  __device__ __forceinline__ void Add(const Pack<XT, kVec>& pack) {
    const Pair* pairs = reinterpret_cast<const Pair*>(pack.v);
#pragma unroll
    for (int j = 0; j < kVec / 2; ++j) {
      lo = __hmin2_nan(lo, pairs[j]);
      hi = __hmax2_nan(hi, pairs[j]);
    }
  }
  __device__ __forceinline__ void Finish(C& out_lo, C& out_hi) const {
    out_lo = out_hi = C(0);
    extend_range(Convert<XT>::template ToCompute<C>(lo.x), out_lo, out_hi);
    extend_range(Convert<XT>::template ToCompute<C>(lo.y), out_lo, out_hi);
    extend_range(Convert<XT>::template ToCompute<C>(hi.x), out_lo, out_hi);
    extend_range(Convert<XT>::template ToCompute<C>(hi.y), out_lo, out_hi);
  }
};

template <typename C>
__device__ __forceinline__ void WarpRange(C& lo, C& hi) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    lo = min_propagate_nan(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = max_propagate_nan(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
}

// Element kVec-chunk k of a thread at position `lane` of a group of `group`
// threads starts at (k * group + lane) * kVec within a pass over the row.
//
// kSaturating: the row is symmetric with the storage type's full range, and
// QuantizeSaturating (rowwise_ops.cuh) gives its levels in a third of
// quantize_value's instructions. A template parameter rather than a run-time
// branch so that each kernel holds one quantize path: with both compiled in,
// float32 rows spilled under the 1024-thread register cap.
template <typename XT, typename ScaleT, typename QT, int kVec, int kBytes, bool kWarpPerRow,
          int kBlockThreads, int kMinBlocks, bool kSaturating>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    QuantizeDynamicKernel(const XT* __restrict__ x, QT* __restrict__ q,
                          ScaleT* __restrict__ scale, int32_t* __restrict__ zero_point,
                          DynamicParams<ComputeType<ScaleT, XT>> params) {
  using C = ComputeType<ScaleT, XT>;
  constexpr int kChunks = ChunksPerThread<XT, kVec, kBytes>();
  using XPack = Pack<XT, kVec>;
  using QPack = Pack<QT, kVec>;
  __shared__ C shared_lo[kMaxThreads / kWarpSize];
  __shared__ C shared_hi[kMaxThreads / kWarpSize];
  __shared__ RowConstants<C> shared_constants;

  const int group = kWarpPerRow ? kWarpSize : static_cast<int>(blockDim.x);
  const int lane = kWarpPerRow ? static_cast<int>(threadIdx.x) % kWarpSize
                               : static_cast<int>(threadIdx.x);
  const int64_t rows_per_block = kWarpPerRow ? blockDim.x / kWarpSize : 1;
  const int64_t first_row =
      kWarpPerRow ? blockIdx.x * rows_per_block + threadIdx.x / kWarpSize : blockIdx.x;
  const int64_t row_stride = gridDim.x * rows_per_block;
  const int64_t cols = params.cols;
  const int64_t pass = static_cast<int64_t>(group) * kChunks * kVec;  // elements per pass
  const bool fits = cols <= pass;

  for (int64_t row = first_row; row < params.rows; row += row_stride) {
    const XT* row_x = x + row * cols;
    QT* row_q = q + row * cols;
    XPack held[kChunks];
    auto load = [&](int64_t base) {
#pragma unroll
      for (int k = 0; k < kChunks; ++k) {
        const int64_t index = base + (k * group + lane) * kVec;
        if (index < cols) held[k] = *reinterpret_cast<const XPack*>(row_x + index);
      }
    };
    RangeFolder<XT, C, kVec> folder;
    for (int64_t base = 0; base < cols; base += pass) {
      load(base);
#pragma unroll
      for (int k = 0; k < kChunks; ++k) {
        if (base + (k * group + lane) * kVec < cols) folder.Add(held[k]);
      }
    }
    C lo, hi;
    folder.Finish(lo, hi);

    WarpRange(lo, hi);
    // The row's scale, zero point and reciprocal from its range (lane 0 of
    // the group stores the scale and zero point).
    auto choose = [&](C row_lo, C row_hi) {
      const C chosen = dynamic_scale(row_lo, row_hi, params.symmetric, params.qmin, params.qmax,
                                     params.smallest_normal, params.largest);
      const ScaleT stored = Convert<ScaleT>::template FromCompute<C>(chosen);
      const C stored_c = Convert<ScaleT>::template ToCompute<C>(stored);
      const int32_t zp =
          dynamic_zero_point(row_lo, row_hi, params.symmetric, stored_c, params.qmin, params.qmax);
      if (lane == 0) {
        scale[row] = stored;
        zero_point[row] = zp;
      }
      return RowConstants<C>{reciprocal_rn(stored_c), static_cast<C>(zp)};
    };
    RowConstants<C> constants;
    if (kWarpPerRow) {
      constants = choose(lo, hi);  // every lane holds the warp's range
    } else {
      // The warps' ranges meet in shared memory; warp 0 combines them in warp
      // order and chooses the row's constants, which every thread then reads
      // (the other warps wait at the barrier instead of repeating the work).
      const int warps = group / kWarpSize;
      if (lane % kWarpSize == 0) {
        shared_lo[lane / kWarpSize] = lo;
        shared_hi[lane / kWarpSize] = hi;
      }
      __syncthreads();
      if (lane < kWarpSize) {
        lo = shared_lo[0];
        hi = shared_hi[0];
        for (int w = 1; w < warps; ++w) {
          lo = min_propagate_nan(lo, shared_lo[w]);
          hi = max_propagate_nan(hi, shared_hi[w]);
        }
        const RowConstants<C> chosen = choose(lo, hi);
        if (lane == 0) shared_constants = chosen;
      }
      // Also orders this row's reads of the shared ranges before the next
      // row's writes, and the next row's constants after this row's reads.
      __syncthreads();
      constants = shared_constants;
    }
    const C reciprocal = constants.reciprocal;
    const C zero = constants.zero;

    auto quantize_pack = [&](const XPack& values) {
      if constexpr (kSaturating) {
        return QuantizeSaturating<QT>(values, reciprocal);
      } else {
        QPack levels;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          levels.v[i] = static_cast<QT>(
              quantize_value(Convert<XT>::template ToCompute<C>(values.v[i]), reciprocal, zero,
                             params.qmin, params.qmax));
        }
        return levels;
      }
    };
    auto quantize = [&](int64_t base) {
#pragma unroll
      for (int k = 0; k < kChunks; ++k) {
        const int64_t index = base + (k * group + lane) * kVec;
        if (index < cols) *reinterpret_cast<QPack*>(row_q + index) = quantize_pack(held[k]);
      }
    };
    if (fits) {
      quantize(0);
    } else {
      for (int64_t base = 0; base < cols; base += pass) {
        load(base);
        quantize(base);
      }
    }
  }
}

// The kernel of a launch shape, compiled with kSaturating when `saturating` and
// QuantizeSaturating applies (a float32 compute type, whole 4-level words).
template <typename XT, typename ScaleT, typename QT, int kVec, int kBytes, bool kWarpPerRow,
          int kBlockThreads, int kMinBlocks>
auto DynamicKernelFor(bool saturating) {
  if constexpr (std::is_same_v<ComputeType<ScaleT, XT>, float> && kVec % 4 == 0) {
    if (saturating) {
      return QuantizeDynamicKernel<XT, ScaleT, QT, kVec, kBytes, kWarpPerRow, kBlockThreads,
                                   kMinBlocks, true>;
    }
  }
  return QuantizeDynamicKernel<XT, ScaleT, QT, kVec, kBytes, kWarpPerRow, kBlockThreads,
                               kMinBlocks, false>;
}

template <typename XT, typename ScaleT, typename QT, int kVec, int kBytes = kBytesPerThread<XT>,
          int kCompactBlocks = kCompactMinBlocks>
std::string Launch(const DynamicQuantizeProblem& p, cudaStream_t stream) {
  using C = ComputeType<ScaleT, XT>;
  constexpr int64_t kElemsPerThread = ChunksPerThread<XT, kVec, kBytes>() * kVec;
  const ScaleRange<C> range = ScaleRangeFor<C>(p.scale_type);
  const DynamicParams<C> params{p.rows,
                                p.cols,
                                p.symmetric,
                                static_cast<C>(p.qmin),
                                static_cast<C>(p.qmax),
                                range.smallest_normal,
                                range.largest,
                                p.symmetric && p.qmin == std::numeric_limits<QT>::lowest() &&
                                    p.qmax == std::numeric_limits<QT>::max()};
  constexpr int64_t kMaxBlocks = 0x7fffffff;  // more rows are walked grid-stride
  auto* x = static_cast<const XT*>(p.x);
  auto* q = static_cast<QT*>(p.q);
  auto* scale = static_cast<ScaleT*>(p.scale);
  if (p.cols <= kWarpSize * kElemsPerThread) {
    const int64_t blocks = (p.rows + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock;
    constexpr int kThreads = kWarpSize * kWarpRowsPerBlock;
    const auto kernel =
        DynamicKernelFor<XT, ScaleT, QT, kVec, kBytes, true, kThreads, 1>(params.saturating);
    kernel<<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0,
             stream>>>(x, q, scale, p.zero_point, params);
  } else {
    const int64_t needed = (p.cols + kElemsPerThread - 1) / kElemsPerThread;
    const int64_t warps = (needed + kWarpSize - 1) / kWarpSize;
    const int64_t threads =
        warps * kWarpSize < kMaxThreads ? warps * kWarpSize : int64_t{kMaxThreads};
    const auto blocks = static_cast<unsigned>(p.rows < kMaxBlocks ? p.rows : kMaxBlocks);
    auto kernel =
        DynamicKernelFor<XT, ScaleT, QT, kVec, kBytes, false, kMaxThreads, 1>(params.saturating);
    if constexpr (sizeof(XT) == 2) {
      if (threads <= kCompactThreads) {
        kernel = DynamicKernelFor<XT, ScaleT, QT, kVec, kBytes, false, kCompactThreads,
                                  kCompactBlocks>(params.saturating);
      }
    }
    kernel<<<blocks, static_cast<unsigned>(threads), 0, stream>>>(x, q, scale, p.zero_point,
                                                                 params);
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return std::string("dynamic quantize kernel launch failed: ") + cudaGetErrorString(status);
  }
  return std::string();
}

}  // namespace

std::string QuantizeDynamic(const DynamicQuantizeProblem& p, cudaStream_t stream) {
  if (p.rows == 0) return std::string();
  return VisitQuantizeTypes<CudaTypes, true>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        constexpr int kVec = 16 / sizeof(XT);
        // 16-byte loads need every row start aligned: cols a multiple of the
        // vector and aligned buffers; otherwise one element per access.
        if (p.cols % kVec == 0 && IsAligned(p.x, 16) && IsAligned(p.q, kVec)) {
          return Launch<XT, ScaleT, QT, kVec>(p, stream);
        }
        return Launch<XT, ScaleT, QT, 1>(p, stream);
      });
}

}  // namespace jdq::cuda

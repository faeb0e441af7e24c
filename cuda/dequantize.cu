// CUDA dequantize kernel.
//
// The [rows, cols] array is walked as one flat sequence of chunks of kVec
// elements (16 bytes of q), so loads and stores are full-width whatever cols
// is. The launch fills the GPU once (multiprocessors x resident blocks) and
// gives each block one contiguous, equal share of the chunks, so that all
// blocks finish together instead of a last partial wave running alone. Each
// thread takes up to four chunks per step and issues all their loads (q, and the
// per-row scale and zero point) before it converts any of them. The row of a
// thread's first chunk comes from one multiply-shift division by cols
// (FastDivider; a 64-bit division for arrays of 2^32 elements or more), the
// rows of its next chunks from additions (Advance). When cols is a multiple
// of kVec a chunk lies inside one row; otherwise the row advances element by
// element inside the chunk. q is read with streaming loads (no L1 allocation,
// 256-byte L2 prefetch) and the output written with evict-first stores: both
// are touched once. bf16/f16 results are converted two at a time.
//
// docs/perf.md keeps the history of this kernel and what each change gave.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_kernels.h"
#include "cuda_types.cuh"
#include "dispatch.h"
#include "fast_divide.h"
#include "numerics.h"

namespace jdq::cuda {
namespace {

constexpr int kThreadsPerBlock = 256;

// Where the chunks are and how they are shared out; passed by value.
struct Geometry {
  int64_t total = 0;             // elements
  int64_t cols = 0;              // elements per row
  int64_t full_chunks = 0;       // chunks lying entirely inside the array
  int64_t chunks = 0;            // full chunks, plus one partial chunk if any
  int64_t chunks_per_block = 0;  // each block's contiguous share
  int64_t step_rows = 0;         // kThreadsPerBlock chunks of elements, as
  int64_t step_cols = 0;         //   whole rows plus columns
  FastDivider cols_divider;      // used when narrow
  bool narrow = false;           // total < 2^32: rows by FastDivider
};

// An element's row and column.
struct Position {
  int64_t row;
  int64_t col;
};

__device__ __forceinline__ Position Locate(int64_t element, const Geometry& g) {
  const int64_t row = g.narrow ? int64_t{g.cols_divider.Divide(static_cast<uint32_t>(element))}
                               : element / g.cols;
  return {row, element - row * g.cols};
}

// The position kThreadsPerBlock chunks further on: no division.
__device__ __forceinline__ Position Advance(Position at, const Geometry& g) {
  at.row += g.step_rows;
  at.col += g.step_cols;
  if (at.col >= g.cols) {
    at.col -= g.cols;
    ++at.row;
  }
  return at;
}

// Streaming access to a 16-, 8- or 4-byte pack; narrower ones use plain
// accesses (only the scalar fallback for misaligned buffers has them).
template <typename P>
__device__ __forceinline__ P LoadStreaming(const P* pointer) {
  P value;
  if constexpr (sizeof(P) == 16) {
    uint32_t w[4];
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
        : "l"(pointer));
    memcpy(&value, w, sizeof(value));
  } else if constexpr (sizeof(P) == 8) {
    uint32_t w[2];
    asm("ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0, %1}, [%2];"
        : "=r"(w[0]), "=r"(w[1])
        : "l"(pointer));
    memcpy(&value, w, sizeof(value));
  } else {
    value = *pointer;
  }
  return value;
}

template <typename P>
__device__ __forceinline__ void StoreStreaming(P* pointer, const P& value) {
  if constexpr (sizeof(P) % 16 == 0) {
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(P) / 16); ++i) {
      int4 piece;
      memcpy(&piece, reinterpret_cast<const char*>(&value) + 16 * i, 16);
      __stcs(reinterpret_cast<int4*>(pointer) + i, piece);
    }
  } else if constexpr (sizeof(P) == 8) {
    int2 piece;
    memcpy(&piece, &value, 8);
    __stcs(reinterpret_cast<int2*>(pointer), piece);
  } else if constexpr (sizeof(P) == 4) {
    int piece;
    memcpy(&piece, &value, 4);
    __stcs(reinterpret_cast<int*>(pointer), piece);
  } else {
    *pointer = value;
  }
}

// Two float results to two bf16/f16 values with one paired conversion (the
// same round-to-nearest-even as one at a time); other types one by one.
template <typename OutT, typename C>
__device__ __forceinline__ void ConvertTwo(C a, C b, OutT* destination) {
  if constexpr (std::is_same_v<C, float> && std::is_same_v<OutT, __nv_bfloat16>) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(a, b);
    destination[0] = pair.x;
    destination[1] = pair.y;
  } else if constexpr (std::is_same_v<C, float> && std::is_same_v<OutT, __half>) {
    const __half2 pair = __floats2half2_rn(a, b);
    destination[0] = pair.x;
    destination[1] = pair.y;
  } else {
    destination[0] = Convert<OutT>::template FromCompute<C>(a);
    destination[1] = Convert<OutT>::template FromCompute<C>(b);
  }
}

// Chunks per thread and step: 4 while a chunk's results fit in 32 bytes (so
// that 64 bytes of q are in flight per thread), else 2 to bound registers.
template <typename OutT, int kVec>
inline constexpr int kUnrollFor = kVec * sizeof(OutT) <= 32 ? 4 : 2;

// Dequantizes kUnroll chunks, kThreadsPerBlock apart, starting
// with `chunk` at `position`; returns the position after them.
template <int kUnroll, typename QT, typename ScaleT, typename OutT, int kVec, bool kRowAligned>
__device__ __forceinline__ Position DequantizeChunks(const QT* __restrict__ q,
                                                     const ScaleT* __restrict__ scale,
                                                     const int32_t* __restrict__ zero_point,
                                                     OutT* __restrict__ out, const Geometry& g,
                                                     int64_t chunk, Position position) {
  using C = ComputeType<ScaleT, OutT>;
  using QPack = Pack<QT, kVec>;
  using OutPack = Pack<OutT, kVec>;
  auto row_scale_of = [&](int64_t row) {
    return Convert<ScaleT>::template ToCompute<C>(scale[row]);
  };
  auto row_zero_of = [&](int64_t row) {
    return zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
  };
  auto dequantize = [](QT level, C zero, C row_scale) {
    return dequantize_value(Convert<QT>::template ToCompute<C>(level), zero, row_scale);
  };

  QPack levels[kUnroll];
  Position at[kUnroll];
  C scales[kUnroll];
  C zeros[kUnroll];
  // All loads first, so that kUnroll chunks are in flight per thread.
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    at[u] = position;
    levels[u] = LoadStreaming(reinterpret_cast<const QPack*>(q) + chunk + u * kThreadsPerBlock);
    scales[u] = row_scale_of(position.row);
    zeros[u] = row_zero_of(position.row);
    position = Advance(position, g);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    OutPack values;
    if constexpr (kRowAligned && kVec % 2 == 0) {
#pragma unroll
      for (int i = 0; i < kVec; i += 2) {
        ConvertTwo(dequantize(levels[u].v[i], zeros[u], scales[u]),
                   dequantize(levels[u].v[i + 1], zeros[u], scales[u]), &values.v[i]);
      }
    } else if constexpr (kRowAligned) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        values.v[i] = Convert<OutT>::template FromCompute<C>(
            dequantize(levels[u].v[i], zeros[u], scales[u]));
      }
    } else {
      // The chunk may cross one or more row ends.
      int64_t row = at[u].row;
      int64_t col = at[u].col;
      C row_scale = scales[u];
      C row_zero = zeros[u];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        values.v[i] = Convert<OutT>::template FromCompute<C>(
            dequantize(levels[u].v[i], row_zero, row_scale));
        if (i + 1 < kVec && ++col == g.cols) {
          col = 0;
          ++row;
          row_scale = row_scale_of(row);
          row_zero = row_zero_of(row);
        }
      }
    }
    StoreStreaming(reinterpret_cast<OutPack*>(out) + chunk + u * kThreadsPerBlock, values);
  }
  return position;
}

template <typename QT, typename ScaleT, typename OutT, int kVec, bool kRowAligned>
__global__ void __launch_bounds__(kThreadsPerBlock)
    DequantizeKernel(const QT* __restrict__ q, const ScaleT* __restrict__ scale,
                     const int32_t* __restrict__ zero_point, OutT* __restrict__ out,
                     const Geometry g) {
  constexpr int kUnroll = kUnrollFor<OutT, kVec>;
  using C = ComputeType<ScaleT, OutT>;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * g.chunks_per_block;
  const int64_t end = min(g.chunks, begin + g.chunks_per_block);
  const int64_t end_full = min(end, g.full_chunks);
  // The thread's chunks are chunk, chunk + kThreadsPerBlock, ...: one division
  // here, then Advance.
  int64_t chunk = begin + threadIdx.x;
  Position position = Locate(chunk * kVec, g);
  for (; chunk + (kUnroll - 1) * kThreadsPerBlock < end_full;
       chunk += kUnroll * kThreadsPerBlock) {
    position = DequantizeChunks<kUnroll, QT, ScaleT, OutT, kVec, kRowAligned>(
        q, scale, zero_point, out, g, chunk, position);
  }
  for (; chunk < end_full; chunk += kThreadsPerBlock) {
    position = DequantizeChunks<1, QT, ScaleT, OutT, kVec, kRowAligned>(q, scale, zero_point, out,
                                                                        g, chunk, position);
  }

  // The last, partial chunk (if any), element by element, by the first thread
  // of the block whose share holds it.
  if (threadIdx.x == 0 && g.full_chunks < end && g.full_chunks >= begin) {
    const int64_t first = g.full_chunks * kVec;
    Position at = Locate(first, g);
    C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[at.row]);
    C row_zero = zero_point != nullptr ? static_cast<C>(zero_point[at.row]) : C(0);
    for (int64_t e = first; e < g.total; ++e) {
      out[e] = Convert<OutT>::template FromCompute<C>(
          dequantize_value(Convert<QT>::template ToCompute<C>(q[e]), row_zero, row_scale));
      if (++at.col == g.cols && e + 1 < g.total) {
        at.col = 0;
        ++at.row;
        row_scale = Convert<ScaleT>::template ToCompute<C>(scale[at.row]);
        row_zero = zero_point != nullptr ? static_cast<C>(zero_point[at.row]) : C(0);
      }
    }
  }
}

bool IsAligned(const void* pointer, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

// Multiprocessors of the current device, cached per device (0: unknown).
int MultiprocessorCount() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) {
    cudaGetLastError();
    return 0;
  }
  if (device < kMaxDevices) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // clear it: it is not this launch's error
    return 0;
  }
  if (device < kMaxDevices) cached[device].store(count, std::memory_order_relaxed);
  return count;
}

// Blocks of `kernel` that one multiprocessor holds at once (0: unknown). The
// answer is cached in `cache`; a failed query is not cached.
template <typename Kernel>
int ResidentBlocksPerMultiprocessor(Kernel kernel, std::atomic<int>& cache) {
  const int known = cache.load(std::memory_order_relaxed);
  if (known > 0) return known;
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreadsPerBlock, 0) !=
          cudaSuccess ||
      blocks <= 0) {
    cudaGetLastError();  // clear it: it is not this launch's error
    return 0;
  }
  cache.store(blocks, std::memory_order_relaxed);
  return blocks;
}

template <typename QT, typename ScaleT, typename OutT, int kVec, bool kRowAligned>
std::string Launch(const DequantizeProblem& p, cudaStream_t stream) {
  auto kernel = DequantizeKernel<QT, ScaleT, OutT, kVec, kRowAligned>;
  Geometry g;
  g.total = p.rows * p.cols;
  g.cols = p.cols;
  g.full_chunks = g.total / kVec;
  g.chunks = (g.total + kVec - 1) / kVec;
  g.step_rows = int64_t{kThreadsPerBlock} * kVec / g.cols;
  g.step_cols = int64_t{kThreadsPerBlock} * kVec - g.step_rows * g.cols;
  g.narrow = g.total < (int64_t{1} << 32);
  if (g.narrow) g.cols_divider = FastDivider(static_cast<uint32_t>(g.cols));

  // One chunk per thread at most blocks; no more blocks than fit at once.
  int64_t blocks = (g.chunks + kThreadsPerBlock - 1) / kThreadsPerBlock;
  static std::atomic<int> blocks_per_multiprocessor{0};
  const int64_t resident = int64_t{MultiprocessorCount()} *
                           ResidentBlocksPerMultiprocessor(kernel, blocks_per_multiprocessor);
  if (resident > 0) {
    blocks = std::min(blocks, resident);
  } else {
    // Unknown device: blocks of four chunks per thread.
    blocks = (g.chunks + kThreadsPerBlock * 4 - 1) / (kThreadsPerBlock * 4);
  }
  g.chunks_per_block = (g.chunks + blocks - 1) / blocks;
  blocks = (g.chunks + g.chunks_per_block - 1) / g.chunks_per_block;
  if (blocks > 0x7fffffff) return "dequantize: array too large for one launch";

  kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
      static_cast<const QT*>(p.q), static_cast<const ScaleT*>(p.scale), p.zero_point,
      static_cast<OutT*>(p.out), g);
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
        constexpr int kVec = 16 / sizeof(QT);
        constexpr int kOutBytes = kVec * sizeof(OutT) < 16 ? kVec * sizeof(OutT) : 16;
        if (!IsAligned(p.q, 16) || !IsAligned(p.out, kOutBytes)) {
          return Launch<QT, ScaleT, OutT, 1, true>(p, stream);
        }
        if (p.cols % kVec == 0) return Launch<QT, ScaleT, OutT, kVec, true>(p, stream);
        return Launch<QT, ScaleT, OutT, kVec, false>(p, stream);
      });
}

}  // namespace jdq::cuda

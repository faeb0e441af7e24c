// CUDA kernels for the derivatives of dequantize: the backward pass (dq, dscale,
// or both in one pass that reads dy once) and the fused forward-mode tangent.
//
// Layout. A group of G threads (a power of two from 1 to 256, chosen from the
// row length: a warp or less for short rows, a whole block for long ones) owns
// one row at a time; a 256-thread block holds 256 / G groups and blocks stride
// over the rows (the dscale pass over a few rows uses smaller blocks, so that
// the rows spread over more SMs). A chunk is kVec elements, 16 bytes of the wider of the
// arrays walked together (the narrower one moves in one access of 2 to 8
// bytes), so a warp's access of the wider array covers 512 contiguous bytes:
// every 32-byte sector is requested once. (With chunks of 16 bytes of the
// narrower array, a lane read its 32 bytes of bfloat16 dy in two 16-byte
// loads, and each warp load asked L2 for twice the sectors it used.)
// A row [start, end) of the flat [rows * cols] array is cut at
// multiples of kVec of the *flat* index: chunk j covers
// [max(start, (a + j) kVec), min(end, (a + j + 1) kVec)) with a = start / kVec.
// Every chunk but the first and last of a row is full and, when the base
// pointers are 16-byte aligned, moves with one access per array whatever
// cols is; partial chunks (at most two per row) go element by element.
//
// Determinism. Lane l of a group takes chunks l, l + G, l + 2G, ... in
// increasing order and accumulates each chunk's elements in increasing order,
// in C. The group adds its lanes with a butterfly of shuffles (a + b and b + a
// are the same bits, so every lane ends with the same sum) and, for G > 32, the
// warps' sums in shared memory in warp order. G depends on cols alone and the
// chunk cuts on the row's offset in the flat array, never on addresses, so the
// summation order is fixed by the shape: the same bits on every run, on every
// GPU, aligned buffers or not. When cols is a multiple of kVec every row is cut
// the same way, so a row's sum does not depend on the other rows of the call
// either (a vmapped or token-sharded backward gives the unbatched bits). No
// atomics, no workspace.
//
// The dscale pass alone over rows of whole chunks with 16-byte aligned
// buffers (the common case: integer q, D a multiple of kVec) runs
// DscaleAlignedKernel: the same groups and order without the head, tail and
// element paths, so each block issues its loads right after it starts. Rows of
// exactly one batch of chunks per lane (integer q, 32 to 256 lanes: D a power
// of two, 1024 to 8192 bfloat16 or 512 to 8192 float32 elements) run it with
// the layout fixed at compile time (OneBatchPerLane): no loop and no bounds
// checks. The tests check every path's bits against this order written out in
// NumPy (tests/numpy_contract.py).
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "cuda_types.cuh"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cuda {
namespace {

constexpr int kBlock = 256;
// At least this many blocks resident per SM (caps registers at 64 per thread):
// 1024 threads with up to 96 bytes of chunks each in flight (kGradBatch) keep
// 96 KiB of loads in flight per SM, and one block's reduction barrier never
// leaves an SM idle. (With the earlier 48-byte chunks, loading more than two
// ahead made ptxas spill under this cap.)
constexpr int kMinBlocksPerSm = 4;
constexpr int kWarp = 32;
// Chunks each lane should get before a row is given more lanes (so a row of
// 4096 bfloat16 dy, 512 chunks, gets 128 lanes).
constexpr int64_t kChunksPerLane = 4;

// Elements per chunk: 16 bytes of the wider of the two arrays walked
// together; the narrower one moves in one smaller access.
template <typename A, typename B>
inline constexpr int kChunkElements = 16 / (sizeof(A) > sizeof(B) ? sizeof(A) : sizeof(B));

// A backward chunk as loaded: dy, and q when dscale is wanted.
template <typename QT, typename OutT, int kVec>
struct GradChunk {
  Pack<OutT, kVec> grads;
  Pack<QT, kVec> levels{};
};
// A tangent chunk as loaded: q's tangent and q.
template <typename QT, int kVec>
struct TangentChunk {
  Pack<QT, kVec> tangents;
  Pack<QT, kVec> levels;
};
// Backward chunks loaded ahead per lane: as many as fit in 96 bytes (so they
// stay inside the register cap below), at most kChunksPerLane.
template <typename QT, typename OutT>
inline constexpr size_t kGradChunkBytes = sizeof(GradChunk<QT, OutT, kChunkElements<QT, OutT>>);
template <typename QT, typename OutT>
inline constexpr int kGradBatch = kGradChunkBytes<QT, OutT> <= 24   ? 4
                                  : kGradChunkBytes<QT, OutT> <= 48 ? 2
                                                                    : 1;

// A launch shape of the backward kernel: chunks loaded ahead per lane, the
// resident blocks per SM it is compiled for, and the chunks each lane should
// get before a row is given more lanes (which fixes the summation order).
template <int kBatchChunks, int kMinBlocks, int kBlockThreads = kBlock>
struct GradShape {
  static constexpr int batch = kBatchChunks;
  static constexpr int min_blocks = kMinBlocks;
  static constexpr int block = kBlockThreads;
};

// One global access of a chunk's piece of an array: 16 bytes, or 4 or 8 for
// the narrower array. The store is spelled in PTX: given a plain aggregate or
// uint4 store of 16-bit values, the compiler splits it into 4-byte stores.
template <typename T, int kVec>
__device__ __forceinline__ Pack<T, kVec> LoadPack(const T* address) {
  return *reinterpret_cast<const Pack<T, kVec>*>(address);
}

template <typename T, int kVec>
__device__ __forceinline__ void StorePack(T* address, const Pack<T, kVec>& pack) {
  constexpr int kBytes = sizeof(Pack<T, kVec>);
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "one 4-, 8- or 16-byte access");
  const size_t global = __cvta_generic_to_global(address);
  if constexpr (kBytes == 16) {
    uint4 w;
    memcpy(&w, &pack, sizeof(w));
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
                 :
                 : "l"(global), "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w));
  } else if constexpr (kBytes == 8) {
    uint2 w;
    memcpy(&w, &pack, sizeof(w));
    asm volatile("st.global.v2.b32 [%0], {%1, %2};" : : "l"(global), "r"(w.x), "r"(w.y));
  } else {
    uint32_t w;
    memcpy(&w, &pack, sizeof(w));
    asm volatile("st.global.b32 [%0], %1;" : : "l"(global), "r"(w));
  }
}

bool IsAligned(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// Walks the chunks a lane owns in one row [start, start + cols), in the fixed
// order described above. Chunk 0 is the partial head before the first multiple
// of kVec (if any), then come the full chunks, then the partial tail (if any).
// With `vector_ok`, the full chunk [lo, lo + kVec) is read with one access per
// array by `load_chunk(lo)` and handled by `use_chunk(lo, loaded)`; the
// loads of kBatch consecutive chunks of the lane are all issued before the
// first is used, so a lane waits for memory once per kBatch chunks (the use
// order, and so every sum, is unchanged). Otherwise, and for the head and
// tail, `use_element(e)` handles one element at a time. Either way the
// elements are visited in the same, increasing order.
template <int kVec, int kBatch, typename LoadChunk, typename UseChunk, typename UseElement>
__device__ __forceinline__ void WalkRow(int64_t start, int64_t cols, int lane, int group,
                                        bool vector_ok, LoadChunk&& load_chunk,
                                        UseChunk&& use_chunk, UseElement&& use_element) {
  const int64_t to_boundary = (kVec - (start & (kVec - 1))) & (kVec - 1);
  const int64_t head = to_boundary < cols ? to_boundary : cols;
  const int64_t body = (cols - head) / kVec;  // full chunks (kVec is a power of two)
  const int64_t tail = cols - head - body * kVec;
  const int first_body = head > 0 ? 1 : 0;  // chunk number of the first full chunk
  if (head > 0 && lane == 0) {
    for (int64_t e = start; e < start + head; ++e) use_element(e);
  }
  // Full chunk k has chunk number first_body + k and belongs to lane (first_body + k) % group.
  const int64_t body_start = start + head;
  const int64_t first_chunk = lane >= first_body ? lane - first_body : lane - first_body + group;
  if (vector_ok) {
    using Loaded = decltype(load_chunk(int64_t{0}));
    for (int64_t k = first_chunk; k < body; k += int64_t{kBatch} * group) {
      Loaded loaded[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t chunk = k + int64_t{b} * group;
        if (chunk < body) loaded[b] = load_chunk(body_start + chunk * kVec);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t chunk = k + int64_t{b} * group;
        if (chunk < body) use_chunk(body_start + chunk * kVec, loaded[b]);
      }
    }
  } else {
    for (int64_t k = first_chunk; k < body; k += group) {
      const int64_t lo = body_start + k * kVec;
      for (int64_t e = lo; e < lo + kVec; ++e) use_element(e);
    }
  }
  if (tail > 0 && lane == ((first_body + body) & (group - 1))) {
    const int64_t tail_start = body_start + body * kVec;
    for (int64_t e = tail_start; e < tail_start + tail; ++e) use_element(e);
  }
}

// Sum of `value` over each warp's lanes of the group (a butterfly of
// shuffles: a + b and b + a are the same bits, so every lane ends with the
// same sum).
template <typename C>
__device__ __forceinline__ C WarpSum(C value, int group) {
  if (group >= kWarp) {  // the common case, unrolled: no loop branches on the critical path
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      value = add_rn(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
  } else {
    for (int offset = group / 2; offset > 0; offset /= 2) {
      value = add_rn(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
  }
  return value;
}

// Lane 0 of each warp writes its warp's sum to shared[warp], then the block
// synchronizes; returns the thread's warp.
template <typename C>
__device__ __forceinline__ int PublishWarpSums(C value, C* shared) {
  const int warp = threadIdx.x / kWarp;
  if (threadIdx.x % kWarp == 0) shared[warp] = value;
  __syncthreads();
  return warp;
}

// Sum of `value` over the group's lanes, in a fixed order; every lane gets it.
// Must be reached by every thread of the block (it may synchronize).
template <typename C>
__device__ __forceinline__ C GroupSum(C value, int group, C* shared) {
  value = WarpSum(value, group);
  if (group > kWarp) {
    const int warp = PublishWarpSums(value, shared);
    const int warps = group / kWarp;
    const int first = warp & ~(warps - 1);
    value = shared[first];
    for (int w = 1; w < warps; ++w) value = add_rn(value, shared[first + w]);
    __syncthreads();  // the next row reuses `shared`
  }
  return value;
}

// GroupSum's sum, in the same order, for lane 0 of each group only (the other
// lanes get their warp's part): the group's other warps skip the final adds
// and nobody waits at a second barrier; the adds are unrolled up to the
// block's kMaxWarps warps. For kernels that use `shared` once.
template <int kMaxWarps, typename C>
__device__ __forceinline__ C GroupSumToFirstLane(C value, int group, C* shared) {
  value = WarpSum(value, group);
  if (group > kWarp) {
    const int warp = PublishWarpSums(value, shared);
    if ((threadIdx.x & (group - 1)) == 0) {  // lane 0: warp is the group's first
      const int warps = group / kWarp;
      value = shared[warp];
#pragma unroll
      for (int w = 1; w < kMaxWarps; ++w) {
        if (w < warps) value = add_rn(value, shared[warp + w]);
      }
    }
  }
  return value;
}

// Backward of dequantize over rows: dq (kDq) and/or dscale (kDscale) in one pass.
template <typename QT, typename ScaleT, typename OutT, bool kDq, bool kDscale, int kBatch,
          int kMinBlocks, int kBlockThreads>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    DequantizeGradKernel(const OutT* __restrict__ dy, const QT* __restrict__ q,
                         const ScaleT* __restrict__ scale, const int32_t* __restrict__ zero_point,
                         QT* __restrict__ dq, ScaleT* __restrict__ dscale, int64_t rows,
                         int64_t cols, int group_log2, bool vector_ok) {
  using C = ComputeType<ScaleT, OutT>;
  constexpr int kVec = kChunkElements<QT, OutT>;
  __shared__ C shared[kBlockThreads / kWarp];

  // The group is a power of two: shifts and masks, not divisions.
  const int group = 1 << group_log2;
  const int groups_per_block = kBlockThreads >> group_log2;
  const int lane = threadIdx.x & (group - 1);
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * groups_per_block; base < rows;
       base += static_cast<int64_t>(gridDim.x) * groups_per_block) {
    const int64_t row = base + (threadIdx.x >> group_log2);
    const bool active = row < rows;
    // XLA (the reference's gradient) starts a sum from +0 but folds a sum of
    // one term into the term; starting from -0 (the exact identity) for D = 1
    // gives the same sign of zero.
    C sum = cols == 1 ? -C(0) : C(0);
    if (active) {
      C row_scale = C(0);
      if constexpr (kDq) row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
      const C row_zero = kDscale && zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
      // One element: writes dq, adds dy * (q - zp) to the lane's sum.
      auto element = [&](OutT grad_value, QT level_value) -> QT {
        const C grad = Convert<OutT>::template ToCompute<C>(grad_value);
        if constexpr (kDscale) {
          const C level = sub_rn(Convert<QT>::template ToCompute<C>(level_value), row_zero);
          sum = add_rn(sum, mul_rn(grad, level));
        }
        if constexpr (kDq) {
          return Convert<QT>::template FromCompute<C>(mul_rn(grad, row_scale));
        } else {
          return level_value;
        }
      };
      WalkRow<kVec, kBatch>(
          row * cols, cols, lane, group, vector_ok,
          [&](int64_t lo) {
            GradChunk<QT, OutT, kVec> chunk;
            chunk.grads = LoadPack<OutT, kVec>(dy + lo);
            if constexpr (kDscale) chunk.levels = LoadPack<QT, kVec>(q + lo);  // else unused
            return chunk;
          },
          [&](int64_t lo, const GradChunk<QT, OutT, kVec>& chunk) {
            Pack<QT, kVec> dq_values;
#pragma unroll
            for (int i = 0; i < kVec; ++i) {
              dq_values.v[i] = element(chunk.grads.v[i], chunk.levels.v[i]);
            }
            if constexpr (kDq) StorePack<QT, kVec>(dq + lo, dq_values);
          },
          [&](int64_t e) {
            const QT grad = element(dy[e], kDscale ? q[e] : QT{});
            if constexpr (kDq) dq[e] = grad;
          });
    }
    if constexpr (kDscale) {
      sum = GroupSum(sum, group, shared);
      if (active && lane == 0) dscale[row] = Convert<ScaleT>::template FromCompute<C>(sum);
    }
  }
}

// How a row of DscaleAlignedKernel is laid out: its lanes (a group of
// 2^GroupLog2() threads) and its chunks. RuntimeRowLayout reads both from
// the kernel's arguments; OneBatchPerLane fixes them at compile time for rows
// of exactly kBatch chunks per lane (D a power of two: the common decode
// rows), so the batch loop and its bounds checks fold away and the first
// load issues at instruction 19 instead of 38 (SASS, bfloat16 dy).
template <typename Index>
struct RuntimeRowLayout {
  Index chunks;  // per row
  int group_log2;
  __device__ __forceinline__ Index Chunks() const { return chunks; }
  __device__ __forceinline__ int GroupLog2() const { return group_log2; }
};

template <int kGroupLog2, int kBatch>
struct OneBatchPerLane {
  __device__ __forceinline__ static constexpr uint32_t Chunks() {
    return uint32_t{kBatch} << kGroupLog2;
  }
  __device__ __forceinline__ static constexpr int GroupLog2() { return kGroupLog2; }
};

// The dscale pass alone over rows that are whole chunks (cols a multiple of
// kVec, 16-byte aligned buffers): the order of DequantizeGradKernel without
// its head, tail and element paths, so a block issues its first loads right
// after it starts. Lane l of a group takes chunks l, l + G, ..., loading
// kBatch of them before adding the first; a block of blockDim.x threads (at
// most kBlockThreads, at least G) holds blockDim.x / G rows (the launcher
// checks the grid fits).
//
// Index: uint32_t when every chunk number fits (32-bit index arithmetic),
// else int64_t.
// kZeroPoint: zero_point is given. Without one, level - 0 is the level itself
// (bit for bit), so the subtraction is left out.
// Layout: RuntimeRowLayout<Index> or OneBatchPerLane (same order, same bits).
template <typename QT, typename ScaleT, typename OutT, int kBatch, int kMinBlocks,
          int kBlockThreads, typename Index, bool kZeroPoint, typename Layout>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    DscaleAlignedKernel(const OutT* __restrict__ dy, const QT* __restrict__ q,
                        const int32_t* __restrict__ zero_point, ScaleT* __restrict__ dscale,
                        Index rows, Layout layout) {
  using C = ComputeType<ScaleT, OutT>;
  constexpr int kVec = kChunkElements<QT, OutT>;
  using GradPack = Pack<OutT, kVec>;
  using LevelPack = Pack<QT, kVec>;
  __shared__ C shared[kBlockThreads / kWarp];
  const int group_log2 = layout.GroupLog2();
  const Index chunks_per_row = layout.Chunks();
  const Index group = Index{1} << group_log2;
  const Index lane = threadIdx.x & (group - 1);
  const Index row = static_cast<Index>(blockIdx.x) * (blockDim.x >> group_log2) +
                    (threadIdx.x >> group_log2);
  C sum = C(0);
  if (row < rows) {
    // The row's chunks of the flat arrays.
    const Index first = row * chunks_per_row;
    const GradPack* __restrict__ row_dy = reinterpret_cast<const GradPack*>(dy) + first;
    const LevelPack* __restrict__ row_q = reinterpret_cast<const LevelPack*>(q) + first;
    const C row_zero = kZeroPoint ? static_cast<C>(zero_point[row]) : C(0);
    auto add_chunk = [&](const GradPack& grad_pack, const LevelPack& level_pack) {
      C grads[kVec];
      C levels[kVec];
      WidenPack(grad_pack, grads);
      WidenPack(level_pack, levels);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const C level = kZeroPoint ? sub_rn(levels[i], row_zero) : levels[i];
        sum = add_rn(sum, mul_rn(grads[i], level));
      }
    };
    // Whole batches, then single chunks: no chunk of a batch is conditional,
    // so ptxas cannot sink its loads below the first chunk's sums.
    Index k = lane;
    for (; k + (kBatch - 1) * group < chunks_per_row; k += kBatch * group) {
      GradPack grads[kBatch];
      LevelPack levels[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        grads[b] = LoadInOrder(row_dy + (k + b * group));
        levels[b] = LoadInOrder(row_q + (k + b * group));
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) add_chunk(grads[b], levels[b]);
    }
    for (; k < chunks_per_row; k += group) {
      add_chunk(LoadInOrder(row_dy + k), LoadInOrder(row_q + k));
    }
  }
  sum = GroupSumToFirstLane<kBlockThreads / kWarp>(sum, group, shared);
  if (row < rows && lane == 0) dscale[row] = Convert<ScaleT>::template FromCompute<C>(sum);
}

// Forward-mode tangent in q and scale together, rounded once.
template <typename QT, typename ScaleT, typename OutT>
__global__ void __launch_bounds__(kBlock, kMinBlocksPerSm)
    DequantizeTangentKernel(const QT* __restrict__ q_tangent,
                            const ScaleT* __restrict__ scale_tangent, const QT* __restrict__ q,
                            const ScaleT* __restrict__ scale,
                            const int32_t* __restrict__ zero_point, OutT* __restrict__ out,
                            int64_t rows, int64_t cols, int group_log2, bool vector_ok) {
  using C = ComputeType<ScaleT, OutT>;
  constexpr int kVec = kChunkElements<QT, OutT>;
  const int group = 1 << group_log2;
  const int groups_per_block = kBlock >> group_log2;
  const int lane = threadIdx.x & (group - 1);
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * groups_per_block; base < rows;
       base += static_cast<int64_t>(gridDim.x) * groups_per_block) {
    const int64_t row = base + (threadIdx.x >> group_log2);
    if (row >= rows) continue;
    const C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
    const C row_scale_tangent = Convert<ScaleT>::template ToCompute<C>(scale_tangent[row]);
    const C row_zero = zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0);
    auto element = [&](QT tangent_value, QT level_value) {
      const C from_q = mul_rn(Convert<QT>::template ToCompute<C>(tangent_value), row_scale);
      const C level = sub_rn(Convert<QT>::template ToCompute<C>(level_value), row_zero);
      return Convert<OutT>::template FromCompute<C>(
          add_rn(from_q, mul_rn(level, row_scale_tangent)));
    };
    WalkRow<kVec, 1>(
        row * cols, cols, lane, group, vector_ok,
        [&](int64_t lo) {
          return TangentChunk<QT, kVec>{LoadPack<QT, kVec>(q_tangent + lo),
                                        LoadPack<QT, kVec>(q + lo)};
        },
        [&](int64_t lo, const TangentChunk<QT, kVec>& chunk) {
          Pack<OutT, kVec> values;
#pragma unroll
          for (int i = 0; i < kVec; ++i) values.v[i] = element(chunk.tangents.v[i], chunk.levels.v[i]);
          StorePack<OutT, kVec>(out + lo, values);
        },
        [&](int64_t e) { out[e] = element(q_tangent[e], q[e]); });
  }
}

// Lanes per row: enough that each lane gets about kChunksPerLane chunks. A
// function of the row length only (not of the number of rows), which keeps a
// row's summation order independent of the rest of the call (see above).
int GroupSize(int64_t cols, int vec, int64_t chunks_per_lane = kChunksPerLane,
              int block = kBlock) {
  const int64_t chunks = cols % vec == 0 ? cols / vec : cols / vec + 2;
  int group = 1;
  while (group < block && group * chunks_per_lane < chunks) group *= 2;
  return group;
}

int Log2(int power_of_two) {
  int log2 = 0;
  while ((1 << log2) < power_of_two) ++log2;
  return log2;
}

int64_t GridSize(int64_t rows, int group, int block = kBlock) {
  const int64_t groups_per_block = block / group;
  const int64_t blocks = (rows + groups_per_block - 1) / groups_per_block;
  return blocks < 0x7fffffff ? blocks : 0x7fffffff;
}

std::string LaunchStatus(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return std::string(what) + " kernel launch failed: " + cudaGetErrorString(status);
  }
  return std::string();
}

template <typename QT, typename ScaleT, typename OutT, bool kDq, bool kDscale, typename Shape>
std::string LaunchGrad(const DequantizeGradProblem& p, cudaStream_t stream,
                       int64_t chunks_per_lane) {
  const int group = GroupSize(p.cols, kChunkElements<QT, OutT>, chunks_per_lane, Shape::block);
  const bool vector_ok =
      IsAligned(p.dy) && (!kDscale || IsAligned(p.q)) && (!kDq || IsAligned(p.dq));
  DequantizeGradKernel<QT, ScaleT, OutT, kDq, kDscale, Shape::batch, Shape::min_blocks,
                       Shape::block>
      <<<static_cast<unsigned>(GridSize(p.rows, group, Shape::block)), Shape::block, 0,
         stream>>>(
          static_cast<const OutT*>(p.dy), static_cast<const QT*>(p.q),
          static_cast<const ScaleT*>(p.scale), p.zero_point, static_cast<QT*>(p.dq),
          static_cast<ScaleT*>(p.dscale), p.rows, p.cols, Log2(group), vector_ok);
  return LaunchStatus("dequantize_per_token backward");
}

// Threads per block of DscaleAlignedKernel: `block`, or fewer when a grid of
// such blocks would leave SMs idle (a few rows: decode). Each halving gives a
// block half the rows, down to one row (a group) or one warp, so the rows
// spread over more SMs and each SM reads fewer bytes; the groups, and so the
// sums, stay the same. (bf16 dy, H200 sweep: 16x4096 1.65 -> 1.51 us, 64x4096
// 1.72 -> 1.59; a grid of a block per SM or more, 4096x4096 say, keeps them.)
int DscaleBlockThreads(int64_t rows, int group, int block) {
  const int multiprocessors = MultiprocessorCount();
  int threads = block;
  while (threads / 2 >= group && threads / 2 >= kWarp &&
         GridSize(rows, group, threads) < multiprocessors) {
    threads /= 2;
  }
  return threads;
}

// Launches `launch(uint32_t{}, OneBatchPerLane<group_log2, kBatch>{})` if
// that layout is compiled: groups of 32 to 256 lanes (only 256 for batches of
// more than kChunksPerLane chunks, which smaller groups never get from
// GroupSize). Returns whether it launched. (Integer q only: the common case,
// and a bound on the number of kernels.)
template <int kBatch, int kGroupLog2 = (kBatch > kChunksPerLane ? 8 : 5), typename Launch>
bool LaunchOneBatchPerLane(int group_log2, Launch& launch) {
  if constexpr (kGroupLog2 > 8) {
    return false;
  } else {
    if (group_log2 != kGroupLog2) {
      return LaunchOneBatchPerLane<kBatch, kGroupLog2 + 1>(group_log2, launch);
    }
    launch(uint32_t{}, OneBatchPerLane<kGroupLog2, kBatch>{});
    return true;
  }
}

// The dscale pass alone: DscaleAlignedKernel where rows are whole aligned
// chunks, else DequantizeGradKernel with the same groups (the same order).
// `spread_rows`: blocks of DscaleBlockThreads (else always Shape::block).
// `one_batch_layouts`: rows of one batch per lane run the OneBatchPerLane
// kernels (else the run-time layout's; the same bits).
template <typename QT, typename ScaleT, typename OutT, typename Shape>
std::string LaunchDscale(const DequantizeGradProblem& p, cudaStream_t stream,
                         int64_t chunks_per_lane, bool spread_rows = true,
                         bool one_batch_layouts = true) {
  constexpr int kVec = kChunkElements<QT, OutT>;
  const int group = GroupSize(p.cols, kVec, chunks_per_lane, Shape::block);
  const int threads =
      spread_rows ? DscaleBlockThreads(p.rows, group, Shape::block) : Shape::block;
  const int64_t blocks = GridSize(p.rows, group, threads);
  if (p.cols % kVec != 0 || p.cols == 0 || !IsAligned(p.dy) || !IsAligned(p.q) ||
      blocks >= 0x7fffffff) {
    constexpr int kFallbackMinBlocks =
        kMinBlocksPerSm * kBlock / Shape::block > 0 ? kMinBlocksPerSm * kBlock / Shape::block : 1;
    return LaunchGrad<QT, ScaleT, OutT, false, true,
                      GradShape<kGradBatch<QT, OutT>, kFallbackMinBlocks, Shape::block>>(
        p, stream, chunks_per_lane);
  }
  auto launch = [&](auto index_tag, auto layout) {
    using Index = decltype(index_tag);
    using Layout = decltype(layout);
    auto kernel = p.zero_point != nullptr
                      ? DscaleAlignedKernel<QT, ScaleT, OutT, Shape::batch, Shape::min_blocks,
                                            Shape::block, Index, true, Layout>
                      : DscaleAlignedKernel<QT, ScaleT, OutT, Shape::batch, Shape::min_blocks,
                                            Shape::block, Index, false, Layout>;
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        static_cast<const OutT*>(p.dy), static_cast<const QT*>(p.q), p.zero_point,
        static_cast<ScaleT*>(p.dscale), static_cast<Index>(p.rows), layout);
  };
  const int64_t chunks = p.cols / kVec;
  // 32-bit chunk numbers while the arrays have fewer than 2^31 chunks (a
  // lane's numbers run at most a batch of its group past its row's end).
  if (p.rows * chunks < (int64_t{1} << 31)) {
    if constexpr (std::is_integral_v<QT>) {
      if (one_batch_layouts && chunks == int64_t{Shape::batch} * group &&
          LaunchOneBatchPerLane<Shape::batch>(Log2(group), launch)) {
        return LaunchStatus("dequantize_per_token backward (dscale)");
      }
    }
    launch(uint32_t{}, RuntimeRowLayout<uint32_t>{static_cast<uint32_t>(chunks), Log2(group)});
  } else {
    launch(int64_t{}, RuntimeRowLayout<int64_t>{chunks, Log2(group)});
  }
  return LaunchStatus("dequantize_per_token backward (dscale)");
}

// The library's launch shapes: 256-thread blocks, groups sized for four chunks
// per lane, up to four loaded ahead (kGradBatch), 4 blocks per SM. The dscale
// pass alone (integer q: the common case) runs DscaleAlignedKernel on aligned
// rows, with the same groups and so the same sums as the general kernel, all
// four chunks of a lane loaded at once, in blocks of DscaleBlockThreads.
// Measured on an H200 (tune_kernels.cu part 4, int8 q, bf16 dy, CUDA-graph
// device time; docs/perf.md, session 7): 88.2 us at 16384x8192, 11.8 us at
// 4096x4096, 1.51 us at 16x4096 (1.65 in 256-thread blocks), 1.42 us at
// 1x4096; 512- and 1024-thread blocks (more lanes per row) and two chunks
// per lane were no faster (nor, in earlier sweeps, 6 or 8 blocks per SM).
// Rows of one batch per lane in the OneBatchPerLane layout (session 9, same
// sweep): 1.31 against 1.41 us at 1x4096, 1.40 against 1.50 at 16x4096, 1.45
// against 1.56 at 1x8192, 11.33 against 11.85 at 4096x4096; float32 dy in
// eight-chunk batches 1.52 against 1.62 at 1x8192.
//
// Float32 dy with integer q, lanes of eight chunks or more (rows of 8192 and
// more: 256 lanes, capped): eight chunks loaded at once, which keeps the
// same sums (the batch changes when loads issue, not the order of adds):
// 1.63 against 1.75 us at 1x8192, 1.82 against 1.92 at 16x8192, 1.95 against
// 2.02 at 64x8192, 145.0 us either way at 16384x8192. Lanes of four chunks
// would run eight-chunk batches only through the one-chunk loop (1.92
// against 1.45 us at 1x4096), and 16-bit dy spills with eight.
template <typename QT, typename ScaleT, typename OutT, bool kDq, bool kDscale>
std::string LaunchGradDefault(const DequantizeGradProblem& p, cudaStream_t stream) {
  if constexpr (kDq) {
    return LaunchGrad<QT, ScaleT, OutT, kDq, kDscale,
                      GradShape<kGradBatch<QT, OutT>, kMinBlocksPerSm>>(p, stream,
                                                                        kChunksPerLane);
  } else {
    if constexpr (std::is_integral_v<QT> && std::is_same_v<OutT, float>) {
      constexpr int kVec = kChunkElements<QT, OutT>;
      if (p.cols / kVec >= 8 * int64_t{GroupSize(p.cols, kVec)}) {
        return LaunchDscale<QT, ScaleT, OutT, GradShape<8, kMinBlocksPerSm, kBlock>>(
            p, stream, kChunksPerLane);
      }
    }
    return LaunchDscale<QT, ScaleT, OutT, GradShape<4, kMinBlocksPerSm, kBlock>>(p, stream,
                                                                                kChunksPerLane);
  }
}

}  // namespace

std::string DequantizeGrad(const DequantizeGradProblem& p, cudaStream_t stream) {
  const bool want_dq = p.dq != nullptr;
  const bool want_dscale = p.dscale != nullptr;
  if (!want_dq && !want_dscale) return "dequantize_per_token backward: no output requested";
  // D = 0 still launches when dscale is wanted: every row's sum is 0.
  if (p.rows == 0 || (p.cols == 0 && !want_dscale)) return std::string();
  return VisitDequantizeTypes<CudaTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        if constexpr (std::is_integral_v<QT>) {
          if (want_dq) return std::string("dequantize_per_token backward: dq needs a float q");
          return LaunchGradDefault<QT, ScaleT, OutT, false, true>(p, stream);
        } else {
          if (want_dq && want_dscale) {
            return LaunchGradDefault<QT, ScaleT, OutT, true, true>(p, stream);
          }
          if (want_dq) return LaunchGradDefault<QT, ScaleT, OutT, true, false>(p, stream);
          return LaunchGradDefault<QT, ScaleT, OutT, false, true>(p, stream);
        }
      });
}

std::string DequantizeTangent(const DequantizeTangentProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitDequantizeTypes<CudaTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        if constexpr (std::is_integral_v<QT>) {
          return std::string("dequantize_per_token tangent: q must be a float carrier");
        } else {
          const int group = GroupSize(p.cols, kChunkElements<QT, OutT>);
          const bool vector_ok = IsAligned(p.q_tangent) && IsAligned(p.q) && IsAligned(p.out);
          DequantizeTangentKernel<QT, ScaleT, OutT>
              <<<static_cast<unsigned>(GridSize(p.rows, group)), kBlock, 0, stream>>>(
                  static_cast<const QT*>(p.q_tangent), static_cast<const ScaleT*>(p.scale_tangent),
                  static_cast<const QT*>(p.q), static_cast<const ScaleT*>(p.scale), p.zero_point,
                  static_cast<OutT*>(p.out), p.rows, p.cols, Log2(group), vector_ok);
          return LaunchStatus("dequantize_per_token tangent");
        }
      });
}

}  // namespace jdq::cuda

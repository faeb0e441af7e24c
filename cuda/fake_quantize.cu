// CUDA kernels of fake_quantize_per_token.
//
// Element-wise work (the forward with a given scale, and the tangent, which is
// also the x-only backward) is the row-wise map kernel of rowwise_map.cuh with
// FakeQuantizeOp and FakeQuantizeTangentOp (rowwise_ops.cuh), like dequantize.
//
// Row-wise work (the dynamic forward, and the backward pass that sums dscale)
// gives each row a group of `threads_per_row` threads (a power of two from 32
// to 1024; a block holds one or more groups). The threads of a group walk the
// row in 16-byte packs (one element at a time when rows are not 16-byte
// aligned), then reduce across the group: a warp butterfly, then the warps'
// partials from shared memory in warp order. Every reduction has a fixed
// order, so results are deterministic, and needs no atomics and no workspace.
// The dynamic forward holds the row in registers (up to 8 packs per thread,
// 128 KiB per row) between the reduction and the fake quantization; longer
// rows are read a second time.
#include <cfloat>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "cuda_types.cuh"
#include "dispatch.h"
#include "numerics.h"
#include "rowwise_map.cuh"
#include "rowwise_ops.cuh"

namespace jdq::cuda {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kMaxThreadsPerRow = 1024;
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

std::string LaunchStatus(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return std::string("fake_quantize_per_token: ") + kernel +
           " kernel launch failed: " + cudaGetErrorString(status);
  }
  return std::string();
}

// Launch shape of the element-wise ops (the forward with a given scale, the
// tangent); see RowwiseTuning.
using ElementwiseTuning = RowwiseTuning</*unroll=*/2, /*block=*/128>;

// --- row-wise kernels ------------------------------------------------------------------------

// Reduces `value` over the threads_per_row threads of each row group with
// `op`, in a fixed order; every thread of the group gets the same bits.
// Every thread of the block must call it (it synchronizes the block).
template <typename C, typename Op>
__device__ __forceinline__ C GroupReduce(C value, int threads_per_row, C* shared, Op op) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  value = __shfl_sync(kFullMask, value, 0);
  if (threads_per_row <= kWarp) return value;
  const int warp = threadIdx.x / kWarp;
  const int warps_per_row = threads_per_row / kWarp;
  const int first_warp = (warp / warps_per_row) * warps_per_row;
  __syncthreads();  // earlier readers of `shared` are done
  if (threadIdx.x % kWarp == 0) shared[warp] = value;
  __syncthreads();
  C total = shared[first_warp];
  for (int w = 1; w < warps_per_row; ++w) total = op(total, shared[first_warp + w]);
  return total;
}

// Loads or stores kVec elements at x + index * kVec (16 bytes when kVec > 1).
template <typename XT, int kVec>
__device__ __forceinline__ Pack<XT, kVec> LoadPack(const XT* __restrict__ row, int64_t index) {
  return *reinterpret_cast<const Pack<XT, kVec>*>(row + index * kVec);
}
template <typename XT, int kVec>
__device__ __forceinline__ void StorePack(XT* __restrict__ row, int64_t index,
                                          const Pack<XT, kVec>& pack) {
  *reinterpret_cast<Pack<XT, kVec>*>(row + index * kVec) = pack;
}

struct RowLayout {
  int threads_per_row;
  int block_threads;
  int64_t blocks;
};

// threads_per_row: a power of two in [32, 1024] giving each thread about
// `packs_per_thread` packs of the row.
RowLayout ChooseRowLayout(int64_t rows, int64_t packs, int64_t packs_per_thread) {
  int64_t threads = kWarp;
  while (threads < kMaxThreadsPerRow && threads * packs_per_thread < packs) threads *= 2;
  RowLayout layout;
  layout.threads_per_row = static_cast<int>(threads);
  layout.block_threads = threads > kThreadsPerBlock ? static_cast<int>(threads) : kThreadsPerBlock;
  const int64_t rows_per_block = layout.block_threads / threads;
  layout.blocks = (rows + rows_per_block - 1) / rows_per_block;
  return layout;
}

template <typename XT>
struct DynamicArgs {
  const XT* x;
  XT* out;
  float* scale;
  int32_t* zero_point;
  int32_t qmin;
  int32_t qmax;
  bool symmetric;
};

// The dynamic forward: reduce the row's min and max (widened to include 0),
// choose the scale and zero point (numerics.h, as reference.choose_scale),
// store them, fake quantize the row. kPacks > 0: each thread holds up to
// kPacks packs of the row in registers; kPacks == 0: the row is re-read.
template <typename XT, int kVec, int kPacks>
__global__ void __launch_bounds__(kMaxThreadsPerRow)
    DynamicKernel(DynamicArgs<XT> a, int64_t rows, int64_t cols, int threads_per_row) {
  using C = ComputeType<float, XT>;
  __shared__ C shared[kMaxThreadsPerRow / kWarp];
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) +
                      threadIdx.x / threads_per_row;
  const bool active = row < rows;
  const int64_t packs = cols / kVec;  // kVec divides cols
  const XT* __restrict__ x = a.x + (active ? row * cols : 0);

  C lo = C(0), hi = C(0);
  auto accumulate = [&](const Pack<XT, kVec>& pack) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const C value = Convert<XT>::template ToCompute<C>(pack.v[i]);
      lo = min_propagate_nan(lo, value);
      hi = max_propagate_nan(hi, value);
    }
  };
  Pack<XT, kVec> held[kPacks > 0 ? kPacks : 1];
  if (active) {
    if constexpr (kPacks > 0) {
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        const int64_t index = lane + static_cast<int64_t>(p) * threads_per_row;
        if (index < packs) {
          held[p] = LoadPack<XT, kVec>(x, index);
          accumulate(held[p]);
        }
      }
    } else {
      for (int64_t index = lane; index < packs; index += threads_per_row) {
        accumulate(LoadPack<XT, kVec>(x, index));
      }
    }
  }
  lo = GroupReduce(lo, threads_per_row, shared,
                   [](C u, C v) { return min_propagate_nan(u, v); });
  hi = GroupReduce(hi, threads_per_row, shared,
                   [](C u, C v) { return max_propagate_nan(u, v); });
  if (!active) return;

  const C qmin = static_cast<C>(a.qmin);
  const C qmax = static_cast<C>(a.qmax);
  // reference.scale_bounds for a float32 scale: [FLT_MIN, min(FLT_MAX, 1 / min normal of C)].
  const C smallest_normal = static_cast<C>(FLT_MIN);
  const C largest = std::is_same_v<C, float> ? C(1.0 / FLT_MIN) : static_cast<C>(FLT_MAX);
  const C chosen = a.symmetric
                       ? symmetric_scale(max_propagate_nan(hi, -lo), qmax, smallest_normal, largest)
                       : asymmetric_scale(lo, hi, qmin, qmax, smallest_normal, largest);
  const float stored = static_cast<float>(chosen);
  const C scale = static_cast<C>(stored);
  const int32_t zero_point = a.symmetric ? 0 : asymmetric_zero_point(lo, hi, scale, qmin, qmax);
  if (lane == 0) {
    a.scale[row] = stored;
    a.zero_point[row] = zero_point;
  }
  const C reciprocal = reciprocal_rn(scale);
  const C zero = static_cast<C>(zero_point);
  XT* __restrict__ out = a.out + row * cols;
  auto fake_quantize = [&](const Pack<XT, kVec>& pack) {
    Pack<XT, kVec> result;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const C value = Convert<XT>::template ToCompute<C>(pack.v[i]);
      result.v[i] = Convert<XT>::template FromCompute<C>(
          fake_quantize_value(value, reciprocal, zero, scale, qmin, qmax));
    }
    return result;
  };
  if constexpr (kPacks > 0) {
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t index = lane + static_cast<int64_t>(p) * threads_per_row;
      if (index < packs) StorePack<XT, kVec>(out, index, fake_quantize(held[p]));
    }
  } else {
    for (int64_t index = lane; index < packs; index += threads_per_row) {
      StorePack<XT, kVec>(out, index, fake_quantize(LoadPack<XT, kVec>(x, index)));
    }
  }
}

template <typename XT, typename ScaleT>
struct BackwardArgs {
  const XT* x;
  const ScaleT* scale;
  const int32_t* zero_point;
  const XT* cotangent;
  XT* grad_x;
  ScaleT* grad_scale;
  int32_t qmin;
  int32_t qmax;
};

// The backward pass: one read of x and the cotangent per element; grad_x (if
// kWantGradX) per element, grad_scale per row summed in C: each thread adds
// its packs in order, then the group reduces in a fixed order.
//
// A thread takes packs lane, lane + threads_per_row, ... and loads kBatch of
// them (and the row's scale and zero point) before using the first, all with
// LoadInOrder: with plain loads in a loop the compiler issued each pack's
// loads only after the previous pack's work, and the first ones only after
// the reciprocal of the scale, so a thread waited for memory once per pack
// and once more for the scale. The sum still adds the packs one by one in
// increasing order, so batching changes no bits.
template <typename XT, typename ScaleT, int kVec, int kBatch, bool kWantGradX>
__global__ void __launch_bounds__(kMaxThreadsPerRow)
    BackwardKernel(BackwardArgs<XT, ScaleT> a, int64_t rows, int64_t cols, int threads_per_row) {
  using C = ComputeType<ScaleT, XT>;
  using XPack = Pack<XT, kVec>;
  __shared__ C shared[kMaxThreadsPerRow / kWarp];
  const int lane = threadIdx.x % threads_per_row;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) +
                      threadIdx.x / threads_per_row;
  const bool active = row < rows;
  const int64_t packs = cols / kVec;  // kVec divides cols
  const C qmin = static_cast<C>(a.qmin);
  const C qmax = static_cast<C>(a.qmax);

  C sum = C(0);
  if (active) {
    const StoredRow<ScaleT> stored = LoadStoredRow(a.scale, a.zero_point, row);
    const XPack* __restrict__ x = reinterpret_cast<const XPack*>(a.x + row * cols);
    const XPack* __restrict__ cotangent = reinterpret_cast<const XPack*>(a.cotangent + row * cols);
    XPack* __restrict__ grad_x = kWantGradX ? reinterpret_cast<XPack*>(a.grad_x + row * cols)
                                            : nullptr;
    const int64_t stride = threads_per_row;
    XPack values[kBatch];
    XPack cotangents[kBatch];
    auto load_batch = [&](int64_t index) {
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        values[b] = LoadInOrder(x + index + b * stride);
        cotangents[b] = LoadInOrder(cotangent + index + b * stride);
      }
    };
    int64_t index = lane;
    auto whole_batch_left = [&] { return index + (kBatch - 1) * stride < packs; };
    bool batch = whole_batch_left();
    if (batch) load_batch(index);
    const FakeQuantizeRow<C> k = PrepareFakeQuantizeRow<C>(stored);
    const XT zero = Convert<XT>::template FromCompute<C>(C(0));
    auto use_pack = [&](int64_t at, const XPack& pack_values, const XPack& pack_cotangents) {
      XPack grads;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const auto slopes = fake_quantize_slopes(
            Convert<XT>::template ToCompute<C>(pack_values.v[i]), k.reciprocal, k.zero_point,
            qmin, qmax);
        grads.v[i] = slopes.inside ? pack_cotangents.v[i] : zero;
        sum = add_rn(sum, mul_rn(Convert<XT>::template ToCompute<C>(pack_cotangents.v[i]),
                                 slopes.lsq));
      }
      if constexpr (kWantGradX) grad_x[at] = grads;
    };
    while (batch) {
#pragma unroll
      for (int b = 0; b < kBatch; ++b) use_pack(index + b * stride, values[b], cotangents[b]);
      index += kBatch * stride;
      batch = whole_batch_left();
      if (batch) load_batch(index);
    }
    for (; index < packs; index += stride) {
      use_pack(index, LoadInOrder(x + index), LoadInOrder(cotangent + index));
    }
  }
  sum = GroupReduce(sum, threads_per_row, shared, [](C u, C v) { return add_rn(u, v); });
  if (active && lane == 0) a.grad_scale[row] = Convert<ScaleT>::template FromCompute<C>(sum);
}

// Packs per thread: about 4 for the streaming backward; for the dynamic
// forward the fewest of {1, 2, 4, 8} that holds the row, else re-read.
constexpr int64_t kBackwardPacksPerThread = 4;
// Packs a backward thread loads at once: all four for 32- and 64-bit types;
// two for 16-bit types, whose four spilled (300 bytes) under the 64-register
// cap of 1024-thread blocks.
template <typename XT>
inline constexpr int kBackwardBatch = sizeof(XT) == 2 ? 2 : 4;

template <typename XT, int kVec, int kPacks>
std::string LaunchDynamic(const DynamicArgs<XT>& a, int64_t rows, int64_t cols,
                          const RowLayout& layout, cudaStream_t stream) {
  if (layout.blocks > 0x7fffffff) return "fake_quantize_per_token: too many rows for one launch";
  DynamicKernel<XT, kVec, kPacks>
      <<<static_cast<unsigned>(layout.blocks), layout.block_threads, 0, stream>>>(
          a, rows, cols, layout.threads_per_row);
  return LaunchStatus("dynamic");
}

template <typename XT, int kVec>
std::string Dynamic(const DynamicArgs<XT>& a, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t packs = cols / kVec;
  // Aim for 4 packs per thread; hold the row when 8 packs per thread suffice.
  const RowLayout layout = ChooseRowLayout(rows, packs, 4);
  const int64_t per_thread = (packs + layout.threads_per_row - 1) / layout.threads_per_row;
  if (per_thread <= 1) return LaunchDynamic<XT, kVec, 1>(a, rows, cols, layout, stream);
  if (per_thread <= 2) return LaunchDynamic<XT, kVec, 2>(a, rows, cols, layout, stream);
  if (per_thread <= 4) return LaunchDynamic<XT, kVec, 4>(a, rows, cols, layout, stream);
  if (per_thread <= 8) return LaunchDynamic<XT, kVec, 8>(a, rows, cols, layout, stream);
  return LaunchDynamic<XT, kVec, 0>(a, rows, cols, layout, stream);
}

template <typename XT, typename ScaleT, int kVec>
std::string Backward(const BackwardArgs<XT, ScaleT>& a, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  const RowLayout layout = ChooseRowLayout(rows, cols / kVec, kBackwardPacksPerThread);
  if (layout.blocks > 0x7fffffff) return "fake_quantize_per_token: too many rows for one launch";
  const unsigned blocks = static_cast<unsigned>(layout.blocks);
  if (a.grad_x != nullptr) {
    BackwardKernel<XT, ScaleT, kVec, kBackwardBatch<XT>, true>
        <<<blocks, layout.block_threads, 0, stream>>>(a, rows, cols, layout.threads_per_row);
  } else {
    BackwardKernel<XT, ScaleT, kVec, kBackwardBatch<XT>, false>
        <<<blocks, layout.block_threads, 0, stream>>>(a, rows, cols, layout.threads_per_row);
  }
  return LaunchStatus("backward");
}

}  // namespace

std::string FakeQuantize(const FakeQuantizeProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitFakeQuantizeTypes<CudaTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    using Op = FakeQuantizeOp<XT, ScaleT>;
    using C = typename Op::C;
    const Op op{static_cast<const XT*>(p.x),
                nullptr,
                static_cast<XT*>(p.out),
                static_cast<const ScaleT*>(p.scale),
                p.zero_point,
                static_cast<C>(p.qmin),
                static_cast<C>(p.qmax)};
    return RunRowwiseMap<ElementwiseTuning>(op, p.rows, p.cols, stream,
                                                                   "fake_quantize_per_token");
  });
}

std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& p, cudaStream_t stream) {
  if (p.tangent_x == nullptr && p.tangent_scale == nullptr) {
    return "fake_quantize_per_token tangent: no tangent given";
  }
  if (p.rows == 0 || p.cols == 0) return std::string();
  return VisitFakeQuantizeTypes<CudaTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    using Op = FakeQuantizeTangentOp<XT, ScaleT>;
    using C = typename Op::C;
    const Op op{static_cast<const XT*>(p.x),
                static_cast<const XT*>(p.tangent_x),
                static_cast<XT*>(p.out),
                static_cast<const ScaleT*>(p.scale),
                p.zero_point,
                static_cast<const ScaleT*>(p.tangent_scale),
                static_cast<C>(p.qmin),
                static_cast<C>(p.qmax)};
    return RunRowwiseMap<ElementwiseTuning>(
        op, p.rows, p.cols, stream, "fake_quantize_per_token tangent");
  });
}

std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& p, cudaStream_t stream) {
  if (p.rows == 0) return std::string();
  return VisitFloat<CudaTypes>(p.x_type, [&](auto x_tag) {
    using XT = typename decltype(x_tag)::type;
    constexpr int kVec = 16 / sizeof(XT);
    const DynamicArgs<XT> a{static_cast<const XT*>(p.x), static_cast<XT*>(p.out), p.scale,
                            p.zero_point, p.qmin, p.qmax, p.symmetric};
    if (p.cols % kVec == 0 && IsAligned(p.x, 16) && IsAligned(p.out, 16)) {
      return Dynamic<XT, kVec>(a, p.rows, p.cols, stream);
    }
    return Dynamic<XT, 1>(a, p.rows, p.cols, stream);
  });
}

std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& p, cudaStream_t stream) {
  if (p.rows == 0) return std::string();
  return VisitFakeQuantizeTypes<CudaTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    constexpr int kVec = 16 / sizeof(XT);
    const BackwardArgs<XT, ScaleT> a{static_cast<const XT*>(p.x),
                                     static_cast<const ScaleT*>(p.scale),
                                     p.zero_point,
                                     static_cast<const XT*>(p.cotangent),
                                     static_cast<XT*>(p.grad_x),
                                     static_cast<ScaleT*>(p.grad_scale),
                                     p.qmin,
                                     p.qmax};
    const bool aligned = p.cols % kVec == 0 && IsAligned(p.x, 16) && IsAligned(p.cotangent, 16) &&
                         (p.grad_x == nullptr || IsAligned(p.grad_x, 16));
    if (aligned) return Backward<XT, ScaleT, kVec>(a, p.rows, p.cols, stream);
    return Backward<XT, ScaleT, 1>(a, p.rows, p.cols, stream);
  });
}

}  // namespace jdq::cuda

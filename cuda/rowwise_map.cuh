// One CUDA kernel for every per-row element-wise map: out[r, c] = f(row r's
// constants, in[r, c]) (dequantize, static quantize, fake quantize forward and
// tangent). The ops themselves are small functors (rowwise_ops.cuh).
//
// Layout. The flat [rows * cols] array is cut into vectors of kVec elements,
// 16 bytes of the wider of the input and output. A block of kBlock threads
// owns kUnroll * kBlock consecutive vectors; thread t takes vectors t,
// t + kBlock, ..., so each warp-wide load or store covers one contiguous
// stretch of memory: every 32-byte sector is written whole by one instruction
// (a thread writing two or four neighbouring 16-byte pieces leaves each warp
// store half-sectors, which measured 55-87% of copy bandwidth on an H100).
//
// Latency. A thread first computes the rows of its vectors (integer work only),
// then issues every load (its kUnroll input vectors and their rows' scale and
// zero point), and only then derives the row constants (e.g. a reciprocal,
// whose slow path is a branch the compiler will not move loads across) and
// maps. So kUnroll vectors' worth of loads are in flight per thread.
//
// Rows. When cols is a multiple of kVec (kRowAligned) a vector lies in one row;
// otherwise the row may change inside a vector and is advanced element by
// element. The last, partial vector is done element by element.
#ifndef JAX_DEQUANT_ROWWISE_MAP_CUH_
#define JAX_DEQUANT_ROWWISE_MAP_CUH_

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_common.cuh"
#include "cuda_types.cuh"

namespace jdq::cuda {

// Elements per vector: 16 bytes of the wider of In and Out.
template <typename In, typename Out>
constexpr int RowwiseVectorElements() {
  return 16 / (sizeof(In) > sizeof(Out) ? sizeof(In) : sizeof(Out));
}

// Division by the row length: the multiply-high form for 32-bit indices, a
// plain 64-bit division otherwise.
template <typename Index>
struct RowDivider;
template <>
struct RowDivider<uint32_t> {
  DivideByU32 cols;
  explicit RowDivider(int64_t n) : cols(static_cast<uint32_t>(n)) {}
  __device__ __forceinline__ uint32_t Row(uint32_t e) const { return cols.Quotient(e); }
  __device__ __forceinline__ uint32_t Cols() const { return cols.divisor(); }
};
template <>
struct RowDivider<int64_t> {
  int64_t cols;
  explicit RowDivider(int64_t n) : cols(n) {}
  __device__ __forceinline__ int64_t Row(int64_t e) const { return e / cols; }
  __device__ __forceinline__ int64_t Cols() const { return cols; }
};

// The divider of a one-row array: every element is in row 0, so a thread
// loads its row's scale from a fixed address, right at the start, instead of
// after the division (a decode row of a few thousand elements, where the
// kernel's time is one thread's latency).
struct SingleRow {
  uint32_t cols;
  explicit SingleRow(int64_t n) : cols(static_cast<uint32_t>(n)) {}
  __device__ __forceinline__ uint32_t Row(uint32_t) const { return 0; }
  __device__ __forceinline__ uint32_t Cols() const { return cols; }
};

// Op is a functor with
//   using In, Out;                         element types
//   static constexpr bool kSecondInput;    reads in2 as well (may be null at run time)
//   const In* in; const In* in2; Out* out;
//   RowData LoadRow(int64_t row) const;    the row's raw loads only
//   Row Prepare(const RowData&) const;     the row's constants
//   Out Apply(const Row&, In value, In value2) const;
// and optionally, to map a whole vector at once (e.g. with paired
// conversions),
//   static constexpr bool kVectorApply = true;
//   template <int kVec> Pack<Out, kVec> ApplyVector(const Row&, const Pack<In, kVec>&) const;
// which must give the bits of Apply element by element (Ops with a second
// input do not use it).
template <typename Op, typename = void>
struct HasVectorApply : std::false_type {};
template <typename Op>
struct HasVectorApply<Op, std::enable_if_t<Op::kVectorApply>> : std::true_type {};

// Index is uint32_t when the array has fewer than 2^32 elements (32-bit
// arithmetic, rows by a multiply-high), else int64_t. With kRowAligned, a
// thread's vectors that share a row share its constants (one reciprocal for a
// quantize thread whose vectors lie in one row).
//
// Every load is unconditional and issued in order before any use
// (LoadInOrder): a vector past the end (or the partial last one) loads vector
// 0 and its row instead, and is never stored. With plain loads the compiler
// moved each vector's loads down to its use, behind the previous vector's
// conversions, stores and exit test, so a thread waited for its vectors and
// their scales one after another (seen in the SASS: a memory latency per
// vector, and another for the scale). Launchers guarantee total >= kVec.
template <typename Op, typename Index, int kVec, int kUnroll, int kBlock, bool kRowAligned,
          typename Divider = RowDivider<Index>>
__global__ void __launch_bounds__(kBlock)
    RowwiseMapKernel(Op op, Index total, Divider divider) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  using RowData = decltype(op.LoadRow(int64_t{0}));
  using InPack = Pack<In, kVec>;
  using OutPack = Pack<Out, kVec>;
  const bool second = Op::kSecondInput && op.in2 != nullptr;
  const Index cols = divider.Cols();
  const Index block_first =
      static_cast<Index>(blockIdx.x) * (kUnroll * kBlock) + static_cast<Index>(threadIdx.x);

  Index first[kUnroll];
  Index row[kUnroll];
  Index col[kUnroll];
  InPack values[kUnroll];
  InPack values2[kUnroll];
  RowData data[kUnroll];
  // Whether vector u starts a new row among the thread's vectors (always,
  // unless kRowAligned).
  bool new_row[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    first[u] = (block_first + u * kBlock) * kVec;
    const bool whole = first[u] + kVec <= total;
    const Index load_at = whole ? first[u] : Index{0};
    values[u] = LoadInOrder(reinterpret_cast<const InPack*>(op.in + load_at));
    if (second) values2[u] = LoadInOrder(reinterpret_cast<const InPack*>(op.in2 + load_at));
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const Index in_range = first[u] < total ? first[u] : Index{0};
    row[u] = divider.Row(in_range);
    col[u] = in_range - row[u] * cols;
    new_row[u] = !kRowAligned || u == 0 || row[u] != row[u - 1];
    data[u] = op.LoadRow(row[u]);
  }

  // No early exit on aligned rows: a vector past the end is mapped too (from
  // vector 0's values) and only its store is predicated off (StoreIf), so that
  // no branch lies between the loads and their uses for the assembler to sink
  // loads into.
  decltype(op.Prepare(data[0])) constants;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const bool live = first[u] < total;
    if (new_row[u]) constants = op.Prepare(data[u]);
    auto next_element = [&]() {
      if (++col[u] == cols) {
        col[u] = 0;
        ++row[u];
        constants = op.Prepare(op.LoadRow(row[u]));
      }
    };
    if constexpr (kRowAligned) {
      // Aligned rows make total a multiple of kVec: every live vector is whole.
      OutPack results;
      if constexpr (HasVectorApply<Op>::value) {
        results = op.template ApplyVector<kVec>(constants, values[u]);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          results.v[i] =
              op.Apply(constants, values[u].v[i], second ? values2[u].v[i] : values[u].v[i]);
        }
      }
      StoreIf(live, reinterpret_cast<OutPack*>(op.out + first[u]), results);
    } else {
      if (!live) break;
      if (first[u] + kVec <= total) {
        OutPack results;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          results.v[i] =
              op.Apply(constants, values[u].v[i], second ? values2[u].v[i] : values[u].v[i]);
          if (i + 1 < kVec) next_element();
        }
        *reinterpret_cast<OutPack*>(op.out + first[u]) = results;
      } else {
        for (Index e = first[u]; e < total; ++e) {
          const In value = op.in[e];
          op.out[e] = op.Apply(constants, value, second ? op.in2[e] : value);
          if (e + 1 < total) next_element();
        }
      }
    }
  }
}

template <typename Op, typename Index, int kVec, int kUnroll, int kBlock, bool kRowAligned,
          typename Divider = RowDivider<Index>>
void LaunchRowwiseMapKernel(const Op& op, int64_t total, int64_t cols, cudaStream_t stream) {
  constexpr int64_t kPerBlock = int64_t{kVec} * kUnroll * kBlock;
  const auto blocks = static_cast<unsigned>((total + kPerBlock - 1) / kPerBlock);
  RowwiseMapKernel<Op, Index, kVec, kUnroll, kBlock, kRowAligned, Divider>
      <<<blocks, kBlock, 0, stream>>>(op, static_cast<Index>(total), Divider(cols));
}

// Launches Op over a [rows, cols] array with kVec-element vectors, kUnroll of
// them per thread, kBlock threads per block; `name` prefixes error messages.
// Vectors need in, in2 and out aligned to their accesses; callers pass
// kVec = 1 otherwise. One row element by element (a decode row, or unaligned
// buffers) runs with the SingleRow divider.
template <typename Op, int kVec, int kUnroll, int kBlock>
std::string LaunchRowwiseMap(const Op& op, int64_t rows, int64_t cols, cudaStream_t stream,
                             const char* name) {
  const int64_t total = rows * cols;
  if (total == 0) return std::string();
  constexpr int64_t kPerBlock = int64_t{kVec} * kUnroll * kBlock;
  if ((total + kPerBlock - 1) / kPerBlock > 0x7fffffff) {
    return std::string(name) + ": array too large for one launch";
  }
  const bool row_aligned = kVec == 1 || cols % kVec == 0;
  // 32-bit indices while every thread's element offsets, including those of
  // the last block past the end, stay below 2^32.
  if (total + kPerBlock < (int64_t{1} << 32)) {
    if (kVec == 1 && rows == 1) {
      LaunchRowwiseMapKernel<Op, uint32_t, 1, kUnroll, kBlock, true, SingleRow>(op, total, cols,
                                                                              stream);
    } else if (row_aligned) {
      LaunchRowwiseMapKernel<Op, uint32_t, kVec, kUnroll, kBlock, true>(op, total, cols, stream);
    } else {
      LaunchRowwiseMapKernel<Op, uint32_t, kVec, kUnroll, kBlock, false>(op, total, cols, stream);
    }
  } else if (row_aligned) {
    LaunchRowwiseMapKernel<Op, int64_t, kVec, kUnroll, kBlock, true>(op, total, cols, stream);
  } else {
    LaunchRowwiseMapKernel<Op, int64_t, kVec, kUnroll, kBlock, false>(op, total, cols, stream);
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    return std::string(name) + " kernel launch failed: " + cudaGetErrorString(status);
  }
  return std::string();
}

// Whether Op's buffers allow kVec-element vectors.
template <typename Op, int kVec>
bool RowwiseVectorsFit(const Op& op) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  return IsAligned(op.in, kVec * sizeof(In)) && IsAligned(op.out, kVec * sizeof(Out)) &&
         (!Op::kSecondInput || op.in2 == nullptr || IsAligned(op.in2, kVec * sizeof(In)));
}

// Launch shapes of a row-wise map op, from the H100 sweep in docs/perf.md
// (benchmarks/tune_kernels.cu): kUnroll vectors per thread and kBlock threads
// per block for large arrays; one vector per thread, 256-thread blocks, when
// there are fewer than kSmallVectors vectors (decode shapes), where more work
// per thread only lengthens the one wave; one element per thread for arrays
// of at most kTinyElements (a row or two), where the kernel's time is one
// thread's latency: Nsight Compute on an H200, 1x4096 bfloat16 fake quantize,
// showed our 8-element threads keeping their SM busy 1015 cycles against 778
// for XLA's fusion, which gives each thread one element (docs/perf.md).
template <int kUnroll, int kBlock>
struct RowwiseTuning {
  static constexpr int unroll = kUnroll;
  static constexpr int block = kBlock;
};
constexpr int64_t kSmallVectors = int64_t{1} << 19;
constexpr int64_t kTinyElements = int64_t{1} << 14;

// Runs Op: vectors when the buffers allow them and the array is not tiny,
// else one element per thread.
template <typename Tuning, typename Op>
std::string RunRowwiseMap(const Op& op, int64_t rows, int64_t cols, cudaStream_t stream,
                          const char* name) {
  constexpr int kVec = RowwiseVectorElements<typename Op::In, typename Op::Out>();
  // Vectors need aligned buffers, and at least one whole vector (the kernel
  // loads vector 0 in place of vectors past the end).
  if (!RowwiseVectorsFit<Op, kVec>(op) || rows * cols < kVec || rows * cols <= kTinyElements) {
    return LaunchRowwiseMap<Op, 1, 1, 256>(op, rows, cols, stream, name);
  }
  if (rows * cols / kVec < kSmallVectors) {
    return LaunchRowwiseMap<Op, kVec, 1, 256>(op, rows, cols, stream, name);
  }
  return LaunchRowwiseMap<Op, kVec, Tuning::unroll, Tuning::block>(op, rows, cols, stream, name);
}

}  // namespace jdq::cuda

#endif  // JAX_DEQUANT_ROWWISE_MAP_CUH_

// CPU dequantize kernel: plain loops that the compiler vectorizes (compiled
// for the build's baseline ISA and for AVX2, chosen at run time: cpu_simd.h),
// split over XLA's intra-op threads when the problem is large. Also the switch
// between the instruction sets (UseAvx2, SetAvx2Enabled).
//
// Arithmetic runs with subnormals flushed to zero (inputs and results), as
// XLA:CPU does for its own computations, so our results and XLA's compiled
// reference agree bit for bit on the CPU.
#include "cpu_kernels.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cpu_parallel.h"
#include "cpu_simd.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cpu {
namespace {

// --- Instruction sets ----------------------------------------------------------------------------

bool CpuHasAvx2() {
#if JDQ_CPU_AVX2
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has_avx2;
#else
  return false;
#endif
}

std::atomic<bool> avx2_enabled{true};

// --- Dequantize ----------------------------------------------------------------------------------

// One row's consecutive elements. Without a zero point the subtraction of 0
// is left out: q - 0 is q exactly (signed zeros, NaN and infinities included,
// and with denormals-are-zero).
template <bool kHasZero, typename QT, typename OutT, typename C>
struct DequantizeSpan {
  // A plain loop the compiler vectorizes.
  static JDQ_ALWAYS_INLINE void Scalar(const QT* __restrict q, OutT* __restrict out, int64_t count,
                                       C zero, C scale) {
    for (int64_t i = 0; i < count; ++i) {
      const C level = Convert<QT>::template ToCompute<C>(q[i]);
      const C shifted = kHasZero ? sub_rn(level, zero) : level;
      out[i] = Convert<OutT>::template FromCompute<C>(mul_rn(shifted, scale));
    }
  }

#if JDQ_CPU_AVX2
  // The hot case, int8/uint8 levels with a float32 compute type and a
  // float32, bfloat16 or float16 result, with AVX2 intrinsics (cpu_simd.h): 8
  // levels widen straight to 8 floats, float16 results use the F16C
  // conversion, the same instruction XLA:CPU emits.
  static constexpr bool kHasAvx2 = (std::is_same_v<QT, int8_t> || std::is_same_v<QT, uint8_t>) &&
                                   std::is_same_v<C, float> && avx2::kIsFloat32Storage<OutT>;

  // 16 levels a step; the last 1..15 through the same instructions, padded.
  struct Block16 {
    __m256 zero;
    __m256 scale;
    JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE __m256 Values8(const QT* q) const {
      __m256 levels = avx2::Load8(q);
      if constexpr (kHasZero) levels = _mm256_sub_ps(levels, zero);
      return _mm256_mul_ps(levels, scale);
    }
    JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE void operator()(const QT* q, OutT* out) const {
      const __m256 low = Values8(q);
      const __m256 high = Values8(q + 8);
      avx2::Store8(out, low);
      avx2::Store8(out + 8, high);
    }
  };

  static JDQ_TARGET_AVX2 inline void Avx2(const QT* __restrict q, OutT* __restrict out,
                                          int64_t count, float zero, float scale) {
    avx2::ForEachBlock<16>(q, out, count, Block16{_mm256_set1_ps(zero), _mm256_set1_ps(scale)});
  }
#endif
};

// Flat elements [begin, end) of the [rows, cols] problem, row piece by row piece.
template <typename QT, typename ScaleT, typename OutT>
struct DequantizeKernel {
  template <bool kAvx2>
  static JDQ_ALWAYS_INLINE void Run(const DequantizeProblem* p, int64_t begin, int64_t end) {
    using C = ComputeType<ScaleT, OutT>;
    const QT* q = static_cast<const QT*>(p->q);
    const ScaleT* scale = static_cast<const ScaleT*>(p->scale);
    OutT* out = static_cast<OutT*>(p->out);
    for (RowPieces piece(p->cols, begin, end); piece.count > 0; piece.Next()) {
      const C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[piece.row]);
      const int64_t at = piece.element;
      if (p->zero_point != nullptr) {
        RunSpan<kAvx2, DequantizeSpan<true, QT, OutT, C>>(
            q + at, out + at, piece.count, static_cast<C>(p->zero_point[piece.row]), row_scale);
      } else {
        RunSpan<kAvx2, DequantizeSpan<false, QT, OutT, C>>(q + at, out + at, piece.count, C(0),
                                                            row_scale);
      }
    }
  }
};

}  // namespace

bool UseAvx2() { return CpuHasAvx2() && avx2_enabled.load(std::memory_order_relaxed); }

bool SetAvx2Enabled(bool enabled) {
  avx2_enabled.store(enabled, std::memory_order_relaxed);
  return UseAvx2();
}

std::string Dequantize(const DequantizeProblem& p, TaskRunner* runner) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  ScopedFlushDenormals flush;
  return VisitDequantizeTypes<CpuTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        const DequantizeProblem problem = p;
        ParallelFor(p.rows * p.cols, runner, [problem](int64_t begin, int64_t end) {
          PrefaultForWriting(static_cast<OutT*>(problem.out) + begin, (end - begin) * sizeof(OutT));
          RunForIsa<DequantizeKernel<QT, ScaleT, OutT>>(&problem, begin, end);
        });
        return std::string();
      });
}

}  // namespace jdq::cpu

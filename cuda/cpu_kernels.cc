// CPU dequantize kernel: plain loops that the compiler vectorizes (compiled
// for the build's baseline ISA and for AVX2, chosen at run time: cpu_simd.h),
// split over XLA's intra-op threads when the problem is large. Also the
// switches between the instruction sets (UseAvx2, SetAvx2Enabled, UseAvx512,
// SetAvx512Enabled).
//
// Arithmetic runs with subnormals flushed to zero (inputs and results), as
// XLA:CPU does for its own computations, so our results and XLA's compiled
// reference agree bit for bit on the CPU.
#include "cpu_kernels.h"

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

bool CpuHasAvx512() {
#if JDQ_CPU_AVX2
  static const bool has_avx512 =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has_avx512;
#else
  return false;
#endif
}

std::atomic<bool> avx2_enabled{true};
std::atomic<bool> avx512_enabled{true};

// --- Dequantize ----------------------------------------------------------------------------------

// The row-wise map of dequantize (cpu_parallel.h). Without a zero point the
// subtraction of 0 is left out: q - 0 is q exactly (signed zeros, NaN and
// infinities included, and with denormals-are-zero).
template <bool kHasZero, typename QT, typename ScaleT, typename OutT>
struct DequantizeMap {
  using In = QT;
  using Out = OutT;
  using C = ComputeType<ScaleT, OutT>;
  struct Row {
    C zero;
    C scale;
  };

  static JDQ_ALWAYS_INLINE Row ForRow(const DequantizeProblem& p, int64_t row) {
    return {kHasZero ? static_cast<C>(p.zero_point[row]) : C(0),
            Convert<ScaleT>::template ToCompute<C>(static_cast<const ScaleT*>(p.scale)[row])};
  }

  // A plain loop the compiler vectorizes.
  static JDQ_ALWAYS_INLINE void Scalar(const QT* __restrict q, OutT* __restrict out, int64_t count,
                                       const Row& k) {
    for (int64_t i = 0; i < count; ++i) {
      const C level = Convert<QT>::template ToCompute<C>(q[i]);
      const C shifted = kHasZero ? sub_rn(level, k.zero) : level;
      out[i] = Convert<OutT>::template FromCompute<C>(mul_rn(shifted, k.scale));
    }
  }

#if JDQ_CPU_AVX2
  // The hot case, int8/uint8 levels with a float32 compute type and a
  // float32, bfloat16 or float16 result, with AVX2 intrinsics (cpu_simd.h): 8
  // levels widen straight to 8 floats, float16 results use the F16C
  // conversion, the same instruction XLA:CPU emits.
  static constexpr bool kHasAvx2 = (std::is_same_v<QT, int8_t> || std::is_same_v<QT, uint8_t>) &&
                                   std::is_same_v<C, float> && avx2::kIsFloat32Storage<OutT>;

  // 8 results of 8 levels.
  struct Values8 {
    __m256 zero;
    __m256 scale;
    JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE __m256 operator()(const QT* q) const {
      __m256 levels = avx2::Load8(q);
      if constexpr (kHasZero) levels = _mm256_sub_ps(levels, zero);
      return _mm256_mul_ps(levels, scale);
    }
  };

  static JDQ_TARGET_AVX2 inline void Avx2(const QT* __restrict q, OutT* __restrict out,
                                          int64_t count, const Row& k) {
    avx2::MapValues16(q, out, count, Values8{_mm256_set1_ps(k.zero), _mm256_set1_ps(k.scale)});
  }
#endif
};

}  // namespace

bool UseAvx2() { return CpuHasAvx2() && avx2_enabled.load(std::memory_order_relaxed); }

bool SetAvx2Enabled(bool enabled) {
  avx2_enabled.store(enabled, std::memory_order_relaxed);
  return UseAvx2();
}

bool UseAvx512() {
  return UseAvx2() && CpuHasAvx512() && avx512_enabled.load(std::memory_order_relaxed);
}

bool SetAvx512Enabled(bool enabled) {
  avx512_enabled.store(enabled, std::memory_order_relaxed);
  return UseAvx512();
}

std::string Dequantize(const DequantizeProblem& p, TaskRunner* runner) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  ScopedFlushDenormals flush;
  return VisitDequantizeTypes<CpuTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        if (p.zero_point != nullptr) {
          RunRowMap<DequantizeMap<true, QT, ScaleT, OutT>>(p, p.q, p.out, runner);
        } else {
          RunRowMap<DequantizeMap<false, QT, ScaleT, OutT>>(p, p.q, p.out, runner);
        }
        return std::string();
      });
}

}  // namespace jdq::cpu

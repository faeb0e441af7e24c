// CPU kernels: plain loops that the compiler vectorizes (compiled for the
// build's baseline ISA and for AVX2, chosen at run time), split over XLA's
// intra-op threads when the problem is large.
//
// Arithmetic runs with subnormals flushed to zero (inputs and results), as
// XLA:CPU does for its own computations, so our results and XLA's compiled
// reference agree bit for bit on the CPU.
#include "cpu_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cpu_parallel.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace jdq::cpu {
namespace {

// --- Instruction sets ----------------------------------------------------------------------------

// The loops are compiled twice: for the baseline ISA of the build and, on
// x86-64, for AVX2 + F16C (chosen at run time). No FMA: the numerics forbid
// contraction (the library is built with -ffp-contract=off as well).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define JDQ_CPU_AVX2 1
#define JDQ_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#else
#define JDQ_CPU_AVX2 0
#endif
#if defined(__GNUC__) || defined(__clang__)
#define JDQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define JDQ_ALWAYS_INLINE inline
#endif

bool UseAvx2() {
#if JDQ_CPU_AVX2
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has_avx2;
#else
  return false;
#endif
}

// --- Dequantize ----------------------------------------------------------------------------------

// One row's consecutive elements: a plain loop the compiler vectorizes.
// Without a zero point the subtraction of 0 is left out: q - 0 is q exactly
// (signed zeros, NaN and infinities included, and with denormals-are-zero).
template <bool kHasZero, typename QT, typename OutT, typename C>
JDQ_ALWAYS_INLINE void DequantizeSpan(const QT* __restrict q, OutT* __restrict out, int64_t count,
                                      C zero, C scale) {
  for (int64_t i = 0; i < count; ++i) {
    const C level = Convert<QT>::template ToCompute<C>(q[i]);
    const C shifted = kHasZero ? sub_rn(level, zero) : level;
    out[i] = Convert<OutT>::template FromCompute<C>(mul_rn(shifted, scale));
  }
}

#if JDQ_CPU_AVX2
// The hot case, int8/uint8 levels with a float32 compute type and a float32,
// bfloat16 or float16 result, written with AVX2 intrinsics: 8 levels widen
// straight to 8 floats, and float16 results use the F16C conversion, the same
// instruction XLA:CPU emits (verified equal to FloatToFloat16 for every float
// but NaN payloads, with and without flush-to-zero).
template <typename QT>
JDQ_TARGET_AVX2 inline __m256 LoadLevels8(const QT* q) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));
  if constexpr (std::is_same_v<QT, int8_t>) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  } else {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
  }
}

JDQ_TARGET_AVX2 inline void Store8(float* out, __m256 values) { _mm256_storeu_ps(out, values); }

JDQ_TARGET_AVX2 inline void Store8(Float16* out, __m256 values) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm256_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// FloatToBFloat16 on 8 lanes: round half to even on the dropped 16 bits; a
// NaN keeps its top bits and becomes quiet.
JDQ_TARGET_AVX2 inline void Store8(BFloat16* out, __m256 values) {
  const __m256i bits = _mm256_castps_si256(values);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd);
  const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000));
  const __m256 is_nan = _mm256_cmp_ps(values, values, _CMP_UNORD_Q);
  const __m256i chosen = _mm256_castps_si256(_mm256_blendv_ps(
      _mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet), is_nan));
  const __m256i high = _mm256_srli_epi32(chosen, 16);
  const __m128i packed =
      _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
}

template <bool kHasZero, typename QT, typename OutT>
JDQ_TARGET_AVX2 inline __m256 Dequantize8(const QT* q, __m256 zero, __m256 scale) {
  __m256 levels = LoadLevels8(q);
  if constexpr (kHasZero) levels = _mm256_sub_ps(levels, zero);
  return _mm256_mul_ps(levels, scale);
}

template <bool kHasZero, typename QT, typename OutT>
JDQ_TARGET_AVX2 inline void DequantizeSpanAvx2(const QT* __restrict q, OutT* __restrict out,
                                               int64_t count, float zero, float scale) {
  const __m256 zero8 = _mm256_set1_ps(zero);
  const __m256 scale8 = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256 low = Dequantize8<kHasZero, QT, OutT>(q + i, zero8, scale8);
    const __m256 high = Dequantize8<kHasZero, QT, OutT>(q + i + 8, zero8, scale8);
    Store8(out + i, low);
    Store8(out + i + 8, high);
  }
  for (; i + 8 <= count; i += 8) {
    Store8(out + i, Dequantize8<kHasZero, QT, OutT>(q + i, zero8, scale8));
  }
  if (i < count) {
    // The last 1..7 elements through the same instructions, on padded copies.
    QT levels[8] = {};
    OutT values[8];
    std::memcpy(levels, q + i, (count - i) * sizeof(QT));
    Store8(values, Dequantize8<kHasZero, QT, OutT>(levels, zero8, scale8));
    std::memcpy(out + i, values, (count - i) * sizeof(OutT));
  }
}

template <typename QT, typename OutT, typename C>
inline constexpr bool kHasAvx2Span =
    (std::is_same_v<QT, int8_t> || std::is_same_v<QT, uint8_t>) && std::is_same_v<C, float> &&
    (std::is_same_v<OutT, float> || std::is_same_v<OutT, BFloat16> ||
     std::is_same_v<OutT, Float16>);
#endif

// The span loop for the instruction set (always inlined: it is compiled with
// the caller's target).
template <bool kAvx2, bool kHasZero, typename QT, typename OutT, typename C>
JDQ_ALWAYS_INLINE void DequantizeRowSpan(const QT* q, OutT* out, int64_t count, C zero, C scale) {
#if JDQ_CPU_AVX2
  if constexpr (kAvx2 && kHasAvx2Span<QT, OutT, C>) {
    DequantizeSpanAvx2<kHasZero>(q, out, count, zero, scale);
    return;
  }
#endif
  DequantizeSpan<kHasZero>(q, out, count, zero, scale);
}

// Flat elements [begin, end) of the [rows, cols] problem, row piece by row piece.
template <bool kAvx2, typename QT, typename ScaleT, typename OutT>
JDQ_ALWAYS_INLINE void DequantizeRange(const DequantizeProblem& p, int64_t begin, int64_t end) {
  using C = ComputeType<ScaleT, OutT>;
  const QT* q = static_cast<const QT*>(p.q);
  const ScaleT* scale = static_cast<const ScaleT*>(p.scale);
  OutT* out = static_cast<OutT*>(p.out);
  int64_t row = begin / p.cols;
  int64_t element = begin;
  int64_t col = begin - row * p.cols;
  while (element < end) {
    const int64_t count = std::min(p.cols - col, end - element);
    const C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
    if (p.zero_point != nullptr) {
      DequantizeRowSpan<kAvx2, true>(q + element, out + element, count,
                                     static_cast<C>(p.zero_point[row]), row_scale);
    } else {
      DequantizeRowSpan<kAvx2, false>(q + element, out + element, count, C(0), row_scale);
    }
    element += count;
    ++row;
    col = 0;
  }
}

template <typename QT, typename ScaleT, typename OutT>
void DequantizeRangeBaseline(const DequantizeProblem& p, int64_t begin, int64_t end) {
  DequantizeRange<false, QT, ScaleT, OutT>(p, begin, end);
}

#if JDQ_CPU_AVX2
template <typename QT, typename ScaleT, typename OutT>
JDQ_TARGET_AVX2 void DequantizeRangeAvx2(const DequantizeProblem& p, int64_t begin, int64_t end) {
  DequantizeRange<true, QT, ScaleT, OutT>(p, begin, end);
}
#endif

}  // namespace

std::string Dequantize(const DequantizeProblem& p, TaskRunner* runner) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  ScopedFlushDenormals flush;
  return VisitDequantizeTypes<CpuTypes>(
      p.q_type, p.scale_type, p.out_type, [&](auto q_tag, auto scale_tag, auto out_tag) {
        using QT = typename decltype(q_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using OutT = typename decltype(out_tag)::type;
        void (*range)(const DequantizeProblem&, int64_t, int64_t) =
            &DequantizeRangeBaseline<QT, ScaleT, OutT>;
#if JDQ_CPU_AVX2
        if (UseAvx2()) range = &DequantizeRangeAvx2<QT, ScaleT, OutT>;
#endif
        const DequantizeProblem problem = p;
        ParallelFor(p.rows * p.cols, runner, [problem, range](int64_t begin, int64_t end) {
          PrefaultForWriting(static_cast<OutT*>(problem.out) + begin, (end - begin) * sizeof(OutT));
          range(problem, begin, end);
        });
        return std::string();
      });
}

}  // namespace jdq::cpu

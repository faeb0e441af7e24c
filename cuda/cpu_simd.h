// The instruction sets of the CPU kernels: loops are compiled for the build's
// baseline ISA and, on x86-64, for AVX2 + F16C and for AVX-512 (F, BW, VL, DQ),
// and one is chosen at run time (Isa, UseAvx2, UseAvx512, RunForIsa, RunSpan).
// The SIMD building blocks shared by the kernels live here: 8-lane (AVX2)
// loads and stores of every storage type, 16-lane (AVX-512) loads and level
// stores, the quantized level of a vector, the padded tail block, and the row
// pieces of a flat element range (RowPieces).
// No FMA anywhere: the numerics forbid contraction (the library is built with
// -ffp-contract=off as well). Each lane computes exactly the scalar expression
// of numerics.h, under the same flush-to-zero mode (cpu_flush.h).
#ifndef JAX_DEQUANT_CPU_SIMD_H_
#define JAX_DEQUANT_CPU_SIMD_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_types.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define JDQ_CPU_AVX2 1
#define JDQ_TARGET_AVX2 __attribute__((target("avx2,f16c")))
// AVX-512 code may call (and inline) AVX2 code: this target includes AVX2's.
#define JDQ_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))
#include <immintrin.h>
#else
#define JDQ_CPU_AVX2 0
#endif
#if defined(__GNUC__) || defined(__clang__)
#define JDQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define JDQ_ALWAYS_INLINE inline
#endif

namespace jdq::cpu {

// The instruction set a kernel's loops are compiled for. Each level includes
// the one before: AVX-512 code uses AVX2 spans where it has no wider ones.
enum class Isa { kBaseline, kAvx2, kAvx512 };

// Whether the AVX2 loops run: the CPU has AVX2 and F16C, and they are not
// turned off (SetAvx2Enabled, cpu_kernels.h). Defined in cpu_kernels.cc.
bool UseAvx2();
// Whether the AVX-512 loops run: UseAvx2(), the CPU has AVX-512 F, BW, VL and
// DQ, and they are not turned off (SetAvx512Enabled).
bool UseAvx512();

// Runs Kernel::template Run<isa>(args...) compiled for the chosen instruction
// set. Kernel::Run must be JDQ_ALWAYS_INLINE, so that its loops are compiled
// inside these wrappers, with their target.
template <typename Kernel, typename... Args>
void RunBaseline(Args... args) {
  Kernel::template Run<Isa::kBaseline>(args...);
}
#if JDQ_CPU_AVX2
template <typename Kernel, typename... Args>
JDQ_TARGET_AVX2 void RunAvx2(Args... args) {
  Kernel::template Run<Isa::kAvx2>(args...);
}
template <typename Kernel, typename... Args>
JDQ_TARGET_AVX512 void RunAvx512(Args... args) {
  Kernel::template Run<Isa::kAvx512>(args...);
}
#endif
template <typename Kernel, typename... Args>
void RunForIsa(Args... args) {
#if JDQ_CPU_AVX2
  if (UseAvx512()) {
    RunAvx512<Kernel>(args...);
    return;
  }
  if (UseAvx2()) {
    RunAvx2<Kernel>(args...);
    return;
  }
#endif
  RunBaseline<Kernel>(args...);
}

// Whether a span struct has an AVX-512 loop (`static constexpr bool
// kHasAvx512 = true;`).
template <typename Span, typename = void>
struct HasAvx512Span : std::false_type {};
template <typename Span>
struct HasAvx512Span<Span, std::enable_if_t<Span::kHasAvx512>> : std::true_type {};

// A span computation (one piece of one row) is a struct with a scalar loop,
// `static void Scalar(args...)`, where `kHasAvx2` an AVX2 one, `static void
// Avx2(args...)`, and where `kHasAvx512` an AVX-512 one, `static void
// Avx512(args...)`. RunSpan calls the widest the instruction set allows; it
// is always inlined, so the scalar loop is compiled (and vectorized) with the
// caller's target.
template <Isa kIsa, typename Span, typename... Args>
JDQ_ALWAYS_INLINE void RunSpan(Args... args) {
#if JDQ_CPU_AVX2
  if constexpr (kIsa == Isa::kAvx512 && HasAvx512Span<Span>::value) {
    Span::Avx512(args...);
    return;
  } else if constexpr (kIsa != Isa::kBaseline && Span::kHasAvx2) {
    Span::Avx2(args...);
    return;
  }
#endif
  Span::Scalar(args...);
}

#if JDQ_CPU_AVX2
namespace avx2 {

// Float storage types with an 8-lane float32 load and store.
template <typename T>
inline constexpr bool kIsFloat32Storage = std::is_same_v<T, float> ||
                                          std::is_same_v<T, BFloat16> ||
                                          std::is_same_v<T, Float16>;

// --- Loads: 8 values widened to float32 lanes --------------------------------------------------

JDQ_TARGET_AVX2 inline __m256 Load8(const float* x) { return _mm256_loadu_ps(x); }

// vcvtph2ps, what XLA:CPU emits: exact, float16 subnormals become normal
// floats (as Float16ToFloat).
JDQ_TARGET_AVX2 inline __m256 Load8(const Float16* x) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}

// BFloat16ToFloat: the bits moved up.
JDQ_TARGET_AVX2 inline __m256 Load8(const BFloat16* x) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// int8/uint8 levels, widened straight to 8 floats.
JDQ_TARGET_AVX2 inline __m256 Load8(const int8_t* q) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}
JDQ_TARGET_AVX2 inline __m256 Load8(const uint8_t* q) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}

// --- Stores: 8 float32 lanes rounded once to the storage type -----------------------------------

JDQ_TARGET_AVX2 inline void Store8(float* out, __m256 values) { _mm256_storeu_ps(out, values); }

// vcvtps2ph, the instruction XLA:CPU emits (verified equal to FloatToFloat16
// for every float but NaN payloads, with and without flush-to-zero).
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

// 32 levels (integers in [qmin, qmax], within QT's range) as int8/uint8.
template <typename QT>
JDQ_TARGET_AVX2 inline void StoreLevels32(QT* q, __m256 a, __m256 b, __m256 c, __m256 d) {
  // The packs work within 128-bit halves: the result holds the 4-lane groups
  // in the order a0 b0 c0 d0 a1 b1 c1 d1, put back in place by one permute.
  const __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
  const __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(c), _mm256_cvtps_epi32(d));
  const __m256i bytes = std::is_same_v<QT, int8_t> ? _mm256_packs_epi16(ab, cd)
                                                   : _mm256_packus_epi16(ab, cd);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(bytes, order));
}

// --- Arithmetic ---------------------------------------------------------------------------------

// The per-row constants of quantize_value in 8 lanes.
struct LevelConstants {
  __m256 reciprocal;
  __m256 zero_point;
  __m256 qmin;
  __m256 qmax;
};

JDQ_TARGET_AVX2 inline LevelConstants MakeLevelConstants(float reciprocal, float zero_point,
                                                          float qmin, float qmax) {
  return {_mm256_set1_ps(reciprocal), _mm256_set1_ps(zero_point), _mm256_set1_ps(qmin),
          _mm256_set1_ps(qmax)};
}

// quantize_value on 8 lanes, as floats: clamp(rne(x * r + zp), qmin, qmax)
// with NaN acting as the zero point. vroundps rounds half to even exactly as
// round_half_even (its input is never subnormal: the add flushes to zero);
// max(qmin, v) is `v < qmin ? qmin : v` and min(qmax, v) `v > qmax ? qmax : v`
// (the instructions return the second operand unless the first one wins).
JDQ_TARGET_AVX2 inline __m256 Levels8(__m256 x, const LevelConstants& k) {
  __m256 level = _mm256_add_ps(_mm256_mul_ps(x, k.reciprocal), k.zero_point);
  level = _mm256_round_ps(level, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  level = _mm256_blendv_ps(level, k.zero_point, _mm256_cmp_ps(level, level, _CMP_UNORD_Q));
  level = _mm256_max_ps(k.qmin, level);
  return _mm256_min_ps(k.qmax, level);
}

// Runs block(in + i, out + i) over [0, count) in blocks of kBlock elements;
// the last partial block runs on zero-padded copies, so that every element
// goes through the same instructions. `block` is a functor whose operator()
// is JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE.
template <int kBlock, typename In, typename Out, typename Block>
JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE void ForEachBlock(const In* in, Out* out, int64_t count,
                                                    const Block& block) {
  int64_t i = 0;
  for (; i + kBlock <= count; i += kBlock) block(in + i, out + i);
  if (i < count) {
    In in_block[kBlock] = {};
    Out out_block[kBlock];
    std::memcpy(in_block, in + i, (count - i) * sizeof(In));
    block(in_block, out_block);
    std::memcpy(out + i, out_block, (count - i) * sizeof(Out));
  }
}

// A float-valued map in blocks of 16: values(in) gives the 8 float32 results
// of in[0..7], stored (rounded once) as Out; the last 1..15 padded.
template <typename Values>
struct StoreValues16 {
  Values values;
  template <typename In, typename Out>
  JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE void operator()(const In* in, Out* out) const {
    const __m256 low = values(in);
    const __m256 high = values(in + 8);
    Store8(out, low);
    Store8(out + 8, high);
  }
};

template <typename In, typename Out, typename Values>
JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE void MapValues16(const In* in, Out* out, int64_t count,
                                                   const Values& values) {
  ForEachBlock<16>(in, out, count, StoreValues16<Values>{values});
}

}  // namespace avx2
#endif  // JDQ_CPU_AVX2

#if JDQ_CPU_AVX2
namespace avx512 {

// --- Loads: 16 values widened to float32 lanes ---------------------------------------------------

JDQ_TARGET_AVX512 inline __m512 Load16(const float* x) { return _mm512_loadu_ps(x); }

// vcvtph2ps, as avx2::Load8.
JDQ_TARGET_AVX512 inline __m512 Load16(const Float16* x) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}

// BFloat16ToFloat: the bits moved up.
JDQ_TARGET_AVX512 inline __m512 Load16(const BFloat16* x) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// --- Quantized levels ------------------------------------------------------------------------------

// The per-row constants of quantize_value in 16 lanes.
struct LevelConstants {
  __m512 reciprocal;
  __m512 zero_point;
  __m512 qmin;
  __m512 qmax;
};

JDQ_TARGET_AVX512 inline LevelConstants MakeLevelConstants(float reciprocal, float zero_point,
                                                            float qmin, float qmax) {
  return {_mm512_set1_ps(reciprocal), _mm512_set1_ps(zero_point), _mm512_set1_ps(qmin),
          _mm512_set1_ps(qmax)};
}

// quantize_value on 16 lanes, as avx2::Levels8: clamp(rne(x * r + zp), qmin,
// qmax) with NaN acting as the zero point; vrndscaleps with round-to-nearest
// rounds half to even, and the NaN lanes take the zero point under a mask.
JDQ_TARGET_AVX512 inline __m512 Levels16(__m512 x, const LevelConstants& k) {
  __m512 level = _mm512_add_ps(_mm512_mul_ps(x, k.reciprocal), k.zero_point);
  level = _mm512_roundscale_ps(level, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  level = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(level, level, _CMP_UNORD_Q), level,
                               k.zero_point);
  level = _mm512_max_ps(k.qmin, level);
  return _mm512_min_ps(k.qmax, level);
}

// Levels16 where the zero point is 0 and qmin <= 0 <= qmax, as integers in
// int32 lanes: clamp first (NaN lanes become 0 under the mask, which is the
// clamped zero point), then one conversion rounding half to even. The same
// integers, since clamping to integer bounds commutes with rounding and adding
// a zero point of 0 changes no level; two instructions fewer.
JDQ_TARGET_AVX512 inline __m512i LevelsNoZeroPoint16(__m512 x, const LevelConstants& k) {
  const __m512 product = _mm512_mul_ps(x, k.reciprocal);
  const __mmask16 ordered = _mm512_cmp_ps_mask(product, product, _CMP_ORD_Q);
  const __m512 clamped = _mm512_min_ps(k.qmax, _mm512_maskz_max_ps(ordered, k.qmin, product));
  return _mm512_cvt_roundps_epi32(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// 16 levels (integers in [qmin, qmax], within QT's range) as int8/uint8: the
// conversion is exact, and the narrowing (vpmovdb) keeps the low byte, which
// is the level itself.
template <typename QT>
JDQ_TARGET_AVX512 inline void StoreLevels16(QT* q, __m512i levels) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(levels));
}
template <typename QT>
JDQ_TARGET_AVX512 inline void StoreLevels16(QT* q, __m512 levels) {
  StoreLevels16(q, _mm512_cvtps_epi32(levels));
}

// Runs block(in + i, out + i) over [0, count) in blocks of kBlock elements;
// the last partial block runs on zero-padded copies, as avx2::ForEachBlock.
// A second copy because GCC inlines an always-inline function only into one
// whose target includes the callee's: neither an AVX2 nor a target-less
// ForEachBlock may inline an AVX-512 block.
template <int kBlock, typename In, typename Out, typename Block>
JDQ_TARGET_AVX512 JDQ_ALWAYS_INLINE void ForEachBlock(const In* in, Out* out, int64_t count,
                                                      const Block& block) {
  int64_t i = 0;
  for (; i + kBlock <= count; i += kBlock) block(in + i, out + i);
  if (i < count) {
    In in_block[kBlock] = {};
    Out out_block[kBlock];
    std::memcpy(in_block, in + i, (count - i) * sizeof(In));
    block(in_block, out_block);
    std::memcpy(out + i, out_block, (count - i) * sizeof(Out));
  }
}

}  // namespace avx512
#endif  // JDQ_CPU_AVX2

// The pieces of rows that make up the flat elements [begin, end) of an array
// with `cols` columns, in order:
//   for (RowPieces piece(cols, begin, end); piece.count > 0; piece.Next()) ...
// visits elements [piece.element, piece.element + piece.count) of row piece.row.
struct RowPieces {
  RowPieces(int64_t cols, int64_t begin, int64_t end)
      : row(begin / cols),
        element(begin),
        count(std::min(cols - (begin - row * cols), end - begin)),
        cols_(cols),
        end_(end) {}
  void Next() {
    element += count;
    ++row;
    count = std::min(cols_, end_ - element);
  }
  int64_t row;
  int64_t element;
  int64_t count;

 private:
  int64_t cols_;
  int64_t end_;
};



}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_SIMD_H_

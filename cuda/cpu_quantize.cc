// CPU quantize kernels, static and dynamic: row loops compiled for the
// baseline ISA, for AVX2 + F16C and for AVX-512 (chosen at run time,
// cpu_simd.h), split
// over XLA's intra-op threads (cpu_parallel.h), run with subnormals flushed to
// zero like XLA:CPU (ScopedFlushDenormals, cpu_flush.h), so that they agree
// bit for bit with XLA's compiled reference on the CPU.
#include <cstdint>
#include <string>
#include <type_traits>

#include "cpu_dynamic_row.h"
#include "cpu_flush.h"
#include "cpu_kernels.h"
#include "cpu_parallel.h"
#include "cpu_simd.h"
#include "cpu_types.h"
#include "dispatch.h"
#include "numerics.h"

namespace jdq::cpu {
namespace {

// The row-wise map of static quantization (cpu_parallel.h):
// q[i] = clamp(rne(C(x[i]) * reciprocal + zero), qmin, qmax).
template <typename XT, typename ScaleT, typename QT>
struct QuantizeMap {
  using In = XT;
  using Out = QT;
  using C = ComputeType<ScaleT, XT>;
  struct Row {
    C reciprocal;
    C zero;
    C qmin;
    C qmax;
  };

  static JDQ_ALWAYS_INLINE Row ForRow(const QuantizeProblem& p, int64_t row) {
    const ScaleT* scale = static_cast<const ScaleT*>(p.scale);
    return {reciprocal_rn(Convert<ScaleT>::template ToCompute<C>(scale[row])),
            p.zero_point != nullptr ? static_cast<C>(p.zero_point[row]) : C(0),
            static_cast<C>(p.qmin), static_cast<C>(p.qmax)};
  }

  // A plain loop the compiler vectorizes.
  static JDQ_ALWAYS_INLINE void Scalar(const XT* __restrict x, QT* __restrict q, int64_t count,
                                       const Row& k) {
    for (int64_t i = 0; i < count; ++i) {
      const C value = Convert<XT>::template ToCompute<C>(x[i]);
      q[i] = static_cast<QT>(quantize_value(value, k.reciprocal, k.zero, k.qmin, k.qmax));
    }
  }

#if JDQ_CPU_AVX2
  // float32, bfloat16 or float16 x with a float32 compute type: 32 values a
  // step (avx2::Levels8), packed to 32 bytes; the last 1..31 padded.
  static constexpr bool kHasAvx2 = std::is_same_v<C, float> && avx2::kIsFloat32Storage<XT>;

  struct Block32 {
    avx2::LevelConstants k;
    JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE void operator()(const XT* x, QT* q) const {
      avx2::StoreLevels32(q, avx2::Levels8(avx2::Load8(x), k), avx2::Levels8(avx2::Load8(x + 8), k),
                          avx2::Levels8(avx2::Load8(x + 16), k),
                          avx2::Levels8(avx2::Load8(x + 24), k));
    }
  };

  static JDQ_TARGET_AVX2 inline void Avx2(const XT* __restrict x, QT* __restrict q, int64_t count,
                                          const Row& k) {
    avx2::ForEachBlock<32>(
        x, q, count, Block32{avx2::MakeLevelConstants(k.reciprocal, k.zero, k.qmin, k.qmax)});
  }

  // The same in 16 lanes, 32 values a step narrowed straight to bytes; the
  // last 1..31 padded. Without a zero point (and 0 in [qmin, qmax], as in
  // symmetric quantization) the shorter avx512::LevelsNoZeroPoint16.
  static constexpr bool kHasAvx512 = kHasAvx2;

  template <bool kNoZeroPoint>
  struct Block32x512 {
    avx512::LevelConstants k;
    JDQ_TARGET_AVX512 JDQ_ALWAYS_INLINE void operator()(const XT* x, QT* q) const {
      if constexpr (kNoZeroPoint) {
        avx512::StoreLevels16(q, avx512::LevelsNoZeroPoint16(avx512::Load16(x), k));
        avx512::StoreLevels16(q + 16, avx512::LevelsNoZeroPoint16(avx512::Load16(x + 16), k));
      } else {
        avx512::StoreLevels16(q, avx512::Levels16(avx512::Load16(x), k));
        avx512::StoreLevels16(q + 16, avx512::Levels16(avx512::Load16(x + 16), k));
      }
    }
  };

  static JDQ_TARGET_AVX512 inline void Avx512(const XT* __restrict x, QT* __restrict q,
                                              int64_t count, const Row& k) {
    const avx512::LevelConstants constants =
        avx512::MakeLevelConstants(k.reciprocal, k.zero, k.qmin, k.qmax);
    if (k.zero == 0 && k.qmin <= 0 && k.qmax >= 0) {
      avx512::ForEachBlock<32>(x, q, count, Block32x512<true>{constants});
    } else {
      avx512::ForEachBlock<32>(x, q, count, Block32x512<false>{constants});
    }
  }
#endif
};

// Dynamic quantization of rows [begin, end): per row the range, the scale
// (stored as ScaleT) and zero point, then the row quantized with the stored
// scale. The second read of the row hits cache.
template <typename XT, typename ScaleT, typename QT>
struct QuantizeDynamicKernel {
  template <Isa kIsa>
  static JDQ_ALWAYS_INLINE void Run(const DynamicQuantizeProblem* p, int64_t begin, int64_t end) {
    using Map = QuantizeMap<XT, ScaleT, QT>;
    using C = typename Map::C;
    const XT* x = static_cast<const XT*>(p->x);
    QT* q = static_cast<QT*>(p->q);
    ScaleT* scale = static_cast<ScaleT*>(p->scale);
    const C qmin = static_cast<C>(p->qmin);
    const C qmax = static_cast<C>(p->qmax);
    const ScaleRange<C> range = ScaleRangeFor<C>(p->scale_type);
    for (int64_t row = begin; row < end; ++row) {
      const XT* x_row = x + row * p->cols;
      C lo, hi;
      RowRange<kIsa>(x_row, p->cols, lo, hi);
      const auto choice = ChooseRow<ScaleT>(lo, hi, p->symmetric, qmin, qmax, range);
      scale[row] = choice.stored_scale;
      p->zero_point[row] = choice.zero_point;
      const typename Map::Row k{reciprocal_rn(choice.scale), static_cast<C>(choice.zero_point),
                                qmin, qmax};
      RunSpan<kIsa, Map>(x_row, q + row * p->cols, p->cols, k);
    }
  }
};

}  // namespace

std::string Quantize(const QuantizeProblem& p, TaskRunner* runner) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  ScopedFlushDenormals flush;
  return VisitQuantizeTypes<CpuTypes, false>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        RunRowMap<QuantizeMap<XT, ScaleT, QT>>(p, p.x, p.q, runner);
        return std::string();
      });
}

std::string QuantizeDynamic(const DynamicQuantizeProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitQuantizeTypes<CpuTypes, true>(
      p.x_type, p.scale_type, p.q_type, [&](auto x_tag, auto scale_tag, auto q_tag) {
        using XT = typename decltype(x_tag)::type;
        using ScaleT = typename decltype(scale_tag)::type;
        using QT = typename decltype(q_tag)::type;
        const DynamicQuantizeProblem problem = p;
        ParallelRowsWriting(p.rows, p.cols, runner, static_cast<QT*>(p.q),
                            [problem](int64_t begin, int64_t end) {
          RunForIsa<QuantizeDynamicKernel<XT, ScaleT, QT>>(&problem, begin, end);
        });
        return std::string();
      });
}

}  // namespace jdq::cpu

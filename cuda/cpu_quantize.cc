// CPU quantize kernels, static and dynamic: row loops compiled for the
// baseline ISA and for AVX2 + F16C (chosen at run time, cpu_simd.h), split
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

// q[i] = clamp(rne(C(x[i]) * reciprocal + zero), qmin, qmax) over one piece of a row.
template <typename XT, typename QT, typename C>
struct QuantizeSpan {
  // A plain loop the compiler vectorizes.
  static JDQ_ALWAYS_INLINE void Scalar(const XT* __restrict x, QT* __restrict q, int64_t count,
                                       C reciprocal, C zero, C qmin, C qmax) {
    for (int64_t i = 0; i < count; ++i) {
      const C value = Convert<XT>::template ToCompute<C>(x[i]);
      q[i] = static_cast<QT>(quantize_value(value, reciprocal, zero, qmin, qmax));
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
                                          float reciprocal, float zero, float qmin, float qmax) {
    avx2::ForEachBlock<32>(x, q, count,
                           Block32{avx2::MakeLevelConstants(reciprocal, zero, qmin, qmax)});
  }
#endif
};

// Static quantization of the flat elements [begin, end), row piece by row piece.
template <typename XT, typename ScaleT, typename QT>
struct QuantizeKernel {
  template <bool kAvx2>
  static JDQ_ALWAYS_INLINE void Run(const QuantizeProblem* p, int64_t begin, int64_t end) {
    using C = ComputeType<ScaleT, XT>;
    const XT* x = static_cast<const XT*>(p->x);
    const ScaleT* scale = static_cast<const ScaleT*>(p->scale);
    QT* q = static_cast<QT*>(p->q);
    const C qmin = static_cast<C>(p->qmin);
    const C qmax = static_cast<C>(p->qmax);
    for (RowPieces piece(p->cols, begin, end); piece.count > 0; piece.Next()) {
      const C reciprocal = reciprocal_rn(Convert<ScaleT>::template ToCompute<C>(scale[piece.row]));
      const C zero = p->zero_point != nullptr ? static_cast<C>(p->zero_point[piece.row]) : C(0);
      RunSpan<kAvx2, QuantizeSpan<XT, QT, C>>(x + piece.element, q + piece.element, piece.count,
                                              reciprocal, zero, qmin, qmax);
    }
  }
};

// Dynamic quantization of rows [begin, end): per row the range, the scale
// (stored as ScaleT) and zero point, then the row quantized with the stored
// scale. The second read of the row hits cache.
template <typename XT, typename ScaleT, typename QT>
struct QuantizeDynamicKernel {
  template <bool kAvx2>
  static JDQ_ALWAYS_INLINE void Run(const DynamicQuantizeProblem* p, int64_t begin, int64_t end) {
    using C = ComputeType<ScaleT, XT>;
    const XT* x = static_cast<const XT*>(p->x);
    QT* q = static_cast<QT*>(p->q);
    ScaleT* scale = static_cast<ScaleT*>(p->scale);
    const C qmin = static_cast<C>(p->qmin);
    const C qmax = static_cast<C>(p->qmax);
    const ScaleRange<C> range = ScaleRangeFor<C>(p->scale_type);
    for (int64_t row = begin; row < end; ++row) {
      const XT* x_row = x + row * p->cols;
      C lo, hi;
      RowRange<kAvx2>(x_row, p->cols, lo, hi);
      const auto choice = ChooseRow<ScaleT>(lo, hi, p->symmetric, qmin, qmax, range);
      scale[row] = choice.stored_scale;
      p->zero_point[row] = choice.zero_point;
      RunSpan<kAvx2, QuantizeSpan<XT, QT, C>>(x_row, q + row * p->cols, p->cols,
                                              reciprocal_rn(choice.scale),
                                              static_cast<C>(choice.zero_point), qmin, qmax);
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
        const QuantizeProblem problem = p;
        ParallelFor(p.rows * p.cols, runner, [problem](int64_t begin, int64_t end) {
          PrefaultForWriting(static_cast<QT*>(problem.q) + begin, (end - begin) * sizeof(QT));
          RunForIsa<QuantizeKernel<XT, ScaleT, QT>>(&problem, begin, end);
        });
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
        ParallelRows(p.rows, p.cols, runner, [problem](int64_t begin, int64_t end) {
          PrefaultForWriting(static_cast<QT*>(problem.q) + begin * problem.cols,
                             (end - begin) * problem.cols * sizeof(QT));
          RunForIsa<QuantizeDynamicKernel<XT, ScaleT, QT>>(&problem, begin, end);
        });
        return std::string();
      });
}

}  // namespace jdq::cpu

// CPU kernels of fake_quantize_per_token: the forward with a given or a
// dynamically chosen scale, the tangent, and the backward pass.
//
// The forward passes run over XLA's threads, with row loops compiled for the
// baseline ISA and for AVX2 + F16C (chosen at run time, cpu_simd.h); the
// dynamic forward chooses its row scales as dynamic quantization does
// (cpu_dynamic_row.h). The tangent and backward passes are plain row loops;
// per-element work has no data-dependent control flow so the compiler
// vectorizes it. The dscale sum runs kLanes independent accumulators over the
// columns (column c goes to lane c % kLanes, in column order) and combines the
// lanes in a fixed tree, so it vectorizes and is deterministic. Subnormals are
// flushed as by XLA:CPU.
#include <cstdint>
#include <cstring>
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

constexpr int kLanes = 8;

template <typename C, typename Op>
C CombineLanes(const C (&lanes)[kLanes], Op op) {
  return op(op(op(lanes[0], lanes[1]), op(lanes[2], lanes[3])),
            op(op(lanes[4], lanes[5]), op(lanes[6], lanes[7])));
}

// `value` where the straight-through mask passes, else +0 (all bits clear).
// Done on the bits, which the compiler keeps unconditional and vectorizes (it
// sinks the load of a select's operand into a branch).
template <typename T>
inline T PassOrZero(bool pass, T value) {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t,
                                  std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  static_assert(sizeof(T) == sizeof(Bits), "PassOrZero needs a 2, 4 or 8 byte type");
  Bits bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits = static_cast<Bits>(bits & static_cast<Bits>(Bits{0} - static_cast<Bits>(pass)));
  T result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

// The per-row constants of fake quantization in C.
template <typename C>
struct RowConstants {
  C scale;
  C reciprocal;
  C zero_point;
};

template <typename C, typename ScaleT>
RowConstants<C> LoadRow(const ScaleT* scale, const int32_t* zero_point, int64_t row) {
  const C row_scale = Convert<ScaleT>::template ToCompute<C>(scale[row]);
  return {row_scale, reciprocal_rn(row_scale),
          zero_point != nullptr ? static_cast<C>(zero_point[row]) : C(0)};
}

// The row-wise map of fake quantization with a given scale (cpu_parallel.h):
// out[i] = to_x(fake_quantize_value(C(x[i]), reciprocal, zero, scale, qmin, qmax)).
template <typename XT, typename ScaleT>
struct FakeQuantizeMap {
  using In = XT;
  using Out = XT;
  using C = ComputeType<ScaleT, XT>;
  struct Row {
    RowConstants<C> k;
    C qmin;
    C qmax;
  };

  static JDQ_ALWAYS_INLINE Row ForRow(const FakeQuantizeProblem& p, int64_t row) {
    return {LoadRow<C>(static_cast<const ScaleT*>(p.scale), p.zero_point, row),
            static_cast<C>(p.qmin), static_cast<C>(p.qmax)};
  }

  // A plain loop the compiler vectorizes.
  static JDQ_ALWAYS_INLINE void Scalar(const XT* __restrict x, XT* __restrict out, int64_t count,
                                       const Row& r) {
    for (int64_t i = 0; i < count; ++i) {
      const C value = Convert<XT>::template ToCompute<C>(x[i]);
      out[i] = Convert<XT>::template FromCompute<C>(fake_quantize_value(
          value, r.k.reciprocal, r.k.zero_point, r.k.scale, r.qmin, r.qmax));
    }
  }

#if JDQ_CPU_AVX2
  // float32, bfloat16 or float16 x with a float32 compute type: the level of
  // avx2::Levels8, then (level + 0 - zp) * scale, 16 values a step
  // (avx2::MapValues16).
  static constexpr bool kHasAvx2 = std::is_same_v<C, float> && avx2::kIsFloat32Storage<XT>;

  // 8 results: the level + 0 (no -0), minus the zero point, times the scale.
  struct Values8 {
    avx2::LevelConstants k;
    __m256 scale;
    JDQ_TARGET_AVX2 JDQ_ALWAYS_INLINE __m256 operator()(const XT* x) const {
      const __m256 level = _mm256_add_ps(avx2::Levels8(avx2::Load8(x), k), _mm256_setzero_ps());
      return _mm256_mul_ps(_mm256_sub_ps(level, k.zero_point), scale);
    }
  };

  static JDQ_TARGET_AVX2 inline void Avx2(const XT* __restrict x, XT* __restrict out,
                                          int64_t count, const Row& r) {
    avx2::MapValues16(
        x, out, count,
        Values8{avx2::MakeLevelConstants(r.k.reciprocal, r.k.zero_point, r.qmin, r.qmax),
                _mm256_set1_ps(r.k.scale)});
  }
#endif
};

// The dynamic forward of rows [begin, end): the row's range and dynamic
// choice (cpu_dynamic_row.h, the scale stored as float32, as
// reference.choose_scale), then the row fake quantized with them.
template <typename XT>
struct FakeQuantizeDynamicKernel {
  template <Isa kIsa>
  static JDQ_ALWAYS_INLINE void Run(const FakeQuantizeDynamicProblem* p, int64_t begin,
                                    int64_t end) {
    using Map = FakeQuantizeMap<XT, float>;
    using C = typename Map::C;
    const XT* x = static_cast<const XT*>(p->x);
    XT* out = static_cast<XT*>(p->out);
    const C qmin = static_cast<C>(p->qmin);
    const C qmax = static_cast<C>(p->qmax);
    const ScaleRange<C> range = ScaleRangeFor<C>(DType::kF32);
    for (int64_t row = begin; row < end; ++row) {
      const XT* x_row = x + row * p->cols;
      C lo, hi;
      RowRange<kIsa>(x_row, p->cols, lo, hi);
      const auto choice = ChooseRow<float>(lo, hi, p->symmetric, qmin, qmax, range);
      p->scale[row] = choice.stored_scale;
      p->zero_point[row] = choice.zero_point;
      const typename Map::Row r{
          {choice.scale, reciprocal_rn(choice.scale), static_cast<C>(choice.zero_point)},
          qmin,
          qmax};
      RunSpan<kIsa, Map>(x_row, out + row * p->cols, p->cols, r);
    }
  }
};

template <typename XT, typename ScaleT, bool kHasTangentX, bool kHasTangentScale>
void FakeQuantizeTangentRows(const XT* __restrict x, const ScaleT* __restrict scale,
                             const int32_t* __restrict zero_point, const XT* __restrict tangent_x,
                             const ScaleT* __restrict tangent_scale, XT* __restrict out,
                             int64_t rows, int64_t cols, int32_t range_min, int32_t range_max) {
  using C = ComputeType<ScaleT, XT>;
  const C qmin = static_cast<C>(range_min);
  const C qmax = static_cast<C>(range_max);
  for (int64_t row = 0; row < rows; ++row) {
    const auto k = LoadRow<C>(scale, zero_point, row);
    const C row_tangent_scale =
        kHasTangentScale ? Convert<ScaleT>::template ToCompute<C>(tangent_scale[row]) : C(0);
    const XT* x_row = x + row * cols;
    const XT* tangent_row = kHasTangentX ? tangent_x + row * cols : nullptr;
    XT* out_row = out + row * cols;
    for (int64_t col = 0; col < cols; ++col) {
      const auto slopes = fake_quantize_slopes(Convert<XT>::template ToCompute<C>(x_row[col]),
                                               k.reciprocal, k.zero_point, qmin, qmax);
      if constexpr (!kHasTangentScale) {
        const XT tangent = tangent_row[col];
        out_row[col] = PassOrZero(slopes.inside, tangent);
      } else if constexpr (!kHasTangentX) {
        out_row[col] =
            Convert<XT>::template FromCompute<C>(mul_rn(slopes.lsq, row_tangent_scale));
      } else {
        const C tangent = Convert<XT>::template ToCompute<C>(tangent_row[col]);
        const C passed = PassOrZero(slopes.inside, tangent);
        out_row[col] = Convert<XT>::template FromCompute<C>(
            add_rn(passed, mul_rn(slopes.lsq, row_tangent_scale)));
      }
    }
  }
}

template <typename XT, typename ScaleT, bool kWantGradX>
void FakeQuantizeBackwardRows(const XT* __restrict x, const ScaleT* __restrict scale,
                              const int32_t* __restrict zero_point,
                              const XT* __restrict cotangent, XT* __restrict grad_x,
                              ScaleT* __restrict grad_scale, int64_t rows, int64_t cols,
                              int32_t range_min, int32_t range_max) {
  using C = ComputeType<ScaleT, XT>;
  const C qmin = static_cast<C>(range_min);
  const C qmax = static_cast<C>(range_max);
  for (int64_t row = 0; row < rows; ++row) {
    const auto k = LoadRow<C>(scale, zero_point, row);
    const XT* x_row = x + row * cols;
    const XT* cotangent_row = cotangent + row * cols;
    XT* grad_row = kWantGradX ? grad_x + row * cols : nullptr;
    C lanes[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = C(0);
    auto element = [&](int64_t col, int lane) {
      const auto slopes = fake_quantize_slopes(Convert<XT>::template ToCompute<C>(x_row[col]),
                                               k.reciprocal, k.zero_point, qmin, qmax);
      const XT cotangent_value = cotangent_row[col];
      if constexpr (kWantGradX) grad_row[col] = PassOrZero(slopes.inside, cotangent_value);
      lanes[lane] = add_rn(
          lanes[lane], mul_rn(Convert<XT>::template ToCompute<C>(cotangent_value), slopes.lsq));
    };
    const int64_t full = cols - cols % kLanes;
    for (int64_t col = 0; col < full; col += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) element(col + lane, lane);
    }
    for (int64_t col = full; col < cols; ++col) element(col, static_cast<int>(col - full));
    const C sum = CombineLanes(lanes, [](C a, C b) { return add_rn(a, b); });
    grad_scale[row] = Convert<ScaleT>::template FromCompute<C>(sum);
  }
}

}  // namespace

// The forward passes split their work over XLA's threads (cpu_parallel.h);
// each element is computed as before, so the results do not depend on the split.
std::string FakeQuantize(const FakeQuantizeProblem& p, TaskRunner* runner) {
  if (p.rows == 0 || p.cols == 0) return std::string();
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    RunRowMap<FakeQuantizeMap<XT, ScaleT>>(p, p.x, p.out, runner);
    return std::string();
  });
}

std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitFloat<CpuTypes>(p.x_type, [&](auto x_tag) {
    using XT = typename decltype(x_tag)::type;
    const FakeQuantizeDynamicProblem problem = p;
    ParallelRowsWriting(p.rows, p.cols, runner, static_cast<XT*>(p.out),
                        [problem](int64_t begin, int64_t end) {
      RunForIsa<FakeQuantizeDynamicKernel<XT>>(&problem, begin, end);
    });
    return std::string();
  });
}

// Elementwise, but split by whole rows like the backward (its row constants
// are computed once per row).
std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    const auto run = [&](auto has_x, auto has_scale) {
      const FakeQuantizeTangentProblem problem = p;
      ParallelRowsWriting(p.rows, p.cols, runner, static_cast<XT*>(p.out),
                          [problem](int64_t begin, int64_t end) {
        const int64_t offset = begin * problem.cols;
        XT* out = static_cast<XT*>(problem.out) + offset;
        FakeQuantizeTangentRows<XT, ScaleT, decltype(has_x)::value, decltype(has_scale)::value>(
            static_cast<const XT*>(problem.x) + offset,
            static_cast<const ScaleT*>(problem.scale) + begin, Offset(problem.zero_point, begin),
            Offset(static_cast<const XT*>(problem.tangent_x), offset),
            Offset(static_cast<const ScaleT*>(problem.tangent_scale), begin), out, end - begin,
            problem.cols, problem.qmin, problem.qmax);
      });
      return std::string();
    };
    if (p.tangent_x != nullptr && p.tangent_scale != nullptr) {
      return run(std::true_type{}, std::true_type{});
    }
    if (p.tangent_x != nullptr) return run(std::true_type{}, std::false_type{});
    if (p.tangent_scale != nullptr) return run(std::false_type{}, std::true_type{});
    return std::string("fake_quantize_per_token tangent: no tangent given");
  });
}

// Whole rows over XLA's threads: a row's grad_scale is summed by one thread
// in the same order as before, so the bits do not depend on the split.
std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    const auto run = [&](auto want_grad_x) {
      constexpr bool kWantGradX = decltype(want_grad_x)::value;
      const FakeQuantizeBackwardProblem problem = p;
      XT* const grad_x_out = kWantGradX ? static_cast<XT*>(p.grad_x) : nullptr;
      ParallelRowsWriting(p.rows, p.cols, runner, grad_x_out,
                          [problem](int64_t begin, int64_t end) {
        const int64_t offset = begin * problem.cols;
        XT* grad_x = kWantGradX ? static_cast<XT*>(problem.grad_x) + offset : nullptr;
        FakeQuantizeBackwardRows<XT, ScaleT, kWantGradX>(
            static_cast<const XT*>(problem.x) + offset,
            static_cast<const ScaleT*>(problem.scale) + begin,
            Offset(problem.zero_point, begin),
            static_cast<const XT*>(problem.cotangent) + offset, grad_x,
            static_cast<ScaleT*>(problem.grad_scale) + begin, end - begin, problem.cols,
            problem.qmin, problem.qmax);
      });
      return std::string();
    };
    return p.grad_x != nullptr ? run(std::true_type{}) : run(std::false_type{});
  });
}

}  // namespace jdq::cpu

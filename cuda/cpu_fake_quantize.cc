// CPU kernels of fake_quantize_per_token: the forward with a given or a
// dynamically chosen scale, the tangent, and the backward pass.
//
// Plain row loops; per-element work has no data-dependent control flow so the
// compiler vectorizes it. Reductions (the dynamic row min/max, the dscale sum)
// run kLanes independent accumulators over the columns (column c goes to
// lane c % kLanes, in column order) and combine the lanes in a fixed tree, so
// they vectorize and are deterministic. Subnormals are flushed as by XLA:CPU.
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cpu_flush.h"
#include "cpu_kernels.h"
#include "cpu_parallel.h"
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

template <typename XT, typename ScaleT>
void FakeQuantizeRows(const XT* __restrict x, const ScaleT* __restrict scale,
                      const int32_t* __restrict zero_point, XT* __restrict out, int64_t rows,
                      int64_t cols, int32_t range_min, int32_t range_max) {
  using C = ComputeType<ScaleT, XT>;
  const C qmin = static_cast<C>(range_min);
  const C qmax = static_cast<C>(range_max);
  for (int64_t row = 0; row < rows; ++row) {
    const auto k = LoadRow<C>(scale, zero_point, row);
    const XT* x_row = x + row * cols;
    XT* out_row = out + row * cols;
    for (int64_t col = 0; col < cols; ++col) {
      const C value = Convert<XT>::template ToCompute<C>(x_row[col]);
      out_row[col] = Convert<XT>::template FromCompute<C>(
          fake_quantize_value(value, k.reciprocal, k.zero_point, k.scale, qmin, qmax));
    }
  }
}

// The dynamic choice (as numerics.h and reference.choose_scale): lo/hi of the
// row widened to include 0, the scale in C stored as float32, the zero point
// from the stored scale; then the row is fake quantized with them.
template <typename XT>
void FakeQuantizeDynamicRows(const XT* __restrict x, XT* __restrict out, float* __restrict scale,
                             int32_t* __restrict zero_point, int64_t rows, int64_t cols,
                             int32_t range_min, int32_t range_max, bool symmetric) {
  using C = ComputeType<float, XT>;
  const C qmin = static_cast<C>(range_min);
  const C qmax = static_cast<C>(range_max);
  // reference.scale_bounds for a float32 scale: [FLT_MIN, min(FLT_MAX, 1 / min normal of C)].
  const C smallest_normal = static_cast<C>(FLT_MIN);
  const C largest = std::is_same_v<C, float> ? C(1) / C(FLT_MIN) : static_cast<C>(FLT_MAX);
  for (int64_t row = 0; row < rows; ++row) {
    const XT* x_row = x + row * cols;
    XT* out_row = out + row * cols;
    C lo_lanes[kLanes], hi_lanes[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) lo_lanes[lane] = hi_lanes[lane] = C(0);
    const int64_t full = cols - cols % kLanes;
    for (int64_t col = 0; col < full; col += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) {
        const C value = Convert<XT>::template ToCompute<C>(x_row[col + lane]);
        lo_lanes[lane] = min_propagate_nan(lo_lanes[lane], value);
        hi_lanes[lane] = max_propagate_nan(hi_lanes[lane], value);
      }
    }
    for (int64_t col = full; col < cols; ++col) {
      const C value = Convert<XT>::template ToCompute<C>(x_row[col]);
      lo_lanes[col - full] = min_propagate_nan(lo_lanes[col - full], value);
      hi_lanes[col - full] = max_propagate_nan(hi_lanes[col - full], value);
    }
    const C lo = CombineLanes(lo_lanes, [](C a, C b) { return min_propagate_nan(a, b); });
    const C hi = CombineLanes(hi_lanes, [](C a, C b) { return max_propagate_nan(a, b); });

    const C chosen = symmetric
                         ? symmetric_scale(max_propagate_nan(hi, -lo), qmax, smallest_normal, largest)
                         : asymmetric_scale(lo, hi, qmin, qmax, smallest_normal, largest);
    const float stored = static_cast<float>(chosen);
    const C row_scale = static_cast<C>(stored);
    const int32_t row_zero_point =
        symmetric ? 0 : asymmetric_zero_point(lo, hi, row_scale, qmin, qmax);
    scale[row] = stored;
    zero_point[row] = row_zero_point;

    const C reciprocal = reciprocal_rn(row_scale);
    const C zero = static_cast<C>(row_zero_point);
    for (int64_t col = 0; col < cols; ++col) {
      const C value = Convert<XT>::template ToCompute<C>(x_row[col]);
      out_row[col] = Convert<XT>::template FromCompute<C>(
          fake_quantize_value(value, reciprocal, zero, row_scale, qmin, qmax));
    }
  }
}

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

// The forward passes split their rows over XLA's threads (cpu_parallel.h);
// each row is computed as before, so the results do not depend on the split.
std::string FakeQuantize(const FakeQuantizeProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    const auto* x = static_cast<const XT*>(p.x);
    const auto* scale = static_cast<const ScaleT*>(p.scale);
    auto* out = static_cast<XT*>(p.out);
    ParallelRows(p.rows, p.cols, runner, [&, x, scale, out](int64_t begin, int64_t end) {
      PrefaultForWriting(out + begin * p.cols, (end - begin) * p.cols * sizeof(XT));
      FakeQuantizeRows(x + begin * p.cols, scale + begin,
                       p.zero_point != nullptr ? p.zero_point + begin : nullptr,
                       out + begin * p.cols, end - begin, p.cols, p.qmin, p.qmax);
    });
    return std::string();
  });
}

std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& p, TaskRunner* runner) {
  ScopedFlushDenormals flush;
  return VisitFloat<CpuTypes>(p.x_type, [&](auto x_tag) {
    using XT = typename decltype(x_tag)::type;
    const auto* x = static_cast<const XT*>(p.x);
    auto* out = static_cast<XT*>(p.out);
    ParallelRows(p.rows, p.cols, runner, [&, x, out](int64_t begin, int64_t end) {
      PrefaultForWriting(out + begin * p.cols, (end - begin) * p.cols * sizeof(XT));
      FakeQuantizeDynamicRows(x + begin * p.cols, out + begin * p.cols, p.scale + begin,
                              p.zero_point + begin, end - begin, p.cols, p.qmin, p.qmax,
                              p.symmetric);
    });
    return std::string();
  });
}

std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& p) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    const auto run = [&](auto has_x, auto has_scale) {
      FakeQuantizeTangentRows<XT, ScaleT, decltype(has_x)::value, decltype(has_scale)::value>(
          static_cast<const XT*>(p.x), static_cast<const ScaleT*>(p.scale), p.zero_point,
          static_cast<const XT*>(p.tangent_x), static_cast<const ScaleT*>(p.tangent_scale),
          static_cast<XT*>(p.out), p.rows, p.cols, p.qmin, p.qmax);
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

std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& p) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    const auto run = [&](auto want_grad_x) {
      FakeQuantizeBackwardRows<XT, ScaleT, decltype(want_grad_x)::value>(
          static_cast<const XT*>(p.x), static_cast<const ScaleT*>(p.scale), p.zero_point,
          static_cast<const XT*>(p.cotangent), static_cast<XT*>(p.grad_x),
          static_cast<ScaleT*>(p.grad_scale), p.rows, p.cols, p.qmin, p.qmax);
      return std::string();
    };
    return p.grad_x != nullptr ? run(std::true_type{}) : run(std::false_type{});
  });
}

}  // namespace jdq::cpu

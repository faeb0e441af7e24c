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
#include <string>
#include <type_traits>

#include "cpu_denormals.h"
#include "cpu_kernels.h"
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
void FakeQuantizeRows(const FakeQuantizeProblem& p) {
  using C = ComputeType<ScaleT, XT>;
  const C qmin = static_cast<C>(p.qmin);
  const C qmax = static_cast<C>(p.qmax);
  for (int64_t row = 0; row < p.rows; ++row) {
    const auto k = LoadRow<C>(static_cast<const ScaleT*>(p.scale), p.zero_point, row);
    const XT* __restrict x = static_cast<const XT*>(p.x) + row * p.cols;
    XT* __restrict out = static_cast<XT*>(p.out) + row * p.cols;
    for (int64_t col = 0; col < p.cols; ++col) {
      const C value = Convert<XT>::template ToCompute<C>(x[col]);
      out[col] = Convert<XT>::template FromCompute<C>(
          fake_quantize_value(value, k.reciprocal, k.zero_point, k.scale, qmin, qmax));
    }
  }
}

// The dynamic choice (as numerics.h and reference.choose_scale): lo/hi of the
// row widened to include 0, the scale in C stored as float32, the zero point
// from the stored scale; then the row is fake quantized with them.
template <typename XT>
void FakeQuantizeDynamicRows(const FakeQuantizeDynamicProblem& p) {
  using C = ComputeType<float, XT>;
  const C qmin = static_cast<C>(p.qmin);
  const C qmax = static_cast<C>(p.qmax);
  // reference.scale_bounds for a float32 scale: [FLT_MIN, min(FLT_MAX, 1 / min normal of C)].
  const C smallest_normal = static_cast<C>(FLT_MIN);
  const C largest = std::is_same_v<C, float> ? C(1) / C(FLT_MIN) : static_cast<C>(FLT_MAX);
  for (int64_t row = 0; row < p.rows; ++row) {
    const XT* __restrict x = static_cast<const XT*>(p.x) + row * p.cols;
    XT* __restrict out = static_cast<XT*>(p.out) + row * p.cols;
    C lo_lanes[kLanes], hi_lanes[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) lo_lanes[lane] = hi_lanes[lane] = C(0);
    int64_t col = 0;
    for (; col + kLanes <= p.cols; col += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) {
        const C value = Convert<XT>::template ToCompute<C>(x[col + lane]);
        lo_lanes[lane] = min_propagate_nan(lo_lanes[lane], value);
        hi_lanes[lane] = max_propagate_nan(hi_lanes[lane], value);
      }
    }
    for (int lane = 0; col < p.cols; ++col, ++lane) {
      const C value = Convert<XT>::template ToCompute<C>(x[col]);
      lo_lanes[lane] = min_propagate_nan(lo_lanes[lane], value);
      hi_lanes[lane] = max_propagate_nan(hi_lanes[lane], value);
    }
    const C lo = CombineLanes(lo_lanes, [](C a, C b) { return min_propagate_nan(a, b); });
    const C hi = CombineLanes(hi_lanes, [](C a, C b) { return max_propagate_nan(a, b); });

    const C chosen = p.symmetric
                         ? symmetric_scale(max_propagate_nan(hi, -lo), qmax, smallest_normal, largest)
                         : asymmetric_scale(lo, hi, qmin, qmax, smallest_normal, largest);
    const float stored = static_cast<float>(chosen);
    const C scale = static_cast<C>(stored);
    const int32_t zero_point =
        p.symmetric ? 0 : asymmetric_zero_point(lo, hi, scale, qmin, qmax);
    p.scale[row] = stored;
    p.zero_point[row] = zero_point;

    const C reciprocal = reciprocal_rn(scale);
    const C zero = static_cast<C>(zero_point);
    for (col = 0; col < p.cols; ++col) {
      const C value = Convert<XT>::template ToCompute<C>(x[col]);
      out[col] = Convert<XT>::template FromCompute<C>(
          fake_quantize_value(value, reciprocal, zero, scale, qmin, qmax));
    }
  }
}

template <typename XT, typename ScaleT, bool kHasTangentX, bool kHasTangentScale>
void FakeQuantizeTangentRows(const FakeQuantizeTangentProblem& p) {
  using C = ComputeType<ScaleT, XT>;
  const C qmin = static_cast<C>(p.qmin);
  const C qmax = static_cast<C>(p.qmax);
  const XT zero = Convert<XT>::template FromCompute<C>(C(0));
  for (int64_t row = 0; row < p.rows; ++row) {
    const auto k = LoadRow<C>(static_cast<const ScaleT*>(p.scale), p.zero_point, row);
    C tangent_scale = C(0);
    if constexpr (kHasTangentScale) {
      tangent_scale =
          Convert<ScaleT>::template ToCompute<C>(static_cast<const ScaleT*>(p.tangent_scale)[row]);
    }
    const XT* __restrict x = static_cast<const XT*>(p.x) + row * p.cols;
    const XT* __restrict tangent_x =
        kHasTangentX ? static_cast<const XT*>(p.tangent_x) + row * p.cols : nullptr;
    XT* __restrict out = static_cast<XT*>(p.out) + row * p.cols;
    for (int64_t col = 0; col < p.cols; ++col) {
      const auto slopes = fake_quantize_slopes(Convert<XT>::template ToCompute<C>(x[col]),
                                               k.reciprocal, k.zero_point, qmin, qmax);
      if constexpr (!kHasTangentScale) {
        out[col] = slopes.inside ? tangent_x[col] : zero;
      } else if constexpr (!kHasTangentX) {
        out[col] = Convert<XT>::template FromCompute<C>(mul_rn(slopes.lsq, tangent_scale));
      } else {
        const C passed =
            slopes.inside ? Convert<XT>::template ToCompute<C>(tangent_x[col]) : C(0);
        out[col] = Convert<XT>::template FromCompute<C>(
            add_rn(passed, mul_rn(slopes.lsq, tangent_scale)));
      }
    }
  }
}

template <typename XT, typename ScaleT, bool kWantGradX>
void FakeQuantizeBackwardRows(const FakeQuantizeBackwardProblem& p) {
  using C = ComputeType<ScaleT, XT>;
  const C qmin = static_cast<C>(p.qmin);
  const C qmax = static_cast<C>(p.qmax);
  const XT zero = Convert<XT>::template FromCompute<C>(C(0));
  for (int64_t row = 0; row < p.rows; ++row) {
    const auto k = LoadRow<C>(static_cast<const ScaleT*>(p.scale), p.zero_point, row);
    const XT* __restrict x = static_cast<const XT*>(p.x) + row * p.cols;
    const XT* __restrict cotangent = static_cast<const XT*>(p.cotangent) + row * p.cols;
    XT* __restrict grad_x = kWantGradX ? static_cast<XT*>(p.grad_x) + row * p.cols : nullptr;
    C lanes[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = C(0);
    auto element = [&](int64_t col, int lane) {
      const auto slopes = fake_quantize_slopes(Convert<XT>::template ToCompute<C>(x[col]),
                                               k.reciprocal, k.zero_point, qmin, qmax);
      if constexpr (kWantGradX) grad_x[col] = slopes.inside ? cotangent[col] : zero;
      lanes[lane] = add_rn(
          lanes[lane], mul_rn(Convert<XT>::template ToCompute<C>(cotangent[col]), slopes.lsq));
    };
    int64_t col = 0;
    for (; col + kLanes <= p.cols; col += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) element(col + lane, lane);
    }
    for (int lane = 0; col < p.cols; ++col, ++lane) element(col, lane);
    const C sum = CombineLanes(lanes, [](C a, C b) { return add_rn(a, b); });
    static_cast<ScaleT*>(p.grad_scale)[row] = Convert<ScaleT>::template FromCompute<C>(sum);
  }
}

}  // namespace

std::string FakeQuantize(const FakeQuantizeProblem& p) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    FakeQuantizeRows<typename decltype(x_tag)::type, typename decltype(scale_tag)::type>(p);
    return std::string();
  });
}

std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& p) {
  ScopedFlushDenormals flush;
  return VisitFloat<CpuTypes>(p.x_type, [&](auto x_tag) {
    FakeQuantizeDynamicRows<typename decltype(x_tag)::type>(p);
    return std::string();
  });
}

std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& p) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    if (p.tangent_x != nullptr && p.tangent_scale != nullptr) {
      FakeQuantizeTangentRows<XT, ScaleT, true, true>(p);
    } else if (p.tangent_x != nullptr) {
      FakeQuantizeTangentRows<XT, ScaleT, true, false>(p);
    } else if (p.tangent_scale != nullptr) {
      FakeQuantizeTangentRows<XT, ScaleT, false, true>(p);
    } else {
      return std::string("fake_quantize_per_token tangent: no tangent given");
    }
    return std::string();
  });
}

std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& p) {
  ScopedFlushDenormals flush;
  return VisitFakeQuantizeTypes<CpuTypes>(p.x_type, p.scale_type, [&](auto x_tag, auto scale_tag) {
    using XT = typename decltype(x_tag)::type;
    using ScaleT = typename decltype(scale_tag)::type;
    if (p.grad_x != nullptr) {
      FakeQuantizeBackwardRows<XT, ScaleT, true>(p);
    } else {
      FakeQuantizeBackwardRows<XT, ScaleT, false>(p);
    }
    return std::string();
  });
}

}  // namespace jdq::cpu

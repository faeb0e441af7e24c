// The per-row element-wise ops run by RowwiseMapKernel (rowwise_map.cuh):
// dequantize, static quantize, and fake quantize (forward with a given scale,
// and its forward-mode tangent). Each is a functor holding its buffers and
// scalars; the numerics are those of numerics.h, shared with the CPU kernels.
#ifndef JAX_DEQUANT_ROWWISE_OPS_CUH_
#define JAX_DEQUANT_ROWWISE_OPS_CUH_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_types.cuh"
#include "numerics.h"

namespace jdq::cuda {

// A row's scale and zero point as stored (zero point 0 when there is none).
template <typename ScaleT>
struct StoredRow {
  ScaleT scale;
  int32_t zero_point;
};

template <typename ScaleT>
__device__ __forceinline__ StoredRow<ScaleT> LoadStoredRow(const ScaleT* __restrict__ scale,
                                                           const int32_t* __restrict__ zero_point,
                                                           int64_t row) {
  return {LoadInOrder(scale + row), zero_point != nullptr ? LoadInOrder(zero_point + row) : 0};
}

// out = (q - zero_point) * scale.
template <typename QT, typename ScaleT, typename OutT>
struct DequantizeOp {
  using In = QT;
  using Out = OutT;
  using C = ComputeType<ScaleT, OutT>;
  static constexpr bool kSecondInput = false;
  struct Row {
    C scale;
    C zero_point;
  };

  const QT* in;
  const QT* in2;  // unused
  OutT* out;
  const ScaleT* scale;
  const int32_t* zero_point;

  __device__ __forceinline__ StoredRow<ScaleT> LoadRow(int64_t row) const {
    return LoadStoredRow(scale, zero_point, row);
  }
  __device__ __forceinline__ Row Prepare(const StoredRow<ScaleT>& stored) const {
    return {Convert<ScaleT>::template ToCompute<C>(stored.scale), static_cast<C>(stored.zero_point)};
  }
  __device__ __forceinline__ OutT Apply(const Row& row, QT level, QT) const {
    return Convert<OutT>::template FromCompute<C>(
        dequantize_value(Convert<QT>::template ToCompute<C>(level), row.zero_point, row.scale));
  }
};

// Four levels as four int8 (or uint8) bytes, each saturated to the type's
// range, first level in the lowest byte: two cvt.pack.sat instructions.
template <typename QT>
__device__ __forceinline__ uint32_t PackSaturated4(int32_t l0, int32_t l1, int32_t l2,
                                                   int32_t l3) {
  static_assert(sizeof(QT) == 1, "packs bytes");
  uint32_t high, word;
  // cvt.pack.sat.{s8,u8}.s32.b32 d, a, b, c: byte 0 of d is sat(b), byte 1
  // sat(a), bytes 2-3 the low half of c.
  if constexpr (std::is_signed_v<QT>) {
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, 0;" : "=r"(high) : "r"(l3), "r"(l2));
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, %3;" : "=r"(word) : "r"(l1), "r"(l0), "r"(high));
  } else {
    asm("cvt.pack.sat.u8.s32.b32 %0, %1, %2, 0;" : "=r"(high) : "r"(l3), "r"(l2));
    asm("cvt.pack.sat.u8.s32.b32 %0, %1, %2, %3;" : "=r"(word) : "r"(l1), "r"(l0), "r"(high));
  }
  return word;
}

// quantize_value of kVec values (a multiple of 4) for a float32 compute type
// with no zero point (0) and the storage type's full range as the clamp:
// rne(x * r) converted to int32 (saturating at the int32 range; NaN gives 0,
// the zero point: PTX's cvt from .f32 to .s32 defines both) and packed with
// saturation to int8/uint8. The same integers
// as quantize_value (adding a zero point of +0 changes no level) in a third of
// its instructions.
template <typename QT, typename XT, int kVec>
__device__ __forceinline__ Pack<QT, kVec> QuantizeSaturating(const Pack<XT, kVec>& values,
                                                             float reciprocal) {
  static_assert(kVec % 4 == 0, "whole 4-byte words of levels");
  uint32_t words[kVec / 4];
#pragma unroll
  for (int j = 0; j < kVec / 4; ++j) {
    int32_t l[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      l[i] = __float2int_rn(
          mul_rn(Convert<XT>::template ToCompute<float>(values.v[4 * j + i]), reciprocal));
    }
    words[j] = PackSaturated4<QT>(l[0], l[1], l[2], l[3]);
  }
  Pack<QT, kVec> levels;
  memcpy(&levels, words, sizeof(levels));
  return levels;
}

// q = clamp(rne(x * (1 / scale) + zero_point), qmin, qmax).
//
// `saturating` (set by the launcher) says the clamp is the storage type's
// whole range and there is no zero point: vectors then go through
// QuantizeSaturating.
template <typename XT, typename ScaleT, typename QT>
struct QuantizeOp {
  using In = XT;
  using Out = QT;
  using C = ComputeType<ScaleT, XT>;
  static constexpr bool kSecondInput = false;
  static constexpr bool kVectorApply = true;
  struct Row {
    C reciprocal;
    C zero_point;
  };

  const XT* in;
  const XT* in2;  // unused
  QT* out;
  const ScaleT* scale;
  const int32_t* zero_point;
  C qmin;
  C qmax;
  bool saturating;

  __device__ __forceinline__ StoredRow<ScaleT> LoadRow(int64_t row) const {
    return LoadStoredRow(scale, zero_point, row);
  }
  __device__ __forceinline__ Row Prepare(const StoredRow<ScaleT>& stored) const {
    return {reciprocal_rn(Convert<ScaleT>::template ToCompute<C>(stored.scale)),
            static_cast<C>(stored.zero_point)};
  }
  __device__ __forceinline__ QT Apply(const Row& row, XT value, XT) const {
    return static_cast<QT>(quantize_value(Convert<XT>::template ToCompute<C>(value),
                                          row.reciprocal, row.zero_point, qmin, qmax));
  }
  template <int kVec>
  __device__ __forceinline__ Pack<QT, kVec> ApplyVector(const Row& row,
                                                        const Pack<XT, kVec>& values) const {
    if constexpr (std::is_same_v<C, float> && kVec % 4 == 0) {
      if (saturating) return QuantizeSaturating<QT>(values, row.reciprocal);
    }
    Pack<QT, kVec> levels;
#pragma unroll
    for (int i = 0; i < kVec; ++i) levels.v[i] = Apply(row, values.v[i], values.v[i]);
    return levels;
  }
};

// Fake quantization's row constants in C.
template <typename C>
struct FakeQuantizeRow {
  C scale;
  C reciprocal;
  C zero_point;
};

template <typename C, typename ScaleT>
__device__ __forceinline__ FakeQuantizeRow<C> PrepareFakeQuantizeRow(
    const StoredRow<ScaleT>& stored) {
  const C row_scale = Convert<ScaleT>::template ToCompute<C>(stored.scale);
  return {row_scale, reciprocal_rn(row_scale), static_cast<C>(stored.zero_point)};
}

// out = fake_quantize_value(x) with a given scale.
template <typename XT, typename ScaleT>
struct FakeQuantizeOp {
  using In = XT;
  using Out = XT;
  using C = ComputeType<ScaleT, XT>;
  static constexpr bool kSecondInput = false;
  static constexpr bool kVectorApply = true;

  const XT* in;
  const XT* in2;  // unused
  XT* out;
  const ScaleT* scale;
  const int32_t* zero_point;
  C qmin;
  C qmax;

  __device__ __forceinline__ StoredRow<ScaleT> LoadRow(int64_t row) const {
    return LoadStoredRow(scale, zero_point, row);
  }
  __device__ __forceinline__ FakeQuantizeRow<C> Prepare(const StoredRow<ScaleT>& stored) const {
    return PrepareFakeQuantizeRow<C>(stored);
  }
  __device__ __forceinline__ XT Apply(const FakeQuantizeRow<C>& row, XT value, XT) const {
    return Convert<XT>::template FromCompute<C>(
        fake_quantize_value(Convert<XT>::template ToCompute<C>(value), row.reciprocal,
                            row.zero_point, row.scale, qmin, qmax));
  }
  // Without a zero point (0) and with a float32 compute type, the level is
  // rne(x * r) converted to int32 (saturating; NaN gives 0, the zero point),
  // clamped as an integer, and converted back exactly: a level of 0 comes back
  // as +0, as fake_quantize_value's +0 gives it. The same bits as Apply in
  // about half the instructions.
  template <int kVec>
  __device__ __forceinline__ Pack<XT, kVec> ApplyVector(const FakeQuantizeRow<C>& row,
                                                        const Pack<XT, kVec>& values) const {
    Pack<XT, kVec> results;
    if constexpr (std::is_same_v<C, float>) {
      if (zero_point == nullptr) {
        const int32_t low = static_cast<int32_t>(qmin);
        const int32_t high = static_cast<int32_t>(qmax);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const int32_t level = __float2int_rn(
              mul_rn(Convert<XT>::template ToCompute<float>(values.v[i]), row.reciprocal));
          const int32_t clamped = min(max(level, low), high);
          results.v[i] = Convert<XT>::template FromCompute<float>(
              mul_rn(static_cast<float>(clamped), row.scale));
        }
        return results;
      }
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) results.v[i] = Apply(row, values.v[i], values.v[i]);
    return results;
  }
};

// The forward-mode tangent of fake quantization (also its x-only backward):
// inside * tangent_x + lsq * tangent_scale. in2 is the x tangent and
// tangent_scale the scale tangent; either may be null (a zero tangent), not
// both.
template <typename XT, typename ScaleT>
struct FakeQuantizeTangentOp {
  using In = XT;
  using Out = XT;
  using C = ComputeType<ScaleT, XT>;
  static constexpr bool kSecondInput = true;
  struct StoredTangentRow {
    StoredRow<ScaleT> stored;
    ScaleT tangent_scale;
  };
  struct Row {
    FakeQuantizeRow<C> constants;
    C tangent_scale;
  };

  const XT* in;
  const XT* in2;
  XT* out;
  const ScaleT* scale;
  const int32_t* zero_point;
  const ScaleT* tangent_scale;
  C qmin;
  C qmax;

  // Without a scale tangent, tangent_scale holds an unused copy of the scale.
  __device__ __forceinline__ StoredTangentRow LoadRow(int64_t row) const {
    return {LoadStoredRow(scale, zero_point, row),
            LoadInOrder((tangent_scale != nullptr ? tangent_scale : scale) + row)};
  }
  __device__ __forceinline__ Row Prepare(const StoredTangentRow& stored) const {
    return {PrepareFakeQuantizeRow<C>(stored.stored),
            Convert<ScaleT>::template ToCompute<C>(stored.tangent_scale)};
  }
  __device__ __forceinline__ XT Apply(const Row& row, XT value, XT tangent) const {
    const FakeQuantizeRow<C>& k = row.constants;
    const auto slopes = fake_quantize_slopes(Convert<XT>::template ToCompute<C>(value),
                                             k.reciprocal, k.zero_point, qmin, qmax);
    if (tangent_scale == nullptr) {
      return slopes.inside ? tangent : Convert<XT>::template FromCompute<C>(C(0));
    }
    const C scale_term = mul_rn(slopes.lsq, row.tangent_scale);
    if (in2 == nullptr) return Convert<XT>::template FromCompute<C>(scale_term);
    const C passed = slopes.inside ? Convert<XT>::template ToCompute<C>(tangent) : C(0);
    return Convert<XT>::template FromCompute<C>(add_rn(passed, scale_term));
  }
};

}  // namespace jdq::cuda

#endif  // JAX_DEQUANT_ROWWISE_OPS_CUH_

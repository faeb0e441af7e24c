// 16-bit float storage types for the CPU kernels and their conversions.
//
// Conversions are exact bit manipulations with round-half-to-even, the same
// results XLA:CPU produces. Subnormal handling of the arithmetic itself is set
// by the CPU handler (see ScopedFlushDenormals in cpu_flush.h).
#ifndef JAX_DEQUANT_CPU_TYPES_H_
#define JAX_DEQUANT_CPU_TYPES_H_

#include <cstdint>
#include <cstring>

#include "numerics.h"

namespace jdq {

struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

inline uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}
inline float BitsToFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline float BFloat16ToFloat(BFloat16 value) { return BitsToFloat(uint32_t{value.bits} << 16); }

inline BFloat16 FloatToBFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  return BFloat16{static_cast<uint16_t>(is_nan ? quiet_nan : rounded >> 16)};
}

inline float Float16ToFloat(Float16 value) {
  const uint32_t sign = uint32_t{value.bits & 0x8000u} << 16;
  const uint32_t magnitude = value.bits & 0x7fffu;
  if (magnitude >= 0x7c00u) {  // inf or NaN
    return BitsToFloat(sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13));
  }
  if (magnitude >= 0x0400u) {  // normal: rebias the exponent
    return BitsToFloat(sign | ((magnitude << 13) + ((127u - 15u) << 23)));
  }
  // Subnormal or zero: magnitude * 2^-24 is exact and a normal float.
  const float value_abs = static_cast<float>(magnitude) * 5.9604644775390625e-08f;
  return BitsToFloat(sign | FloatBits(value_abs));
}

inline Float16 FloatToFloat16(float value) {
  uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  bits &= 0x7fffffffu;
  if (bits >= 0x7f800000u) {  // inf stays inf, NaN becomes a quiet NaN
    return Float16{static_cast<uint16_t>(sign | (bits > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  }
  if (bits >= 0x477ff000u) {  // >= 65520 rounds to inf
    return Float16{static_cast<uint16_t>(sign | 0x7c00u)};
  }
  if (bits < 0x38800000u) {  // below 2^-14: float16 subnormal or zero
    // Adding 0.5 lines the float16 subnormal grid up with the float's last
    // mantissa bits, so the FPU's own round-half-even does the rounding.
    const float aligned = BitsToFloat(bits) + 0.5f;
    return Float16{static_cast<uint16_t>(sign | (FloatBits(aligned) - FloatBits(0.5f)))};
  }
  const uint32_t mantissa_odd = (bits >> 13) & 1u;
  bits += (uint32_t{15u - 127u} << 23) + 0xfffu + mantissa_odd;
  return Float16{static_cast<uint16_t>(sign | (bits >> 13))};
}

template <>
struct Convert<BFloat16> {
  template <typename C>
  static inline C ToCompute(BFloat16 value) {
    return static_cast<C>(BFloat16ToFloat(value));
  }
  template <typename C>
  static inline BFloat16 FromCompute(C value) {
    return FloatToBFloat16(static_cast<float>(value));
  }
};

template <>
struct Convert<Float16> {
  template <typename C>
  static inline C ToCompute(Float16 value) {
    return static_cast<C>(Float16ToFloat(value));
  }
  template <typename C>
  static inline Float16 FromCompute(C value) {
    return FloatToFloat16(static_cast<float>(value));
  }
};

// Storage types of the CPU kernels, by DType.
struct CpuTypes {
  using BF16 = BFloat16;
  using F16 = Float16;
};

}  // namespace jdq

#endif  // JAX_DEQUANT_CPU_TYPES_H_

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

// Picks `if_true` where `mask` is all ones and `if_false` where it is zero.
// The float16 conversions compute every case and pick with masks instead of
// branches: the compiler then vectorizes the loops that call them (with a
// branch it would keep the floating-point add of the subnormal case under it,
// which it may not execute speculatively, and give up).
inline uint32_t SelectBits(uint32_t mask, uint32_t if_true, uint32_t if_false) {
  return (if_true & mask) | (if_false & ~mask);
}
inline uint32_t MaskIf(bool condition) { return 0u - static_cast<uint32_t>(condition); }

inline float Float16ToFloat(Float16 value) {
  const uint32_t sign = uint32_t{value.bits & 0x8000u} << 16;
  const uint32_t magnitude = value.bits & 0x7fffu;
  // inf or NaN: all-ones exponent, the payload moved up.
  const uint32_t special = sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13);
  // Normal: rebias the exponent.
  const uint32_t normal = sign | ((magnitude << 13) + ((127u - 15u) << 23));
  // Subnormal or zero: magnitude * 2^-24 is exact and a normal float.
  const float small_value = static_cast<float>(static_cast<int32_t>(magnitude));
  const uint32_t small = sign | FloatBits(small_value * 5.9604644775390625e-08f);
  const uint32_t finite = SelectBits(MaskIf(magnitude >= 0x0400u), normal, small);
  return BitsToFloat(SelectBits(MaskIf(magnitude >= 0x7c00u), special, finite));
}

inline Float16 FloatToFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  // Normal result: rebias and round half to even on the 13 dropped bits.
  const uint32_t normal =
      (magnitude + (uint32_t{15u - 127u} << 23) + 0xfffu + ((magnitude >> 13) & 1u)) >> 13;
  // Below 2^-14, a float16 subnormal or zero: adding 0.5 lines the float16
  // subnormal grid up with the float's last mantissa bits, so the FPU's own
  // round-half-even does the rounding.
  const uint32_t small = FloatBits(BitsToFloat(magnitude) + 0.5f) - FloatBits(0.5f);
  // NaN becomes a quiet NaN; inf and everything >= 65520 become inf.
  const uint32_t special = SelectBits(MaskIf(magnitude > 0x7f800000u), 0x7e00u, 0x7c00u);
  uint32_t result = SelectBits(MaskIf(magnitude < 0x38800000u), small, normal);
  result = SelectBits(MaskIf(magnitude >= 0x477ff000u), special, result);
  return Float16{static_cast<uint16_t>(sign | result)};
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

// 16-bit float storage types for the CUDA kernels and their conversions
// (CUDA's round-to-nearest-even intrinsics; subnormals are kept).
#ifndef JAX_DEQUANT_CUDA_TYPES_CUH_
#define JAX_DEQUANT_CUDA_TYPES_CUH_

#include <cuda_bf16.h>
#include <cstdint>
#include <cstring>
#include <cuda_fp16.h>
#include <type_traits>

#include "numerics.h"

namespace jdq {

template <>
struct Convert<__nv_bfloat16> {
  template <typename C>
  static __device__ __forceinline__ C ToCompute(__nv_bfloat16 value) {
    // Exact: a bfloat16 is the high half of its float32. (Packs: WidenPack
    // widens the two halves of a 32-bit word without moving the high one.)
    const uint32_t bits = static_cast<uint32_t>(__bfloat16_as_ushort(value)) << 16;
    return static_cast<C>(__uint_as_float(bits));
  }
  template <typename C>
  static __device__ __forceinline__ __nv_bfloat16 FromCompute(C value) {
    return __float2bfloat16_rn(static_cast<float>(value));
  }
};

template <>
struct Convert<__half> {
  template <typename C>
  static __device__ __forceinline__ C ToCompute(__half value) {
    return static_cast<C>(__half2float(value));
  }
  template <typename C>
  static __device__ __forceinline__ __half FromCompute(C value) {
    return __float2half_rn(static_cast<float>(value));
  }
};

// Storage types of the CUDA kernels, by DType.
struct CudaTypes {
  using BF16 = __nv_bfloat16;
  using F16 = __half;
};

// A vector of N elements loaded or stored with the widest accesses its
// alignment allows (16 bytes at most per access).
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};

// Byte kByte of `word` as a 32-bit integer, sign-extended (kSigned) or
// zero-extended: one byte permute.
template <int kByte, bool kSigned>
__device__ __forceinline__ uint32_t ExtendByte(uint32_t word) {
  // prmt's selector, a nibble per result byte: the byte itself, then copies
  // of its sign (8 + kByte) or zero bytes (4: byte 0 of the zero operand).
  constexpr uint32_t kFill = kSigned ? 8 + kByte : 4;
  constexpr uint32_t kSelector = kByte | (kFill << 4) | (kFill << 8) | (kFill << 12);
  uint32_t extended;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(extended) : "r"(word), "n"(kSelector));
  return extended;
}

// The compute values of a pack's elements, in order (Convert's values, all
// exact). Packed types are widened a 32-bit word at a time. bfloat16: the
// low element is word << 16 and the high one word & 0xffff0000, one
// instruction each (widened one element at a time, the high one is moved
// down and shifted back up). 8-bit integers: each byte is extended by one
// byte permute and converted from 32 bits (on sm_90 a full-rate I2FP; the
// 8-bit conversion, I2F.S8, runs at a quarter of the rate and needs a shift
// first for all but the low byte).
template <typename C, typename T, int N>
__device__ __forceinline__ void WidenPack(const Pack<T, N>& pack, C (&values)[N]) {
  constexpr bool kBytes = std::is_same_v<T, int8_t> || std::is_same_v<T, uint8_t>;
  if constexpr (kBytes && N % 4 == 0) {
    constexpr bool kSigned = std::is_same_v<T, int8_t>;
    using Extended = std::conditional_t<kSigned, int32_t, uint32_t>;
    uint32_t words[N / 4];
    memcpy(words, &pack, sizeof(words));
#pragma unroll
    for (int j = 0; j < N / 4; ++j) {
      values[4 * j] = static_cast<C>(static_cast<Extended>(ExtendByte<0, kSigned>(words[j])));
      values[4 * j + 1] = static_cast<C>(static_cast<Extended>(ExtendByte<1, kSigned>(words[j])));
      values[4 * j + 2] = static_cast<C>(static_cast<Extended>(ExtendByte<2, kSigned>(words[j])));
      values[4 * j + 3] = static_cast<C>(static_cast<Extended>(ExtendByte<3, kSigned>(words[j])));
    }
  } else if constexpr (std::is_same_v<T, __nv_bfloat16> && N % 2 == 0) {
    uint32_t words[N / 2];
    memcpy(words, &pack, sizeof(words));
#pragma unroll
    for (int j = 0; j < N / 2; ++j) {
      values[2 * j] = static_cast<C>(__uint_as_float(words[j] << 16));
      values[2 * j + 1] = static_cast<C>(__uint_as_float(words[j] & 0xffff0000u));
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) values[i] = Convert<T>::template ToCompute<C>(pack.v[i]);
  }
}

// Loads *address (global memory, read-only for the kernel's lifetime) as one
// access of sizeof(T) bytes (1, 2, 4, 8 or 16; T aligned to it), issued where
// it is written. The load is a volatile asm statement: otherwise the compiler
// sinks a load to its first use, behind other work and behind the branches
// between, and a thread waits for its loads one after another instead of all
// at once.
template <typename T>
__device__ __forceinline__ T LoadInOrder(const T* address) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8 ||
                    sizeof(T) == 16,
                "one access of 1, 2, 4, 8 or 16 bytes");
  const size_t global = __cvta_generic_to_global(address);
  T value;
  if constexpr (sizeof(T) == 16) {
    uint4 w;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w)
                 : "l"(global));
    memcpy(&value, &w, sizeof(value));
  } else if constexpr (sizeof(T) == 8) {
    uint2 w;
    asm volatile("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(w.x), "=r"(w.y) : "l"(global));
    memcpy(&value, &w, sizeof(value));
  } else if constexpr (sizeof(T) == 4) {
    uint32_t w;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(w) : "l"(global));
    memcpy(&value, &w, sizeof(value));
  } else if constexpr (sizeof(T) == 2) {
    uint16_t w;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(w) : "l"(global));
    memcpy(&value, &w, sizeof(value));
  } else {
    uint32_t w;
    asm volatile("ld.global.nc.u8 %0, [%1];" : "=r"(w) : "l"(global));
    const uint8_t byte = static_cast<uint8_t>(w);
    memcpy(&value, &byte, sizeof(value));
  }
  return value;
}

// Stores value to *address (global memory; sizeof(T) of 1, 2, 4, 8 or 16
// bytes, T aligned to it) when `store` holds, as one predicated instruction.
// A plain `if (store) *address = value` becomes a branch around all the work
// feeding the store, and the assembler then sinks that work's loads into it.
template <typename T>
__device__ __forceinline__ void StoreIf(bool store, T* address, const T& value) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8 ||
                    sizeof(T) == 16,
                "one access of 1, 2, 4, 8 or 16 bytes");
  const size_t global = __cvta_generic_to_global(address);
  const uint32_t predicate = store ? 1u : 0u;
  if constexpr (sizeof(T) == 16) {
    uint4 w;
    memcpy(&w, &value, sizeof(w));
    asm volatile(
        "{ .reg .pred p; setp.ne.u32 p, %0, 0; @p st.global.v4.u32 [%1], {%2, %3, %4, %5}; }"
        :
        : "r"(predicate), "l"(global), "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w)
        : "memory");
  } else if constexpr (sizeof(T) == 8) {
    uint2 w;
    memcpy(&w, &value, sizeof(w));
    asm volatile("{ .reg .pred p; setp.ne.u32 p, %0, 0; @p st.global.v2.u32 [%1], {%2, %3}; }"
                 :
                 : "r"(predicate), "l"(global), "r"(w.x), "r"(w.y)
                 : "memory");
  } else if constexpr (sizeof(T) == 4) {
    uint32_t w;
    memcpy(&w, &value, sizeof(w));
    asm volatile("{ .reg .pred p; setp.ne.u32 p, %0, 0; @p st.global.u32 [%1], %2; }"
                 :
                 : "r"(predicate), "l"(global), "r"(w)
                 : "memory");
  } else if constexpr (sizeof(T) == 2) {
    uint16_t w;
    memcpy(&w, &value, sizeof(w));
    asm volatile("{ .reg .pred p; setp.ne.u32 p, %0, 0; @p st.global.u16 [%1], %2; }"
                 :
                 : "r"(predicate), "l"(global), "h"(w)
                 : "memory");
  } else {
    uint8_t byte;
    memcpy(&byte, &value, sizeof(byte));
    const uint32_t w = byte;
    asm volatile("{ .reg .pred p; setp.ne.u32 p, %0, 0; @p st.global.u8 [%1], %2; }"
                 :
                 : "r"(predicate), "l"(global), "r"(w)
                 : "memory");
  }
}

}  // namespace jdq

#endif  // JAX_DEQUANT_CUDA_TYPES_CUH_

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
    // Exact: a bfloat16 is the high half of its float32. Spelled as a shift so
    // the compiler can widen both halves of a packed pair in place.
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

// Levels of 8-bit integers minus a zero point, as float32, each the bits of
// sub_rn(static_cast<float>(level), static_cast<float>(zero_point)), for
// |zero_point| <= kLevelsZeroPointLimit. No conversion instruction (Hopper
// converts 16 integers per clock per SM, against 64 byte permutes and 128
// float adds): the byte b of a level (offset by 128 for int8) becomes the low
// bits of the float 2^23 + b, and one subtraction of 2^23 (+ 128) + zero_point,
// an exact float, leaves level - zero_point rounded once. A level equal to the
// zero point gives +0, as the subtraction of equal floats does.
constexpr int32_t kLevelsZeroPointLimit = 1 << 22;

template <typename QT, int kVec>
__device__ __forceinline__ void LevelsMinusZeroPoint(const Pack<QT, kVec>& levels,
                                                     int32_t zero_point, float (&out)[kVec]) {
  static_assert(std::is_integral_v<QT> && sizeof(QT) == 1 && kVec % 4 == 0,
                "whole 4-byte words of 8-bit levels");
  constexpr uint32_t kExponent = 0x4b000000u;  // the float 2^23
  constexpr uint32_t kFlip = std::is_signed_v<QT> ? 0x80808080u : 0u;
  const float offset = (std::is_signed_v<QT> ? 8388736.0f : 8388608.0f) +
                       static_cast<float>(zero_point);  // exact: both below 2^24
  uint32_t words[kVec / 4];
  memcpy(words, &levels, sizeof(words));
#pragma unroll
  for (int j = 0; j < kVec / 4; ++j) {
    const uint32_t biased = words[j] ^ kFlip;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // Byte i of `biased` under the bytes 0x00, 0x00, 0x4b.
      const uint32_t bits = __byte_perm(biased, kExponent, 0x7440u | static_cast<uint32_t>(i));
      out[4 * j + i] = __fsub_rn(__uint_as_float(bits), offset);
    }
  }
}

// Asks L2 to fetch [address, address + bytes) ahead of its use, without
// waiting and without registers. With `bulk` (sm_90 and later; address and
// bytes multiples of 16, fewer than 2^32 bytes) one thread of the group
// issues one bulk prefetch for all of it; otherwise each of the group's
// threads asks for every group-th 128-byte line.
__device__ __forceinline__ void PrefetchToL2(const void* address, int64_t bytes, int lane,
                                             int group, bool bulk) {
  const size_t global = __cvta_generic_to_global(address);
  (void)bulk;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (bulk) {
    if (lane == 0) {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;"
                   :
                   : "l"(global), "r"(static_cast<uint32_t>(bytes))
                   : "memory");
    }
    return;
  }
#endif
  for (int64_t offset = int64_t{lane} * 128; offset < bytes; offset += int64_t{group} * 128) {
    asm volatile("prefetch.global.L2 [%0];" : : "l"(global + offset));
  }
}

}  // namespace jdq

#endif  // JAX_DEQUANT_CUDA_TYPES_CUH_

// 16-bit float storage types for the CUDA kernels and their conversions
// (CUDA's round-to-nearest-even intrinsics; subnormals are kept).
#ifndef JAX_DEQUANT_CUDA_TYPES_CUH_
#define JAX_DEQUANT_CUDA_TYPES_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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

}  // namespace jdq

#endif  // JAX_DEQUANT_CUDA_TYPES_CUH_

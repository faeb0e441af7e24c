// Helpers shared by the CUDA kernel files.
#ifndef JAX_DEQUANT_CUDA_COMMON_CUH_
#define JAX_DEQUANT_CUDA_COMMON_CUH_

#include <cstdint>

namespace jdq::cuda {

inline bool IsAligned(const void* pointer, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace jdq::cuda

#endif  // JAX_DEQUANT_CUDA_COMMON_CUH_

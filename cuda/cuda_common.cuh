// Helpers shared by the CUDA kernel files.
#ifndef JAX_DEQUANT_CUDA_COMMON_CUH_
#define JAX_DEQUANT_CUDA_COMMON_CUH_

#include <cstdint>

namespace jdq::cuda {

// Row and column of a flat element index of a [rows, cols] array: one 32-bit
// division when the array has fewer than 2^32 elements, else a 64-bit one.
__device__ __forceinline__ void RowOf(int64_t element, int64_t cols, bool narrow_index,
                                      int64_t& row, int64_t& col) {
  if (narrow_index) {
    const uint32_t e = static_cast<uint32_t>(element);
    const uint32_t c = static_cast<uint32_t>(cols);
    const uint32_t r = e / c;
    row = r;
    col = e - r * c;
  } else {
    row = element / cols;
    col = element - row * cols;
  }
}

inline bool IsAligned(const void* pointer, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace jdq::cuda

#endif  // JAX_DEQUANT_CUDA_COMMON_CUH_

// Helpers shared by the CUDA kernel files.
#ifndef JAX_DEQUANT_CUDA_COMMON_CUH_
#define JAX_DEQUANT_CUDA_COMMON_CUH_

#include <atomic>
#include <cstdint>

#include <cuda_runtime.h>

namespace jdq::cuda {

inline bool IsAligned(const void* pointer, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
}

// Streaming multiprocessors of the current device, asked of the runtime once
// per device; 0 when the runtime cannot say (its error is then reported by
// the launch that follows) or for a device numbered 64 or more.
inline int MultiprocessorCount() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> counts[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 0;
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 0;
    }
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

// Division of 32-bit unsigned integers by one fixed divisor d >= 1 as a
// multiply-high, an add and a shift (Granlund and Montgomery's round-up
// method): with s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1,
// n / d = (umulhi(n, m) + n) >> s for every n < 2^32 (the sum is taken in 64
// bits). A kernel divides by a row length this way once per vector instead of
// running the ~15-instruction division sequence.
class DivideByU32 {
 public:
  DivideByU32() = default;
  explicit DivideByU32(uint32_t divisor) : divisor_(divisor) {
    while ((uint64_t{1} << shift_) < divisor) ++shift_;
    magic_ = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift_) - divisor)) /
                                   divisor) +
             1;
  }
  __host__ __device__ __forceinline__ uint32_t Quotient(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t high = __umulhi(n, magic_);
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t{n} * magic_) >> 32);
#endif
    return static_cast<uint32_t>((uint64_t{high} + n) >> shift_);
  }
  __host__ __device__ __forceinline__ uint32_t divisor() const { return divisor_; }

 private:
  uint32_t divisor_ = 1;
  uint32_t magic_ = 1;
  uint32_t shift_ = 0;
};

}  // namespace jdq::cuda

#endif  // JAX_DEQUANT_CUDA_COMMON_CUH_

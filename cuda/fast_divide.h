// Division by a run-time constant with a multiply and a shift, for the CUDA
// kernels' index arithmetic (a hardware-less 32-bit division costs ~20
// instructions on a GPU; this costs three). Compiles for the host and for CUDA
// devices, so the host can check it.
//
// Method: Granlund and Montgomery, "Division by invariant integers using
// multiplication" (1994), the round-up variant: with s = ceil(log2 d) and
// m = floor(2^32 * (2^s - d) / d) + 1, n / d = (umulhi(n, m) + n) >> s for
// every 32-bit n (the sum is formed in 64 bits).
#ifndef JAX_DEQUANT_FAST_DIVIDE_H_
#define JAX_DEQUANT_FAST_DIVIDE_H_

#include <cstdint>

#if defined(__CUDACC__)
#define JDQ_FAST_DIVIDE_HD __host__ __device__ __forceinline__
#else
#define JDQ_FAST_DIVIDE_HD inline
#endif

namespace jdq {

class FastDivider {
 public:
  FastDivider() = default;

  // `divisor` must be >= 1.
  explicit FastDivider(uint32_t divisor) : divisor_(divisor) {
    uint32_t shift = 0;
    while ((uint64_t{1} << shift) < divisor) ++shift;
    shift_ = shift;
    multiplier_ = static_cast<uint32_t>(
        ((uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor)) / divisor + 1);
  }

  JDQ_FAST_DIVIDE_HD uint32_t divisor() const { return divisor_; }

  JDQ_FAST_DIVIDE_HD uint32_t Divide(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t high = __umulhi(n, multiplier_);
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t{n} * multiplier_) >> 32);
#endif
    return static_cast<uint32_t>((uint64_t{high} + n) >> shift_);
  }

 private:
  uint32_t divisor_ = 1;
  uint32_t multiplier_ = 1;
  uint32_t shift_ = 0;
};

}  // namespace jdq

#endif  // JAX_DEQUANT_FAST_DIVIDE_H_

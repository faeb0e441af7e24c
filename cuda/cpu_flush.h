// Subnormal handling of the CPU kernels: XLA:CPU flushes subnormal inputs and
// results to zero, and so do our kernels, by setting the thread's floating-point
// control register for the duration of a kernel (SPEC.md, Numerics).
#ifndef JAX_DEQUANT_CPU_FLUSH_H_
#define JAX_DEQUANT_CPU_FLUSH_H_

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace jdq::cpu {

// Sets flush-to-zero and denormals-are-zero for the current thread and
// restores the previous state on exit.
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
#elif defined(__aarch64__)
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    asm volatile("msr fpcr, %0" : : "r"(saved_ | kFlushToZeroArm));
#endif
  }
  ~ScopedFlushDenormals() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    _mm_setcsr(saved_);
#elif defined(__aarch64__)
    asm volatile("msr fpcr, %0" : : "r"(saved_));
#endif
  }
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
#if defined(__aarch64__)
  static constexpr uint64_t kFlushToZeroArm = uint64_t{1} << 24;
  uint64_t saved_ = 0;
#else
  static constexpr unsigned kFlushToZero = 0x8000;
  static constexpr unsigned kDenormalsAreZero = 0x0040;
  unsigned saved_ = 0;
#endif
};

}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_FLUSH_H_

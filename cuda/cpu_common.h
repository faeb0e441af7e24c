// Helpers shared by the CPU kernel files.
#ifndef JAX_DEQUANT_CPU_COMMON_H_
#define JAX_DEQUANT_CPU_COMMON_H_

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#endif

// Compiles a CPU loop twice, for AVX2 and for the baseline ISA, and picks one
// when the library loads (GCC/Clang function multiversioning on x86-64 ELF
// platforms). The contract is unaffected: AVX2 brings no FMA (and the library
// is built with -ffp-contract=off), and MXCSR's flush-to-zero applies to it.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define JDQ_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define JDQ_CPU_CLONES
#endif

namespace jdq::cpu {

// Sets flush-to-zero and denormals-are-zero for the current thread and
// restores the previous state on exit. The CPU kernels run under it, as
// XLA:CPU runs its own computations, so that our results and XLA's compiled
// reference agree bit for bit on the CPU.
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

#endif  // JAX_DEQUANT_CPU_COMMON_H_

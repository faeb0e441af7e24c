// Helpers shared by the CPU kernel files (subnormal flushing is cpu_flush.h).
#ifndef JAX_DEQUANT_CPU_COMMON_H_
#define JAX_DEQUANT_CPU_COMMON_H_

// Compiles a CPU loop twice, for AVX2 and for the baseline ISA, and picks one
// when the library loads (GCC/Clang function multiversioning on x86-64 ELF
// platforms). The contract is unaffected: AVX2 brings no FMA (and the library
// is built with -ffp-contract=off), and MXCSR's flush-to-zero applies to it.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define JDQ_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define JDQ_CPU_CLONES
#endif

#endif  // JAX_DEQUANT_CPU_COMMON_H_

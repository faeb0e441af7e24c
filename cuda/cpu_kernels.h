// CPU kernels: entry points called by the CPU FFI handlers (ffi_cpu.cc).
// Each returns an empty string on success, else a message naming the problem.
#ifndef JAX_DEQUANT_CPU_KERNELS_H_
#define JAX_DEQUANT_CPU_KERNELS_H_

#include <string>

#include "problem.h"

namespace jdq::cpu {

std::string Dequantize(const DequantizeProblem& problem);

// Static and dynamic quantization (cpu_quantize.cc).
std::string Quantize(const QuantizeProblem& problem);
std::string QuantizeDynamic(const DynamicQuantizeProblem& problem);

}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_KERNELS_H_

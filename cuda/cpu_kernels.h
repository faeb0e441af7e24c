// CPU kernels: entry points called by the CPU FFI handlers (ffi_cpu.cc).
// Each returns an empty string on success, else a message naming the problem.
#ifndef JAX_DEQUANT_CPU_KERNELS_H_
#define JAX_DEQUANT_CPU_KERNELS_H_

#include <string>

#include "problem.h"

namespace jdq::cpu {

std::string Dequantize(const DequantizeProblem& problem);

// Backward of dequantize (cpu_dequantize_grad.cc): dq and/or dscale.
std::string DequantizeGrad(const DequantizeGradProblem& problem);
// Forward-mode tangent of dequantize in q and scale together.
std::string DequantizeTangent(const DequantizeTangentProblem& problem);

// fake_quantize_per_token (cpu_fake_quantize.cc).
std::string FakeQuantize(const FakeQuantizeProblem& problem);
std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& problem);
std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& problem);
std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& problem);

// Static and dynamic quantization (cpu_quantize.cc).
std::string Quantize(const QuantizeProblem& problem);
std::string QuantizeDynamic(const DynamicQuantizeProblem& problem);

}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_KERNELS_H_

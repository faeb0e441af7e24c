// CUDA kernels: host-side launchers called by the CUDA FFI handlers
// (ffi_cuda.cc). Each launches on the given stream only, allocates nothing,
// never synchronizes, and returns an empty string on success, else a message.
#ifndef JAX_DEQUANT_CUDA_KERNELS_H_
#define JAX_DEQUANT_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <string>

#include "problem.h"

namespace jdq::cuda {

std::string Dequantize(const DequantizeProblem& problem, cudaStream_t stream);

// Backward of dequantize (dequantize_grad.cu): dq and/or dscale in one pass.
std::string DequantizeGrad(const DequantizeGradProblem& problem, cudaStream_t stream);
// Forward-mode tangent of dequantize in q and scale together.
std::string DequantizeTangent(const DequantizeTangentProblem& problem, cudaStream_t stream);

// fake_quantize_per_token (fake_quantize.cu).
std::string FakeQuantize(const FakeQuantizeProblem& problem, cudaStream_t stream);
std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& problem, cudaStream_t stream);
std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& problem, cudaStream_t stream);
std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& problem, cudaStream_t stream);

// Static quantization (quantize.cu) and dynamic quantization (quantize_dynamic.cu).
std::string Quantize(const QuantizeProblem& problem, cudaStream_t stream);
std::string QuantizeDynamic(const DynamicQuantizeProblem& problem, cudaStream_t stream);

}  // namespace jdq::cuda

#endif  // JAX_DEQUANT_CUDA_KERNELS_H_

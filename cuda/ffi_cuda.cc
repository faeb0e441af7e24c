// XLA FFI handlers for the CUDA kernels. Every handler launches on the stream
// XLA gives, allocates nothing and never synchronizes, so all are marked
// compatible with command buffers (CUDA graphs).
#include "ffi_cuda.h"

#include <cuda_runtime_api.h>

#include "cuda_kernels.h"
#include "ffi_common.h"
#include "xla/ffi/api/ffi.h"

namespace jdq {
namespace {

ffi::Error DequantizeCudaImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer scale,
                              ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> out) {
  auto problem = DecodeDequantize(q, scale, zero_point, *out);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::Dequantize(*problem, stream));
}

}  // namespace
}  // namespace jdq

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeCuda, jdq::DequantizeCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>(),  // out
                              {xla::ffi::Traits::kCmdBufferCompatible});

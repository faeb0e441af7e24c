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

ffi::Error DequantizeDscaleCudaImpl(cudaStream_t stream, ffi::AnyBuffer dy, ffi::AnyBuffer q,
                                    ffi::RemainingArgs zero_point,
                                    ffi::Result<ffi::AnyBuffer> dscale) {
  auto problem = DecodeDequantizeGrad(dy, &q, nullptr, &zero_point, nullptr, &*dscale);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::DequantizeGrad(*problem, stream));
}

ffi::Error DequantizeDqCudaImpl(cudaStream_t stream, ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                                ffi::Result<ffi::AnyBuffer> dq) {
  auto problem = DecodeDequantizeGrad(dy, nullptr, &scale, nullptr, &*dq, nullptr);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::DequantizeGrad(*problem, stream));
}

ffi::Error DequantizeDqDscaleCudaImpl(cudaStream_t stream, ffi::AnyBuffer dy, ffi::AnyBuffer q,
                                      ffi::AnyBuffer scale, ffi::RemainingArgs zero_point,
                                      ffi::Result<ffi::AnyBuffer> dq,
                                      ffi::Result<ffi::AnyBuffer> dscale) {
  auto problem = DecodeDequantizeGrad(dy, &q, &scale, &zero_point, &*dq, &*dscale);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::DequantizeGrad(*problem, stream));
}

ffi::Error DequantizeTangentCudaImpl(cudaStream_t stream, ffi::AnyBuffer q_tangent,
                                     ffi::AnyBuffer scale_tangent, ffi::AnyBuffer q,
                                     ffi::AnyBuffer scale, ffi::RemainingArgs zero_point,
                                     ffi::Result<ffi::AnyBuffer> out) {
  auto problem = DecodeDequantizeTangent(q_tangent, scale_tangent, q, scale, zero_point, *out);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::DequantizeTangent(*problem, stream));
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDscaleCuda, jdq::DequantizeDscaleCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>(),  // dscale
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDqCuda, jdq::DequantizeDqCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .Ret<xla::ffi::AnyBuffer>(),  // dq
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDqDscaleCuda, jdq::DequantizeDqDscaleCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // dq
                                  .Ret<xla::ffi::AnyBuffer>(),  // dscale
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeTangentCuda, jdq::DequantizeTangentCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // q_tangent
                                  .Arg<xla::ffi::AnyBuffer>()  // scale_tangent
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>(),  // tangent of y
                              {xla::ffi::Traits::kCmdBufferCompatible});

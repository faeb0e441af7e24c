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

ffi::Error QuantizeCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                            ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> q,
                            int32_t qmin, int32_t qmax) {
  auto problem = DecodeQuantize(x, scale, zero_point, *q, qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::Quantize(*problem, stream));
}

ffi::Error QuantizeDynamicCudaImpl(cudaStream_t stream, ffi::AnyBuffer x,
                                   ffi::Result<ffi::AnyBuffer> q,
                                   ffi::Result<ffi::AnyBuffer> scale,
                                   ffi::Result<ffi::AnyBuffer> zero_point, bool symmetric,
                                   int32_t qmin, int32_t qmax) {
  auto problem = DecodeQuantizeDynamic(x, *q, *scale, *zero_point, symmetric, qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::QuantizeDynamic(*problem, stream));
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqQuantizeCuda, jdq::QuantizeCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // q
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax"),      // qmax
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqQuantizeDynamicCuda, jdq::QuantizeDynamicCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Ret<xla::ffi::AnyBuffer>()  // q
                                  .Ret<xla::ffi::AnyBuffer>()  // scale
                                  .Ret<xla::ffi::AnyBuffer>()  // zero_point
                                  .Attr<bool>("symmetric")     // symmetric
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax"),      // qmax
                              {xla::ffi::Traits::kCmdBufferCompatible});

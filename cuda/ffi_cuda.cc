// XLA FFI handlers for the CUDA kernels. Every handler launches on the stream
// XLA gives, allocates nothing and never synchronizes, so all are marked
// compatible with command buffers (CUDA graphs).
#include "ffi_cuda.h"

#include <cuda_runtime_api.h>

#include "cuda_kernels.h"
#include "ffi_common.h"
#include "ffi_fake_quantize.h"
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

ffi::Error FakeQuantizeCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                                ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> out,
                                int32_t qmin, int32_t qmax) {
  auto problem = DecodeFakeQuantize(x, scale, zero_point, *out, qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::FakeQuantize(*problem, stream));
}

ffi::Error FakeQuantizeDynamicCudaImpl(cudaStream_t stream, ffi::AnyBuffer x,
                                       ffi::Result<ffi::AnyBuffer> out,
                                       ffi::Result<ffi::AnyBuffer> scale,
                                       ffi::Result<ffi::AnyBuffer> zero_point, int32_t qmin,
                                       int32_t qmax, bool symmetric) {
  auto problem =
      DecodeFakeQuantizeDynamic(x, *out, *scale, *zero_point, qmin, qmax, symmetric);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::FakeQuantizeDynamic(*problem, stream));
}

ffi::Error FakeQuantizeTangentCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                                       ffi::RemainingArgs extra, ffi::Result<ffi::AnyBuffer> out,
                                       bool has_tangent_x, bool has_tangent_scale, int32_t qmin,
                                       int32_t qmax) {
  auto problem = DecodeFakeQuantizeTangent(x, scale, extra, *out, has_tangent_x,
                                           has_tangent_scale, qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::FakeQuantizeTangent(*problem, stream));
}

ffi::Error FakeQuantizeBackwardCudaImpl(cudaStream_t stream, ffi::AnyBuffer cotangent,
                                        ffi::AnyBuffer x, ffi::AnyBuffer scale,
                                        ffi::RemainingArgs zero_point, ffi::RemainingRets results,
                                        bool want_grad_x, int32_t qmin, int32_t qmax) {
  auto problem = DecodeFakeQuantizeBackward(cotangent, x, scale, zero_point, results, want_grad_x,
                                            qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cuda::FakeQuantizeBackward(*problem, stream));
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeCuda, jdq::FakeQuantizeCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax"),      // qmax
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeDynamicCuda, jdq::FakeQuantizeDynamicCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Ret<xla::ffi::AnyBuffer>()  // scale (chosen, float32)
                                  .Ret<xla::ffi::AnyBuffer>()  // zero_point (chosen, int32)
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
                                  .Attr<bool>("symmetric"),    // symmetric
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeTangentCuda, jdq::FakeQuantizeTangentCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()  // [tangent_x][tangent_scale][zero_point]
                                  .Ret<xla::ffi::AnyBuffer>()          // out (tangent of y)
                                  .Attr<bool>("has_tangent_x")         // has_tangent_x
                                  .Attr<bool>("has_tangent_scale")     // has_tangent_scale
                                  .Attr<int32_t>("qmin")               // qmin
                                  .Attr<int32_t>("qmax"),              // qmax
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeBackwardCuda, jdq::FakeQuantizeBackwardCudaImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()  // stream
                                  .Arg<xla::ffi::AnyBuffer>()  // cotangent
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .RemainingRets()             // [grad_x], grad_scale
                                  .Attr<bool>("want_grad_x")   // want_grad_x
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax"),      // qmax
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

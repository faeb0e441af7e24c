// XLA FFI handlers for the CPU kernels (cpu_kernels.cc).
#include "ffi_cpu.h"

#include "cpu_kernels.h"
#include "ffi_common.h"
#include "xla/ffi/api/ffi.h"

namespace jdq {
namespace {

ffi::Error DequantizeCpuImpl(ffi::AnyBuffer q, ffi::AnyBuffer scale, ffi::RemainingArgs zero_point,
                             ffi::Result<ffi::AnyBuffer> out) {
  auto problem = DecodeDequantize(q, scale, zero_point, *out);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::Dequantize(*problem));
}

ffi::Error QuantizeCpuImpl(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::RemainingArgs zero_point,
                           ffi::Result<ffi::AnyBuffer> q, int32_t qmin, int32_t qmax) {
  auto problem = DecodeQuantize(x, scale, zero_point, *q, qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::Quantize(*problem));
}

ffi::Error QuantizeDynamicCpuImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> q,
                                  ffi::Result<ffi::AnyBuffer> scale,
                                  ffi::Result<ffi::AnyBuffer> zero_point, bool symmetric,
                                  int32_t qmin, int32_t qmax) {
  auto problem = DecodeQuantizeDynamic(x, *q, *scale, *zero_point, symmetric, qmin, qmax);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::QuantizeDynamic(*problem));
}

}  // namespace
}  // namespace jdq

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeCpu, jdq::DequantizeCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqQuantizeCpu, jdq::QuantizeCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // q
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqQuantizeDynamicCpu, jdq::QuantizeDynamicCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Ret<xla::ffi::AnyBuffer>()  // q
                                  .Ret<xla::ffi::AnyBuffer>()  // scale
                                  .Ret<xla::ffi::AnyBuffer>()  // zero_point
                                  .Attr<bool>("symmetric")     // symmetric
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
);

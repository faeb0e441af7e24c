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

ffi::Error DequantizeDscaleCpuImpl(ffi::AnyBuffer dy, ffi::AnyBuffer q,
                                   ffi::RemainingArgs zero_point,
                                   ffi::Result<ffi::AnyBuffer> dscale) {
  auto problem = DecodeDequantizeGrad(dy, &q, nullptr, &zero_point, nullptr, &*dscale);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::DequantizeGrad(*problem));
}

ffi::Error DequantizeDqCpuImpl(ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                               ffi::Result<ffi::AnyBuffer> dq) {
  auto problem = DecodeDequantizeGrad(dy, nullptr, &scale, nullptr, &*dq, nullptr);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::DequantizeGrad(*problem));
}

ffi::Error DequantizeDqDscaleCpuImpl(ffi::AnyBuffer dy, ffi::AnyBuffer q, ffi::AnyBuffer scale,
                                     ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> dq,
                                     ffi::Result<ffi::AnyBuffer> dscale) {
  auto problem = DecodeDequantizeGrad(dy, &q, &scale, &zero_point, &*dq, &*dscale);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::DequantizeGrad(*problem));
}

ffi::Error DequantizeTangentCpuImpl(ffi::AnyBuffer q_tangent, ffi::AnyBuffer scale_tangent,
                                    ffi::AnyBuffer q, ffi::AnyBuffer scale,
                                    ffi::RemainingArgs zero_point,
                                    ffi::Result<ffi::AnyBuffer> out) {
  auto problem = DecodeDequantizeTangent(q_tangent, scale_tangent, q, scale, zero_point, *out);
  if (problem.has_error()) return problem.error();
  return ToError(cpu::DequantizeTangent(*problem));
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDscaleCpu, jdq::DequantizeDscaleCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // dscale
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDqCpu, jdq::DequantizeDqCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .Ret<xla::ffi::AnyBuffer>()  // dq
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDqDscaleCpu, jdq::DequantizeDqDscaleCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // dq
                                  .Ret<xla::ffi::AnyBuffer>()  // dscale
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeTangentCpu, jdq::DequantizeTangentCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // q_tangent
                                  .Arg<xla::ffi::AnyBuffer>()  // scale_tangent
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // tangent of y
);

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

}  // namespace
}  // namespace jdq

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeCpu, jdq::DequantizeCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
);

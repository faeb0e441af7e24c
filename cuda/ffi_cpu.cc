// XLA FFI handlers for the CPU kernels (cpu_kernels.cc).
#include "ffi_cpu.h"

#include <cstdint>
#include <functional>
#include <utility>

#include "cpu_kernels.h"
#include "ffi_common.h"
#include "ffi_fake_quantize.h"
#include "xla/ffi/api/ffi.h"

namespace jdq {
namespace {

// XLA's intra-op thread pool as the kernels' TaskRunner.
class PoolRunner final : public cpu::TaskRunner {
 public:
  explicit PoolRunner(ffi::ThreadPool& pool) : pool_(pool) {}
  int64_t NumThreads() const override { return pool_.num_threads(); }
  void Schedule(std::function<void()> task) override { pool_.Schedule(std::move(task)); }

 private:
  ffi::ThreadPool& pool_;
};

ffi::Error DequantizeCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer scale,
                             ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> out) {
  auto problem = DecodeDequantize(q, scale, zero_point, *out);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::Dequantize(*problem, &runner));
}

ffi::Error DequantizeDscaleCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer q,
                                   ffi::RemainingArgs zero_point,
                                   ffi::Result<ffi::AnyBuffer> dscale) {
  auto problem = DecodeDequantizeGrad(dy, &q, nullptr, &zero_point, nullptr, &*dscale);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::DequantizeGrad(*problem, &runner));
}

ffi::Error DequantizeDqCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                               ffi::Result<ffi::AnyBuffer> dq) {
  auto problem = DecodeDequantizeGrad(dy, nullptr, &scale, nullptr, &*dq, nullptr);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::DequantizeGrad(*problem, &runner));
}

ffi::Error DequantizeDqDscaleCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer q,
                                     ffi::AnyBuffer scale, ffi::RemainingArgs zero_point,
                                     ffi::Result<ffi::AnyBuffer> dq,
                                     ffi::Result<ffi::AnyBuffer> dscale) {
  auto problem = DecodeDequantizeGrad(dy, &q, &scale, &zero_point, &*dq, &*dscale);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::DequantizeGrad(*problem, &runner));
}

ffi::Error DequantizeTangentCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer q_tangent,
                                    ffi::AnyBuffer scale_tangent, ffi::AnyBuffer q,
                                    ffi::AnyBuffer scale, ffi::RemainingArgs zero_point,
                                    ffi::Result<ffi::AnyBuffer> out) {
  auto problem = DecodeDequantizeTangent(q_tangent, scale_tangent, q, scale, zero_point, *out);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::DequantizeTangent(*problem, &runner));
}

ffi::Error FakeQuantizeCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                               ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> out,
                               int32_t qmin, int32_t qmax) {
  auto problem = DecodeFakeQuantize(x, scale, zero_point, *out, qmin, qmax);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::FakeQuantize(*problem, &runner));
}

ffi::Error FakeQuantizeDynamicCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                                      ffi::Result<ffi::AnyBuffer> out,
                                      ffi::Result<ffi::AnyBuffer> scale,
                                      ffi::Result<ffi::AnyBuffer> zero_point, int32_t qmin,
                                      int32_t qmax, bool symmetric) {
  auto problem =
      DecodeFakeQuantizeDynamic(x, *out, *scale, *zero_point, qmin, qmax, symmetric);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::FakeQuantizeDynamic(*problem, &runner));
}

ffi::Error FakeQuantizeTangentCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                                      ffi::AnyBuffer scale, ffi::RemainingArgs extra,
                                      ffi::Result<ffi::AnyBuffer> out,
                                      bool has_tangent_x, bool has_tangent_scale, int32_t qmin,
                                      int32_t qmax) {
  auto problem = DecodeFakeQuantizeTangent(x, scale, extra, *out, has_tangent_x,
                                           has_tangent_scale, qmin, qmax);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::FakeQuantizeTangent(*problem, &runner));
}

ffi::Error FakeQuantizeBackwardCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer cotangent,
                                       ffi::AnyBuffer x, ffi::AnyBuffer scale,
                                       ffi::RemainingArgs zero_point, ffi::RemainingRets results,
                                       bool want_grad_x, int32_t qmin, int32_t qmax) {
  auto problem = DecodeFakeQuantizeBackward(cotangent, x, scale, zero_point, results, want_grad_x,
                                            qmin, qmax);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::FakeQuantizeBackward(*problem, &runner));
}

ffi::Error QuantizeCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                           ffi::RemainingArgs zero_point, ffi::Result<ffi::AnyBuffer> q,
                           int32_t qmin, int32_t qmax) {
  auto problem = DecodeQuantize(x, scale, zero_point, *q, qmin, qmax);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::Quantize(*problem, &runner));
}

ffi::Error QuantizeDynamicCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                                  ffi::Result<ffi::AnyBuffer> q,
                                  ffi::Result<ffi::AnyBuffer> scale,
                                  ffi::Result<ffi::AnyBuffer> zero_point, bool symmetric,
                                  int32_t qmin, int32_t qmax) {
  auto problem = DecodeQuantizeDynamic(x, *q, *scale, *zero_point, symmetric, qmin, qmax);
  if (problem.has_error()) return problem.error();
  PoolRunner runner(pool);
  return ToError(cpu::QuantizeDynamic(*problem, &runner));
}

}  // namespace
}  // namespace jdq

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeCpu, jdq::DequantizeCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()   // q
                                  .Arg<xla::ffi::AnyBuffer>()   // scale
                                  .RemainingArgs()              // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()   // out
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDscaleCpu, jdq::DequantizeDscaleCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // dscale
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDqCpu, jdq::DequantizeDqCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .Ret<xla::ffi::AnyBuffer>()  // dq
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeDqDscaleCpu, jdq::DequantizeDqDscaleCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // dy
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // dq
                                  .Ret<xla::ffi::AnyBuffer>()  // dscale
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqDequantizeTangentCpu, jdq::DequantizeTangentCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // q_tangent
                                  .Arg<xla::ffi::AnyBuffer>()  // scale_tangent
                                  .Arg<xla::ffi::AnyBuffer>()  // q
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // tangent of y
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeCpu, jdq::FakeQuantizeCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeDynamicCpu, jdq::FakeQuantizeDynamicCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Ret<xla::ffi::AnyBuffer>()  // scale (chosen, float32)
                                  .Ret<xla::ffi::AnyBuffer>()  // zero_point (chosen, int32)
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
                                  .Attr<bool>("symmetric")     // symmetric
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeTangentCpu, jdq::FakeQuantizeTangentCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()  // [tangent_x][tangent_scale][zero_point]
                                  .Ret<xla::ffi::AnyBuffer>()         // out (tangent of y)
                                  .Attr<bool>("has_tangent_x")        // has_tangent_x
                                  .Attr<bool>("has_tangent_scale")    // has_tangent_scale
                                  .Attr<int32_t>("qmin")              // qmin
                                  .Attr<int32_t>("qmax")              // qmax
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqFakeQuantizeBackwardCpu, jdq::FakeQuantizeBackwardCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // cotangent
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .RemainingRets()             // [grad_x], grad_scale
                                  .Attr<bool>("want_grad_x")   // want_grad_x
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqQuantizeCpu, jdq::QuantizeCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // scale
                                  .RemainingArgs()             // zero_point (absent: symmetric)
                                  .Ret<xla::ffi::AnyBuffer>()  // q
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdqQuantizeDynamicCpu, jdq::QuantizeDynamicCpuImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()  // intra-op threads
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Ret<xla::ffi::AnyBuffer>()  // q
                                  .Ret<xla::ffi::AnyBuffer>()  // scale
                                  .Ret<xla::ffi::AnyBuffer>()  // zero_point
                                  .Attr<bool>("symmetric")     // symmetric
                                  .Attr<int32_t>("qmin")       // qmin
                                  .Attr<int32_t>("qmax")       // qmax
);

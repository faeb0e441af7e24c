// XLA FFI handlers for the CPU kernels (cpu_kernels.cc).
#include "ffi_cpu.h"

#include <cstdint>
#include <functional>
#include <utility>

#include "cpu_kernels.h"
#include "ffi_common.h"
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

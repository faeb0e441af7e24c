// CPU kernels: entry points called by the CPU FFI handlers (ffi_cpu.cc).
// Each returns an empty string on success, else a message naming the problem.
#ifndef JAX_DEQUANT_CPU_KERNELS_H_
#define JAX_DEQUANT_CPU_KERNELS_H_

#include <cstdint>
#include <functional>
#include <string>

#include "problem.h"

namespace jdq::cpu {

// Threads a kernel may split its work over. The CPU handlers adapt XLA's
// intra-op thread pool to this (kernels include no XLA header). A kernel runs
// part of the work on the calling thread and never waits for a task that has
// not started, so a busy or absent pool only makes it slower, never stuck.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // Threads that may run scheduled tasks (0: none; the caller does all).
  virtual int64_t NumThreads() const = 0;
  // Runs `task` on some thread, possibly the calling one, now or later.
  virtual void Schedule(std::function<void()> task) = 0;
};

// Turns the AVX2 + F16C loops of the kernels on (the default, where the CPU
// has them) or off (the baseline loops run instead; both give the same bits).
// Returns whether the AVX2 loops now run. For tests and benchmarks.
bool SetAvx2Enabled(bool enabled);

// Turns the AVX-512 loops (static quantize, and the quantize pass of dynamic
// quantize) on (the default, where the CPU has AVX-512 F, BW, VL and DQ) or
// off (the AVX2 or baseline loops run; all give the same bits). Returns
// whether they now run (never while the AVX2 loops are off). For tests and
// benchmarks.
bool SetAvx512Enabled(bool enabled);

// `runner` may be null: everything then runs on the calling thread.
std::string Dequantize(const DequantizeProblem& problem, TaskRunner* runner = nullptr);

// Backward of dequantize (cpu_dequantize_grad.cc): dq and/or dscale.
std::string DequantizeGrad(const DequantizeGradProblem& problem, TaskRunner* runner = nullptr);
// Forward-mode tangent of dequantize in q and scale together.
std::string DequantizeTangent(const DequantizeTangentProblem& problem,
                              TaskRunner* runner = nullptr);

// fake_quantize_per_token (cpu_fake_quantize.cc).
// The forward passes split their rows over `runner`'s threads when it is given.
std::string FakeQuantize(const FakeQuantizeProblem& problem, TaskRunner* runner = nullptr);
std::string FakeQuantizeDynamic(const FakeQuantizeDynamicProblem& problem,
                                TaskRunner* runner = nullptr);
std::string FakeQuantizeTangent(const FakeQuantizeTangentProblem& problem,
                                TaskRunner* runner = nullptr);
std::string FakeQuantizeBackward(const FakeQuantizeBackwardProblem& problem,
                                 TaskRunner* runner = nullptr);

// Static and dynamic quantization (cpu_quantize.cc), split over `runner`'s
// threads when it is given.
std::string Quantize(const QuantizeProblem& problem, TaskRunner* runner = nullptr);
std::string QuantizeDynamic(const DynamicQuantizeProblem& problem, TaskRunner* runner = nullptr);

}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_KERNELS_H_

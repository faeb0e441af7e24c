// The nanobind extension `jax_dequant._jax_dequant_ffi`: exports the FFI
// handlers as capsules for jax.ffi.register_ffi_target, and what the library
// was built with.
#include <nanobind/nanobind.h>

#include "cpu_kernels.h"
#include "ffi_cpu.h"
#if JAX_DEQUANT_WITH_CUDA
#include "ffi_cuda.h"
#endif

namespace nb = nanobind;

namespace {

template <typename T>
nb::capsule EncapsulateFfiHandler(T* handler) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "Encapsulated function must be an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(handler));
}

}  // namespace

NB_MODULE(_jax_dequant_ffi, m) {
  m.doc() = "XLA FFI handlers of jax_dequant (CPU, and CUDA when built with it).";

  m.def(
      "registrations",
      []() {
        nb::dict cpu;
        cpu["jax_dequant_dequantize_per_token"] = EncapsulateFfiHandler(JdqDequantizeCpu);
        cpu["jax_dequant_dequantize_per_token_dscale"] =
            EncapsulateFfiHandler(JdqDequantizeDscaleCpu);
        cpu["jax_dequant_dequantize_per_token_dq"] = EncapsulateFfiHandler(JdqDequantizeDqCpu);
        cpu["jax_dequant_dequantize_per_token_dq_dscale"] =
            EncapsulateFfiHandler(JdqDequantizeDqDscaleCpu);
        cpu["jax_dequant_dequantize_per_token_tangent"] =
            EncapsulateFfiHandler(JdqDequantizeTangentCpu);
        cpu["jax_dequant_fake_quantize_per_token"] = EncapsulateFfiHandler(JdqFakeQuantizeCpu);
        cpu["jax_dequant_fake_quantize_per_token_dynamic"] =
            EncapsulateFfiHandler(JdqFakeQuantizeDynamicCpu);
        cpu["jax_dequant_fake_quantize_per_token_tangent"] =
            EncapsulateFfiHandler(JdqFakeQuantizeTangentCpu);
        cpu["jax_dequant_fake_quantize_per_token_backward"] =
            EncapsulateFfiHandler(JdqFakeQuantizeBackwardCpu);
        cpu["jax_dequant_quantize_per_token"] = EncapsulateFfiHandler(JdqQuantizeCpu);
        cpu["jax_dequant_quantize_per_token_dynamic"] =
            EncapsulateFfiHandler(JdqQuantizeDynamicCpu);
        nb::dict cuda;
#if JAX_DEQUANT_WITH_CUDA
        cuda["jax_dequant_dequantize_per_token"] = EncapsulateFfiHandler(JdqDequantizeCuda);
        cuda["jax_dequant_dequantize_per_token_dscale"] =
            EncapsulateFfiHandler(JdqDequantizeDscaleCuda);
        cuda["jax_dequant_dequantize_per_token_dq"] = EncapsulateFfiHandler(JdqDequantizeDqCuda);
        cuda["jax_dequant_dequantize_per_token_dq_dscale"] =
            EncapsulateFfiHandler(JdqDequantizeDqDscaleCuda);
        cuda["jax_dequant_dequantize_per_token_tangent"] =
            EncapsulateFfiHandler(JdqDequantizeTangentCuda);
        cuda["jax_dequant_fake_quantize_per_token"] = EncapsulateFfiHandler(JdqFakeQuantizeCuda);
        cuda["jax_dequant_fake_quantize_per_token_dynamic"] =
            EncapsulateFfiHandler(JdqFakeQuantizeDynamicCuda);
        cuda["jax_dequant_fake_quantize_per_token_tangent"] =
            EncapsulateFfiHandler(JdqFakeQuantizeTangentCuda);
        cuda["jax_dequant_fake_quantize_per_token_backward"] =
            EncapsulateFfiHandler(JdqFakeQuantizeBackwardCuda);
        cuda["jax_dequant_quantize_per_token"] = EncapsulateFfiHandler(JdqQuantizeCuda);
        cuda["jax_dequant_quantize_per_token_dynamic"] =
            EncapsulateFfiHandler(JdqQuantizeDynamicCuda);
#endif
        nb::dict by_platform;
        by_platform["cpu"] = cpu;
        by_platform["CUDA"] = cuda;
        return by_platform;
      },
      "FFI handler capsules by XLA platform name, then by target name.");

  m.def(
      "set_cpu_avx2",
      [](bool enabled) { return jdq::cpu::SetAvx2Enabled(enabled); }, nb::arg("enabled"),
      "Turns the CPU kernels' AVX2 + F16C loops on (the default where the CPU has them) or off "
      "(the baseline loops run; both give the same bits). Returns whether the AVX2 loops now "
      "run. For tests and benchmarks.");

  m.def(
      "set_cpu_avx512",
      [](bool enabled) { return jdq::cpu::SetAvx512Enabled(enabled); }, nb::arg("enabled"),
      "Turns the CPU kernels' AVX-512 loops on (the default where the CPU has AVX-512 F, BW, VL "
      "and DQ) or off (the AVX2 or baseline loops run; all give the same bits). Returns whether "
      "the AVX-512 loops now run (never while the AVX2 loops are off). For tests and "
      "benchmarks.");

  m.def(
      "build_info",
      []() {
        nb::dict info;
        info["with_cuda"] = bool(JAX_DEQUANT_WITH_CUDA);
        info["cuda_architectures"] = JAX_DEQUANT_CUDA_ARCHITECTURES;
        info["jaxlib_version"] = JAX_DEQUANT_JAXLIB_VERSION;
        info["ffi_api_version"] = nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
        return info;
      },
      "What this library was built with: CUDA on or off, CUDA architectures, the jaxlib whose "
      "FFI headers it was compiled against, and that FFI API version.");
}

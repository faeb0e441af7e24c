// Problem descriptions shared by the FFI handlers and the kernels.
//
// The handlers decode XLA buffers into these plain structs; the kernels (CPU
// and CUDA) never see an XLA header. Every pointer is device memory for the
// CUDA kernels and host memory for the CPU kernels.
#ifndef JAX_DEQUANT_PROBLEM_H_
#define JAX_DEQUANT_PROBLEM_H_

#include <cstdint>

namespace jdq {

// Element types the kernels understand. Anything else is rejected by the
// handlers before a kernel is chosen.
enum class DType : int {
  kInvalid = 0,
  kS8,
  kU8,
  kS32,
  kF16,
  kBF16,
  kF32,
  kF64,
};

inline const char* DTypeName(DType type) {
  switch (type) {
    case DType::kS8:
      return "int8";
    case DType::kU8:
      return "uint8";
    case DType::kS32:
      return "int32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF32:
      return "float32";
    case DType::kF64:
      return "float64";
    default:
      return "unsupported";
  }
}

// y[n, d] = to_out((C(q[n, d]) - C(zp[n])) * C(scale[n])).
// `q` is int8/uint8 storage or a float carrier; `zero_point` is null for the
// symmetric form. Rows are the flattened leading dimensions.
struct DequantizeProblem {
  DType q_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  DType out_type = DType::kInvalid;
  const void* q = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  void* out = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

}  // namespace jdq

#endif  // JAX_DEQUANT_PROBLEM_H_

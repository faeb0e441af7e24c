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

// q[n, d] = clamp(rne(C(x[n, d]) * r[n] + C(zp[n])), qmin, qmax) with
// r[n] = 1 / C(scale[n]) rounded once per row. `x` is a float type, `scale`
// has x's type or float32, `q` is int8/uint8 storage and [qmin, qmax] lies in
// its range; `zero_point` is null for the symmetric form.
struct QuantizeProblem {
  DType x_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  DType q_type = DType::kInvalid;
  const void* x = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  void* q = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
};

// Dynamic quantization: per row, the range (absmax, or min and max widened to
// include 0) chooses a scale (stored as `scale_type`) and a zero point (0 when
// symmetric), then the row is quantized with the stored scale as in
// QuantizeProblem. Any float `x` goes with any float `scale_type`.
struct DynamicQuantizeProblem {
  DType x_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  DType q_type = DType::kInvalid;
  bool symmetric = true;
  const void* x = nullptr;
  void* q = nullptr;
  void* scale = nullptr;
  int32_t* zero_point = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
};

}  // namespace jdq

#endif  // JAX_DEQUANT_PROBLEM_H_

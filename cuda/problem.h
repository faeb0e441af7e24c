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

// Backward of dequantize: the reverse-mode kernels (SPEC.md, Differentiation).
// The types are those of the forward op: `q_type` (storage or float carrier),
// `scale_type`, and `out_type` (the type of y and so of dy). C is the forward's
// compute type. Each output is computed only when its pointer is non-null:
//   dq[n, d]  = to_q(C(dy[n, d]) * C(scale[n]))              (float carrier q only)
//   dscale[n] = to_scale(sum_d C(dy[n, d]) * (C(q[n, d]) - C(zp[n])))
// The sum is accumulated in C in an order fixed by (rows, cols) alone: the same
// shape gives the same bits, whatever the buffers' addresses. `q` and
// `zero_point` are read only for dscale, `scale` only for dq; a null
// `zero_point` means the symmetric form.
struct DequantizeGradProblem {
  DType q_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  DType out_type = DType::kInvalid;
  const void* dy = nullptr;
  const void* q = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  void* dq = nullptr;
  void* dscale = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Forward mode of dequantize when both the float-carrier q and the scale have
// tangents: the tangent of y in one pass, rounded once,
//   t_y[n, d] = to_out(C(t_q[n, d]) * C(scale[n]) + (C(q[n, d]) - C(zp[n])) * C(t_scale[n])).
// `t_q` and `q` have `q_type` (a float type), `t_scale` and `scale` have
// `scale_type`; `zero_point` may be null.
struct DequantizeTangentProblem {
  DType q_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  DType out_type = DType::kInvalid;
  const void* q_tangent = nullptr;
  const void* scale_tangent = nullptr;
  const void* q = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  void* out = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Fake quantization (see numerics.h, fake_quantize_value) with a given
// per-row scale: y[n, d] = to_x((clamp(rne(C(x) * r + C(zp)), qmin, qmax)
// - C(zp)) * C(scale)), r = 1 / C(scale[n]) once per row. `out` has x's type;
// `zero_point` is null for the symmetric form.
struct FakeQuantizeProblem {
  DType x_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  const void* x = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  void* out = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
};

// Fake quantization with the scale (and zero point) chosen per row as by
// dynamic quantization (numerics.h symmetric_scale / asymmetric_scale /
// asymmetric_zero_point), stored as float32 before the row is fake quantized
// with it. The chosen `scale` (float32) and `zero_point` (int32, 0 when
// symmetric) are outputs, one per row.
struct FakeQuantizeDynamicProblem {
  DType x_type = DType::kInvalid;
  const void* x = nullptr;
  void* out = nullptr;
  float* scale = nullptr;
  int32_t* zero_point = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
  bool symmetric = true;
};

// The tangent of fake quantization, linear in (tangent_x, tangent_scale):
// t_y[n, d] = to_x(inside * C(t_x[n, d]) + lsq[n, d] * C(t_s[n])) with
// numerics.h fake_quantize_slopes. Either tangent may be null (a symbolic
// zero); with only tangent_x the result is exactly (inside ? t_x : +0), which
// is also the cotangent of x (the map is diagonal). `out` has x's type.
struct FakeQuantizeTangentProblem {
  DType x_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  const void* x = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  const void* tangent_x = nullptr;
  const void* tangent_scale = nullptr;
  void* out = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
};

// The backward pass of fake quantization in one read of x and the cotangent:
// grad_x[n, d] = inside ? cotangent[n, d] : +0 (x's type; null: not needed)
// and grad_scale[n] = sum_d C(cotangent[n, d]) * lsq[n, d] accumulated in C
// in a fixed order (scale's type).
struct FakeQuantizeBackwardProblem {
  DType x_type = DType::kInvalid;
  DType scale_type = DType::kInvalid;
  const void* x = nullptr;
  const void* scale = nullptr;
  const int32_t* zero_point = nullptr;
  const void* cotangent = nullptr;
  void* grad_x = nullptr;
  void* grad_scale = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t qmin = 0;
  int32_t qmax = 0;
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

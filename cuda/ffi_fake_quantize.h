// Decoding of fake_quantize_per_token's FFI buffers into kernel problems,
// shared by the CPU and CUDA handlers. As in ffi_common.h, these checks are
// the last line of defence: every buffer a kernel reads or writes is checked
// for its element type and its element count.
#ifndef JAX_DEQUANT_FFI_FAKE_QUANTIZE_H_
#define JAX_DEQUANT_FFI_FAKE_QUANTIZE_H_

#include <cstdint>
#include <string>

#include "ffi_common.h"
#include "problem.h"
#include "xla/ffi/api/ffi.h"

namespace jdq {

inline ffi::Error FakeQuantizeError(const std::string& message) {
  return ffi::Error::InvalidArgument("fake_quantize_per_token: " + message);
}

// Checks that `buffer` has x's dimensions and element type.
inline ffi::Error CheckLikeX(const ffi::AnyBuffer& buffer, const ffi::AnyBuffer& x,
                             const char* name) {
  if (!SameDimensions(buffer, x) || buffer.element_type() != x.element_type()) {
    return FakeQuantizeError(std::string(name) + " must have x's shape and dtype");
  }
  return ffi::Error::Success();
}

// Checks a per-row buffer: one element per row, of `type`.
inline ffi::Error CheckPerRow(const ffi::AnyBuffer& buffer, int64_t rows, ffi::DataType type,
                              const char* name) {
  if (static_cast<int64_t>(buffer.element_count()) != rows || buffer.element_type() != type) {
    return FakeQuantizeError(std::string(name) + " must hold one value per row (" +
                             std::to_string(rows) + " rows) of the expected dtype");
  }
  return ffi::Error::Success();
}

inline ffi::Error CheckRange(int32_t qmin, int32_t qmax) {
  if (qmin > qmax || qmin < -128 || qmax > 255) {
    return FakeQuantizeError("qmin/qmax must satisfy -128 <= qmin <= qmax <= 255");
  }
  return ffi::Error::Success();
}

inline ffi::Error CheckX(const ffi::AnyBuffer& x) {
  if (x.dimensions().size() < 1) return FakeQuantizeError("x must have rank >= 1");
  return ffi::Error::Success();
}

#define JDQ_RETURN_IF_ERROR(expr)                            \
  do {                                                       \
    ffi::Error jdq_error_ = (expr);                          \
    if (jdq_error_.failure()) return ffi::Unexpected(jdq_error_); \
  } while (0)

// Operands: x, scale[, zero_point]; result: out (x's shape and dtype).
inline ffi::ErrorOr<FakeQuantizeProblem> DecodeFakeQuantize(const ffi::AnyBuffer& x,
                                                            const ffi::AnyBuffer& scale,
                                                            const ffi::RemainingArgs& extra,
                                                            const ffi::AnyBuffer& out, int32_t qmin,
                                                            int32_t qmax) {
  JDQ_RETURN_IF_ERROR(CheckX(x));
  JDQ_RETURN_IF_ERROR(CheckRange(qmin, qmax));
  JDQ_RETURN_IF_ERROR(CheckLikeX(out, x, "the output"));
  FakeQuantizeProblem p;
  p.rows = LeadingElements(x);
  p.cols = x.dimensions().back();
  JDQ_RETURN_IF_ERROR(CheckPerRow(scale, p.rows, scale.element_type(), "scale"));
  auto zero_point = DecodeZeroPoint(extra, p.rows, "fake_quantize_per_token");
  if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
  p.x_type = ToDType(x.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.x = x.untyped_data();
  p.scale = scale.untyped_data();
  p.zero_point = *zero_point;
  p.out = out.untyped_data();
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

// Operand: x; results: out (x's shape and dtype), scale (float32 per row),
// zero_point (int32 per row).
inline ffi::ErrorOr<FakeQuantizeDynamicProblem> DecodeFakeQuantizeDynamic(
    const ffi::AnyBuffer& x, const ffi::AnyBuffer& out, const ffi::AnyBuffer& scale,
    const ffi::AnyBuffer& zero_point, int32_t qmin, int32_t qmax, bool symmetric) {
  JDQ_RETURN_IF_ERROR(CheckX(x));
  JDQ_RETURN_IF_ERROR(CheckRange(qmin, qmax));
  if (symmetric ? qmax <= 0 : qmin >= qmax) {
    return ffi::Unexpected(FakeQuantizeError(
        "a dynamic scale needs qmax > 0 (symmetric) or qmin < qmax (asymmetric)"));
  }
  JDQ_RETURN_IF_ERROR(CheckLikeX(out, x, "the output"));
  FakeQuantizeDynamicProblem p;
  p.rows = LeadingElements(x);
  p.cols = x.dimensions().back();
  JDQ_RETURN_IF_ERROR(CheckPerRow(scale, p.rows, ffi::DataType::F32, "the chosen scale"));
  JDQ_RETURN_IF_ERROR(CheckPerRow(zero_point, p.rows, ffi::DataType::S32, "the chosen zero_point"));
  p.x_type = ToDType(x.element_type());
  p.x = x.untyped_data();
  p.out = out.untyped_data();
  p.scale = static_cast<float*>(scale.untyped_data());
  p.zero_point = static_cast<int32_t*>(zero_point.untyped_data());
  p.qmin = qmin;
  p.qmax = qmax;
  p.symmetric = symmetric;
  return p;
}

// Operands: x, scale, then [tangent_x][tangent_scale][zero_point] as the
// flags say; result: the tangent of the output (x's shape and dtype).
inline ffi::ErrorOr<FakeQuantizeTangentProblem> DecodeFakeQuantizeTangent(
    const ffi::AnyBuffer& x, const ffi::AnyBuffer& scale, const ffi::RemainingArgs& extra,
    const ffi::AnyBuffer& out, bool has_tangent_x, bool has_tangent_scale, int32_t qmin,
    int32_t qmax) {
  JDQ_RETURN_IF_ERROR(CheckX(x));
  JDQ_RETURN_IF_ERROR(CheckRange(qmin, qmax));
  JDQ_RETURN_IF_ERROR(CheckLikeX(out, x, "the tangent output"));
  if (!has_tangent_x && !has_tangent_scale) {
    return ffi::Unexpected(FakeQuantizeError("the tangent kernel needs a tangent"));
  }
  FakeQuantizeTangentProblem p;
  p.rows = LeadingElements(x);
  p.cols = x.dimensions().back();
  JDQ_RETURN_IF_ERROR(CheckPerRow(scale, p.rows, scale.element_type(), "scale"));
  const size_t tangents = size_t{has_tangent_x} + size_t{has_tangent_scale};
  if (extra.size() < tangents) {
    return ffi::Unexpected(FakeQuantizeError("missing tangent operands"));
  }
  size_t next = 0;
  if (has_tangent_x) {
    auto tangent_x = extra.get<ffi::AnyBuffer>(next++);
    if (tangent_x.has_error()) return ffi::Unexpected(tangent_x.error());
    JDQ_RETURN_IF_ERROR(CheckLikeX(*tangent_x, x, "the tangent of x"));
    p.tangent_x = tangent_x->untyped_data();
  }
  if (has_tangent_scale) {
    auto tangent_scale = extra.get<ffi::AnyBuffer>(next++);
    if (tangent_scale.has_error()) return ffi::Unexpected(tangent_scale.error());
    JDQ_RETURN_IF_ERROR(
        CheckPerRow(*tangent_scale, p.rows, scale.element_type(), "the tangent of scale"));
    p.tangent_scale = tangent_scale->untyped_data();
  }
  if (extra.size() > next + 1) {
    return ffi::Unexpected(FakeQuantizeError("too many operands"));
  }
  if (extra.size() == next + 1) {
    auto zero_point = extra.get<ffi::AnyBuffer>(next);
    if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
    JDQ_RETURN_IF_ERROR(CheckPerRow(*zero_point, p.rows, ffi::DataType::S32, "zero_point"));
    p.zero_point = static_cast<const int32_t*>(zero_point->untyped_data());
  }
  p.x_type = ToDType(x.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.x = x.untyped_data();
  p.scale = scale.untyped_data();
  p.out = out.untyped_data();
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

// Operands: cotangent, x, scale[, zero_point]; results: [grad_x] (when
// want_grad_x), grad_scale.
inline ffi::ErrorOr<FakeQuantizeBackwardProblem> DecodeFakeQuantizeBackward(
    const ffi::AnyBuffer& cotangent, const ffi::AnyBuffer& x, const ffi::AnyBuffer& scale,
    const ffi::RemainingArgs& extra, const ffi::RemainingRets& results, bool want_grad_x,
    int32_t qmin, int32_t qmax) {
  JDQ_RETURN_IF_ERROR(CheckX(x));
  JDQ_RETURN_IF_ERROR(CheckRange(qmin, qmax));
  JDQ_RETURN_IF_ERROR(CheckLikeX(cotangent, x, "the cotangent"));
  FakeQuantizeBackwardProblem p;
  p.rows = LeadingElements(x);
  p.cols = x.dimensions().back();
  JDQ_RETURN_IF_ERROR(CheckPerRow(scale, p.rows, scale.element_type(), "scale"));
  auto zero_point = DecodeZeroPoint(extra, p.rows, "fake_quantize_per_token");
  if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
  const size_t expected = want_grad_x ? 2 : 1;
  if (results.size() != expected) {
    return ffi::Unexpected(FakeQuantizeError("the backward pass expects " +
                                             std::to_string(expected) + " results"));
  }
  size_t next = 0;
  if (want_grad_x) {
    auto grad_x = results.get<ffi::AnyBuffer>(next++);
    if (grad_x.has_error()) return ffi::Unexpected(grad_x.error());
    JDQ_RETURN_IF_ERROR(CheckLikeX(**grad_x, x, "the gradient of x"));
    p.grad_x = (*grad_x)->untyped_data();
  }
  auto grad_scale = results.get<ffi::AnyBuffer>(next);
  if (grad_scale.has_error()) return ffi::Unexpected(grad_scale.error());
  JDQ_RETURN_IF_ERROR(
      CheckPerRow(**grad_scale, p.rows, scale.element_type(), "the gradient of scale"));
  p.grad_scale = (*grad_scale)->untyped_data();
  p.x_type = ToDType(x.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.x = x.untyped_data();
  p.scale = scale.untyped_data();
  p.zero_point = *zero_point;
  p.cotangent = cotangent.untyped_data();
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

#undef JDQ_RETURN_IF_ERROR

}  // namespace jdq

#endif  // JAX_DEQUANT_FFI_FAKE_QUANTIZE_H_

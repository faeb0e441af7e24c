// Decoding of XLA FFI buffers into kernel problems, shared by the CPU and CUDA
// handlers. The Python layer validates every argument before anything is
// lowered; these checks are the last line of defence so that no buffer can
// reach a kernel that would read or write out of bounds.
#ifndef JAX_DEQUANT_FFI_COMMON_H_
#define JAX_DEQUANT_FFI_COMMON_H_

#include <cstdint>
#include <string>

#include "problem.h"
#include "xla/ffi/api/ffi.h"

namespace jdq {

namespace ffi = xla::ffi;

inline DType ToDType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::S8:
      return DType::kS8;
    case ffi::DataType::U8:
      return DType::kU8;
    case ffi::DataType::S32:
      return DType::kS32;
    case ffi::DataType::F16:
      return DType::kF16;
    case ffi::DataType::BF16:
      return DType::kBF16;
    case ffi::DataType::F32:
      return DType::kF32;
    case ffi::DataType::F64:
      return DType::kF64;
    default:
      return DType::kInvalid;
  }
}

// Number of rows of an array [..., D]: the product of its leading dimensions.
inline int64_t LeadingElements(const ffi::AnyBuffer& buffer) {
  int64_t rows = 1;
  const auto dims = buffer.dimensions();
  for (size_t i = 0; i + 1 < dims.size(); ++i) rows *= dims[i];
  return rows;
}

inline bool SameDimensions(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  const auto da = a.dimensions();
  const auto db = b.dimensions();
  if (da.size() != db.size()) return false;
  for (size_t i = 0; i < da.size(); ++i) {
    if (da[i] != db[i]) return false;
  }
  return true;
}

// Reads the optional per-row int32 zero point (absent: symmetric).
inline ffi::ErrorOr<const int32_t*> DecodeZeroPoint(const ffi::RemainingArgs& extra, int64_t rows,
                                                   const char* op) {
  if (extra.size() == 0) return static_cast<const int32_t*>(nullptr);
  if (extra.size() > 1) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(std::string(op) +
                                                       ": expected at most one zero_point operand"));
  }
  auto zero_point = extra.get<ffi::AnyBuffer>(0);
  if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
  if (zero_point->element_type() != ffi::DataType::S32 ||
      static_cast<int64_t>(zero_point->element_count()) != rows) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        std::string(op) + ": zero_point must be int32 with one value per row (" +
        std::to_string(rows) + " rows)"));
  }
  return static_cast<const int32_t*>(zero_point->untyped_data());
}

inline ffi::ErrorOr<DequantizeProblem> DecodeDequantize(const ffi::AnyBuffer& q,
                                                        const ffi::AnyBuffer& scale,
                                                        const ffi::RemainingArgs& extra,
                                                        const ffi::AnyBuffer& out) {
  if (q.dimensions().size() < 1) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("dequantize_per_token: q must have rank >= 1"));
  }
  if (!SameDimensions(q, out)) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("dequantize_per_token: output shape must equal q's shape"));
  }
  DequantizeProblem p;
  p.rows = LeadingElements(q);
  p.cols = q.dimensions().back();
  if (static_cast<int64_t>(scale.element_count()) != p.rows) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "dequantize_per_token: scale must hold one value per row (" + std::to_string(p.rows) +
        " rows), got " + std::to_string(scale.element_count())));
  }
  auto zero_point = DecodeZeroPoint(extra, p.rows, "dequantize_per_token");
  if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
  p.q_type = ToDType(q.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.out_type = ToDType(out.element_type());
  p.q = q.untyped_data();
  p.scale = scale.untyped_data();
  p.zero_point = *zero_point;
  p.out = out.untyped_data();
  return p;
}

// --- derivatives of dequantize ---------------------------------------------------------------

// Checks that `buffer` has the shape of the [..., D] array `like`.
inline ffi::Error CheckSameShape(const ffi::AnyBuffer& buffer, const ffi::AnyBuffer& like,
                                 const char* op, const char* name, const char* like_name) {
  if (!SameDimensions(buffer, like)) {
    return ffi::Error::InvalidArgument(std::string(op) + ": " + name + " must have the shape of " +
                                       like_name);
  }
  return ffi::Error::Success();
}

// Checks that a per-row buffer holds one value per row.
inline ffi::Error CheckPerRow(const ffi::AnyBuffer& buffer, int64_t rows, const char* op,
                              const char* name) {
  if (static_cast<int64_t>(buffer.element_count()) != rows) {
    return ffi::Error::InvalidArgument(std::string(op) + ": " + name +
                                       " must hold one value per row (" + std::to_string(rows) +
                                       " rows), got " + std::to_string(buffer.element_count()));
  }
  return ffi::Error::Success();
}

// Rank check and row geometry of the [..., D] array every derivative kernel walks.
inline ffi::Error CheckRows(const ffi::AnyBuffer& array, const char* op, int64_t& rows,
                            int64_t& cols) {
  if (array.dimensions().size() < 1) {
    return ffi::Error::InvalidArgument(std::string(op) + ": arrays must have rank >= 1");
  }
  rows = LeadingElements(array);
  cols = array.dimensions().back();
  return ffi::Error::Success();
}

// Backward of dequantize. `q` is null for dq alone, `scale` is null for dscale
// alone; `extra` (the optional zero point) is null for dq alone; `dq`/`dscale`
// are the requested outputs (null: not computed).
inline ffi::ErrorOr<DequantizeGradProblem> DecodeDequantizeGrad(
    const ffi::AnyBuffer& dy, const ffi::AnyBuffer* q, const ffi::AnyBuffer* scale,
    const ffi::RemainingArgs* extra, ffi::AnyBuffer* dq, ffi::AnyBuffer* dscale) {
  constexpr const char* op = "dequantize_per_token backward";
  DequantizeGradProblem p;
  if (auto e = CheckRows(dy, op, p.rows, p.cols); e.failure()) return ffi::Unexpected(e);
  if (q != nullptr) {
    if (auto e = CheckSameShape(*q, dy, op, "q", "dy"); e.failure()) return ffi::Unexpected(e);
    p.q_type = ToDType(q->element_type());
    p.q = q->untyped_data();
  }
  if (dq != nullptr) {
    if (auto e = CheckSameShape(*dq, dy, op, "dq", "dy"); e.failure()) return ffi::Unexpected(e);
    if (q != nullptr && dq->element_type() != q->element_type()) {
      return ffi::Unexpected(
          ffi::Error::InvalidArgument(std::string(op) + ": dq must have q's dtype"));
    }
    p.q_type = ToDType(dq->element_type());
    p.dq = dq->untyped_data();
  }
  if (scale != nullptr) {
    if (auto e = CheckPerRow(*scale, p.rows, op, "scale"); e.failure()) return ffi::Unexpected(e);
    p.scale_type = ToDType(scale->element_type());
    p.scale = scale->untyped_data();
  }
  if (dscale != nullptr) {
    if (auto e = CheckPerRow(*dscale, p.rows, op, "dscale"); e.failure()) return ffi::Unexpected(e);
    if (scale != nullptr && dscale->element_type() != scale->element_type()) {
      return ffi::Unexpected(
          ffi::Error::InvalidArgument(std::string(op) + ": dscale must have scale's dtype"));
    }
    if (q == nullptr) {
      return ffi::Unexpected(ffi::Error::InvalidArgument(std::string(op) + ": dscale needs q"));
    }
    p.scale_type = ToDType(dscale->element_type());
    p.dscale = dscale->untyped_data();
  }
  if (dq != nullptr && scale == nullptr) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(std::string(op) + ": dq needs the scale"));
  }
  if (extra != nullptr) {
    auto zero_point = DecodeZeroPoint(*extra, p.rows, op);
    if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
    p.zero_point = *zero_point;
  }
  p.out_type = ToDType(dy.element_type());
  p.dy = dy.untyped_data();
  return p;
}

// Forward-mode tangent of dequantize in q and scale together.
inline ffi::ErrorOr<DequantizeTangentProblem> DecodeDequantizeTangent(
    const ffi::AnyBuffer& q_tangent, const ffi::AnyBuffer& scale_tangent, const ffi::AnyBuffer& q,
    const ffi::AnyBuffer& scale, const ffi::RemainingArgs& extra, const ffi::AnyBuffer& out) {
  constexpr const char* op = "dequantize_per_token tangent";
  DequantizeTangentProblem p;
  if (auto e = CheckRows(q, op, p.rows, p.cols); e.failure()) return ffi::Unexpected(e);
  if (auto e = CheckSameShape(q_tangent, q, op, "q_tangent", "q"); e.failure()) {
    return ffi::Unexpected(e);
  }
  if (auto e = CheckSameShape(out, q, op, "the output", "q"); e.failure()) {
    return ffi::Unexpected(e);
  }
  if (auto e = CheckPerRow(scale, p.rows, op, "scale"); e.failure()) return ffi::Unexpected(e);
  if (auto e = CheckPerRow(scale_tangent, p.rows, op, "scale_tangent"); e.failure()) {
    return ffi::Unexpected(e);
  }
  if (q_tangent.element_type() != q.element_type() ||
      scale_tangent.element_type() != scale.element_type()) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        std::string(op) + ": tangents must have the dtypes of q and scale"));
  }
  auto zero_point = DecodeZeroPoint(extra, p.rows, op);
  if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
  p.q_type = ToDType(q.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.out_type = ToDType(out.element_type());
  p.q_tangent = q_tangent.untyped_data();
  p.scale_tangent = scale_tangent.untyped_data();
  p.q = q.untyped_data();
  p.scale = scale.untyped_data();
  p.zero_point = *zero_point;
  p.out = out.untyped_data();
  return p;
}

// --- quantize ----------------------------------------------------------------------------------

// Checks [qmin, qmax] against the int8/uint8 storage type of q.
inline ffi::Error CheckQuantRange(DType q_type, int32_t qmin, int32_t qmax, const char* op) {
  int32_t lowest = 0;
  int32_t highest = 0;
  if (q_type == DType::kS8) {
    lowest = -128;
    highest = 127;
  } else if (q_type == DType::kU8) {
    highest = 255;
  } else {
    return ffi::Error::InvalidArgument(std::string(op) + ": q must be int8 or uint8, got " +
                                       DTypeName(q_type));
  }
  if (qmin < lowest || qmax > highest || qmin > qmax) {
    return ffi::Error::InvalidArgument(std::string(op) + ": [qmin, qmax] = [" +
                                       std::to_string(qmin) + ", " + std::to_string(qmax) +
                                       "] is not a range inside " + DTypeName(q_type));
  }
  return ffi::Error::Success();
}

inline ffi::ErrorOr<QuantizeProblem> DecodeQuantize(const ffi::AnyBuffer& x,
                                                    const ffi::AnyBuffer& scale,
                                                    const ffi::RemainingArgs& extra,
                                                    const ffi::AnyBuffer& q, int32_t qmin,
                                                    int32_t qmax) {
  constexpr const char* kOp = "quantize_per_token";
  if (x.dimensions().size() < 1) {
    return ffi::Unexpected(ffi::Error::InvalidArgument("quantize_per_token: x must have rank >= 1"));
  }
  if (!SameDimensions(x, q)) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("quantize_per_token: output shape must equal x's shape"));
  }
  QuantizeProblem p;
  p.rows = LeadingElements(x);
  p.cols = x.dimensions().back();
  if (static_cast<int64_t>(scale.element_count()) != p.rows) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "quantize_per_token: scale must hold one value per row (" + std::to_string(p.rows) +
        " rows), got " + std::to_string(scale.element_count())));
  }
  auto zero_point = DecodeZeroPoint(extra, p.rows, kOp);
  if (zero_point.has_error()) return ffi::Unexpected(zero_point.error());
  p.x_type = ToDType(x.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.q_type = ToDType(q.element_type());
  ffi::Error range = CheckQuantRange(p.q_type, qmin, qmax, kOp);
  if (range.failure()) return ffi::Unexpected(range);
  p.x = x.untyped_data();
  p.scale = scale.untyped_data();
  p.zero_point = *zero_point;
  p.q = q.untyped_data();
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

inline ffi::ErrorOr<DynamicQuantizeProblem> DecodeQuantizeDynamic(
    const ffi::AnyBuffer& x, const ffi::AnyBuffer& q, const ffi::AnyBuffer& scale,
    const ffi::AnyBuffer& zero_point, bool symmetric, int32_t qmin, int32_t qmax) {
  constexpr const char* kOp = "quantize_per_token_dynamic";
  if (x.dimensions().size() < 1) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("quantize_per_token_dynamic: x must have rank >= 1"));
  }
  if (!SameDimensions(x, q)) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "quantize_per_token_dynamic: q's shape must equal x's shape"));
  }
  DynamicQuantizeProblem p;
  p.rows = LeadingElements(x);
  p.cols = x.dimensions().back();
  if (static_cast<int64_t>(scale.element_count()) != p.rows ||
      static_cast<int64_t>(zero_point.element_count()) != p.rows ||
      zero_point.element_type() != ffi::DataType::S32) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "quantize_per_token_dynamic: scale and int32 zero_point must hold one value per row (" +
        std::to_string(p.rows) + " rows)"));
  }
  p.x_type = ToDType(x.element_type());
  p.scale_type = ToDType(scale.element_type());
  p.q_type = ToDType(q.element_type());
  ffi::Error range = CheckQuantRange(p.q_type, qmin, qmax, kOp);
  if (range.failure()) return ffi::Unexpected(range);
  // The chosen scale divides by qmax (symmetric) or qmax - qmin (asymmetric).
  if (symmetric ? qmax <= 0 : qmax <= qmin) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "quantize_per_token_dynamic: the quantized range is empty (qmax " +
        std::string(symmetric ? "<= 0" : "<= qmin") + ")"));
  }
  p.symmetric = symmetric;
  p.x = x.untyped_data();
  p.q = q.untyped_data();
  p.scale = scale.untyped_data();
  p.zero_point = static_cast<int32_t*>(zero_point.untyped_data());
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

// Kernels report failure as a message; an empty message is success.
inline ffi::Error ToError(const std::string& message) {
  if (message.empty()) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(message);
}

}  // namespace jdq

#endif  // JAX_DEQUANT_FFI_COMMON_H_

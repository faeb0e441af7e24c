// The one dtype-dispatch switch: maps runtime DTypes to C++ storage types.
//
// `Types` names the platform's 16-bit float storage types (CpuTypes or
// CudaTypes). The callback receives TypeTag<T> values; combinations the
// contract does not allow are never instantiated.
#ifndef JAX_DEQUANT_DISPATCH_H_
#define JAX_DEQUANT_DISPATCH_H_

#include <cstdint>
#include <string>
#include <type_traits>

#include "problem.h"

namespace jdq {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) for a float type, or returns an error message.
template <typename Types, typename Fn>
std::string VisitFloat(DType type, Fn&& fn) {
  switch (type) {
    case DType::kF16:
      return fn(TypeTag<typename Types::F16>{});
    case DType::kBF16:
      return fn(TypeTag<typename Types::BF16>{});
    case DType::kF32:
      return fn(TypeTag<float>{});
    case DType::kF64:
      return fn(TypeTag<double>{});
    default:
      return std::string("expected a float type, got ") + DTypeName(type);
  }
}

// Calls fn(TypeTag<T>{}) for quantized storage (int8, uint8) or a float
// carrier of integer values.
template <typename Types, typename Fn>
std::string VisitStorage(DType type, Fn&& fn) {
  switch (type) {
    case DType::kS8:
      return fn(TypeTag<int8_t>{});
    case DType::kU8:
      return fn(TypeTag<uint8_t>{});
    default:
      return VisitFloat<Types>(type, fn);
  }
}

// The allowed (scale, output) pairs: equal types, or a float32 scale.
template <typename ScaleT, typename OutT>
inline constexpr bool kAllowedScaleOut =
    std::is_same_v<ScaleT, OutT> || std::is_same_v<ScaleT, float>;

// Dispatches a (storage, scale, output) triple: fn(q_tag, scale_tag, out_tag).
template <typename Types, typename Fn>
std::string VisitDequantizeTypes(DType q_type, DType scale_type, DType out_type, Fn&& fn) {
  return VisitFloat<Types>(out_type, [&](auto out_tag) -> std::string {
    using OutT = typename decltype(out_tag)::type;
    return VisitFloat<Types>(scale_type, [&](auto scale_tag) -> std::string {
      using ScaleT = typename decltype(scale_tag)::type;
      if constexpr (!kAllowedScaleOut<ScaleT, OutT>) {
        return std::string("scale dtype ") + DTypeName(scale_type) + " with output dtype " +
               DTypeName(out_type) + " is not an allowed pair";
      } else {
        return VisitStorage<Types>(q_type, [&](auto q_tag) -> std::string {
          return fn(q_tag, scale_tag, out_tag);
        });
      }
    });
  });
}

// Dispatches fake quantization's (x, scale) pair: fn(x_tag, scale_tag) for a
// float x with a scale of x's type or float32.
template <typename Types, typename Fn>
std::string VisitFakeQuantizeTypes(DType x_type, DType scale_type, Fn&& fn) {
  return VisitFloat<Types>(x_type, [&](auto x_tag) -> std::string {
    using XT = typename decltype(x_tag)::type;
    return VisitFloat<Types>(scale_type, [&](auto scale_tag) -> std::string {
      using ScaleT = typename decltype(scale_tag)::type;
      if constexpr (!kAllowedScaleOut<ScaleT, XT>) {
        return std::string("scale dtype ") + DTypeName(scale_type) + " with x dtype " +
               DTypeName(x_type) + " is not an allowed pair";
      } else {
        return fn(x_tag, scale_tag);
      }
    });
  });
}

// Calls fn(TypeTag<T>{}) for quantized storage proper: int8 or uint8.
template <typename Fn>
std::string VisitQuantized(DType type, Fn&& fn) {
  switch (type) {
    case DType::kS8:
      return fn(TypeTag<int8_t>{});
    case DType::kU8:
      return fn(TypeTag<uint8_t>{});
    default:
      return std::string("expected int8 or uint8 storage, got ") + DTypeName(type);
  }
}

// Dispatches an (input, scale, storage) triple of the quantize ops:
// fn(x_tag, scale_tag, q_tag). Static quantization (kAnyScale = false) takes
// the (x, scale) pairs of VisitFakeQuantizeTypes (a scale of x's type, or
// float32); dynamic quantization (kAnyScale = true) stores its scale in any
// float type.
template <typename Types, bool kAnyScale, typename Fn>
std::string VisitQuantizeTypes(DType x_type, DType scale_type, DType q_type, Fn&& fn) {
  auto with_storage = [&](auto x_tag, auto scale_tag) -> std::string {
    return VisitQuantized(q_type, [&](auto q_tag) -> std::string {
      return fn(x_tag, scale_tag, q_tag);
    });
  };
  if constexpr (kAnyScale) {
    return VisitFloat<Types>(x_type, [&](auto x_tag) -> std::string {
      return VisitFloat<Types>(scale_type, [&](auto scale_tag) -> std::string {
        return with_storage(x_tag, scale_tag);
      });
    });
  } else {
    return VisitFakeQuantizeTypes<Types>(x_type, scale_type, with_storage);
  }
}

}  // namespace jdq

#endif  // JAX_DEQUANT_DISPATCH_H_

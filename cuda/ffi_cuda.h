// CUDA FFI handler symbols, registered with XLA by module.cc when the library
// is built with CUDA.
#ifndef JAX_DEQUANT_FFI_CUDA_H_
#define JAX_DEQUANT_FFI_CUDA_H_

#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeDscaleCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeDqCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeDqDscaleCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeTangentCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeDynamicCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeTangentCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeBackwardCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqQuantizeCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqQuantizeDynamicCuda);

#endif  // JAX_DEQUANT_FFI_CUDA_H_

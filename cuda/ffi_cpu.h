// CPU FFI handler symbols, registered with XLA by module.cc.
#ifndef JAX_DEQUANT_FFI_CPU_H_
#define JAX_DEQUANT_FFI_CPU_H_

#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeDscaleCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeDqCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeDqDscaleCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqDequantizeTangentCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeDynamicCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeTangentCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqFakeQuantizeBackwardCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqQuantizeCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JdqQuantizeDynamicCpu);

#endif  // JAX_DEQUANT_FFI_CPU_H_

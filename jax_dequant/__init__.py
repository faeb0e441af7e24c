"""jax_dequant: per-token (per-row) int8/uint8 quantization for JAX.

The ops run our own CUDA and C++ kernels, registered with XLA as typed FFI
custom calls and exposed as JAX primitives. ``jax_dequant.reference`` holds the
jnp reference of each op (the numerics contract, exactly).
"""

from jax_dequant import reference
from jax_dequant._config import current_implementation, use_implementation
from jax_dequant._export import export_disabled_checks
from jax_dequant._native import BUILD_INFO, KERNEL_PLATFORMS
from jax_dequant.dequantize import dequantize_per_token
from jax_dequant.fake_quantize import fake_quantize_per_token
from jax_dequant.plan import KernelPlan, kernel_plan
from jax_dequant.quantize import quantize_per_token
from jax_dequant.quantize_dynamic import quantize_per_token_dynamic

__version__ = "0.1.0"

__all__ = [
    "BUILD_INFO",
    "KERNEL_PLATFORMS",
    "KernelPlan",
    "current_implementation",
    "dequantize_per_token",
    "export_disabled_checks",
    "fake_quantize_per_token",
    "kernel_plan",
    "quantize_per_token",
    "quantize_per_token_dynamic",
    "reference",
    "use_implementation",
]

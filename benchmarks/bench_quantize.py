"""Bandwidth of quantize_per_token and quantize_per_token_dynamic against a copy and XLA.

Run on a GPU machine (or the CPU) from an installed package:

    python benchmarks/bench_quantize.py            # default shapes
    python benchmarks/bench_quantize.py 16384x8192 # one shape, bfloat16

For each shape it prints the time per call and the bandwidth (bytes read + written) of:
a device-to-device copy (an elementwise negation of x, the copy-bandwidth baseline), our
static and dynamic kernels, and the XLA-compiled jnp reference of each. Calls are enqueued
back to back and timed together, so launch overhead hides behind the kernels on big shapes.
A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_dequant as jdq


def seconds_per_call(fn, *args, repeats: int = 50) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = None
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main(shapes) -> None:
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()})")
    rng = np.random.default_rng(0)
    for rows, cols, dtype in shapes:
        x = jax.device_put(rng.standard_normal((rows, cols)).astype(dtype), device)
        scale = jax.device_put(rng.uniform(0.01, 0.05, rows).astype(np.float32), device)
        zero_point = jax.device_put(rng.integers(-5, 5, rows).astype(np.int32), device)
        x_bytes = x.size * x.dtype.itemsize
        quant_bytes = x_bytes + x.size + rows * 8  # x in, q out, a scale and zero point per row
        cases = [
            ("copy (negate x)", jax.jit(lambda x: -x), (x,), 2 * x_bytes),
            ("quantize_per_token", jax.jit(jdq.quantize_per_token), (x, scale, zero_point),
             quant_bytes),
            ("  jnp reference", jax.jit(jdq.reference.quantize_per_token),
             (x, scale, zero_point), quant_bytes),
            ("quantize_per_token_dynamic", jax.jit(jdq.quantize_per_token_dynamic), (x,),
             quant_bytes),
            ("  jnp reference", jax.jit(jdq.reference.quantize_per_token_dynamic), (x,),
             quant_bytes),
            ("dynamic asymmetric uint8",
             jax.jit(lambda x: jdq.quantize_per_token_dynamic(x, dtype=jnp.uint8,
                                                              symmetric=False)), (x,),
             quant_bytes),
        ]
        print(f"\n[{rows}, {cols}] {np.dtype(dtype).name}")
        copy_rate = None
        for name, fn, args, nbytes in cases:
            t = seconds_per_call(fn, *args)
            rate = nbytes / t / 1e9
            copy_rate = copy_rate or rate
            print(f"  {name:30s} {t * 1e6:10.1f} us {rate:8.1f} GB/s {100 * rate / copy_rate:6.1f}%"
                  " of copy")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        shapes = []
        for arg in sys.argv[1:]:
            rows, cols = (int(v) for v in arg.split("x"))
            shapes.append((rows, cols, jnp.bfloat16))
    else:
        shapes = [(16384, 8192, jnp.bfloat16), (8192, 4096, np.float32), (4096, 16384, jnp.bfloat16),
                  (65536, 128, jnp.bfloat16), (2048, 40000, jnp.bfloat16), (16, 4096, jnp.bfloat16),
                  (1, 8192, jnp.bfloat16)]
    main(shapes)

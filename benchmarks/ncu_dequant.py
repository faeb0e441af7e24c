"""Target program for Nsight Compute: one dequantize call of ours, then XLA's.

Run under ncu (benchmarks/gpu_session.sh does):

    ncu --kernel-name-base demangled -k regex:'Dequantize|fusion' -c 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis \
        python3 benchmarks/ncu_dequant.py [ROWS COLS OUT_DTYPE]

The inputs are made on the host and copied over (no kernel runs before ours),
so the first matching kernel is our DequantizeKernel and the second XLA's
fusion of the jnp reference.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_dequant as jdq


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
    cols = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    out_dtype = jnp.dtype(sys.argv[3] if len(sys.argv) > 3 else "bfloat16")
    rng = np.random.default_rng(0)
    device = jax.devices("cuda")[0]
    q = jax.device_put(rng.integers(-128, 128, size=(rows, cols), dtype=np.int8), device)
    scale = jax.device_put(rng.uniform(0.02, 0.05, size=(rows,)).astype(np.float32), device)
    ours = jax.jit(lambda q, s: jdq.dequantize_per_token(q, s, out_dtype=out_dtype))
    xla = jax.jit(lambda q, s: jdq.reference.dequantize_per_token(q, s, out_dtype=out_dtype))
    ours_lowered = ours.lower(q, scale).compile()
    xla_lowered = xla.lower(q, scale).compile()
    ours_lowered(q, scale).block_until_ready()
    xla_lowered(q, scale).block_until_ready()
    print(f"dequantize {rows}x{cols} int8 -> {out_dtype.name}: ours, then XLA's fusion")


if __name__ == "__main__":
    main()

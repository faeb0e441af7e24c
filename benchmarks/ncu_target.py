"""Target program for Nsight Compute: one call of one op, ours then XLA's.

Run under ncu (benchmarks/gpu_session.sh does), e.g.:

    ncu --kernel-name-base demangled -c 8 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section Occupancy \
        python3 benchmarks/ncu_target.py quantize_dynamic bfloat16 16384 8192

The op is one of jax_dequant.bench's (dequantize, dequantize_bwd, quantize,
quantize_dynamic, fake_quantize, fake_quantize_bwd) and is built by the
benchmark's own case builder, so ncu sees exactly what the benchmark times.
Inputs are made on the host CPU and copied over (copies only, no kernel), so
the kernels ncu records are ours (the first call) and then XLA's (the second).
"""

from __future__ import annotations

import sys

import jax

from jax_dequant import bench


def main() -> None:
    op = sys.argv[1] if len(sys.argv) > 1 else "dequantize"
    dtype = sys.argv[2] if len(sys.argv) > 2 else "bf16"
    dtype = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(dtype, dtype)
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 16384
    cols = int(sys.argv[4]) if len(sys.argv) > 4 else 8192
    host = jax.devices("cpu")[0]
    (case,), _ = bench.build_cases([op], [dtype], [(rows, cols)], host)
    args = jax.device_put(case.make_inputs(0), jax.devices("cuda")[0])
    jax.block_until_ready(args)
    # Ours runs before XLA's function is compiled: kernels XLA's compiler may
    # launch while compiling (autotuning) come after ours.
    ours = jax.jit(case.ours).lower(*args).compile()
    jax.block_until_ready(ours(*args))
    xla = jax.jit(case.xla).lower(*args).compile()
    jax.block_until_ready(xla(*args))
    print(f"{op} {dtype} {rows}x{cols}: ours, then XLA's")


if __name__ == "__main__":
    main()

"""CPU timing of ours against XLA's, many interleaved calls: the best and the median.

The benchmark (``python -m jax_dequant.bench --platform cpu``) reports medians of
single calls. On the CPU a call's time depends mostly on where its output lands
(a fresh block pays a page fault per 4 KiB page; a block the C library hands
back after a free pays none), so this script also reports the best of N calls
(outputs that stayed in memory: the kernels' own work) and, with ``--isa``,
repeats ours with the AVX-512 loops off. Usage:

    python benchmarks/cpu_interleaved.py --ops quantize,dequantize --calls 15 --isa
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jax_dequant import _jax_dequant_ffi, bench


def _times(fn, args, calls: int) -> np.ndarray:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        result = fn(*args)
        jax.block_until_ready(result)
        out.append(time.perf_counter() - start)
        del result
    return np.array(out) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=",".join(bench.OPS), help="comma-separated ops")
    parser.add_argument("--dtypes", default="bf16,f16,f32", help="comma-separated dtypes")
    parser.add_argument("--shape", default="4096x4096", help="ROWSxD")
    parser.add_argument("--calls", type=int, default=15, help="interleaved calls per side")
    parser.add_argument("--isa", action="store_true", help="also time ours with AVX-512 off")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    cpu = jax.devices("cpu")[0]
    print(f"{'op':17s} {'dtype':5s} {'ours best/median ms':>20s} {'XLA best/median ms':>19s} "
          f"{'speedup best':>12s}" + ("  ours, AVX-512 off" if args.isa else ""))
    for op in args.ops.split(","):
        for dtype in args.dtypes.split(","):
            (case,), _ = bench.build_cases([op], [dtype], [shape], cpu)
            inputs = case.make_inputs(0)
            ours, xla = jax.jit(case.ours), jax.jit(case.xla)
            jax.block_until_ready((ours(*inputs), xla(*inputs)))
            ours_ms, xla_ms = [], []
            for _ in range(args.calls):  # interleaved, one call each at a time
                ours_ms.append(_times(ours, inputs, 1)[0])
                xla_ms.append(_times(xla, inputs, 1)[0])
            line = (f"{op:17s} {dtype:5s} {min(ours_ms):9.2f} /{np.median(ours_ms):8.2f} "
                    f"{min(xla_ms):9.2f} /{np.median(xla_ms):8.2f} {min(xla_ms) / min(ours_ms):12.2f}")
            if args.isa:
                _jax_dequant_ffi.set_cpu_avx512(False)
                narrow = _times(ours, inputs, args.calls)
                _jax_dequant_ffi.set_cpu_avx512(True)
                line += f"  {narrow.min():7.2f} /{np.median(narrow):7.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: backward of dequantize_per_token (our kernels) against XLA's compiled
gradient of the jnp reference, on the default device.

    python benchmarks/bench_dequantize_grad.py [--rows 16384] [--cols 8192] [--iters 50]

Cases: the scale's gradient with int8 q (dscale kernel: reads dy and q), the
float-carrier gradient of q alone (dq kernel) and of q and the scale together
(fused kernel: reads dy and q once, writes dq). Prints the time per call, the
bytes moved per second, and XLA's time over ours (the goal is >= 1.1 on a GPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_dequant as jdq


def _time(fn, *args, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def _pullback(fn, argnums, zero_point, out_dtype):
    def run(q, scale, dy):
        def f(*diff):
            args = [q, scale]
            for i, value in zip(argnums, diff):
                args[i] = value
            return fn(*args, zero_point, out_dtype=out_dtype)

        return jax.vjp(f, *[(q, scale)[i] for i in argnums])[1](dy)

    return jax.jit(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    rows, cols = args.rows, args.cols
    rng = np.random.default_rng(0)
    levels = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
    scale = jnp.asarray(rng.random(rows, dtype=np.float32) * 0.01)
    zero_point = jnp.asarray(rng.integers(-8, 8, size=rows).astype(np.int32))
    dy = jnp.asarray(rng.standard_normal((rows, cols), dtype=np.float32)).astype(jnp.bfloat16)
    print(f"device: {jax.devices()[0]}, shape [{rows}, {cols}], dy bfloat16, scale float32")
    cases = [
        ("dscale, int8 q", jnp.asarray(levels), (1,), 1 + 2),
        ("dq, bf16 carrier", jnp.asarray(levels).astype(jnp.bfloat16), (0,), 2 + 2),
        ("dq+dscale, bf16 carrier", jnp.asarray(levels).astype(jnp.bfloat16), (0, 1), 2 + 2 + 2),
    ]
    for name, q, argnums, bytes_per_element in cases:
        times = {}
        for label, fn in (("ours", jdq.dequantize_per_token),
                          ("xla", jdq.reference.dequantize_per_token)):
            pullback = _pullback(fn, argnums, zero_point, jnp.bfloat16)
            times[label] = _time(pullback, q, scale, dy, iters=args.iters)
        moved = rows * cols * bytes_per_element
        ours, xla = times["ours"], times["xla"]
        print(
            f"{name:26s} ours {ours * 1e6:9.1f} us ({moved / ours / 1e9:7.1f} GB/s)"
            f"   xla {xla * 1e6:9.1f} us ({moved / xla / 1e9:7.1f} GB/s)"
            f"   xla/ours {xla / ours:.2f}"
        )


if __name__ == "__main__":
    main()

"""Benchmark: our kernels against XLA's compiled jnp reference, in one run.

Run ``python -m jax_dequant.bench`` (``--help`` for the flags). For every op the
installed package exports, every float dtype (bf16, f16, f32) and every shape
(decode: 1, 16 and 64 rows of 4096 and 8192; prefill: 4096x4096, 16384x8192,
65536x8192 on a GPU, 4096x4096 on a CPU), it times our op and XLA's compiled
jnp expression of the same computation in the same process, and the device's
device-to-device copy, and reports time, GB/s (fewest bytes the op must move:
each input read once, each output written once), % of the copy bandwidth and
the speedup over XLA. It prints a table and the project's performance goals,
and writes JSON and a PNG plot.

Timing methods (the output says which one each number used):

* GPU, ``profiler`` (preferred): device time from the JAX profiler. Each
  (case, implementation) pair is compiled as its own ``jax.jit`` function with a
  unique name, run K times inside a trace, and the kernel/memcpy events of the
  GPU's stream lines are attributed to it by the ``hlo_module`` the profiler
  records with each event (``profiler:module``), or, where events carry no
  module, by the host annotation around its K calls (``profiler:window``). The
  time per call is the interquartile mean (the mean of the middle half) of the
  per-call sums of those events, so host dispatch overhead cannot distort it.
  The profiler's timestamps advance in 32 ns steps and a median can only be a
  whole step; the JSON keeps the median too (``*_median_us``).
* GPU, ``wallclock`` (fallback when the trace has no usable GPU events): host
  time of K asynchronous dispatches, divided by K. For shapes that run in a few
  microseconds this measures dispatch, not the device: such rows say so.
* CPU, ``wallclock``: the median over repeated single calls, ours and XLA's
  interleaved (each call takes milliseconds, so dispatch is negligible).

Inputs are rotated among several input sets when an op's data is smaller than
four times the largest L2 we run on (60 MB, an H200's; an H100 has 50 MB), so
that repeated runs do not read them from L2; decode shapes fit in L2 whatever
one does, and their rows say so (``L2-resident``): for those, compare device
times, not bandwidth.

The XLA side is what a user would otherwise run: for dequantize (forward and
backward) ``jax_dequant.reference`` under ``jax.jit``; for the quantize ops the
natural jnp expression (``jnp.clip(jnp.round(x / s[:, None]), qmin, qmax)``),
and for fake-quantize backward the straight-through form of it under
``jax.vjp`` (its autodiff gives the clipped straight-through and LSQ
gradients).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import glob
import gzip
import json
import math
import os
import platform as host_platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jax_dequant as jdq

# --- what is measured -----------------------------------------------------------------------------

OPS = (
    "dequantize",
    "dequantize_bwd",
    "quantize",
    "quantize_dynamic",
    "fake_quantize",
    "fake_quantize_bwd",
)
DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}
DECODE_SHAPES = ((1, 4096), (16, 4096), (64, 4096), (1, 8192), (16, 8192), (64, 8192))
PREFILL_SHAPES = {"gpu": ((4096, 4096), (16384, 8192), (65536, 8192)), "cpu": ((4096, 4096),)}
QUICK_SHAPES = {"gpu": ((16, 4096), (4096, 4096), (16384, 8192)), "cpu": ((16, 4096), (4096, 4096))}
DECODE_MAX_ROWS = 64
L2_BYTES = 60 * 1024 * 1024  # an H200's L2 (an H100's is 50 MB); inputs over 4x this need no rotation
COPY_BYTES = 1 << 30  # the copy-bandwidth buffer: 1 GiB read + 1 GiB written
MIB = 1024 * 1024
QMIN, QMAX = -128, 127

# Goals of the project (issue 6), checked at the end of a run.
GOAL_FORWARD_COPY_FRACTION = 0.94
GOAL_FORWARD_MIN_BYTES = 256 * MIB
GOAL_DEQUANT_SPEEDUP = 1.15
GOAL_BACKWARD_SPEEDUP = 1.1
GOAL_DYNAMIC_COPY_FRACTION = 0.90
FORWARD_OPS = ("dequantize", "quantize", "quantize_dynamic", "fake_quantize")
BACKWARD_OPS = ("dequantize_bwd", "fake_quantize_bwd")


@dataclasses.dataclass
class Case:
    """One (op, dtype, shape) to time: our function, XLA's, their inputs and bytes.

    Attributes:
        op: one of OPS.
        dtype: "bf16", "f16" or "f32": the output dtype of dequantize, the input
            dtype of the quantize ops.
        shape: (rows, D).
        bytes: fewest bytes the op must move through device memory.
        make_inputs: seed -> tuple of arrays on the device.
        ours: our implementation (a plain function of the inputs).
        xla: XLA's jnp implementation of the same computation.
        index: position in the run, used to name the compiled functions.
    """

    op: str
    dtype: str
    shape: tuple[int, int]
    bytes: int
    make_inputs: Callable[[int], tuple]
    ours: Callable
    xla: Callable
    index: int = 0

    @property
    def decode(self) -> bool:
        return self.shape[0] <= DECODE_MAX_ROWS

    @property
    def label(self) -> str:
        return f"{self.op} {self.dtype} {self.shape[0]}x{self.shape[1]}"

    def tag(self, impl: str) -> str:
        return f"jdqbench_{self.index:04d}_{impl}"


# --- inputs ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _input_generator(shape: tuple[int, int], parts: tuple[tuple[str, Any], ...]) -> Callable:
    """One jitted RNG function per (shape, parts), shared by the cases that need it."""
    rows, _ = shape

    def make(key):
        keys = jax.random.split(key, len(parts))
        out = []
        for k, (kind, dtype) in zip(keys, parts, strict=True):
            if kind == "levels":
                out.append(jax.random.randint(k, shape, QMIN, QMAX + 1, jnp.int32).astype(jnp.int8))
            elif kind == "values":
                out.append((jax.random.normal(k, shape, jnp.float32) * 2.0).astype(dtype))
            elif kind == "scale":
                out.append(jax.random.uniform(k, (rows,), jnp.float32, 0.02, 0.05))
            else:  # pragma: no cover - programming error
                raise ValueError(kind)
        return tuple(out)

    return jax.jit(make)


def _input_factory(device, shape, parts: Sequence[tuple[str, Any]]) -> Callable[[int], tuple]:
    """Returns seed -> inputs made on ``device`` by a jitted RNG function.

    ``parts`` lists (kind, dtype): "levels" (int8 [N, D]), "values" (float
    [N, D], about N(0, 2)), "scale" (float32 [N] in [0.02, 0.05)).
    """
    generator = _input_generator(
        tuple(shape),
        tuple((kind, None if dtype is None else np.dtype(dtype)) for kind, dtype in parts),
    )

    def factory(seed: int) -> tuple:
        with jax.default_device(device):
            key = jax.random.PRNGKey(seed)
        return generator(jax.device_put(key, device))

    return factory


# --- the ops: ours and XLA's ----------------------------------------------------------------------


def _xla_quantize(x, s):
    return jnp.clip(jnp.round(x / s[:, None]), QMIN, QMAX).astype(jnp.int8)


def _xla_quantize_dynamic(x):
    absmax = jnp.max(jnp.abs(x), axis=-1).astype(jnp.float32)
    s = jnp.where(absmax == 0, jnp.float32(1), absmax / QMAX)
    q = jnp.clip(jnp.round(x / s[:, None]), QMIN, QMAX).astype(jnp.int8)
    return q, s


def _xla_fake_quantize(x, s):
    s2 = s[:, None]
    return (jnp.clip(jnp.round(x / s2), QMIN, QMAX) * s2).astype(x.dtype)


def _xla_fake_quantize_ste(x, s):
    s2 = s[:, None]
    v = x / s2
    v = v + jax.lax.stop_gradient(jnp.round(v) - v)
    return (jnp.clip(v, QMIN, QMAX) * s2).astype(x.dtype)


def build_cases(ops: Sequence[str], dtypes: Sequence[str], shapes, device) -> tuple[list, list]:
    """Builds the cases of the ops the package exports.

    Returns:
        (cases, skipped): skipped lists (op, reason) for ops not exported.
    """
    cases: list[Case] = []
    skipped: list[tuple[str, str]] = []
    exported = {
        "dequantize": "dequantize_per_token",
        "dequantize_bwd": "dequantize_per_token",
        "quantize": "quantize_per_token",
        "quantize_dynamic": "quantize_per_token_dynamic",
        "fake_quantize": "fake_quantize_per_token",
        "fake_quantize_bwd": "fake_quantize_per_token",
    }
    for op in ops:
        if not hasattr(jdq, exported[op]):
            skipped.append((op, f"jax_dequant does not export {exported[op]}"))
            continue
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            size = np.dtype(dtype).itemsize
            for shape in shapes:
                case = _build_case(op, dtype_name, dtype, size, tuple(shape), device)
                case.index = len(cases)
                cases.append(case)
    return cases, skipped


def _build_case(op, dtype_name, dtype, size, shape, device) -> Case:
    n, d = shape
    nd = n * d
    if op == "dequantize":
        return Case(
            op,
            dtype_name,
            shape,
            nd + 4 * n + nd * size,
            _input_factory(device, shape, [("levels", None), ("scale", None)]),
            lambda q, s: jdq.dequantize_per_token(q, s, out_dtype=dtype),
            lambda q, s: jdq.reference.dequantize_per_token(q, s, out_dtype=dtype),
        )
    if op == "dequantize_bwd":

        def vjp_of(fn):
            def run(q, s, dy):
                _, pullback = jax.vjp(lambda s_: fn(q, s_, out_dtype=dtype), s)
                return pullback(dy)[0]

            return run

        return Case(
            op,
            dtype_name,
            shape,
            nd + nd * size + 4 * n,
            _input_factory(device, shape, [("levels", None), ("scale", None), ("values", dtype)]),
            vjp_of(jdq.dequantize_per_token),
            vjp_of(jdq.reference.dequantize_per_token),
        )
    if op == "quantize":
        return Case(
            op,
            dtype_name,
            shape,
            nd * size + 4 * n + nd,
            _input_factory(device, shape, [("values", dtype), ("scale", None)]),
            lambda x, s: jdq.quantize_per_token(x, s, dtype=jnp.int8),
            _xla_quantize,
        )
    if op == "quantize_dynamic":
        return Case(
            op,
            dtype_name,
            shape,
            nd * size + nd + 8 * n,
            _input_factory(device, shape, [("values", dtype)]),
            lambda x: jdq.quantize_per_token_dynamic(x, dtype=jnp.int8, symmetric=True),
            _xla_quantize_dynamic,
        )
    if op == "fake_quantize":
        return Case(
            op,
            dtype_name,
            shape,
            2 * nd * size + 4 * n,
            _input_factory(device, shape, [("values", dtype), ("scale", None)]),
            lambda x, s: jdq.fake_quantize_per_token(x, s, dtype=jnp.int8),
            _xla_fake_quantize,
        )
    if op == "fake_quantize_bwd":

        def vjp_of(fn):
            def run(x, s, dy):
                _, pullback = jax.vjp(fn, x, s)
                return pullback(dy)

            return run

        return Case(
            op,
            dtype_name,
            shape,
            3 * nd * size + 8 * n,
            _input_factory(device, shape, [("values", dtype), ("scale", None), ("values", dtype)]),
            vjp_of(lambda x, s: jdq.fake_quantize_per_token(x, s, dtype=jnp.int8)),
            vjp_of(_xla_fake_quantize_ste),
        )
    raise ValueError(f"unknown op {op!r}")  # pragma: no cover


def _named_jit(fn: Callable, name: str) -> Callable:
    """jax.jit of ``fn`` whose HLO module is called ``jit_<name>``."""

    def wrapper(*args):
        return fn(*args)

    wrapper.__name__ = wrapper.__qualname__ = name
    return jax.jit(wrapper)


def _block(tree) -> None:
    jax.block_until_ready(tree)


# --- trace parsing --------------------------------------------------------------------------------

# Lines of a GPU plane that the profiler derives from the stream lines; summing
# them too would count each kernel twice.
_DERIVED_LINES = (
    "xla ops",
    "xla modules",
    "launch stats",
    "steps",
    "framework",
    "source",
    "xla traceme",
    "tensorflow",
    "host offload",
    "step",
)


@dataclasses.dataclass
class TraceEvent:
    """One event of a trace, normalized from the XSpace or from the JSON trace."""

    gpu: bool  # on a GPU device's stream line
    name: str
    start_ns: float
    dur_ns: float
    text: str  # the event's stat values joined, for finding a module name


def _is_gpu_plane(name: str) -> bool:
    upper = name.upper()
    return "/DEVICE:" in upper and ("GPU" in upper or "CUDA" in upper)


def _stream_lines(names: Sequence[str]) -> set[str]:
    """The kernel lines of a GPU plane: 'Stream #..' ones, else all non-derived ones."""
    streams = {n for n in names if n.strip().lower().startswith("stream")}
    if streams:
        return streams
    return {n for n in names if not any(n.strip().lower().startswith(d) for d in _DERIVED_LINES)}


def _events_from_xspace(path: str) -> list[TraceEvent]:
    data = jax.profiler.ProfileData.from_file(path)
    events = []
    for plane in data.planes:
        gpu = _is_gpu_plane(plane.name)
        lines = list(plane.lines)
        kernel_lines = _stream_lines([line.name for line in lines]) if gpu else set()
        for line in lines:
            on_stream = gpu and line.name in kernel_lines
            if gpu and not on_stream:
                continue
            for event in line.events:
                text = ""
                if on_stream:
                    text = " ".join(str(value) for _, value in event.stats)
                events.append(
                    TraceEvent(
                        on_stream, event.name, float(event.start_ns), float(event.duration_ns), text
                    )
                )
    return events


def _events_from_json(path: str) -> list[TraceEvent]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as handle:
        data = json.load(handle)
    raw = data.get("traceEvents", []) if isinstance(data, dict) else data
    processes: dict[Any, str] = {}
    threads: dict[tuple, str] = {}
    for event in raw:
        if event.get("ph") == "M" and isinstance(event.get("args"), dict):
            if event.get("name") == "process_name":
                processes[event.get("pid")] = str(event["args"].get("name", ""))
            elif event.get("name") == "thread_name":
                threads[(event.get("pid"), event.get("tid"))] = str(event["args"].get("name", ""))
    gpu_pids = {pid for pid, name in processes.items() if _is_gpu_plane(name)}
    kernel_lines: dict[Any, set] = {}
    for pid in gpu_pids:
        names = [name for (p, _), name in threads.items() if p == pid]
        kernel_lines[pid] = _stream_lines(names)
    events = []
    for event in raw:
        if event.get("ph") != "X" or "ts" not in event:
            continue
        pid = event.get("pid")
        gpu = pid in gpu_pids
        if gpu:
            line = threads.get((pid, event.get("tid")), "")
            if kernel_lines[pid] and line not in kernel_lines[pid]:
                continue
        args = event.get("args") if isinstance(event.get("args"), dict) else {}
        text = " ".join(str(v) for v in args.values()) if gpu else ""
        events.append(
            TraceEvent(
                gpu,
                str(event.get("name", "")),
                float(event["ts"]) * 1e3,
                float(event.get("dur", 0.0)) * 1e3,
                text,
            )
        )
    return events


def load_trace_events(log_dir: str) -> tuple[list[TraceEvent], str]:
    """Reads the newest trace under ``log_dir``: the XSpace, else the JSON traces.

    Returns:
        (events, source), source naming the file kind used; ([], reason) when
        nothing usable was found.
    """
    problems = []
    readers = (
        ("xplane.pb", "**/*.xplane.pb", _events_from_xspace),
        ("perfetto_trace.json.gz", "**/perfetto_trace.json.gz", _events_from_json),
        ("trace.json.gz", "**/*.trace.json.gz", _events_from_json),
    )
    for source, pattern, reader in readers:
        paths = sorted(
            glob.glob(os.path.join(log_dir, pattern), recursive=True), key=os.path.getmtime
        )
        if not paths:
            continue
        try:
            events = reader(paths[-1])
        except Exception as error:  # noqa: BLE001 - any format problem means: try the next
            problems.append(f"{source}: {type(error).__name__}: {error}")
            continue
        if any(e.gpu for e in events):
            return events, source
        problems.append(f"{source}: no GPU stream events")
    return [], "; ".join(problems) or "no trace file written"


def interquartile_mean(samples: Sequence[float]) -> float:
    """Mean of the middle half of ``samples`` (all of them when there are fewer than 4).

    The profiler's GPU timestamps advance in steps (32 ns on an H200), so every
    per-call time is a whole number of steps and a median can only be one of
    them. Where the calls' times spread over two steps, the mean of the middle
    half falls between them in proportion; like the median, it ignores the
    slowest and fastest calls. (Where nearly every call reads the same step, as
    for most decode shapes on the H200, the two agree.)
    """
    ordered = sorted(samples)
    cut = len(ordered) // 4
    middle = ordered[cut : len(ordered) - cut]
    return math.fsum(middle) / len(middle)


def per_call_sums(
    events: list[TraceEvent], tag: str, calls: int
) -> tuple[list[float] | None, str, int]:
    """Device nanoseconds of each of the ``calls`` calls of the function named ``tag``.

    Matches GPU stream events whose stats name the module ``jit_<tag>``; if
    none do, takes the GPU events inside the host annotation ``tag``. A call's
    time is the sum of its events.

    Returns:
        (per-call sums in ns or None, how they were attributed, events per call).
    """
    # Tags have a fixed width, so no tag is a substring of another.
    matched = [e for e in events if e.gpu and tag in e.text]
    how = "profiler:module"
    if not matched:
        windows = [e for e in events if not e.gpu and e.name == tag]
        if not windows:
            return None, "no events", 0
        start = min(w.start_ns for w in windows)
        end = max(w.start_ns + w.dur_ns for w in windows)
        matched = [
            e for e in events if e.gpu and start <= e.start_ns and e.start_ns + e.dur_ns <= end
        ]
        how = "profiler:window"
    if not matched or len(matched) % calls:
        return None, f"{len(matched)} events for {calls} calls", 0
    matched.sort(key=lambda e: e.start_ns)
    per_call = len(matched) // calls
    sums = [
        sum(e.dur_ns for e in matched[i : i + per_call]) for i in range(0, len(matched), per_call)
    ]
    return sums, how, per_call


def attribute(events: list[TraceEvent], tag: str, calls: int) -> tuple[float | None, str, int]:
    """Device time per call of the function named ``tag``: the interquartile mean of
    :func:`per_call_sums`.

    Returns:
        (seconds per call or None, how it was attributed, events per call).
    """
    sums, how, per_call = per_call_sums(events, tag, calls)
    if sums is None:
        return None, how, per_call
    return interquartile_mean(sums) * 1e-9, how, per_call


# --- timing ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Time per call of one implementation of one case."""

    seconds: float | None
    method: str
    wall_seconds: float | None = None
    events_per_call: int = 0
    median_seconds: float | None = None  # profiler only: the median beside the interquartile mean


def _calls_for(case_bytes: int, platform: str) -> int:
    """How many calls to time: about 30 ms of device work, 10 to 200 calls."""
    estimate = case_bytes / (2e12 if platform == "gpu" else 5e9)
    return int(min(200, max(10, math.ceil(0.03 / max(estimate, 1e-9)))))


def _input_sets(case: Case) -> int:
    """Input sets to rotate among so that repeated calls miss L2 (1: no rotation)."""
    if case.decode or case.bytes >= 4 * L2_BYTES:
        return 1
    return min(8, math.ceil(4 * L2_BYTES / case.bytes))


def _profile_options():
    try:
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Python function tracing would bloat the trace
        return options
    except Exception:  # noqa: BLE001 - older/newer jax: use the defaults
        return None


@contextlib.contextmanager
def _trace(log_dir: str):
    options = _profile_options()
    try:
        context = jax.profiler.trace(log_dir, create_perfetto_trace=True, profiler_options=options)
    except TypeError:
        context = jax.profiler.trace(log_dir, create_perfetto_trace=True)
    with context:
        yield


def _time_batch(fn, input_sets, calls: int, tag: str) -> float:
    """Runs ``calls`` asynchronous calls inside the host annotation ``tag``; wall time per call."""
    _block(input_sets)
    time.sleep(0.002)  # a gap on the device timeline between batches
    with jax.profiler.TraceAnnotation(tag):
        start = time.perf_counter()
        out = None
        for i in range(calls):
            out = fn(*input_sets[i % len(input_sets)])
        _block(out)
        wall = time.perf_counter() - start
    return wall / calls


def measure_gpu(
    cases: list[Case],
    compiled: dict,
    log_dir: str,
    use_profiler: bool,
    progress: Callable[[str], None],
    keep_traces: bool = False,
) -> dict:
    """Times every available (case, impl) on the GPU; returns {(index, impl): Timing}."""
    walls: dict[tuple[int, str], tuple[float, int]] = {}
    trace_dir = tempfile.mkdtemp(prefix="jdq_trace_", dir=log_dir)

    def run_batches() -> None:
        walls.clear()
        for case in cases:
            impls = [impl for impl in ("ours", "xla") if (case.index, impl) in compiled]
            if not impls:
                continue
            calls = _calls_for(case.bytes, "gpu")
            inputs = [case.make_inputs(100 + i) for i in range(_input_sets(case))]
            for impl in impls:
                fn = compiled[(case.index, impl)]
                walls[(case.index, impl)] = (_time_batch(fn, inputs, calls, case.tag(impl)), calls)
            del inputs

    if use_profiler:
        try:
            with _trace(trace_dir):
                run_batches()
        except Exception as error:  # noqa: BLE001 - the profiler failing must not lose the run
            progress(f"profiler trace failed ({type(error).__name__}: {error}); using wall-clock")
            use_profiler = False
            run_batches()
    else:
        run_batches()
    events, source = ([], "profiler not used")
    if use_profiler:
        events, source = load_trace_events(trace_dir)
        if not events:
            progress(f"no GPU events in the trace ({source}); using wall-clock")
    timings = {}
    by_index = {case.index: case for case in cases}
    for (index, impl), (wall, calls) in walls.items():
        case = by_index[index]
        seconds, median, how, per_call = (None, None, source, 0)
        if events:
            sums, how, per_call = per_call_sums(events, case.tag(impl), calls)
            if sums is not None:
                seconds = interquartile_mean(sums) * 1e-9
                median = statistics.median(sums) * 1e-9
            if seconds is not None and seconds > 1.5 * wall + 20e-6:
                how, seconds = (
                    f"profiler time {seconds:.3g}s > wall {wall:.3g}s: misattributed",
                    None,
                )
        if seconds is None:
            timings[(index, impl)] = Timing(wall, "wallclock", wall, 0)
            if events:
                progress(f"{case.label} {impl}: {how}; using wall-clock")
        else:
            timings[(index, impl)] = Timing(seconds, how, wall, per_call, median)
    if not keep_traces:
        _remove_tree(trace_dir)
    return timings


def measure_cpu(cases: list[Case], compiled: dict, progress: Callable[[str], None]) -> dict:
    """Times every available (case, impl) on the CPU by wall clock; ours and XLA interleaved."""
    timings = {}
    for case in cases:
        impls = [impl for impl in ("ours", "xla") if (case.index, impl) in compiled]
        if not impls:
            continue
        inputs = case.make_inputs(100)
        samples: dict[str, list[float]] = {impl: [] for impl in impls}
        budget_end = time.perf_counter() + 2.0
        reps = 0
        while reps < 5 or (reps < 200 and time.perf_counter() < budget_end):
            for impl in impls:
                fn = compiled[(case.index, impl)]
                start = time.perf_counter()
                _block(fn(*inputs))
                samples[impl].append(time.perf_counter() - start)
            reps += 1
        for impl in impls:
            seconds = statistics.median(samples[impl])
            timings[(case.index, impl)] = Timing(seconds, "wallclock", seconds, 0)
        del inputs
    return timings


def compile_cases(cases: list[Case], progress: Callable[[str], None]) -> tuple[dict, list]:
    """Compiles and warms up ours and XLA's function of every case.

    The smallest case goes first: if ours fails there (an op without a kernel
    on this platform, a derivative not implemented yet), the whole op is
    reported unavailable at once.

    Returns:
        ({(index, impl): compiled fn}, [(what, impl, reason)] for those that failed).
    """
    compiled: dict = {}
    failed: list = []
    for position, case in enumerate(sorted(cases, key=lambda c: c.bytes)):
        inputs = case.make_inputs(0)
        for impl, fn in (("ours", case.ours), ("xla", case.xla)):
            jitted = _named_jit(fn, case.tag(impl))
            try:
                for _ in range(2):
                    _block(jitted(*inputs))
            except Exception as error:  # noqa: BLE001 - e.g. an op without a kernel here
                message = str(error).strip().splitlines()
                reason = f"{type(error).__name__}: {message[0] if message else ''}"[:200]
                if position == 0 and impl == "ours":
                    return {}, [(f"{case.op} (all {len(cases)} cases)", impl, reason)]
                failed.append((case.label, impl, reason))
                break  # without ours there is nothing to compare XLA with
            compiled[(case.index, impl)] = jitted
        del inputs
    return compiled, failed


def measure_copy(
    device,
    platform: str,
    log_dir: str,
    use_profiler: bool,
    progress: Callable[[str], None],
    nbytes: int,
    keep_traces: bool = False,
) -> dict:
    """Device-to-device copy bandwidth (bytes read + written) of an ``nbytes`` buffer."""
    side = int(math.isqrt(nbytes))
    copy_case = Case(
        "copy",
        "u8",
        (side, nbytes // side),
        2 * side * (nbytes // side),
        lambda seed: (
            jax.device_put(jnp.full((side, nbytes // side), seed % 251, jnp.uint8), device),
        ),
        jnp.copy,
        jnp.copy,
        index=9999,
    )
    fn = _named_jit(jnp.copy, copy_case.tag("ours"))
    buffer = copy_case.make_inputs(7)
    for _ in range(3):
        _block(fn(*buffer))
    compiled = {(copy_case.index, "ours"): fn}
    if platform == "gpu":
        timing = measure_gpu([copy_case], compiled, log_dir, use_profiler, progress, keep_traces)[
            (copy_case.index, "ours")
        ]
    else:
        timing = measure_cpu([copy_case], compiled, progress)[(copy_case.index, "ours")]
    del buffer
    return {
        "bytes": copy_case.bytes,
        "seconds": timing.seconds,
        "gbps": copy_case.bytes / timing.seconds / 1e9,
        "method": timing.method,
        "events_per_call": timing.events_per_call,
    }


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


# --- results --------------------------------------------------------------------------------------


def results_rows(cases: list[Case], timings: dict, copy_gbps: float) -> list[dict]:
    rows = []
    for case in cases:
        ours = timings.get((case.index, "ours"))
        xla = timings.get((case.index, "xla"))
        if ours is None and xla is None:
            continue
        row = {
            "op": case.op,
            "dtype": case.dtype,
            "shape": list(case.shape),
            "bytes": case.bytes,
            "l2_resident": case.decode,
            "input_sets": _input_sets(case),
        }
        for impl, timing in (("ours", ours), ("xla", xla)):
            if timing is None or timing.seconds is None:
                row.update(
                    {
                        f"{impl}_us": None,
                        f"{impl}_gbps": None,
                        f"{impl}_pct_copy": None,
                        f"{impl}_method": "unavailable",
                    }
                )
                continue
            gbps = case.bytes / timing.seconds / 1e9
            row.update(
                {
                    f"{impl}_us": timing.seconds * 1e6,
                    f"{impl}_gbps": gbps,
                    f"{impl}_pct_copy": 100.0 * gbps / copy_gbps if copy_gbps else None,
                    f"{impl}_method": timing.method,
                    f"{impl}_wall_us": None
                    if timing.wall_seconds is None
                    else timing.wall_seconds * 1e6,
                    f"{impl}_events_per_call": timing.events_per_call,
                    f"{impl}_median_us": None
                    if timing.median_seconds is None
                    else timing.median_seconds * 1e6,
                }
            )
        row["speedup"] = (
            row["xla_us"] / row["ours_us"] if row.get("ours_us") and row.get("xla_us") else None
        )
        rows.append(row)
    return rows


def _fmt(value, spec: str, width: int) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def format_table(rows: list[dict], copy: dict, platform: str) -> str:
    header = (
        f"{'op':<18}{'dtype':<6}{'shape':>12}{'MiB':>9}{'ours us':>11}{'XLA us':>11}"
        f"{'ours GB/s':>11}{'%copy':>7}{'XLA GB/s':>10}{'%copy':>7}{'speedup':>9}  note"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = f"{row['shape'][0]}x{row['shape'][1]}"
        notes = []
        if row["l2_resident"] and platform == "gpu":
            notes.append("L2-resident")
        methods = {row.get("ours_method"), row.get("xla_method")}
        if "wallclock" in methods and platform == "gpu":
            notes.append("wall-clock")
        if row.get("ours_method") == "unavailable":
            notes.append("ours unavailable")
        lines.append(
            f"{row['op']:<18}{row['dtype']:<6}{shape:>12}{row['bytes'] / MIB:>9.2f}"
            f"{_fmt(row.get('ours_us'), '.1f', 11)}{_fmt(row.get('xla_us'), '.1f', 11)}"
            f"{_fmt(row.get('ours_gbps'), '.1f', 11)}{_fmt(row.get('ours_pct_copy'), '.1f', 7)}"
            f"{_fmt(row.get('xla_gbps'), '.1f', 10)}{_fmt(row.get('xla_pct_copy'), '.1f', 7)}"
            f"{_fmt(row.get('speedup'), '.3f', 9)}  {', '.join(notes)}"
        )
    return "\n".join(lines)


def check_goals(rows: list[dict], platform: str) -> list[dict]:
    """The project's performance goals, each with the rows it covers and PASS/FAIL."""
    goals = []

    def goal(name, selected, passes):
        selected = [r for r in selected if r.get("ours_us") is not None]
        failing = [r for r in selected if not passes(r)]
        goals.append(
            {
                "goal": name,
                "status": "n/a" if not selected else ("PASS" if not failing else "FAIL"),
                "rows": len(selected),
                "failing": [
                    f"{r['op']} {r['dtype']} {r['shape'][0]}x{r['shape'][1]}" for r in failing
                ],
            }
        )

    with_xla = [r for r in rows if r.get("speedup") is not None]
    if platform == "gpu":
        goal(
            f"forward ops >= {GOAL_FORWARD_COPY_FRACTION:.0%} of copy bandwidth on >= 256 MiB",
            [r for r in rows if r["op"] in FORWARD_OPS and r["bytes"] >= GOAL_FORWARD_MIN_BYTES],
            lambda r: r["ours_pct_copy"] >= 100 * GOAL_FORWARD_COPY_FRACTION,
        )
        goal(
            f"dequantize int8->bf16 16384x8192 >= {GOAL_DEQUANT_SPEEDUP}x XLA",
            [
                r
                for r in with_xla
                if r["op"] == "dequantize" and r["dtype"] == "bf16" and r["shape"] == [16384, 8192]
            ],
            lambda r: r["speedup"] >= GOAL_DEQUANT_SPEEDUP,
        )
        goal(
            "no shape slower than XLA (decode shapes included)",
            with_xla,
            lambda r: r["speedup"] >= 1.0,
        )
        goal(
            f"backward >= {GOAL_BACKWARD_SPEEDUP}x XLA's compiled grad",
            [r for r in with_xla if r["op"] in BACKWARD_OPS],
            lambda r: r["speedup"] >= GOAL_BACKWARD_SPEEDUP,
        )
        goal(
            f"dynamic quantize >= {GOAL_DYNAMIC_COPY_FRACTION:.0%} of copy bandwidth on >= 256 MiB",
            [
                r
                for r in rows
                if r["op"] == "quantize_dynamic" and r["bytes"] >= GOAL_FORWARD_MIN_BYTES
            ],
            lambda r: r["ours_pct_copy"] >= 100 * GOAL_DYNAMIC_COPY_FRACTION,
        )
    else:
        goal(
            "CPU kernels >= 1.0x XLA-CPU on 4096x4096",
            [r for r in with_xla if r["shape"] == [4096, 4096]],
            lambda r: r["speedup"] >= 1.0,
        )
    return goals


def format_goals(goals: list[dict]) -> str:
    lines = []
    for g in goals:
        line = f"[{g['status']:>4}] {g['goal']} ({g['rows']} rows)"
        if g["failing"]:
            shown = ", ".join(g["failing"][:6]) + (" ..." if len(g["failing"]) > 6 else "")
            line += f": failing {shown}"
        lines.append(line)
    return "\n".join(lines)


def write_png(rows: list[dict], copy: dict, meta: dict, path: str) -> str | None:
    """Plots % of copy bandwidth (non-decode shapes) and speedup over XLA (all shapes) per op.

    Returns:
        None on success, else why no plot was written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        return f"matplotlib is not installed ({error})"
    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    if not ops:
        return "no results to plot"
    fig, axes = plt.subplots(len(ops), 2, figsize=(16, 3.8 * len(ops) + 1), squeeze=False)
    for axis_row, op in zip(axes, ops, strict=True):
        op_rows = [r for r in rows if r["op"] == op]
        big = [r for r in op_rows if not r["l2_resident"]] or op_rows
        labels = [f"{r['dtype']}\n{r['shape'][0]}x{r['shape'][1]}" for r in big]
        x = np.arange(len(big))
        ours = [r.get("ours_pct_copy") or 0 for r in big]
        xla = [r.get("xla_pct_copy") or 0 for r in big]
        ax = axis_row[0]
        ax.bar(x - 0.2, ours, 0.4, label="jax_dequant")
        ax.bar(x + 0.2, xla, 0.4, label="XLA (jnp)")
        ax.axhline(100, color="k", lw=0.8)
        if op in FORWARD_OPS and meta["platform"] == "gpu":
            ax.axhline(
                100 * GOAL_FORWARD_COPY_FRACTION, color="g", ls="--", lw=0.8, label="94% goal"
            )
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("% of copy bandwidth")
        ax.set_title(f"{op}: bandwidth (copy = {copy['gbps']:.0f} GB/s)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax = axis_row[1]
        labels = [f"{r['dtype']}\n{r['shape'][0]}x{r['shape'][1]}" for r in op_rows]
        x = np.arange(len(op_rows))
        speedups = [r.get("speedup") or 0 for r in op_rows]
        ax.bar(x, speedups, 0.6, color=["tab:blue" if s >= 1 else "tab:red" for s in speedups])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, [label.replace("\n", " ") for label in labels], fontsize=6, rotation=90)
        ax.set_ylabel("speedup over XLA")
        ax.set_title(f"{op}: XLA time / our time", fontsize=9)
    fig.suptitle(
        f"jax_dequant vs XLA on {meta['device']}; timing: {meta['method'].split(' (')[0]}; "
        f"{meta['date']}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # keep the suptitle clear of the first row
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --- main -----------------------------------------------------------------------------------------


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        rows, cols = part.lower().split("x")
        shapes.append((int(rows), int(cols)))
    return shapes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jax_dequant.bench",
        description="Times jax_dequant's kernels against XLA's compiled jnp reference.",
    )
    parser.add_argument(
        "--platform",
        choices=("cpu", "gpu"),
        default=None,
        help="where to run (default: JAX's default backend)",
    )
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument(
        "--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}"
    )
    parser.add_argument(
        "--dtypes", default=",".join(DTYPES), help="comma-separated subset of bf16,f16,f32"
    )
    parser.add_argument(
        "--shapes", default=None, help="override the shapes, e.g. 16x4096,4096x4096"
    )
    parser.add_argument("--json", default=None, help="write the results as JSON to this path")
    parser.add_argument("--png", default=None, help="write a plot to this path (needs matplotlib)")
    parser.add_argument(
        "--copy-mib",
        type=int,
        default=None,
        help="size of the copy-bandwidth buffer (default: 1024 on a GPU, 256 on a CPU)",
    )
    parser.add_argument("--markdown", default=None, help="write the table as Markdown to this path")
    parser.add_argument(
        "--keep-traces",
        default=None,
        metavar="DIR",
        help="GPU: keep the profiler traces under DIR (default: deleted)",
    )
    parser.add_argument(
        "--no-profiler", action="store_true", help="GPU: time by wall clock instead of the profiler"
    )
    args = parser.parse_args(argv)
    unknown = [op for op in args.ops.split(",") if op and op not in OPS]
    if unknown:
        parser.error(f"unknown ops {unknown}; choose from {', '.join(OPS)}")
    unknown = [d for d in args.dtypes.split(",") if d and d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtypes {unknown}; choose from {', '.join(DTYPES)}")
    return args


def _device_for(platform: str):
    try:
        devices = jax.devices("cuda" if platform == "gpu" else "cpu")
    except RuntimeError as error:
        raise SystemExit(f"no {platform} device visible to JAX: {error}") from error
    return devices[0]


def format_markdown(rows: list[dict], copy: dict, meta: dict) -> str:
    """The results as a Markdown table (for README.md)."""
    lines = [
        f"Device: {meta['device']}; jax {meta['jax']}; timing: {meta['method']}; "
        f"copy bandwidth {copy['gbps']:.0f} GB/s. Speedup = XLA time / our time.",
        "",
        "| op | dtype | shape | ours (us) | XLA (us) | ours GB/s | % of copy | speedup |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        note = " (L2)" if row["l2_resident"] and meta["platform"] == "gpu" else ""
        cells = [
            row["op"],
            row["dtype"],
            f"{row['shape'][0]}x{row['shape'][1]}{note}",
            _fmt(row.get("ours_us"), ".1f", 0),
            _fmt(row.get("xla_us"), ".1f", 0),
            _fmt(row.get("ours_gbps"), ".0f", 0),
            _fmt(row.get("ours_pct_copy"), ".1f", 0),
            _fmt(row.get("speedup"), ".2f", 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; see the module docstring and ``--help``."""
    args = parse_args(argv)
    started = time.perf_counter()
    platform = args.platform or ("gpu" if jax.default_backend() in ("gpu", "cuda") else "cpu")
    device = _device_for(platform)

    def progress(message: str) -> None:
        print(
            f"[bench {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True
        )

    if args.shapes:
        shapes = _parse_shapes(args.shapes)
    elif args.quick:
        shapes = list(QUICK_SHAPES[platform])
    else:
        shapes = list(DECODE_SHAPES) + list(PREFILL_SHAPES[platform])
    ops = [op for op in args.ops.split(",") if op]
    dtypes = [d for d in args.dtypes.split(",") if d]
    use_profiler = platform == "gpu" and not args.no_profiler
    method = (
        "profiler (device time: kernel/memcpy events of the GPU stream lines, "
        "interquartile mean of the per-call sums)"
        if use_profiler
        else (
            "wallclock (async dispatches, per call)"
            if platform == "gpu"
            else "wallclock (median of single calls, ours and XLA interleaved)"
        )
    )
    meta = {
        "device": f"{device.device_kind} ({device.platform})",
        "platform": platform,
        "method": method,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "jax_dequant_build": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in jdq.BUILD_INFO.items()
        },
        "python": sys.version.split()[0],
        "host": host_platform.node(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m jax_dequant.bench "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "complete": False,
    }
    progress(f"{meta['device']}, jax {meta['jax']}, method: {method}")

    timings: dict = {}
    failed: list = []
    copy: dict = {}

    def results() -> tuple[list, list]:
        rows = results_rows(cases, timings, copy.get("gbps", 0.0))
        meta["methods_used"] = sorted(
            {r.get(f"{i}_method") for r in rows for i in ("ours", "xla")} - {None, "unavailable"}
        )
        meta["elapsed_s"] = round(time.perf_counter() - started, 1)
        return rows, check_goals(rows, platform)

    def write_json() -> None:
        if not args.json:
            return
        rows, goals = results()
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "meta": meta,
                    "copy": copy,
                    "results": rows,
                    "goals": goals,
                    "unavailable": [list(f) for f in failed],
                    "not_benchmarked": [list(s) for s in skipped],
                },
                handle,
                indent=1,
            )

    with jax.default_device(device):
        cases, skipped = build_cases(ops, dtypes, shapes, device)
        for op, reason in skipped:
            progress(f"skipping {op}: {reason}")
        log_dir = args.keep_traces or tempfile.mkdtemp(prefix="jdq_bench_")
        os.makedirs(log_dir, exist_ok=True)
        copy_mib = args.copy_mib or (
            COPY_BYTES // MIB if platform == "gpu" else COPY_BYTES // MIB // 4
        )
        copy.update(
            measure_copy(
                device,
                platform,
                log_dir,
                use_profiler,
                progress,
                copy_mib * MIB,
                keep_traces=bool(args.keep_traces),
            )
        )
        progress(f"copy bandwidth {copy['gbps']:.1f} GB/s ({copy['method']})")
        for op in ops:
            op_cases = [c for c in cases if c.op == op]
            if not op_cases:
                continue
            progress(f"{op}: compiling {len(op_cases)} cases")
            compiled, op_failed = compile_cases(op_cases, progress)
            failed += op_failed
            for label, impl, reason in op_failed:
                progress(f"{label} {impl} unavailable: {reason}")
            progress(f"{op}: timing")
            if platform == "gpu":
                timings.update(
                    measure_gpu(
                        op_cases,
                        compiled,
                        log_dir,
                        use_profiler,
                        progress,
                        keep_traces=bool(args.keep_traces),
                    )
                )
            else:
                timings.update(measure_cpu(op_cases, compiled, progress))
            del compiled
            write_json()  # partial results survive a run that is cut short
        if not args.keep_traces:
            _remove_tree(log_dir)

    meta["complete"] = True
    rows, goals = results()
    methods = meta["methods_used"]
    print(f"\njax_dequant benchmark on {meta['device']}; jax {meta['jax']}; {meta['date']}")
    print(f"timing: {method}; used: {', '.join(methods) or '-'}")
    print(
        f"copy bandwidth: {copy['gbps']:.1f} GB/s ({copy['bytes'] / MIB:.0f} MiB read+written, "
        f"{copy['method']})"
    )
    if platform == "gpu":
        print(
            "L2-resident: decode shapes fit in L2 (50-60 MB); compare their device times, not GB/s."
        )
    print(
        "speedup = XLA time / our time (> 1: ours is faster). GB/s counts each input read once "
        "and each output written once.\n"
    )
    print(format_table(rows, copy, platform))
    for label, impl, reason in failed:
        print(f"unavailable: {label} {impl}: {reason}")
    for op, reason in skipped:
        print(f"not benchmarked: {op}: {reason}")
    print("\nGoals:")
    print(format_goals(goals))
    write_json()
    if args.json:
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(format_markdown(rows, copy, meta))
        print(f"wrote {args.markdown}")
    if args.png:
        problem = write_png(rows, copy, meta, args.png)
        print(f"wrote {args.png}" if problem is None else f"no plot: {problem}")
    print(f"elapsed {meta['elapsed_s']:.1f} s")
    return 0


def _version(distribution: str) -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version(distribution)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark (python -m jax_dequant.bench): its trace reader on synthetic
GPU traces, and a tiny end-to-end run on the CPU. These check what the
benchmark reports and how, never how fast anything is."""

from __future__ import annotations

import json

import pytest

from jax_dequant import bench


def _calls(tag_text: str, start: float = 0.0) -> list:
    events = []
    for call in range(3):
        base = start + 1000.0 * call
        events.append(bench.TraceEvent(True, "kernelA", base + 20, 30.0, tag_text))
        events.append(bench.TraceEvent(True, "kernelB", base + 60, 5.0 + call, tag_text))
    return events


def test_device_time_is_attributed_by_module_name():
    events = _calls("jit_jdqbench_0001_ours 7") + [
        bench.TraceEvent(True, "fusion", 500.0, 10.0, "jit_jdqbench_0001_xla 3"),
        bench.TraceEvent(True, "fusion", 600.0, 12.0, "jit_jdqbench_0011_ours 3"),
        bench.TraceEvent(False, "host event", 0.0, 5000.0, ""),
    ]
    seconds, how, per_call = bench.attribute(events, "jdqbench_0001_ours", 3)
    assert (how, per_call) == ("profiler:module", 2)
    assert seconds == pytest.approx(36e-9)  # mean of the per-call sums 35, 36, 37 ns
    seconds, how, per_call = bench.attribute(events, "jdqbench_0001_xla", 1)
    assert (seconds, per_call) == (pytest.approx(10e-9), 1)


def test_interquartile_mean_resolves_less_than_a_timestamp_step():
    """Per-call times in whole 32 ns steps, spread over two steps in different proportions:
    the medians are a whole step apart, the interquartile means lie between the steps, less
    than half a step apart; outliers (a late call, a clipped one) move neither."""
    fast = [896.0] * 110 + [928.0] * 90 + [5000.0, 10.0]
    slow = [896.0] * 90 + [928.0] * 110 + [5000.0, 10.0]
    assert bench.statistics.median(fast) == 896.0 and bench.statistics.median(slow) == 928.0
    fast_mean, slow_mean = bench.interquartile_mean(fast), bench.interquartile_mean(slow)
    assert 896.0 < fast_mean < slow_mean < 928.0
    assert slow_mean - fast_mean < 16.0
    assert bench.interquartile_mean([3.0, 1.0, 2.0]) == pytest.approx(2.0)  # < 4: all of them
    assert bench.interquartile_mean([1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.5)


def test_device_time_falls_back_to_the_host_annotation_window():
    events = _calls("") + [
        bench.TraceEvent(True, "other", 2500.0, 10.0, ""),  # after the window
        bench.TraceEvent(False, "jdqbench_0002_ours", 10.0, 2100.0, ""),
    ]
    seconds, how, per_call = bench.attribute(events, "jdqbench_0002_ours", 3)
    assert (how, per_call) == ("profiler:window", 2)
    assert seconds == pytest.approx(36e-9)
    # An event count that is not a multiple of the calls is refused, not guessed.
    seconds, how, _ = bench.attribute(events, "jdqbench_0002_ours", 4)
    assert seconds is None and "events for 4 calls" in how
    assert bench.attribute(events, "jdqbench_0003_ours", 3)[0] is None


def test_only_stream_lines_of_gpu_planes_count():
    assert bench._stream_lines(["Stream #7(Compute)", "XLA Ops", "XLA Modules"]) == {
        "Stream #7(Compute)"
    }
    assert bench._stream_lines(["XLA Ops", "gpu kernels"]) == {"gpu kernels"}
    assert bench._is_gpu_plane("/device:GPU:0") and not bench._is_gpu_plane("/host:CPU")


def test_json_trace_reader(tmp_path):
    trace = {
        "traceEvents": [
            {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {
                "ph": "M",
                "pid": 1,
                "tid": 7,
                "name": "thread_name",
                "args": {"name": "Stream #7(Compute)"},
            },
            {"ph": "M", "pid": 1, "tid": 100, "name": "thread_name", "args": {"name": "XLA Ops"}},
            {"ph": "M", "pid": 700, "name": "process_name", "args": {"name": "/host:CPU"}},
            {
                "ph": "X",
                "pid": 1,
                "tid": 7,
                "ts": 1.0,
                "dur": 2.0,
                "name": "k",
                "args": {"hlo_module": "jit_jdqbench_0000_ours", "hlo_op": "custom-call"},
            },
            {
                "ph": "X",
                "pid": 1,
                "tid": 100,
                "ts": 1.0,
                "dur": 2.0,
                "name": "custom-call",
                "args": {"hlo_module": "jit_jdqbench_0000_ours"},
            },
            {"ph": "X", "pid": 700, "tid": 3, "ts": 0.5, "dur": 9.0, "name": "jdqbench_0000_ours"},
        ]
    }
    path = tmp_path / "t.trace.json"
    path.write_text(json.dumps(trace))
    events = bench._events_from_json(str(path))
    gpu = [e for e in events if e.gpu]
    assert len(gpu) == 1 and gpu[0].dur_ns == pytest.approx(2000.0)
    assert bench.attribute(events, "jdqbench_0000_ours", 1) == (
        pytest.approx(2e-6),
        "profiler:module",
        1,
    )


def test_cpu_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    code = bench.main(
        [
            "--platform",
            "cpu",
            "--shapes",
            "2x64,3x130",
            "--dtypes",
            "bf16,f32",
            "--ops",
            "dequantize,quantize",
            "--copy-mib",
            "4",
            "--json",
            str(out),
            "--png",
            str(png),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "copy bandwidth" in printed and "Goals:" in printed
    result = json.loads(out.read_text())
    assert result["meta"]["platform"] == "cpu"
    assert result["meta"]["method"].startswith("wallclock")
    rows = [r for r in result["results"] if r["op"] == "dequantize"]
    assert {(r["dtype"], tuple(r["shape"])) for r in rows} == {
        (d, s) for d in ("bf16", "f32") for s in ((2, 64), (3, 130))
    }
    for row in rows:
        assert (
            row["bytes"]
            == row["shape"][0] * row["shape"][1] * (1 + (2 if row["dtype"] == "bf16" else 4))
            + 4 * row["shape"][0]
        )
        assert row["ours_us"] > 0 and row["xla_us"] > 0
        assert row["speedup"] == pytest.approx(row["xla_us"] / row["ours_us"])
    import jax_dequant as jdq

    if not hasattr(jdq, "quantize_per_token"):
        assert ["quantize", "jax_dequant does not export quantize_per_token"] in result[
            "not_benchmarked"
        ]


def test_gpu_timing_path_runs_and_falls_back_without_gpu_events(tmp_path):
    """measure_gpu/measure_copy on the CPU: the trace has no GPU stream events,
    so every number must come back, labelled wall-clock."""
    import jax

    device = jax.devices("cpu")[0]
    messages = []
    with jax.default_device(device):
        cases, _ = bench.build_cases(["dequantize"], ["bf16"], [(4, 64), (2, 32)], device)
        compiled, failed = bench.compile_cases(cases, messages.append)
        assert not failed and len(compiled) == 4
        timings = bench.measure_gpu(cases[1:], compiled, str(tmp_path), True, messages.append)
        copy = bench.measure_copy(device, "gpu", str(tmp_path), True, messages.append, 1 << 20)
    assert set(timings) == {(cases[1].index, "ours"), (cases[1].index, "xla")}
    assert all(t.method == "wallclock" and t.seconds > 0 for t in timings.values())
    assert copy["method"] == "wallclock" and copy["gbps"] > 0
    assert any("using wall-clock" in m for m in messages)

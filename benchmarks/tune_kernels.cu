// Launch-shape sweep for the CUDA kernels, outside JAX: times each variant of
// the row-wise map kernel (dequantize, static quantize, fake quantize) and of
// the fused dynamic quantize kernel on one GPU, beside the device's copy and
// read-only bandwidth measured in the same process.
//
// Times are device times: CUDA events around a CUDA graph of `kCalls`
// launches (so host launch overhead does not count), best of 5 graph runs,
// divided by kCalls. GB/s counts each input read once and each output written
// once. Numbers here pick the constants in cuda/*.cu; the JAX-level figures
// (and XLA's) come from `python -m jax_dequant.bench`.
//
// Build one part per op family (they compile in parallel), e.g. on an H100:
//   for part in 0 1 2 3 4; do
//     nvcc -O3 -std=c++17 -arch=sm_90 --fmad=false -Icuda -DTUNE_PART=$part \
//       benchmarks/tune_kernels.cu -o /tmp/tune_$part & done; wait
//   for part in 0 1 2 3 4; do /tmp/tune_$part; done
// Parts: 0 dequantize, 1 static quantize (and a check of the saturating
// conversions it relies on), 2 fake quantize, 3 dynamic quantize, 4 the
// dequantize backward (dscale of int8 q).
// -DTUNE_DYNAMIC_DEFAULT_ONLY limits part 3 to the library's own share per
// thread.
#include <cuda_runtime.h>

#ifndef TUNE_PART
#define TUNE_PART 0
#endif

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "rowwise_map.cuh"
#include "rowwise_ops.cuh"
// The dynamic quantize and backward kernels and their launchers live in
// anonymous namespaces of these files; including one gives this program the
// same code the library runs.
#if TUNE_PART == 3
#include "quantize_dynamic.cu"
#elif TUNE_PART == 4
#include "dequantize_grad.cu"
#endif


namespace {

constexpr int kCalls = 20;

void Check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

// Device microseconds per call of `launch` (which enqueues one call on stream).
template <typename Launch>
double TimeUs(cudaStream_t stream, Launch launch) {
  launch();
  Check(cudaStreamSynchronize(stream), "warm-up");
  cudaGraph_t graph;
  Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "capture");
  for (int i = 0; i < kCalls; ++i) launch();
  Check(cudaStreamEndCapture(stream, &graph), "end capture");
  cudaGraphExec_t exec;
  Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best = 1e30f;
  for (int rep = 0; rep < 6; ++rep) {
    cudaEventRecord(start, stream);
    Check(cudaGraphLaunch(exec, stream), "graph launch");
    cudaEventRecord(stop, stream);
    Check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0) best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return 1000.0 * best / kCalls;
}

// Fills n 32-bit words with a hash of their index (random bits, not zeros).
__global__ void FillKernel(uint32_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9e3779b1u;
    h ^= h >> 15;
    h *= 0x85ebca77u;
    h ^= h >> 13;
    out[i] = h;
  }
}

// Copies n 16-byte words: the copy bandwidth of a kernel (a cudaMemcpy inside
// a CUDA graph may run on a copy engine, which is slower).
__global__ void CopyKernel(const uint4* __restrict__ in, int64_t n, uint4* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = in[i];
  }
}

// Reads n 16-byte words, writing one word per block: the read-only bandwidth.
__global__ void ReadOnlyKernel(const uint4* __restrict__ in, int64_t n, uint4* __restrict__ out) {
  uint4 acc = {0, 0, 0, 0};
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = in[i];
    acc.x ^= v.x;
    acc.y ^= v.y;
    acc.z ^= v.z;
    acc.w ^= v.w;
  }
  if (acc.x == 0x12345678u) out[blockIdx.x] = acc;  // almost never: keeps the loads
}

struct Buffers {
  void* a = nullptr;  // input
  void* b = nullptr;  // output
  void* scale = nullptr;
  int32_t* zero_point = nullptr;
};

double g_copy_gbps = 0;

void Report(const char* op, const char* config, int64_t rows, int64_t cols, double bytes,
            double us) {
  const double gbps = bytes / (us * 1e3);
  std::printf("%-26s %-22s %6lldx%-6lld %10.2f us %8.1f GB/s %6.1f %%copy\n", op, config,
              static_cast<long long>(rows), static_cast<long long>(cols), us, gbps,
              100.0 * gbps / g_copy_gbps);
}

// kVec: elements per vector (default: 16 bytes of the wider array; 1 is the
// library's launch for tiny arrays). Divider: SingleRow is the library's for
// one row element by element (label "single-row").
template <typename Op, int kUnroll, int kBlock,
          int kVec = jdq::cuda::RowwiseVectorElements<typename Op::In, typename Op::Out>(),
          typename Divider = jdq::cuda::RowDivider<uint32_t>>
void SweepOne(const char* name, Op op, int64_t rows, int64_t cols, double bytes,
              cudaStream_t stream) {
  using namespace jdq::cuda;
  const double us = TimeUs(stream, [&] {
    LaunchRowwiseMapKernel<Op, uint32_t, kVec, kUnroll, kBlock, true, Divider>(op, rows * cols,
                                                                              cols, stream);
  });
  char config[64];
  std::snprintf(config, sizeof config, "vec%d unroll%d block%d%s", kVec, kUnroll, kBlock,
                std::is_same_v<Divider, SingleRow> ? " single-row" : "");
  Report(name, config, rows, cols, bytes, us);
}

template <typename Op>
void SweepRowwise(const char* name, Op op, int64_t rows, int64_t cols, double bytes,
                  cudaStream_t stream) {
  if (rows == 1) SweepOne<Op, 1, 256, 1, jdq::cuda::SingleRow>(name, op, rows, cols, bytes, stream);
  if (rows * cols <= 64 * 8192) {  // decode shapes: one vector per thread, block sizes
    SweepOne<Op, 1, 64, 1>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 128, 1>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 256, 1>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 32>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 64>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 128>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 256>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 1, 512>(name, op, rows, cols, bytes, stream);
    SweepOne<Op, 2, 128>(name, op, rows, cols, bytes, stream);
    return;
  }
  SweepOne<Op, 1, 256>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 2, 256>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 4, 256>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 8, 256>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 2, 128>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 4, 128>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 8, 128>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 16, 128>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 4, 64>(name, op, rows, cols, bytes, stream);
  SweepOne<Op, 8, 64>(name, op, rows, cols, bytes, stream);
}

#if TUNE_PART == 3
// qmin -128 (int8's full range, symmetric: the kernel compiled for
// QuantizeSaturating) or -127 (the general quantize path, label "clamp").
template <typename XT, typename QT, int kBytes, int kCompactBlocks = jdq::cuda::kCompactMinBlocks>
void SweepDynamicOne(const char* name, Buffers& buf, int64_t rows, int64_t cols, double bytes,
                     cudaStream_t stream, int32_t qmin = -128) {
  jdq::DynamicQuantizeProblem p{};
  p.x = buf.a;
  p.q = buf.b;
  p.scale = buf.scale;
  p.zero_point = buf.zero_point;
  p.rows = rows;
  p.cols = cols;
  p.qmin = qmin;
  p.qmax = 127;
  p.symmetric = true;
  p.scale_type = jdq::DType::kF32;
  constexpr int kVec = 16 / sizeof(XT);
  const double us = TimeUs(stream, [&] {
    const std::string error =
        jdq::cuda::Launch<XT, float, QT, kVec, kBytes, kCompactBlocks>(p, stream);
    if (!error.empty()) {
      std::fprintf(stderr, "%s\n", error.c_str());
      std::exit(1);
    }
  });
  char config[64];
  std::snprintf(config, sizeof config, "%d bytes/thread min%d%s", kBytes, kCompactBlocks,
                qmin == -128 ? "" : " clamp");
  Report(name, config, rows, cols, bytes, us);
}

template <typename XT>
void SweepDynamic(const char* name, Buffers& buf, int64_t rows, int64_t cols, double bytes,
                  cudaStream_t stream) {
#ifdef TUNE_DYNAMIC_DEFAULT_ONLY
  // Only the library's share per thread (for comparing builds of the kernel).
  SweepDynamicOne<XT, int8_t, jdq::cuda::kBytesPerThread<XT>>(name, buf, rows, cols, bytes, stream);
  return;
#endif
  // The library's share per thread on the general path first (the kernel
  // float32 rows ran before they took QuantizeSaturating).
  SweepDynamicOne<XT, int8_t, jdq::cuda::kBytesPerThread<XT>>(name, buf, rows, cols, bytes, stream,
                                                              -127);
  SweepDynamicOne<XT, int8_t, 16>(name, buf, rows, cols, bytes, stream);
  SweepDynamicOne<XT, int8_t, 32>(name, buf, rows, cols, bytes, stream);
  SweepDynamicOne<XT, int8_t, 64>(name, buf, rows, cols, bytes, stream);
  SweepDynamicOne<XT, int8_t, 128>(name, buf, rows, cols, bytes, stream);
  if constexpr (sizeof(XT) == 2) {
    // Resident blocks of the 16-bit block-per-row kernel (register caps 64, 48, 32).
    SweepDynamicOne<XT, int8_t, 64, 4>(name, buf, rows, cols, bytes, stream);
    SweepDynamicOne<XT, int8_t, 64, 5>(name, buf, rows, cols, bytes, stream);
    SweepDynamicOne<XT, int8_t, 64, 8>(name, buf, rows, cols, bytes, stream);
    SweepDynamicOne<XT, int8_t, 32, 8>(name, buf, rows, cols, bytes, stream);
  }
}
#endif  // TUNE_PART == 3

#if TUNE_PART == 4
// The dscale pass of the backward (int8 q, no zero point): the library's
// launcher with a launch shape (DscaleAlignedKernel on these aligned shapes),
// and the general kernel, the fallback for unaligned rows, with the library's
// groups (label "general"). kSpread: the launcher's smaller blocks over a few
// rows (label "fixed" without). kOneBatchLayouts: rows of one batch per lane
// run the compiled OneBatchPerLane layouts (label "runtime-layout" without).
template <typename OutT, int kBatch, int kMinBlocks, int kBlockThreads, bool kGeneral = false,
          bool kSpread = true, bool kOneBatchLayouts = true>
void SweepGradOne(const char* name, Buffers& buf, int64_t rows, int64_t cols, double bytes,
                  int64_t chunks_per_lane, cudaStream_t stream) {
  jdq::DequantizeGradProblem p{};
  p.dy = buf.b;
  p.q = buf.a;
  p.scale = buf.scale;
  p.zero_point = nullptr;
  p.dq = nullptr;
  p.dscale = static_cast<char*>(buf.scale) + 65536 * 4;
  p.rows = rows;
  p.cols = cols;
  using Shape = jdq::cuda::GradShape<kBatch, kMinBlocks, kBlockThreads>;
  const double us = TimeUs(stream, [&] {
    const std::string error =
        kGeneral ? jdq::cuda::LaunchGrad<int8_t, float, OutT, false, true, Shape>(
                       p, stream, chunks_per_lane)
                 : jdq::cuda::LaunchDscale<int8_t, float, OutT, Shape>(
                       p, stream, chunks_per_lane, kSpread, kOneBatchLayouts);
    if (!error.empty()) {
      std::fprintf(stderr, "%s\n", error.c_str());
      std::exit(1);
    }
  });
  char config[64];
  std::snprintf(config, sizeof config, "%s%s b%d lane%lld batch%d min%d",
                kGeneral ? "general" : (kSpread ? "aligned" : "fixed"),
                kGeneral || kOneBatchLayouts ? "" : " runtime-layout", kBlockThreads,
                static_cast<long long>(chunks_per_lane), kBatch, kMinBlocks);
  Report(name, config, rows, cols, bytes, us);
}

template <typename OutT>
void SweepGrad(const char* name, Buffers& buf, int64_t rows, int64_t cols, double bytes,
               cudaStream_t stream) {
  SweepGradOne<OutT, jdq::cuda::kGradBatch<int8_t, OutT>, 4, 256, true>(name, buf, rows, cols,
                                                                       bytes, 4, stream);
  // The library's (float32 dy in lanes of eight chunks or more: the batch8 line).
  SweepGradOne<OutT, 4, 4, 256>(name, buf, rows, cols, bytes, 4, stream);
  SweepGradOne<OutT, 4, 4, 256, false, true, false>(name, buf, rows, cols, bytes, 4, stream);
  SweepGradOne<OutT, 4, 4, 256, false, false>(name, buf, rows, cols, bytes, 4, stream);
  SweepGradOne<OutT, 8, 4, 256>(name, buf, rows, cols, bytes, 4, stream);
  SweepGradOne<OutT, 8, 4, 256, false, true, false>(name, buf, rows, cols, bytes, 4, stream);
  SweepGradOne<OutT, 2, 4, 256>(name, buf, rows, cols, bytes, 2, stream);
  SweepGradOne<OutT, 4, 4, 256>(name, buf, rows, cols, bytes, 2, stream);
  SweepGradOne<OutT, 4, 2, 512>(name, buf, rows, cols, bytes, 4, stream);
  SweepGradOne<OutT, 2, 2, 512>(name, buf, rows, cols, bytes, 2, stream);
  SweepGradOne<OutT, 2, 1, 1024>(name, buf, rows, cols, bytes, 2, stream);
}
#endif  // TUNE_PART == 4

#if TUNE_PART == 1
// Checks what QuantizeSaturating relies on: rne float -> int32 conversion of
// NaN gives 0 and saturates infinities, and the saturating pack.
__global__ void SaturationCheckKernel(int32_t* out) {
  const float nan = __int_as_float(0x7fc00000);
  const float inf = __int_as_float(0x7f800000);
  out[0] = __float2int_rn(nan);
  out[1] = __float2int_rn(-nan);
  out[2] = __float2int_rn(inf);
  out[3] = __float2int_rn(-inf);
  out[4] = static_cast<int32_t>(jdq::cuda::PackSaturated4<int8_t>(-300, -128, 127, 300));
  out[5] = static_cast<int32_t>(jdq::cuda::PackSaturated4<uint8_t>(-1, 0, 255, 256));
  out[6] = static_cast<int32_t>(jdq::cuda::PackSaturated4<int8_t>(1, 2, 3, 4));
}

void CheckSaturation() {
  int32_t* device_out;
  Check(cudaMalloc(&device_out, 7 * sizeof(int32_t)), "malloc");
  SaturationCheckKernel<<<1, 1>>>(device_out);
  int32_t out[7];
  Check(cudaMemcpy(out, device_out, sizeof out, cudaMemcpyDeviceToHost), "copy");
  std::printf("# saturation: f2i(nan)=%d f2i(-nan)=%d f2i(inf)=%d f2i(-inf)=%d "
              "pack_s8=%08x (want 7f7f8080) pack_u8=%08x (want ffff0000) order=%08x (want 04030201)\n",
              out[0], out[1], out[2], out[3], out[4], out[5], out[6]);
  cudaFree(device_out);
}
#endif

}  // namespace

int main() {
  using namespace jdq::cuda;
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);

  // Copy and read-only bandwidth, 1 GiB each way.
  const size_t copy_bytes = size_t{1} << 30;
  void *src, *dst;
  Check(cudaMalloc(&src, copy_bytes), "malloc");
  Check(cudaMalloc(&dst, copy_bytes), "malloc");
  FillKernel<<<prop.multiProcessorCount * 8, 256, 0, stream>>>(static_cast<uint32_t*>(src),
                                                               copy_bytes / 4);
  Check(cudaStreamSynchronize(stream), "fill");
  const double copy_us = TimeUs(stream, [&] {
    cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream);
  });
  const double kernel_copy_us = TimeUs(stream, [&] {
    CopyKernel<<<prop.multiProcessorCount * 8, 256, 0, stream>>>(
        static_cast<const uint4*>(src), copy_bytes / 16, static_cast<uint4*>(dst));
  });
  const double memcpy_gbps = 2.0 * copy_bytes / (copy_us * 1e3);
  const double kernel_gbps = 2.0 * copy_bytes / (kernel_copy_us * 1e3);
  g_copy_gbps = memcpy_gbps > kernel_gbps ? memcpy_gbps : kernel_gbps;
  const double read_us = TimeUs(stream, [&] {
    ReadOnlyKernel<<<prop.multiProcessorCount * 8, 256, 0, stream>>>(
        static_cast<const uint4*>(src), copy_bytes / 16, static_cast<uint4*>(dst));
  });
  std::printf("# %s, part %d: copy %.1f GB/s (cudaMemcpy D2D) and %.1f GB/s (copy kernel), "
              "read+written; %%copy below is of the larger; read-only %.1f GB/s\n",
              prop.name, TUNE_PART, memcpy_gbps, kernel_gbps, copy_bytes / (read_us * 1e3));
  cudaFree(dst);

  // Inputs: the 1 GiB buffer (levels / values of 1), outputs up to 512 MiB.
  Buffers buf;
  buf.a = src;
  Check(cudaMalloc(&buf.b, size_t{1} << 30), "malloc");
  Check(cudaMalloc(&buf.scale, 2 * 65536 * 4), "malloc");  // scales, then dscale
  Check(cudaMalloc(&buf.zero_point, 65536 * 4), "malloc");
  std::vector<float> ones(65536, 0.01f);
  cudaMemcpy(buf.scale, ones.data(), 65536 * 4, cudaMemcpyHostToDevice);
  [[maybe_unused]] auto* scale = static_cast<const float*>(buf.scale);

#if TUNE_PART == 1
  CheckSaturation();
#endif
  const int64_t shapes[][2] = {{16384, 8192}, {4096, 4096}, {64, 8192}, {64, 4096},
                               {16, 8192},    {16, 4096},   {1, 8192},  {1, 4096}};
  for (const auto& shape : shapes) {
    const int64_t rows = shape[0], cols = shape[1];
    const double n = static_cast<double>(rows * cols);
#if TUNE_PART == 0
    SweepRowwise("dequantize int8->bf16",
                 DequantizeOp<int8_t, float, __nv_bfloat16>{
                     static_cast<const int8_t*>(buf.a), nullptr,
                     static_cast<__nv_bfloat16*>(buf.b), scale, nullptr},
                 rows, cols, n * 3 + 4 * rows, stream);
    SweepRowwise("dequantize int8->f32",
                 DequantizeOp<int8_t, float, float>{static_cast<const int8_t*>(buf.a), nullptr,
                                                    static_cast<float*>(buf.b), scale, nullptr},
                 rows, cols, n * 5 + 4 * rows, stream);
#elif TUNE_PART == 1
    SweepRowwise("quantize bf16->int8",
                 QuantizeOp<__nv_bfloat16, float, int8_t>{
                     static_cast<const __nv_bfloat16*>(buf.a), nullptr,
                     static_cast<int8_t*>(buf.b), scale, nullptr, -128.f, 127.f, true},
                 rows, cols, n * 3 + 4 * rows, stream);
    SweepRowwise("quantize bf16->int8 clamp",
                 QuantizeOp<__nv_bfloat16, float, int8_t>{
                     static_cast<const __nv_bfloat16*>(buf.a), nullptr,
                     static_cast<int8_t*>(buf.b), scale, nullptr, -128.f, 127.f, false},
                 rows, cols, n * 3 + 4 * rows, stream);
    SweepRowwise("quantize f16->int8",
                 QuantizeOp<__half, float, int8_t>{
                     static_cast<const __half*>(buf.a), nullptr,
                     static_cast<int8_t*>(buf.b), scale, nullptr, -128.f, 127.f, true},
                 rows, cols, n * 3 + 4 * rows, stream);
    SweepRowwise("quantize f32->int8",
                 QuantizeOp<float, float, int8_t>{static_cast<const float*>(buf.a), nullptr,
                                                  static_cast<int8_t*>(buf.b), scale, nullptr,
                                                  -128.f, 127.f, true},
                 rows, cols, n * 5 + 4 * rows, stream);
#elif TUNE_PART == 2
    SweepRowwise("fake_quantize bf16",
                 FakeQuantizeOp<__nv_bfloat16, float>{
                     static_cast<const __nv_bfloat16*>(buf.a), nullptr,
                     static_cast<__nv_bfloat16*>(buf.b), scale, nullptr, -128.f, 127.f},
                 rows, cols, n * 4 + 4 * rows, stream);
    SweepRowwise("fake_quantize f32",
                 FakeQuantizeOp<float, float>{static_cast<const float*>(buf.a), nullptr,
                                              static_cast<float*>(buf.b), scale, nullptr, -128.f,
                                              127.f},
                 rows, cols, n * 8 + 4 * rows, stream);
#elif TUNE_PART == 3
    SweepDynamic<__nv_bfloat16>("quantize_dynamic bf16", buf, rows, cols, n * 3 + 8 * rows,
                                stream);
    SweepDynamic<float>("quantize_dynamic f32", buf, rows, cols, n * 5 + 8 * rows, stream);
#else
    SweepGrad<__nv_bfloat16>("dequantize_bwd bf16", buf, rows, cols, n * 3 + 4 * rows, stream);
    SweepGrad<float>("dequantize_bwd f32", buf, rows, cols, n * 5 + 4 * rows, stream);
#endif
  }
  Check(cudaDeviceSynchronize(), "final sync");
  return 0;
}

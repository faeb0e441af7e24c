// Running CPU kernels fast: splitting work over XLA's intra-op threads (each
// task in the floating-point mode of cpu_flush.h), prefaulting large outputs,
// and the row-wise maps built on both (RunRowMap). For every CPU kernel;
// includes no XLA header.
#ifndef JAX_DEQUANT_CPU_PARALLEL_H_
#define JAX_DEQUANT_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>

#include "cpu_flush.h"
#include "cpu_kernels.h"
#include "cpu_simd.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace jdq::cpu {

// --- Splitting work over threads -----------------------------------------------------------------

// Work below this many elements is not split: scheduling a task costs a few
// microseconds, and a chunk of this size takes tens.
inline constexpr int64_t kMinChunkElements = int64_t{1} << 16;
// Chunk boundaries fall on multiples of this many elements (whole cache lines
// of every array whose elements are at least one byte).
inline constexpr int64_t kChunkAlignElements = 64;
// Chunks per thread, so that a thread slowed down by other work gets fewer.
inline constexpr int64_t kChunksPerThread = 4;

// The chunks of one ParallelFor, shared by the caller and its tasks. It lives
// on the heap: a task that starts after all chunks are done (the pool was
// busy) still finds it, claims nothing, and never touches the kernel's
// buffers.
class ParallelState {
 public:
  ParallelState(std::function<void(int64_t, int64_t)> body, int64_t total, int64_t chunk)
      : body_(std::move(body)),
        total_(total),
        chunk_(chunk),
        chunks_((total + chunk - 1) / chunk) {}

  int64_t chunks() const { return chunks_; }

  // Claims and runs chunks until none is left.
  void Work() {
    for (;;) {
      const int64_t index = next_.fetch_add(1, std::memory_order_relaxed);
      if (index >= chunks_) return;
      const int64_t begin = index * chunk_;
      body_(begin, std::min(total_, begin + chunk_));
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks_) {
        std::lock_guard<std::mutex> lock(mutex_);
        finished_.notify_all();
      }
    }
  }

  // Waits until every claimed chunk is done; call after Work() returned on
  // this thread, so that every chunk has been claimed by a running thread.
  void Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return done_.load(std::memory_order_acquire) == chunks_; });
  }

 private:
  const std::function<void(int64_t, int64_t)> body_;
  const int64_t total_;
  const int64_t chunk_;
  const int64_t chunks_;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::mutex mutex_;
  std::condition_variable finished_;
};

// Runs body(begin, end) over [0, total) (elements, or rows: any unit of work)
// in chunks of at least `min_chunk` units whose boundaries are multiples of
// `align`, on the calling thread and on up to runner->NumThreads() tasks. The
// caller must hold a ScopedFlushDenormals; each task sets its own. Small
// problems run inline, without a std::function or any allocation.
template <typename Body>
void ParallelFor(int64_t total, TaskRunner* runner, const Body& body,
                 int64_t min_chunk = kMinChunkElements, int64_t align = kChunkAlignElements) {
  if (total < 2 * min_chunk || runner == nullptr) {
    if (total > 0) body(0, total);
    return;
  }
  const int64_t threads = runner->NumThreads();
  if (threads <= 0) {
    body(0, total);
    return;
  }
  const int64_t wanted = std::min(total / min_chunk, kChunksPerThread * (threads + 1));
  int64_t chunk = (total + wanted - 1) / wanted;
  chunk = (chunk + align - 1) / align * align;
  auto state = std::make_shared<ParallelState>(body, total, chunk);
  const int64_t helpers = std::min(threads, state->chunks() - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    runner->Schedule([state] {
      ScopedFlushDenormals flush;
      state->Work();
    });
  }
  state->Work();
  state->Wait();
}

// ParallelFor over the rows of a [rows, cols] problem: chunks of whole rows,
// at least kMinChunkElements elements each.
template <typename Body>
void ParallelRows(int64_t rows, int64_t cols, TaskRunner* runner, const Body& body) {
  const int64_t min_rows = cols > 0 ? std::max<int64_t>(1, (kMinChunkElements + cols - 1) / cols)
                                    : rows + 1;
  ParallelFor(rows, runner, body, min_rows, 1);
}

// `base` advanced by `offset` elements; null (an absent optional buffer) stays
// null. For the row ranges of the kernels' chunks.
template <typename T>
T* Offset(T* base, int64_t offset) {
  return base != nullptr ? base + offset : nullptr;
}

// --- Prefaulting large outputs -------------------------------------------------------------------

// Outputs this large or larger are prefaulted when fresh.
inline constexpr int64_t kPrefaultMinBytes = int64_t{1} << 20;
inline constexpr uintptr_t kPageBytes = 4096;

// Whether an output of `bytes` at `data` is worth prefaulting: it is large and
// its middle page is not yet in memory, i.e. it is fresh. Large results are
// often fresh memory (XLA allocates each result anew, and the C library maps
// blocks of 32 MiB and more freshly), and writing fresh memory takes one page
// fault per 4 KiB page, which costs more than the arithmetic. But a smaller
// block the C library hands back after a free is already in memory, and
// populating it again still walks every page (0.6 ms of a 1.8 ms static
// quantize of 4096x4096 bf16, measured): so the middle page is asked first,
// with one mincore() of one page. Where that fails, the output counts as
// fresh.
//
// A fresh output's whole 2 MiB-aligned pieces are then advised for
// transparent huge pages (madvise MADV_HUGEPAGE, which where THP is in
// "madvise" mode, the common default, is what lets them be used): populating
// 32 MiB in 2 MiB pages took 2.1-2.3 ms against 13.7-29.9 ms in 4 KiB pages
// on the development machine (docs/perf.md, "CPU"). The advice changes no data;
// it stays on that address range after XLA frees the buffer (memory the C
// library reuses may then get huge pages too). Errors are ignored (no THP: the
// pages stay small).
inline bool PrepareFreshOutput(void* data, int64_t bytes) {
#if defined(__linux__)
  if (bytes < kPrefaultMinBytes) return false;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t middle = (begin + bytes / 2) & ~(kPageBytes - 1);
  unsigned char resident = 0;
  if (mincore(reinterpret_cast<void*>(middle), kPageBytes, &resident) == 0 && (resident & 1) != 0) {
    return false;
  }
  constexpr uintptr_t kHugePageBytes = uintptr_t{2} << 20;
  const uintptr_t first = (begin + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePageBytes - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  return true;
#else
  (void)data;
  (void)bytes;
  return false;
#endif
}

// One madvise(MADV_POPULATE_WRITE) (Linux 5.14+) makes the whole pages of a
// chunk writable in one system call instead of a fault per page; it changes no
// data and allocates nothing we would not write anyway. Any failure (an older
// kernel, a mapping that cannot be populated) is ignored: the writes then
// fault as usual. Callers ask PrepareFreshOutput once per output
// (ParallelRowsWriting does both).
inline void PrefaultForWriting(void* data, int64_t bytes) {
#if defined(__linux__)
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, missing from older headers
  const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + kPageBytes - 1) & ~(kPageBytes - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kPageBytes - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, kPopulateWrite);
#else
  (void)data;
  (void)bytes;
#endif
}

// ParallelRows for a body that writes `out`, a [rows, cols] array of T (null:
// an output not asked for): when the output is fresh (PrepareFreshOutput),
// each chunk's rows of it are prefaulted by the thread that writes them.
template <typename T, typename Body>
void ParallelRowsWriting(int64_t rows, int64_t cols, TaskRunner* runner, T* out,
                         const Body& body) {
  const bool prefault =
      out != nullptr && PrepareFreshOutput(out, rows * cols * int64_t{sizeof(T)});
  ParallelRows(rows, cols, runner, [body, out, cols, prefault](int64_t begin, int64_t end) {
    if (prefault) PrefaultForWriting(out + begin * cols, (end - begin) * cols * sizeof(T));
    body(begin, end);
  });
}

// --- Row-wise maps ---------------------------------------------------------------------------------

// A row-wise map, out[n, d] = f_n(in[n, d]) (dequantize, quantize, fake
// quantize), is described by a struct `Map` with
//   In, Out                  element types of the input and the output;
//   Row                      a row's constants, and
//   static Row ForRow(const Problem&, int64_t row);
//   Scalar(const In*, Out*, int64_t count, const Row&), and where kHasAvx2
//   Avx2(...) with the same arguments: one piece of a row (RunSpan).
template <typename Map>
struct RowMapKernel {
  template <Isa kIsa, typename Problem>
  static JDQ_ALWAYS_INLINE void Run(const Problem* p, const typename Map::In* in,
                                    typename Map::Out* out, int64_t begin, int64_t end) {
    for (RowPieces piece(p->cols, begin, end); piece.count > 0; piece.Next()) {
      RunSpan<kIsa, Map>(in + piece.element, out + piece.element, piece.count,
                          Map::ForRow(*p, piece.row));
    }
  }
};

// Runs a row-wise map over the flat elements of a [rows, cols] problem, split
// over `runner`'s threads (chunks may start and end inside rows), each chunk's
// output prefaulted when the output is fresh (PrepareFreshOutput), with the loops
// of the chosen instruction set. The caller
// holds a ScopedFlushDenormals.
template <typename Map, typename Problem>
void RunRowMap(const Problem& p, const void* in, void* out, TaskRunner* runner) {
  using In = typename Map::In;
  using Out = typename Map::Out;
  const Problem problem = p;
  const In* typed_in = static_cast<const In*>(in);
  Out* typed_out = static_cast<Out*>(out);
  const bool prefault = PrepareFreshOutput(out, p.rows * p.cols * int64_t{sizeof(Out)});
  ParallelFor(p.rows * p.cols, runner,
              [problem, typed_in, typed_out, prefault](int64_t begin, int64_t end) {
                if (prefault) PrefaultForWriting(typed_out + begin, (end - begin) * sizeof(Out));
                RunForIsa<RowMapKernel<Map>>(&problem, typed_in, typed_out, begin, end);
              });
}

}  // namespace jdq::cpu

#endif  // JAX_DEQUANT_CPU_PARALLEL_H_

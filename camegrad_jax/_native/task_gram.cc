// The K x K Gram matrix of a (K, n) float32 block of stacked task gradients, as an XLA FFI
// custom call for the CPU (camegrad_jax/_native_gram.py compiles and registers it).
//
// Why a kernel of our own: forming G costs K^2 multiply-adds per column of the stack, so from a
// few tasks on it is bound by arithmetic, and XLA:CPU's reductions and matrix products (like
// OpenBLAS's sgemm) use a small part of the CPU's rate on such a skinny (K x n)(n x K) product
// (benchmarks/update_breakdown.py). Here the columns are walked in blocks that stay in L1, and
// each block is reduced by register tiles of 4 rows x 2 rows (8 vector accumulators and 6 loads,
// within 16 vector registers) covering the upper triangle of G.
//
// Accuracy: each accumulator lane sums BLOCK / LANES products in float32; the block's sums are
// added in float64. Determinism: the columns are cut into fixed ranges whose partial Grams are
// added in range order, whichever thread computed them, so G does not depend on the thread count.
//
// Threads: ranges are handed out through an atomic counter to the calling thread and to helper
// tasks on XLA's intra-op pool. The caller itself takes every range no helper has started, and
// waits only for ranges already being computed, so a busy (or one-worker) pool cannot deadlock
// it; helpers that start after the work is gone return without touching the buffers.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int LANES = 8;  // floats per vector: one AVX register; two NEON registers.
constexpr int64_t BLOCK = 512;  // columns per cache block: 2 KiB per row, 16 KiB for K = 8.
constexpr int64_t BLOCKS_PER_RANGE = 128;  // a unit of parallel work: 64 Ki columns.

typedef float Vec __attribute__((vector_size(LANES * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof(Vec));  // unaligned load
  return v;
}

inline double lane_sum(Vec v) {
  double s = 0.0;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}

// Adds <row_i, row_j> over columns [start, stop) to gram[i * k + j] for i <= j.
void accumulate_range(const float* x, int64_t k, int64_t n, int64_t start, int64_t stop,
                      double* gram) {
  for (int64_t s = start; s < stop; s += BLOCK) {
    const int64_t e = std::min(s + BLOCK, stop);
    const int64_t vector_end = s + (e - s) / LANES * LANES;
    for (int64_t r = 0; r < k; r += 4) {
      // Column pairs from the first that reaches the upper triangle of this row tile.
      for (int64_t c = r / 2 * 2; c < k; c += 2) {
        const float* rows[4];
        const float* cols[2];
        for (int q = 0; q < 4; ++q) rows[q] = x + std::min(r + q, k - 1) * n;
        for (int q = 0; q < 2; ++q) cols[q] = x + std::min(c + q, k - 1) * n;
        Vec acc[8] = {};
        for (int64_t p = s; p < vector_end; p += LANES) {
          const Vec a = load(cols[0] + p), b = load(cols[1] + p);
          for (int q = 0; q < 4; ++q) {
            const Vec y = load(rows[q] + p);
            acc[2 * q] += y * a;
            acc[2 * q + 1] += y * b;
          }
        }
        for (int q = 0; q < 4; ++q) {
          for (int t = 0; t < 2; ++t) {
            const int64_t i = r + q, j = c + t;
            if (i >= k || j >= k || i > j) continue;  // clamped rows or below the diagonal
            double sum = lane_sum(acc[2 * q + t]);
            for (int64_t p = vector_end; p < e; ++p)
              sum += static_cast<double>(rows[q][p]) * cols[t][p];
            gram[i * k + j] += sum;
          }
        }
      }
    }
  }
}

struct Work {
  const float* x;
  int64_t k, n, ranges;
  std::vector<double> partial;  // ranges x k x k
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Computes ranges until none is left; returns how many this thread did.
  void drain() {
    for (int64_t i; (i = next.fetch_add(1)) < ranges;) {
      const int64_t start = i * BLOCKS_PER_RANGE * BLOCK;
      const int64_t stop = std::min(n, start + BLOCKS_PER_RANGE * BLOCK);
      accumulate_range(x, k, n, start, stop, partial.data() + i * k * k);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error TaskGramF32(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> gram) {
  const auto dims = x.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("task_gram: expected a (K, n) array");
  const int64_t k = dims[0], n = dims[1];
  auto work = std::make_shared<Work>();
  work->x = x.typed_data();
  work->k = k;
  work->n = n;
  work->ranges = std::max<int64_t>(1, (n + BLOCKS_PER_RANGE * BLOCK - 1) / (BLOCKS_PER_RANGE * BLOCK));
  work->partial.assign(work->ranges * k * k, 0.0);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->ranges - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work->drain(); });
  work->drain();
  while (work->done.load(std::memory_order_acquire) < work->ranges) std::this_thread::yield();

  float* out = gram->typed_data();
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = i; j < k; ++j) {
      double sum = 0.0;
      for (int64_t range = 0; range < work->ranges; ++range)
        sum += work->partial[range * k * k + i * k + j];
      out[i * k + j] = out[j * k + i] = static_cast<float>(sum);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CamegradTaskGramF32, TaskGramF32,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

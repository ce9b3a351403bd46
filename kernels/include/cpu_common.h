// Helpers shared by the CPU sources (kernels/cpu/*.cpp): dtype dispatch, argument checks,
// OpenMP pragmas that vanish without OpenMP. Not part of the ABI.
#pragma once
#include <stdint.h>

#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.h"
#include "fastfvae.h"
#include "arg_checks.h"
#include "status.h"

#define FFV_STRINGIFY(x) #x
// FFV_OMP(parallel for if(n > 1000)) -> #pragma omp parallel for if(n > 1000), or nothing.
#ifdef _OPENMP
#include <omp.h>
#define FFV_OMP(...) _Pragma(FFV_STRINGIFY(omp __VA_ARGS__))
#else
#define FFV_OMP(...)
#endif

namespace ffv {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Element counts above which a loop wakes the OpenMP team: about 100 us of single-thread work.
// kParallelCheap for loops of cheap arithmetic (~1 ns per element), kParallelExpensive for loops
// that draw Philox numbers, sort, or call exp/log per element (~5-10 ns per element). Waking the
// team costs ~5 us while its workers still spin after a previous region, and some tens of us once
// they sleep (measured on the 2-core Xeon: permute_dims at B=1024, D=32 after 2 ms idle took
// 237 us on two threads against 301 us on one). Until 2026-11-28 these were 2^20 and 2^18 (~1 ms
// of work), and that permute ran on one thread: 208 us against 107 us on two, back to back. On a
// busy machine a worker that is not scheduled stalls the call at the barrier.
// torch.set_num_threads / OMP_NUM_THREADS bound the team (omp_get_max_threads); 1 turns it off.
constexpr int64_t kParallelCheap = int64_t{1} << 17;
constexpr int64_t kParallelExpensive = int64_t{1} << 14;

// ceil(a / b) for a >= 0, b > 0.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Call fn(T{}) with T the storage type of `dtype`; FFV_ERR_UNSUPPORTED_DTYPE otherwise.
template <typename Fn>
ffv_status with_dtype(const char* entry, ffv_dtype dtype, Fn&& fn) {
  switch (dtype) {
    case FFV_FLOAT32: return fn(float{});
    case FFV_FLOAT64: return fn(double{});
    case FFV_FLOAT16: return fn(half_t{});
    case FFV_BFLOAT16: return fn(bfloat16_t{});
  }
  return fail(FFV_ERR_UNSUPPORTED_DTYPE, std::string(entry) + ": dtype code " +
                                             std::to_string(static_cast<int>(dtype)) +
                                             " is not one of float32=0, float64=1, float16=2, bfloat16=3");
}

// Call fn(T{}) for float32 or float64 only (host helpers whose 16-bit forms would round every
// addition: conv_windows' scatter, dip_penalty's sums); FFV_ERR_UNSUPPORTED_DTYPE otherwise.
template <typename Fn>
ffv_status with_float_dtype(const char* entry, ffv_dtype dtype, Fn&& fn) {
  if (dtype == FFV_FLOAT32) return fn(float{});
  if (dtype == FFV_FLOAT64) return fn(double{});
  return fail(FFV_ERR_UNSUPPORTED_DTYPE, std::string(entry) + ": dtype code " +
                                             std::to_string(static_cast<int>(dtype)) +
                                             " is not float32=0 or float64=1");
}

// Run an entry's body, turning C++ exceptions (allocation failures) into status codes: no
// exception may cross the extern "C" boundary. Allocations happen outside parallel regions.
template <typename Fn>
ffv_status guarded(const char* entry, Fn&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(FFV_ERR_OUT_OF_MEMORY, std::string(entry) + ": out of host memory for scratch buffers");
  } catch (const std::exception& error) {
    return fail(FFV_ERR_INTERNAL, std::string(entry) + ": " + error.what());
  }
}

// Deterministic sum of chunk_value(c) over chunks c = 0..chunks-1 (each a double), parallel
// when asked: the partial sums are added in chunk order, so the result does not depend on the
// number of threads. chunk_value may also write the chunk's outputs.
template <typename ChunkValue>
double chunked_sum(int64_t chunks, bool parallel, ChunkValue&& chunk_value) {
  (void)parallel;  // unused when built without OpenMP
  double stack_partials[64];
  std::vector<double> heap_partials;
  double* partials = stack_partials;
  if (chunks > 64) {
    heap_partials.resize(static_cast<size_t>(chunks));
    partials = heap_partials.data();
  }
  FFV_OMP(parallel for if(parallel && chunks > 1) schedule(static))
  for (int64_t chunk = 0; chunk < chunks; ++chunk) partials[chunk] = chunk_value(chunk);
  double total = 0.0;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partials[chunk];
  return total;
}

// Sum of row_value(i) (in Acc, double unless asked) for i in [begin, end), in a fixed order: eight
// running sums (row i goes to sum (i - begin) % 8), added pairwise at the end. One running sum
// would make every add wait for the previous one (~4 cycles each: 65536 rows took ~75 us, the
// whole of a tc_loss forward); eight keep the adders busy.
template <typename Acc = double, typename RowValue>
inline Acc range_sum(int64_t begin, int64_t end, RowValue&& row_value) {
  Acc s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += row_value(i + k);
  for (int k = 0; i < end; ++i, ++k) s[k] += row_value(i);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Deterministic sum over rows of row_value(i) (double), in fixed chunks of kRowSumChunkRows rows
// (each a range_sum): the order depends on the row count only, never on the thread count.
constexpr int64_t kRowSumChunkRows = 1024;
template <typename RowValue>
double chunked_row_sum(int64_t rows, bool parallel, RowValue&& row_value) {
  return chunked_sum((rows + kRowSumChunkRows - 1) / kRowSumChunkRows, parallel, [&](int64_t chunk) {
    const int64_t begin = chunk * kRowSumChunkRows;
    const int64_t end = begin + kRowSumChunkRows < rows ? begin + kRowSumChunkRows : rows;
    return range_sum(begin, end, row_value);
  });
}


}  // namespace ffv

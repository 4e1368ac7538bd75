// What the suite's multithreaded CPU kernels (batch_norm_ops.cc, momentum_ops.cc) share: how a tensor's rows are
// split over the OpenMP threads, and the instruction sets their hot loops are compiled for.
#pragma once

#include <omp.h>

#include <cstdint>

// Hot loops are compiled for AVX-512, AVX2 and the baseline; the loader picks one for the CPU at run time.
#define CPU_OPS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace cpu_ops {

// The rows [first, last) of a thread when `rows` are split evenly over `threads`.
inline void ThreadRows(int64_t rows, int thread, int threads, int64_t* first, int64_t* last) {
  *first = rows * thread / threads;
  *last = rows * (thread + 1) / threads;
}

// Runs body(first_row, last_row) on every thread over its share of the rows.
template <typename Body>
void ForRows(int64_t rows, Body body) {
#pragma omp parallel
  {
    int64_t r0, r1;
    ThreadRows(rows, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    body(r0, r1);
  }
}

}  // namespace cpu_ops

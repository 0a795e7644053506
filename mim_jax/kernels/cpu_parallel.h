// Shared by the CPU kernels: a parallel loop on XLA's own intra-op thread pool (the FFI ThreadPool context).
// One pool for the whole process: no second (OpenMP) set of worker threads competing with XLA's for the cores.
#ifndef MIM_JAX_KERNELS_CPU_PARALLEL_H_
#define MIM_JAX_KERNELS_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace mim_jax {

// Runs body(i, scratch) for i in [0, n) on the caller and up to num_threads - 1 tasks of XLA's pool, which take
// items from a shared counter; scratch is a per-worker zero-initialized buffer of scratch_size floats. The caller
// never waits for a task that has not started (it takes the remaining items itself), so a busy pool cannot
// deadlock it; tasks that start after the last item just return (the counters they touch are shared_ptr-owned).
template <typename Body>
inline void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t scratch_size, Body body) {
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto counters = std::make_shared<Counters>();
  auto work = [counters, n, scratch_size, body]() {
    std::vector<float> scratch;
    for (int64_t i; (i = counters->next.fetch_add(1)) < n;) {
      if (scratch.empty()) scratch.assign(scratch_size, 0.0f);
      body(i, scratch.data());
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));  // a copy per task
  work();
  while (counters->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace mim_jax

#endif  // MIM_JAX_KERNELS_CPU_PARALLEL_H_

// How many threads at::parallel_for really uses inside this extension: 1 when it was built without
// OpenMP (parallel_for then silently runs serially), torch's thread count otherwise.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace mambatr {
namespace {

int64_t parallel_threads(int64_t tasks) {
  TORCH_CHECK(tasks >= 1, "tasks must be >= 1");
  std::vector<int> thread_of(tasks, -1);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) thread_of[i] = at::get_thread_num();
  });
  std::sort(thread_of.begin(), thread_of.end());
  return std::unique(thread_of.begin(), thread_of.end()) - thread_of.begin();
}

}  // namespace
}  // namespace mambatr

TORCH_LIBRARY_FRAGMENT(mambatr, m) {
  m.def("parallel_threads(int tasks) -> int");
  m.impl("parallel_threads", c10::DispatchKey::CatchAll, TORCH_FN(mambatr::parallel_threads));
}

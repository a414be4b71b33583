// CPU kernel of qsattn::select.native: per image the k smallest entropies ascending, ties broken by the
// lower index, NaN last (exactly argsort(stable=True)[:, :k]). nth_element on indices ordered by
// (value, index) moves the k smallest to the front in O(N); only those k are then sorted.
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "cpu_common.h"

namespace qsattn {
namespace {

template <typename T>
void select_kernel(const at::Tensor& e, int64_t k, at::Tensor& out) {
  const int64_t B = e.size(0), N = e.size(1);
  const T* ep = e.data_ptr<T>();
  int64_t* op = out.data_ptr<int64_t>();
#pragma omp parallel for num_threads(std::min<int64_t>(B, num_threads())) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const T* v = ep + b * N;
    // Strict weak order of argsort(stable=True): by value, NaN after everything, then by index.
    auto before = [v](int64_t i, int64_t j) {
      const bool ni = std::isnan(v[i]), nj = std::isnan(v[j]);
      if (ni || nj) return ni == nj ? i < j : nj;
      return v[i] < v[j] || (v[i] == v[j] && i < j);
    };
    std::vector<int64_t> ids(N);
    std::iota(ids.begin(), ids.end(), int64_t(0));
    if (k < N) std::nth_element(ids.begin(), ids.begin() + k, ids.end(), before);
    std::sort(ids.begin(), ids.begin() + k, before);
    std::copy(ids.begin(), ids.begin() + k, op + b * k);
  }
}

at::Tensor select_cpu(const at::Tensor& e_, int64_t k) {
  check_float_input(e_, "entropy", 2);
  TORCH_CHECK(k >= 1 && k <= e_.size(1), "k: must lie in [1, N = ", e_.size(1), "], got ", k);
  const at::Tensor e = e_.contiguous();
  at::Tensor out = at::empty({e.size(0), k}, e.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "select_cpu", [&] { select_kernel<scalar_t>(e, k, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) { m.impl("select.native", &select_cpu); }

}  // namespace qsattn

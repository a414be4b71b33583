// CPU kernel of qsattn::entropy_local.native: for every position, the entropy of the softmax over the
// window^2 logits f_p . f_q of its zero-padded neighbourhood (outside keys: logit 0). Memory-bound;
// OpenMP over positions, one small logit buffer per thread.
#include <torch/library.h>

#include "cpu_common.h"
#include "local_common.h"

namespace qsattn {
namespace {

template <typename T>
void entropy_local_kernel(const at::Tensor& f, int64_t H, int64_t W, int64_t window, at::Tensor& out) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2), w2 = window * window;
  T* o = out.data_ptr<T>();
  for_each_window(
      f.data_ptr<T>(), B, N, H, W, C, window, [](int64_t, int64_t p) { return p; },
      [&](int64_t b, int64_t p, const int64_t*, const T* s) {
        EntropyState<T> st;
        st.update(s, w2);
        o[b * N + p] = st.entropy();
      });
}

at::Tensor entropy_local_cpu(const at::Tensor& f_, int64_t H, int64_t W, int64_t window) {
  check_float_input(f_, "f", 3);
  check_grid(f_, H, W, window);
  const at::Tensor f = f_.contiguous();
  at::Tensor out = at::empty({f.size(0), f.size(1)}, f.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "entropy_local_cpu",
                             [&] { entropy_local_kernel<scalar_t>(f, H, W, window, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) { m.impl("entropy_local.native", &entropy_local_cpu); }

}  // namespace qsattn

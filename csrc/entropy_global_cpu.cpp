// CPU kernel of qsattn::entropy_global: H_i = -sum_j A_ij log A_ij with A = softmax(F F^T), never
// holding more than a BQ x BK tile of logits per thread. Threads (OpenMP) take blocks of BQ query rows;
// each tile S = Q_blk K_blk^T is an at::mm (MKL sgemm, single-threaded inside the parallel region)
// and is folded into the rows' running (max, Z, T) by the cancellation-free epilogue (DESIGN §2).
#include <torch/library.h>

#include <ATen/ThreadLocalState.h>

#include <vector>

#include "cpu_common.h"

namespace qsattn {
namespace {

constexpr int64_t BQ = 256;  // query rows per task: 256 x 256 fp32 = 256 KiB of queries
constexpr int64_t BK = 512;  // keys per tile: the 256 x 512 tile (512 KiB) stays in L2

template <typename T>
void entropy_global_kernel(const at::Tensor& f, at::Tensor& out) {
  const int64_t B = f.size(0), N = f.size(1);
  const int64_t nqb = (N + BQ - 1) / BQ;
  const int64_t tasks = B * nqb;
  T* o = out.data_ptr<T>();
  const at::ThreadLocalState tls;  // the caller's dispatch state (autograd excluded), for the workers
#pragma omp parallel num_threads(num_threads())
  {
    at::ThreadLocalStateGuard guard(tls);
    at::Tensor tile = at::empty({BQ * std::min(BK, N)}, f.options());
    std::vector<EntropyState<T>> st(BQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / nqb, q0 = (task % nqb) * BQ, nq = std::min(BQ, N - q0);
      const at::Tensor fb = f[b];
      const at::Tensor q = fb.narrow(0, q0, nq);
      std::fill(st.begin(), st.end(), EntropyState<T>{});
      for (int64_t k0 = 0; k0 < N; k0 += BK) {
        const int64_t nk = std::min(BK, N - k0);
        at::Tensor s = tile.narrow(0, 0, nq * nk).view({nq, nk});
        at::mm_out(s, q, fb.narrow(0, k0, nk).t());
        const T* sp = s.data_ptr<T>();
        for (int64_t r = 0; r < nq; ++r) st[r].update(sp + r * nk, nk);
      }
      for (int64_t r = 0; r < nq; ++r) o[b * N + q0 + r] = st[r].entropy();
    }
  }
}

at::Tensor entropy_global_cpu(const at::Tensor& f_) {
  check_float_input(f_, "f", 3);
  const at::Tensor f = blas_rows(f_);
  at::Tensor out = at::empty({f.size(0), f.size(1)}, f.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "entropy_global_cpu", [&] { entropy_global_kernel<scalar_t>(f, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) { m.impl("entropy_global", &entropy_global_cpu); }

}  // namespace qsattn

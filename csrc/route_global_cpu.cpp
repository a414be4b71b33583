// CPU kernels of qsattn::route_global and its backward (DESIGN §2, the same math as
// qsattn_fast/streaming.py). Query blocks of BQ rows x all N keys (about 4 MiB of logits) are processed
// one after the other; their matrix products are MKL calls that use every thread, and the softmax
// epilogues run OpenMP over the rows. The backward recomputes P = exp(Q K^T - lse) block by block:
// dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dF = dS^T Q + index_add(idx, dS K).
// f and v may be the transposed views rows(feat) of NCHW maps: BLAS reads them in place.
#include <torch/library.h>

#include <tuple>

#include "cpu_common.h"

namespace qsattn {
namespace {

// Query rows per block so that a block of logits holds about 2^20 values (4 MiB in fp32): tall enough
// for MKL to use both threads well on each product (64-row blocks ran at half the rate).
int64_t block_rows(int64_t N) { return std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(N, 1)); }

template <typename T>
void route_forward(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v, at::Tensor& out,
                   at::Tensor& lse) {
  const int64_t B = f.size(0), N = f.size(1), k = idx.size(1);
  const int64_t bq = block_rows(N);
  at::Tensor buf = at::empty({std::min(bq, k) * N}, f.options());
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor fb = f[b], q = fb.index_select(0, idx[b]);
    T* lp = lse.data_ptr<T>() + b * k;
    for (int64_t i0 = 0; i0 < k; i0 += bq) {
      const int64_t nq = std::min(bq, k - i0);
      at::Tensor p = buf.narrow(0, 0, nq * N).view({nq, N});
      at::mm_out(p, q.narrow(0, i0, nq), fb.t());
      T* pp = p.data_ptr<T>();
#pragma omp parallel for num_threads(num_threads()) schedule(static)
      for (int64_t r = 0; r < nq; ++r) {
        T* row = pp + r * N;
        const T m = row_max(row, N);
        const T z = exp_shift(row, N, m);
        lp[i0 + r] = m + std::log(z);
        const T inv = T(1) / z;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) row[j] *= inv;
      }
      at::Tensor o = out[b].narrow(0, i0, nq);
      at::mm_out(o, p, v[b]);
    }
  }
}

template <typename T>
void route_backward(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v, const at::Tensor& out,
                    const at::Tensor& lse, const at::Tensor& g, at::Tensor& df, at::Tensor& dv) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2), k = idx.size(1);
  const int64_t bq = block_rows(N);
  T* dfp = df.data_ptr<T>();
  at::Tensor dq = at::empty({std::min(bq, k), C}, f.options());
  at::Tensor pbuf = at::empty({std::min(bq, k) * N}, f.options());
  at::Tensor sbuf = at::empty({std::min(bq, k) * N}, f.options());
  const at::Tensor dsum = (g * out).sum(-1);  // D = rowsum(dO * O), (B, k)
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor fb = f[b], vb = v[b], ib = idx[b], q = fb.index_select(0, ib);
    const T* lp = lse.data_ptr<T>() + b * k;
    const T* dp = dsum.data_ptr<T>() + b * k;
    for (int64_t i0 = 0; i0 < k; i0 += bq) {
      const int64_t nq = std::min(bq, k - i0);
      const at::Tensor qb = q.narrow(0, i0, nq), gb = g[b].narrow(0, i0, nq);
      at::Tensor p = pbuf.narrow(0, 0, nq * N).view({nq, N});
      at::Tensor dqb = dq.narrow(0, 0, nq);
      at::Tensor ds = sbuf.narrow(0, 0, nq * N).view({nq, N});
      at::mm_out(p, qb, fb.t());
      at::mm_out(ds, gb, vb.t());
      T* pp = p.data_ptr<T>();
      T* sp = ds.data_ptr<T>();
#pragma omp parallel for num_threads(num_threads()) schedule(static)
      for (int64_t r = 0; r < nq; ++r) {
        T* prow = pp + r * N;
        T* srow = sp + r * N;
        exp_shift(prow, N, lp[i0 + r]);
        const T d = dp[i0 + r];
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) srow[j] = prow[j] * (srow[j] - d);
      }
      dv[b].addmm_(p.t(), gb);
      df[b].addmm_(ds.t(), qb);
      at::mm_out(dqb, ds, fb);  // dQ = dS K, added to the selected rows of dF
      const int64_t* ip = ib.data_ptr<int64_t>() + i0;
      const T* dqp = dqb.data_ptr<T>();
      for (int64_t r = 0; r < nq; ++r) {
        T* dst = dfp + (b * N + ip[r]) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dst[c] += dqp[r * C + c];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> route_global_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                    const at::Tensor& v_) {
  check_route_inputs(f_, idx_, v_);
  const at::Tensor f = blas_rows(f_), idx = idx_.contiguous(), v = blas_rows(v_);
  at::Tensor out = at::empty({f.size(0), idx.size(1), v.size(2)}, v.options());
  at::Tensor lse = at::empty({f.size(0), idx.size(1)}, f.options());
  if (out.numel() > 0 || lse.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_global_cpu",
                               [&] { route_forward<scalar_t>(f, idx, v, out, lse); });
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> route_global_backward_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                             const at::Tensor& v_, const at::Tensor& out_,
                                                             const at::Tensor& lse_, const at::Tensor& g_) {
  check_route_inputs(f_, idx_, v_);
  check_saved_inputs(f_, idx_, v_, out_, lse_, g_);
  const at::Tensor f = blas_rows(f_), idx = idx_.contiguous(), v = blas_rows(v_);
  at::Tensor df = at::zeros(f.sizes(), f.options()), dv = at::zeros(v.sizes(), v.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_global_backward_cpu", [&] {
    route_backward<scalar_t>(f, idx, v, out_.contiguous(), lse_.contiguous(), g_.contiguous(), df, dv);
  });
  return {df, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) {
  m.impl("route_global", &route_global_cpu);
  m.impl("route_global_backward", &route_global_backward_cpu);
}

}  // namespace qsattn

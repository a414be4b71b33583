// CPU kernels of qsattn::route_global and its backward (DESIGN §2, the same math as
// qsattn_fast/streaming.py), arranged like the entropy kernel: OpenMP threads take independent tasks
// whose products are single-threaded MKL calls on cache-sized tiles.
// Forward: a task is a block of BQ selected rows x all N keys; it writes its own rows of out and lse.
// Backward: a task is a block of BK keys x all k selected rows, recomputing P = exp(Q K_blk^T - lse);
// it owns its keys' rows of dV = P^T dO and dK = dS^T Q, with dS = P * (dO V_blk^T - rowsum(dO * O)),
// and adds dQ = dS K_blk to a per-thread k x C accumulator; the accumulators are summed and
// index-added to dF at the end (dF = dK + index_add(idx, dQ)).
// f and v may be the transposed views rows(feat) of NCHW maps: BLAS reads them in place, and the
// gradients are written in the same layout.
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <tuple>

#include "cpu_common.h"

namespace qsattn {
namespace {

constexpr int64_t TILE = int64_t(1) << 18;  // logits per forward task (1 MiB in fp32)
constexpr int64_t BK = 256;                 // keys per backward task: two k x BK tiles per thread

template <typename T>
void route_forward(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v, at::Tensor& out,
                   at::Tensor& lse) {
  const int64_t B = f.size(0), N = f.size(1), k = idx.size(1);
  const int64_t bq = std::max<int64_t>(1, std::min(k, TILE / N)), nblk = (k + bq - 1) / bq;
  const at::ThreadLocalState tls;
#pragma omp parallel num_threads(num_threads())
  {
    at::ThreadLocalStateGuard guard(tls);
    at::Tensor buf = at::empty({bq * N}, f.options());
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * nblk; ++task) {
      const int64_t b = task / nblk, i0 = (task % nblk) * bq, nq = std::min(bq, k - i0);
      const at::Tensor fb = f[b];
      at::Tensor p = buf.narrow(0, 0, nq * N).view({nq, N});
      at::mm_out(p, fb.index_select(0, idx[b].narrow(0, i0, nq)), fb.t());
      T* pp = p.data_ptr<T>();
      T* lp = lse.data_ptr<T>() + b * k + i0;
      for (int64_t r = 0; r < nq; ++r) {
        T* row = pp + r * N;
        const T m = row_max(row, N);
        const T z = exp_shift(row, N, m);
        lp[r] = m + std::log(z);
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
  const int64_t nblk = (N + BK - 1) / BK;
  const int nt = num_threads();
  const at::Tensor dsum = (g * out).sum(-1);  // D = rowsum(dO * O), (B, k)
  at::Tensor dq = at::zeros({nt, k, C}, f.options());
  const at::ThreadLocalState tls;
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor fb = f[b], vb = v[b], ib = idx[b], gb = g[b], q = fb.index_select(0, ib);
    const T* lp = lse.data_ptr<T>() + b * k;
    const T* dp = dsum.data_ptr<T>() + b * k;
#pragma omp parallel num_threads(nt)
    {
      at::ThreadLocalStateGuard guard(tls);
      at::Tensor pbuf = at::empty({k * BK}, f.options()), sbuf = at::empty({k * BK}, f.options());
      at::Tensor dqt = dq[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t n0 = blk * BK, nk = std::min(BK, N - n0);
        const at::Tensor kb = fb.narrow(0, n0, nk);
        at::Tensor p = pbuf.narrow(0, 0, k * nk).view({k, nk});
        at::Tensor ds = sbuf.narrow(0, 0, k * nk).view({k, nk});
        at::mm_out(p, q, kb.t());
        at::mm_out(ds, gb, vb.narrow(0, n0, nk).t());
        T* pp = p.data_ptr<T>();
        T* sp = ds.data_ptr<T>();
        for (int64_t r = 0; r < k; ++r) {
          T* prow = pp + r * nk;
          T* srow = sp + r * nk;
          exp_shift(prow, nk, lp[r]);
          const T d = dp[r];
#pragma omp simd
          for (int64_t j = 0; j < nk; ++j) srow[j] = prow[j] * (srow[j] - d);
        }
        at::Tensor dvb = dv[b].narrow(0, n0, nk);
        at::mm_out(dvb, p.t(), gb);
        df[b].narrow(0, n0, nk).addmm_(ds.t(), q);
        dqt.addmm_(ds, kb);
      }
    }
    // dF[idx] += sum over threads of dQ, then reset the accumulators for the next image.
    const at::Tensor dqs = dq.sum(0);
    const int64_t* ip = ib.data_ptr<int64_t>();
    const T* dqp = dqs.data_ptr<T>();
    T* dfp = df.data_ptr<T>() + b * df.stride(0);
    const int64_t sn = df.stride(1), sc = df.stride(2);
    for (int64_t r = 0; r < k; ++r) {
      T* dst = dfp + ip[r] * sn;
      for (int64_t c = 0; c < C; ++c) dst[c * sc] += dqp[r * C + c];
    }
    dq.zero_();
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
  // Gradients in the layout of the inputs (for rows(feat) views: NCHW), so that autograd hands them on
  // without a transposing copy.
  at::Tensor df = at::zeros_like(f), dv = at::empty_like(v);
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

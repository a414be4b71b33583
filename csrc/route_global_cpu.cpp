// CPU kernels of qsattn::route_global.native and its backward (docs/design.md §3: the math of
// qsattn_fast/backends/torch.py, except the pivots below), arranged like the entropy kernel: OpenMP threads
// take independent tasks whose products are single-threaded MKL calls on cache-sized tiles.
// Forward: a task is a block of BQ selected rows x all N keys; it writes its own rows of out and lse.
// Several value maps v_1..v_m are routed by the same P (no concatenated copy of them is made).
// Backward: a task is a block of BK keys x all k selected rows, recomputing P = exp(Q K_blk^T - lse);
// it owns its keys' rows of dV_i = P^T dO_i and dK = dS^T Q, with
// dS = P * (sum_i dO_i V_i,blk^T - sum_i rowsum(dO_i * O_i)),
// and adds dQ = dS K_blk to a per-thread k x C accumulator; the accumulators are summed and
// index-added to dF at the end (dF = dK + index_add(idx, dQ)).
// Pivots: where P_ij > 3/4, key j is row i's pivot, and dS_ij comes not from the formula above (whose
// dP_ij - D_i is rounding noise in a saturated row) but from sum_j dS_ij = 0: the tasks leave it 0 and
// sum the row's other entries, and the end adds c_i = -(that sum) as dK_j += c_i Q_i, dQ_i += c_i K_j.
// A one-hot row (P = 1 at its pivot, 0 elsewhere) thus gives dS = 0 exactly, as the exact gradient.
// f and v may be the transposed views rows(feat) of NCHW maps: BLAS reads them in place, and the
// gradients are written in the same layout.
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "cpu_common.h"

namespace qsattn {
namespace {

constexpr int64_t TILE = int64_t(1) << 18;  // logits per forward task (1 MiB in fp32)
constexpr int64_t BK = 256;                 // keys per backward task: two k x BK tiles per thread
constexpr double PIVOT = 0.75;              // P_ij > PIVOT: key j is row i's pivot (one at most: rows sum to 1)
constexpr int64_t CB = 16;                  // channels per pass of the final scatter into strided dF

template <typename T>
void route_global_kernel(const at::Tensor& f, const at::Tensor& idx, const std::vector<at::Tensor>& v,
                         std::vector<at::Tensor>& out, at::Tensor& lse) {
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
      for (size_t i = 0; i < v.size(); ++i) {
        at::Tensor o = out[i][b].narrow(0, i0, nq);
        at::mm_out(o, p, v[i][b]);
      }
    }
  }
}

// The backward's inputs for one image b: the rows, the selected rows Q and each row's lse and D.
template <typename T>
struct BackwardImage {
  int64_t b, N, C, k;
  at::Tensor fb, ib, q;  // (N, C) rows of image b, (k) selected indices, (k, C) Q = fb[ib]
  const T *lse, *d;      // (k) log-sum-exp and D = sum_i rowsum(dO_i * O_i) of each selected row
};

// Row r's dS over keys n0 .. n0 + nk in place of its dP (srow), from its logits (prow, which become
// P = exp(s - lse)): dS = P * (dP - D), and 0 at a pivot (P > PIVOT; its key is written to pivot).
// Returns the row's sum of dS off the pivot.
template <typename T>
T ds_row(T* prow, T* srow, int64_t nk, int64_t n0, T lse, T d, int64_t& pivot) {
  const T z = exp_shift(prow, nk, lse);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < nk; ++j) {
    srow[j] = prow[j] * (srow[j] - d);
    sum += srow[j];
  }
  if (z > T(PIVOT)) {  // only a block holding more than PIVOT of the row can hold its pivot
    for (int64_t j = 0; j < nk; ++j) {
      if (prow[j] > T(PIVOT)) {
        pivot = n0 + j;
        sum -= srow[j];
        srow[j] = 0;
      }
    }
  }
  return sum;
}

// One task: keys n0 .. n0 + nk of image x against all k selected rows. P and dS (k x nk, in this
// thread's pbuf and sbuf) give the keys' rows of dV_i = P^T dO_i and dK = dS^T Q; dQ = dS K_blk goes to
// this thread's accumulator dqt and each row's sum of dS off its pivot to rs.
template <typename T>
void backward_key_block(const BackwardImage<T>& x, int64_t n0, const std::vector<at::Tensor>& v,
                        const std::vector<at::Tensor>& g, at::Tensor& df, std::vector<at::Tensor>& dv, at::Tensor& pbuf,
                        at::Tensor& sbuf, at::Tensor& dqt, T* rs, int64_t* piv) {
  const int64_t b = x.b, k = x.k, nk = std::min(BK, x.N - n0);
  const at::Tensor kb = x.fb.narrow(0, n0, nk);
  at::Tensor p = pbuf.narrow(0, 0, k * nk).view({k, nk});
  at::Tensor ds = sbuf.narrow(0, 0, k * nk).view({k, nk});
  at::mm_out(p, x.q, kb.t());
  at::mm_out(ds, g[0][b], v[0][b].narrow(0, n0, nk).t());  // dP = sum_i dO_i V_i,blk^T
  for (size_t i = 1; i < v.size(); ++i) ds.addmm_(g[i][b], v[i][b].narrow(0, n0, nk).t());
  T *pp = p.data_ptr<T>(), *sp = ds.data_ptr<T>();
  for (int64_t r = 0; r < k; ++r) rs[r] += ds_row(pp + r * nk, sp + r * nk, nk, n0, x.lse[r], x.d[r], piv[r]);
  for (size_t i = 0; i < v.size(); ++i) {
    at::Tensor dvb = dv[i][b].narrow(0, n0, nk);
    at::mm_out(dvb, p.t(), g[i][b]);
  }
  df[b].narrow(0, n0, nk).addmm_(ds.t(), x.q);
  dqt.addmm_(ds, kb);
}

// dF[idx] += dQ (dqs, summed over threads), plus the pivots' terms c_i = -rss_i (each row's sum of dS
// off its pivot): dK_pivot += c_i Q_i, dQ_i += c_i K_pivot. Whole rows where dF's rows are contiguous,
// else CB channels at a time (CB planes of NCHW maps, which stay cached while the rows are scattered).
template <typename T>
void scatter_dq(const BackwardImage<T>& x, const at::Tensor& dqs, const at::Tensor& rss, const int64_t* piv,
                at::Tensor& df) {
  const int64_t C = x.C, k = x.k;
  const int64_t* ip = x.ib.template data_ptr<int64_t>();
  const T *dqp = dqs.data_ptr<T>(), *rsp = rss.data_ptr<T>(), *qp = x.q.template data_ptr<T>(),
          *fp = x.fb.template data_ptr<T>();
  T* dfp = df.data_ptr<T>() + x.b * df.stride(0);
  const int64_t sn = df.stride(1), sc = df.stride(2), fn = x.fb.stride(0), fc = x.fb.stride(1);
  std::vector<int64_t> fix;  // rows with c_i != 0
  for (int64_t r = 0; r < k; ++r)
    if (piv[r] >= 0 && rsp[r] != 0) fix.push_back(r);
  const int64_t cb = sc == 1 ? C : CB;
  for (int64_t c0 = 0; c0 < C; c0 += cb) {
    const int64_t c1 = std::min(C, c0 + cb);
    for (int64_t r = 0; r < k; ++r) {
      T* dst = dfp + ip[r] * sn;
      for (int64_t c = c0; c < c1; ++c) dst[c * sc] += dqp[r * C + c];
    }
    for (const int64_t r : fix) {
      const T cr = -rsp[r];
      T *dqr = dfp + ip[r] * sn, *dkr = dfp + piv[r] * sn;
      const T* kr = fp + piv[r] * fn;
      for (int64_t c = c0; c < c1; ++c) {
        dqr[c * sc] += cr * kr[c * fc];
        dkr[c * sc] += cr * qp[r * C + c];
      }
    }
  }
}

template <typename T>
void route_global_backward_kernel(const at::Tensor& f, const at::Tensor& idx, const std::vector<at::Tensor>& v,
                                  const std::vector<at::Tensor>& out, const at::Tensor& lse,
                                  const std::vector<at::Tensor>& g, at::Tensor& df, std::vector<at::Tensor>& dv) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2), k = idx.size(1);
  const int64_t nblk = (N + BK - 1) / BK;
  const int nt = num_threads();
  at::Tensor dsum = at::zeros({B, k}, f.options());  // D = sum_i rowsum(dO_i * O_i), (B, k)
  for (size_t i = 0; i < v.size(); ++i) dsum.add_((g[i] * out[i]).sum(-1));
  at::Tensor dq = at::zeros({nt, k, C}, f.options());
  at::Tensor rsum = at::zeros({nt, k}, f.options());  // per thread: each row's sum of dS off its pivot
  std::vector<int64_t> piv(k);                        // each row's pivot key or -1
  const at::ThreadLocalState tls;
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor fb = f[b], ib = idx[b];
    const BackwardImage<T> x{
        b, N, C, k, fb, ib, fb.index_select(0, ib), lse.data_ptr<T>() + b * k, dsum.data_ptr<T>() + b * k};
    std::fill(piv.begin(), piv.end(), -1);
#pragma omp parallel num_threads(nt)
    {
      at::ThreadLocalStateGuard guard(tls);
      at::Tensor pbuf = at::empty({k * BK}, f.options()), sbuf = at::empty({k * BK}, f.options());
      at::Tensor dqt = dq[omp_get_thread_num()];
      T* rs = rsum[omp_get_thread_num()].data_ptr<T>();
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < nblk; ++blk)
        backward_key_block(x, blk * BK, v, g, df, dv, pbuf, sbuf, dqt, rs, piv.data());
    }
    scatter_dq(x, dq.sum(0), rsum.sum(0), piv.data(), df);
    dq.zero_();  // the accumulators, reset for the next image
    rsum.zero_();
  }
}

std::vector<at::Tensor> blas_rows_all(at::TensorList v) {
  std::vector<at::Tensor> out;
  for (const auto& x : v) out.push_back(blas_rows(x));
  return out;
}

std::vector<at::Tensor> contiguous_all(at::TensorList v) {
  std::vector<at::Tensor> out;
  for (const auto& x : v) out.push_back(x.contiguous());
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> route_global_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                                 at::TensorList v_,
                                                                 std::optional<std::string_view> precision) {
  check_values(f_, idx_, v_);
  check_precision(precision);
  const at::Tensor f = blas_rows(f_), idx = idx_.contiguous();
  const std::vector<at::Tensor> v = blas_rows_all(v_);
  std::vector<at::Tensor> out;
  for (const auto& x : v) out.push_back(at::empty({f.size(0), idx.size(1), x.size(2)}, x.options()));
  at::Tensor lse = at::empty({f.size(0), idx.size(1)}, f.options());
  if (lse.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_global_cpu",
                               [&] { route_global_kernel<scalar_t>(f, idx, v, out, lse); });
  }
  return {out, lse};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> route_global_backward_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                                          at::TensorList v_, at::TensorList out_,
                                                                          const at::Tensor& lse_, at::TensorList g_,
                                                                          std::optional<std::string_view> precision) {
  check_values(f_, idx_, v_);
  check_saved_values(f_, idx_, v_, out_, lse_, g_);
  check_precision(precision);
  const at::Tensor f = blas_rows(f_), idx = idx_.contiguous();
  const std::vector<at::Tensor> v = blas_rows_all(v_), out = contiguous_all(out_), g = contiguous_all(g_);
  // Gradients in the layout of the inputs (for rows(feat) views: NCHW), so that autograd hands them on
  // without a transposing copy.
  at::Tensor df = at::zeros_like(f);
  std::vector<at::Tensor> dv;
  for (const auto& x : v) dv.push_back(at::empty_like(x));
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_global_backward_cpu", [&] {
    route_global_backward_kernel<scalar_t>(f, idx, v, out, lse_.contiguous(), g, df, dv);
  });
  return {df, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) {
  m.impl("route_global.native", &route_global_cpu);
  m.impl("route_global_backward.native", &route_global_backward_cpu);
}

}  // namespace qsattn

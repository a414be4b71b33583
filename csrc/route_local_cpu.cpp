// CPU kernels of qsattn::route_local and its backward: each selected position p attends to its
// window x window zero-padded neighbourhood only, P_j = softmax_j(f_p . f_{q_j}) (keys outside the map
// have logit 0 and value 0), out = sum_j P_j v_{q_j}. Only the k selected neighbourhoods are touched.
// Backward: dS_j = P_j (dO . v_{q_j} - dO . out); dv_{q_j} += P_j dO; df_p += sum_j dS_j f_{q_j};
// df_{q_j} += dS_j f_p. Phase 1 (OpenMP over the selected rows) recomputes P from lse and forms dS;
// phase 2 scatters, OpenMP over (image, channel chunk) so that no two threads write one element.
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu_common.h"
#include "local_common.h"

namespace qsattn {
namespace {

constexpr int64_t CHUNK = 64;  // channels per scatter task

// The attention weights of selected row (b, i) over its neighbourhood: fills nb and p, returns lse.
template <typename T>
T local_softmax(const T* fb, int64_t C, int64_t p, int64_t H, int64_t W, int64_t window, int64_t* nb, T* w) {
  const int64_t n = neighbours(p, H, W, window, nb);
  local_logits(fb, C, p, nb, n, w);
  const T m = row_max(w, n);
  const T z = exp_shift(w, n, m);
  for (int64_t j = 0; j < n; ++j) w[j] /= z;
  return m + std::log(z);
}

template <typename T>
void local_forward(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v, int64_t H, int64_t W,
                   int64_t window, at::Tensor& out, at::Tensor& lse) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2), Cv = v.size(2), k = idx.size(1);
  const int64_t w2 = window * window;
  const T *fp = f.data_ptr<T>(), *vp = v.data_ptr<T>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
#pragma omp parallel num_threads(num_threads())
  {
    std::vector<int64_t> nb(w2);
    std::vector<T> w(w2);
#pragma omp for schedule(static)
    for (int64_t bi = 0; bi < B * k; ++bi) {
      const int64_t b = bi / k;
      lp[bi] = local_softmax(fp + b * N * C, C, ip[bi], H, W, window, nb.data(), w.data());
      T* o = op + bi * Cv;
      std::fill(o, o + Cv, T(0));
      for (int64_t j = 0; j < w2; ++j) {
        if (nb[j] < 0) continue;
        const T* vr = vp + (b * N + nb[j]) * Cv;
        const T pj = w[j];
#pragma omp simd
        for (int64_t c = 0; c < Cv; ++c) o[c] += pj * vr[c];
      }
    }
  }
}

template <typename T>
void local_backward(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v, const at::Tensor& out,
                    const at::Tensor& lse, const at::Tensor& g, int64_t H, int64_t W, int64_t window,
                    at::Tensor& df, at::Tensor& dv) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2), Cv = v.size(2), k = idx.size(1);
  const int64_t w2 = window * window;
  const T *fp = f.data_ptr<T>(), *vp = v.data_ptr<T>(), *outp = out.data_ptr<T>(), *gp = g.data_ptr<T>();
  const T* lp = lse.data_ptr<T>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  T *dfp = df.data_ptr<T>(), *dvp = dv.data_ptr<T>();
  std::vector<int64_t> nbs(B * k * w2);
  std::vector<T> P(B * k * w2), dS(B * k * w2);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t bi = 0; bi < B * k; ++bi) {
    const int64_t b = bi / k;
    int64_t* nb = nbs.data() + bi * w2;
    T* pw = P.data() + bi * w2;
    T* sw = dS.data() + bi * w2;
    const T* fb = fp + b * N * C;
    neighbours(ip[bi], H, W, window, nb);
    local_logits(fb, C, ip[bi], nb, w2, pw);
    exp_shift(pw, w2, lp[bi]);
    const T* gr = gp + bi * Cv;
    const T d = dot(gr, outp + bi * Cv, Cv);
    for (int64_t j = 0; j < w2; ++j) sw[j] = pw[j] * ((nb[j] < 0 ? T(0) : dot(gr, vp + (b * N + nb[j]) * Cv, Cv)) - d);
  }
  const int64_t cmax = std::max(C, Cv), nchunks = (cmax + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < B * nchunks; ++task) {
    const int64_t b = task / nchunks, c0 = (task % nchunks) * CHUNK;
    const int64_t cf = std::max<int64_t>(0, std::min(C, c0 + CHUNK) - c0);
    const int64_t cv = std::max<int64_t>(0, std::min(Cv, c0 + CHUNK) - c0);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t bi = b * k + i, p = ip[bi];
      const int64_t* nb = nbs.data() + bi * w2;
      const T* fpr = fp + (b * N + p) * C + c0;
      T* dfr = dfp + (b * N + p) * C + c0;
      const T* gr = gp + bi * Cv + c0;
      for (int64_t j = 0; j < w2; ++j) {
        if (nb[j] < 0) continue;
        const T pj = P[bi * w2 + j], sj = dS[bi * w2 + j];
        const T* fq = fp + (b * N + nb[j]) * C + c0;
        T* dfq = dfp + (b * N + nb[j]) * C + c0;
        T* dvq = dvp + (b * N + nb[j]) * Cv + c0;
        for (int64_t c = 0; c < cf; ++c) {
          dfr[c] += sj * fq[c];
          dfq[c] += sj * fpr[c];
        }
#pragma omp simd
        for (int64_t c = 0; c < cv; ++c) dvq[c] += pj * gr[c];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> route_local_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                   const at::Tensor& v_, int64_t H, int64_t W, int64_t window) {
  check_route_inputs(f_, idx_, v_);
  check_grid(f_, H, W, window);
  const at::Tensor f = f_.contiguous(), idx = idx_.contiguous(), v = v_.contiguous();
  at::Tensor out = at::empty({f.size(0), idx.size(1), v.size(2)}, v.options());
  at::Tensor lse = at::empty({f.size(0), idx.size(1)}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_local_cpu",
                             [&] { local_forward<scalar_t>(f, idx, v, H, W, window, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> route_local_backward_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                            const at::Tensor& v_, const at::Tensor& out,
                                                            const at::Tensor& lse, const at::Tensor& g,
                                                            int64_t H, int64_t W, int64_t window) {
  check_route_inputs(f_, idx_, v_);
  check_grid(f_, H, W, window);
  check_saved_inputs(f_, idx_, v_, out, lse, g);
  const at::Tensor f = f_.contiguous(), idx = idx_.contiguous(), v = v_.contiguous();
  at::Tensor df = at::zeros_like(f), dv = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_local_backward_cpu", [&] {
    local_backward<scalar_t>(f, idx, v, out.contiguous(), lse.contiguous(), g.contiguous(), H, W, window, df, dv);
  });
  return {df, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) {
  m.impl("route_local", &route_local_cpu);
  m.impl("route_local_backward", &route_local_backward_cpu);
}

}  // namespace qsattn

// CPU kernels of qsattn::route_local.native and its backward: each selected position p attends to its
// window x window zero-padded neighbourhood only, P_j = softmax_j(f_p . f_{q_j}) (keys outside the map
// have logit 0 and value 0), out_i = sum_j P_j v_i[q_j] for every value map v_i; P is computed once per
// selected row and applied to all maps (no concatenated copy of them is made). Only the k selected
// neighbourhoods are touched.
// Backward: dS_j = P_j (sum_i dO_i . v_i[q_j] - sum_i dO_i . out_i); dv_i[q_j] += P_j dO_i;
// df_p += sum_j dS_j f_{q_j}; df_{q_j} += dS_j f_p. Phase 1 (OpenMP over the selected rows) recomputes P
// from lse and forms dS; phase 2 scatters, OpenMP over (image, segment of CHUNK channels of df or of one
// dv_i): each element of df and dv_i has one owner task, which adds its terms in a fixed order, so no two
// threads write one element and the result does not depend on the thread count.
// The kernels work on contiguous rows; df and dv_i are accumulated so and come back in the layouts of f
// and v_i (for rows(feat) views: NCHW; one blocked copy, where scattering into the channel planes directly
// would touch a page per channel).
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu_common.h"
#include "local_common.h"

namespace qsattn {
namespace {

constexpr int64_t CHUNK = 64;  // channels per scatter task

// A contiguous (B, R, C) tensor's data: row (b, r) at p + (b * R + r) * C.
template <typename T>
struct Rows {
  T* p;
  int64_t R, C;
  explicit Rows(const at::Tensor& t) : p(t.data_ptr<T>()), R(t.size(1)), C(t.size(2)) {}
  T* row(int64_t b, int64_t r) const { return p + (b * R + r) * C; }
};

template <typename T>
std::vector<Rows<T>> rows_of(const std::vector<at::Tensor>& ts) {
  return std::vector<Rows<T>>(ts.begin(), ts.end());
}

// y[c] += a x[c] for c < n.
template <typename T>
inline void axpy(T a, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

// The attention weights softmax(w) of n logits, in place; returns their lse.
template <typename T>
T softmax(T* w, int64_t n) {
  const T m = row_max(w, n);
  const T z = exp_shift(w, n, m);
  for (int64_t j = 0; j < n; ++j) w[j] /= z;
  return m + std::log(z);
}

// v_i (B, N, C_i) and out_i (B, k, C_i) contiguous.
template <typename T>
void route_local_kernel(const at::Tensor& f, const at::Tensor& idx, const std::vector<at::Tensor>& v, int64_t H,
                        int64_t W, int64_t window, std::vector<at::Tensor>& out, at::Tensor& lse) {
  const int64_t B = f.size(0), C = f.size(2), k = idx.size(1);
  const int64_t w2 = window * window;
  const int64_t* ip = idx.data_ptr<int64_t>();
  T* lp = lse.data_ptr<T>();
  const std::vector<Rows<T>> vs = rows_of<T>(v), os = rows_of<T>(out);
  for_each_window(
      f.data_ptr<T>(), B, k, H, W, C, window, [&](int64_t b, int64_t i) { return ip[b * k + i]; },
      [&](int64_t b, int64_t i, const int64_t* nb, T* w) {
        lp[b * k + i] = softmax(w, w2);
        for (size_t m = 0; m < vs.size(); ++m) {
          T* o = os[m].row(b, i);
          std::fill(o, o + vs[m].C, T(0));
          for (int64_t j = 0; j < w2; ++j)
            if (nb[j] >= 0) axpy(w[j], vs[m].row(b, nb[j]), o, vs[m].C);
        }
      });
}

// All contiguous; df (B, N, C) and dv_i (B, N, C_i) zeros.
template <typename T>
void route_local_backward_kernel(const at::Tensor& f, const at::Tensor& idx, const std::vector<at::Tensor>& v,
                                 const std::vector<at::Tensor>& out, const at::Tensor& lse,
                                 const std::vector<at::Tensor>& g, int64_t H, int64_t W, int64_t window, at::Tensor& df,
                                 std::vector<at::Tensor>& dv) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2), k = idx.size(1);
  const int64_t w2 = window * window;
  const T *fp = f.data_ptr<T>(), *lp = lse.data_ptr<T>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  T* dfp = df.data_ptr<T>();
  const std::vector<Rows<T>> vs = rows_of<T>(v), os = rows_of<T>(out), gs = rows_of<T>(g), dvs = rows_of<T>(dv);
  const size_t nmaps = vs.size();
  std::vector<int64_t> nbs(B * k * w2);
  std::vector<T> P(B * k * w2), dS(B * k * w2);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t bi = 0; bi < B * k; ++bi) {
    const int64_t b = bi / k, i = bi % k;
    int64_t* nb = nbs.data() + bi * w2;
    T* pw = P.data() + bi * w2;
    T* sw = dS.data() + bi * w2;
    local_logits(fp + b * N * C, H, W, C, window, ip[bi], nb, pw);
    exp_shift(pw, w2, lp[bi]);
    T d = 0;  // sum_i dO_i . out_i
    for (size_t m = 0; m < nmaps; ++m) d += dot(gs[m].row(b, i), os[m].row(b, i), vs[m].C);
    for (int64_t j = 0; j < w2; ++j) {
      T dp = 0;  // sum_i dO_i . v_i[q_j], 0 outside the map
      if (nb[j] >= 0)
        for (size_t m = 0; m < nmaps; ++m) dp += dot(gs[m].row(b, i), vs[m].row(b, nb[j]), vs[m].C);
      sw[j] = pw[j] * (dp - d);
    }
  }
  struct Segment {
    int64_t map, c0, n;  // channels [c0, c0 + n) of df (map -1) or of dv_map
  };
  std::vector<Segment> segs;
  for (int64_t m = -1; m < static_cast<int64_t>(nmaps); ++m) {
    const int64_t cm = m < 0 ? C : vs[m].C;
    for (int64_t c0 = 0; c0 < cm; c0 += CHUNK) segs.push_back({m, c0, std::min(CHUNK, cm - c0)});
  }
  const int64_t nseg = static_cast<int64_t>(segs.size());
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t task = 0; task < B * nseg; ++task) {
    const int64_t b = task / nseg;
    const Segment s = segs[task % nseg];
    for (int64_t i = 0; i < k; ++i) {
      const int64_t bi = b * k + i, p = ip[bi];
      const int64_t* nb = nbs.data() + bi * w2;
      if (s.map < 0) {  // df_p += dS_j f_{q_j}, df_{q_j} += dS_j f_p (q_j == p possible: no simd)
        const T* fpr = fp + (b * N + p) * C + s.c0;
        T* dfr = dfp + (b * N + p) * C + s.c0;
        for (int64_t j = 0; j < w2; ++j) {
          if (nb[j] < 0) continue;
          const T sj = dS[bi * w2 + j];
          const T* fq = fp + (b * N + nb[j]) * C + s.c0;
          T* dfq = dfp + (b * N + nb[j]) * C + s.c0;
          for (int64_t c = 0; c < s.n; ++c) {
            dfr[c] += sj * fq[c];
            dfq[c] += sj * fpr[c];
          }
        }
      } else {  // dv_i[q_j] += P_j dO_i
        const T* gr = gs[s.map].row(b, i) + s.c0;
        for (int64_t j = 0; j < w2; ++j)
          if (nb[j] >= 0) axpy(P[bi * w2 + j], gr, dvs[s.map].row(b, nb[j]) + s.c0, s.n);
      }
    }
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor> route_local_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                                at::TensorList v_, int64_t H, int64_t W,
                                                                int64_t window) {
  check_values(f_, idx_, v_);
  check_grid(f_, H, W, window);
  const at::Tensor f = f_.contiguous(), idx = idx_.contiguous();
  std::vector<at::Tensor> v, out;
  for (const auto& x : v_) {
    v.push_back(x.contiguous());
    out.push_back(at::empty({f.size(0), idx.size(1), x.size(2)}, f.options()));
  }
  at::Tensor lse = at::empty({f.size(0), idx.size(1)}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_local_cpu",
                             [&] { route_local_kernel<scalar_t>(f, idx, v, H, W, window, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> route_local_backward_cpu(const at::Tensor& f_, const at::Tensor& idx_,
                                                                         at::TensorList v_, at::TensorList out_,
                                                                         const at::Tensor& lse, at::TensorList g_,
                                                                         int64_t H, int64_t W, int64_t window) {
  check_values(f_, idx_, v_);
  check_grid(f_, H, W, window);
  check_saved_values(f_, idx_, v_, out_, lse, g_);
  const at::Tensor f = f_.contiguous(), idx = idx_.contiguous();
  std::vector<at::Tensor> v, out, g, dv;
  for (size_t i = 0; i < v_.size(); ++i) {
    v.push_back(v_[i].contiguous());
    out.push_back(out_[i].contiguous());
    g.push_back(g_[i].contiguous());
    dv.push_back(at::zeros_like(v.back()));
  }
  at::Tensor df = at::zeros_like(f);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "route_local_backward_cpu", [&] {
    route_local_backward_kernel<scalar_t>(f, idx, v, out, lse.contiguous(), g, H, W, window, df, dv);
  });
  return {in_layout(df, f_), in_layouts(dv, v_)};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) {
  m.impl("route_local.native", &route_local_cpu);
  m.impl("route_local_backward.native", &route_local_backward_cpu);
}

}  // namespace qsattn

// Shared helpers of the C++/OpenMP CPU kernels (docs/design.md §2): the thread count, a vectorisable exp for
// float, and the online cancellation-free entropy state, fed by rows or by columns of a logit tile.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "op_checks.h"

namespace qsattn {

// t (B, N, C) itself when each t[b] is a matrix BLAS can read in place (unit stride along one of its
// dimensions, e.g. the view rows(feat) of an NCHW map), else a contiguous copy.
inline at::Tensor blas_rows(const at::Tensor& t) {
  return (t.stride(2) == 1 || t.stride(1) == 1) ? t : t.contiguous();
}

inline int num_threads() { return at::get_num_threads(); }

// exp(x) for float to ~1 ulp, written so that GCC vectorises loops calling it (no libm call, no
// branch): x = n ln2 + r with |r| <= ln2/2, e^r by its degree-7 Taylor polynomial, 2^n from the
// exponent bits. exp(x) for x < lo is returned as 0. The routing kernels keep lo = -64 (e^-64 ~ 1.6e-28
// is below the float resolution of any sum it joins): this keeps subnormal numbers, which are ~100x
// slower in MKL's sgemm, out of the attention rows and their products. The entropy sums take
// kEntropyExpMin instead: a peaked row's entropy consists of exactly such tiny terms, and flushing them
// at -64 tied every row whose logit gap exceeds 64 (README, "Selection ties").
constexpr float kEntropyExpMin = -87.0f;  // e^-87 ~ 1.6e-38: the smallest normal floats, no subnormal
__attribute__((always_inline)) inline float fast_exp(float x, float lo = -64.0f) {
  const bool flush = x < lo;
  x = flush ? lo : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  float t = x * 1.44269504088896341f + shifter;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof(ti));
  const float n = t - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (ti - 0x4B400000 + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return flush ? 0.0f : p * scale;
}

inline double fast_exp(double x, double = 0.0) { return std::exp(x); }

// Over n logits with max <= m: *rr = sum of e^{s_j - m} over the s_j < m, *tt = sum_j e^{s_j - m} (s_j - m)
// and *cc = the number of s_j == m (each contributes exactly 1 to Z and 0 to T). The float version is
// compiled for several instruction sets and picked at load time (cpu_common.cpp).
void exp_sums(const float* s, int64_t n, float m, float* rr, float* tt, float* cc);
void exp_sums(const double* s, int64_t n, double m, double* rr, double* tt, double* cc);

// Column-wise twins of row_max / exp_sums over an nr x nc row-major tile s (nr > 0), vectorised along
// the columns: col_max sets m[j] = max_i s_ij; col_exp_sums sets, per column j, rr[j], tt[j], cc[j] as
// exp_sums does for the column with max m[j].
void col_max(const float* s, int64_t nr, int64_t nc, float* m);
void col_max(const double* s, int64_t nr, int64_t nc, double* m);
void col_exp_sums(const float* s, int64_t nr, int64_t nc, const float* m, float* rr, float* tt, float* cc);
void col_exp_sums(const double* s, int64_t nr, int64_t nc, const double* m, double* rr, double* tt, double* cc);

// The nr x nc logit tile s = a b^T (row-major) of C-channel features stored channel-major: a(i, c) =
// a[c * ld + i], b(j, c) = b[c * ld + j], 1 <= C <= 8. Channels are summed in order with FMAs vectorised
// along the columns: for the few channels of an image-level map, where sgemm's K = C is too short for its peak.
void small_logits(const float* a, const float* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, float* s);
void small_logits(const double* a, const double* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, double* s);

// s_j <- e^{s_j - m} in place (attention rows of the routing kernels); returns sum_j s_j.
float exp_shift(float* s, int64_t n, float m);
double exp_shift(double* s, int64_t n, double m);

// max_j s_j over n > 0 logits.
template <typename T>
inline T row_max(const T* s, int64_t n) {
  T bm = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : bm)
  for (int64_t j = 0; j < n; ++j) bm = s[j] > bm ? s[j] : bm;
  return bm;
}

// Running softmax statistics of one row over the keys seen so far, relative to the running max m:
// Z = sum e^{s-m} = 1 + r (r: the sum without the max's own 1, kept apart so that peaked rows with
// r << eps keep their digits) and t = sum e^{s-m} (s-m) <= 0. The entropy is log1p(r) - t/(1+r), two
// terms >= 0: no cancellation (docs/design.md §2).
template <typename T>
struct EntropyState {
  T m = -std::numeric_limits<T>::infinity();
  T r = 0;
  T t = 0;

  // Folds n > 0 more logits in: rescale to the new max (the old max's 1 joins r), then add the block.
  void update(const T* s, int64_t n) {
    const T bm = row_max(s, n);
    T rb, tb, cb;
    if (bm > m) {
      exp_sums(s, n, bm, &rb, &tb, &cb);
      if (m == -std::numeric_limits<T>::infinity()) {
        r = rb + (cb - 1);
        t = tb;
      } else {
        const T d = m - bm, a = std::exp(d);
        t = a * (t + d * (1 + r)) + tb;
        r = a * (1 + r) + rb + (cb - 1);
      }
      m = bm;
    } else {
      exp_sums(s, n, m, &rb, &tb, &cb);
      r += rb + cb;
      t += tb;
    }
  }

  // Folds in the state o of other logits of the same row (associative): the state with the smaller max
  // is rescaled to the larger, its max's 1 joining the sum like a rescaled 1 + r in update.
  void merge(const EntropyState& o) {
    if (o.m == -std::numeric_limits<T>::infinity()) return;
    if (m == -std::numeric_limits<T>::infinity()) {
      *this = o;
    } else if (o.m > m) {
      const T d = m - o.m, a = std::exp(d);
      t = o.t + a * (t + d * (1 + r));
      r = o.r + a * (1 + r);
      m = o.m;
    } else {
      const T d = o.m - m, a = std::exp(d);
      t += a * (o.t + d * (1 + o.r));
      r += a * (1 + o.r);
    }
  }

  T entropy() const { return std::log1p(r) - t / (1 + r); }
};

// Folds the columns of an nr x nc row-major logit tile s (nr > 0) into st[0..nc): column j holds logits
// of row st[j]. scratch: 4 * nc elements.
template <typename T>
void fold_columns(const T* s, int64_t nr, int64_t nc, EntropyState<T>* st, T* scratch) {
  T *m = scratch, *rr = m + nc, *tt = rr + nc, *cc = tt + nc;
  col_max(s, nr, nc, m);
  col_exp_sums(s, nr, nc, m, rr, tt, cc);
  for (int64_t j = 0; j < nc; ++j) st[j].merge(EntropyState<T>{m[j], rr[j] + (cc[j] - 1), tt[j]});
}

}  // namespace qsattn

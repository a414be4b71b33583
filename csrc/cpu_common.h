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
// branch): x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, Cody and Waite), e^r = 1 + r + r^2 P(r)
// with Cephes' degree-5 minimax P, 2^n from the exponent bits. exp(x) for x < lo is returned as 0.
// The routing kernels keep lo = -64 (e^-64 ~ 1.6e-28 is below the float resolution of any sum it
// joins): this keeps subnormal numbers, which are ~100x slower in MKL's sgemm, out of the attention
// rows and their products. The entropy sums take
// kEntropyExpMin instead: a peaked row's entropy consists of exactly such tiny terms, and flushing them
// at -64 tied every row whose logit gap exceeds 64 (README, "Selection ties").
constexpr float kEntropyExpMin = -87.0f;  // e^-87 ~ 1.6e-38: the smallest normal floats, no subnormal
__attribute__((always_inline)) inline float exp_unflushed(float x) {  // x >= -87.3: a normal result
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float t = x * 1.44269504088896341f + shifter;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof(ti));
  const float n = t - shifter;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (ti - 0x4B400000 + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

__attribute__((always_inline)) inline float fast_exp(float x, float lo = -64.0f) {
  const bool flush = x < lo;
  const float e = exp_unflushed(flush ? lo : x);
  return flush ? 0.0f : e;
}

inline double fast_exp(double x, double = 0.0) { return std::exp(x); }

// Over n logits with max <= m: *rr = sum of e^{s_j - m} over the s_j < m, *tt = sum_j e^{s_j - m} (s_j - m)
// and *cc = the number of s_j == m (each contributes exactly 1 to Z and 0 to T). The float version is
// compiled for several instruction sets and picked at load time (cpu_common.cpp).
void exp_sums(const float* s, int64_t n, float m, float* rr, float* tt, float* cc);
void exp_sums(const double* s, int64_t n, double m, double* rr, double* tt, double* cc);

// Column-wise twins of row_max / exp_sums over an nr x nc row-major tile s (nr > 0), vectorised along
// the columns: row_col_max sets rm[i] = max_j s_ij and m[j] = max_i s_ij in one pass.
void row_col_max(const float* s, int64_t nr, int64_t nc, float* rm, float* m);
void row_col_max(const double* s, int64_t nr, int64_t nc, double* rm, double* m);
// The nr rows of a tile s (row stride ld, n columns), both ways: r[i], t[i], c[i] as exp_sums gives them
// for row i with max mi[i], and added to rr[j], tt[j], cc[j] the terms of column j against its max m[j]
// (one load of each logit for its two exps).
void row_col_exp_sums(const float* s, int64_t ld, int64_t nr, int64_t n, const float* mi, const float* m, float* r,
                      float* t, float* c, float* rr, float* tt, float* cc);
void row_col_exp_sums(const double* s, int64_t ld, int64_t nr, int64_t n, const double* mi, const double* m, double* r,
                      double* t, double* c, double* rr, double* tt, double* cc);

// The nr x nc logit tile s = a b^T (row-major) of C-channel features stored channel-major: a(i, c) =
// a[c * ld + i], b(j, c) = b[c * ld + j], 1 <= C <= 8. Channels are summed in order with FMAs vectorised
// along the columns: for the few channels of an image-level map, where sgemm's K = C is too short for its peak.
void small_logits(const float* a, const float* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, float* s);
void small_logits(const double* a, const double* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, double* s);

// The exp unit's rate for the reports' floor (benchmarks/harness.py): G exponentials per second of the
// register-resident vectorised exp_unflushed (fast_exp without its flush) over an L1-resident block per thread,
// summing e and e*x as the entropy's epilogue does and nothing else, on `threads` OpenMP threads for
// about `seconds`; run by the same instruction-set clone the kernels dispatch to (cpu_isa() names it).
double exp_probe_gexps(int threads, double seconds);
const char* cpu_isa();
void fast_exp_buffer(const float* x, int64_t n, float lo, float* y);  // y = fast_exp(x, lo), the tests' view

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
    exp_sums(s, n, bm > m ? bm : m, &rb, &tb, &cb);
    add_sums(bm, rb, tb, cb);
  }

  // Folds in a block with max bm whose exp_sums, taken against max(bm, m), are rb, tb, cb.
  void add_sums(T bm, T rb, T tb, T cb) {
    if (bm > m) {
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

// Folds the rows of an nr x nc row-major logit tile s (nr > 0) into rows[0..nr) and, with `cols`, its
// columns into cols[0..nc) (column j holds logits of row cols[j]): one pass for the row and column maxima,
// then one pass for the exp sums of both (row_col_exp_sums). scratch: 5 nr + 4 nc elements.
template <typename T>
void fold_tile(const T* s, int64_t nr, int64_t nc, EntropyState<T>* rows, EntropyState<T>* cols, T* scratch) {
  T *rm = scratch, *mi = rm + nr, *rb = mi + nr, *tb = rb + nr, *cb = tb + nr;
  T *m = cb + nr, *rr = m + nc, *tt = rr + nc, *cc = tt + nc;
  if (!cols) {
    for (int64_t i = 0; i < nr; ++i) rows[i].update(s + i * nc, nc);
    return;
  }
  row_col_max(s, nr, nc, rm, m);
  for (int64_t i = 0; i < nr; ++i) mi[i] = rm[i] > rows[i].m ? rm[i] : rows[i].m;
  std::fill(rr, rr + 3 * nc, T(0));
  row_col_exp_sums(s, nc, nr, nc, mi, m, rb, tb, cb, rr, tt, cc);
  for (int64_t i = 0; i < nr; ++i) rows[i].add_sums(rm[i], rb[i], tb[i], cb[i]);
  for (int64_t j = 0; j < nc; ++j) cols[j].merge(EntropyState<T>{m[j], rr[j] + (cc[j] - 1), tt[j]});
}

}  // namespace qsattn

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
#include <type_traits>

#include "op_checks.h"

namespace qsattn {

// The global entropy kernel's tiling (entropy_global_cpu.cpp); qsattn_fast._C.constants() gives them to the tests.
namespace entropy_global_tiling {
constexpr int64_t TS = 384;     // tile edge (384 x 384 fp32: 576 KiB, in L2); 256 and 512 measured 3-15% slower
constexpr int64_t SMALL_C = 8;  // up to this many channels, tiles by small_logits instead of sgemm
}  // namespace entropy_global_tiling

// t (B, N, C) itself when each t[b] is a matrix BLAS can read in place (unit stride along one of its
// dimensions, e.g. the view rows(feat) of an NCHW map), else a contiguous copy.
inline at::Tensor blas_rows(const at::Tensor& t) { return (t.stride(2) == 1 || t.stride(1) == 1) ? t : t.contiguous(); }

inline int num_threads() { return at::get_num_threads(); }

// exp(x) for float, within 1 ulp of a float64 exp on [-87, 0] and exactly 1 at 0, written so that GCC
// vectorises loops calling it (no libm call, no branch; at x86-64-v4 the entropy's loops write the same
// math with intrinsics): x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, Cody and Waite),
// e^r = 1 + r + r^2 P(r) with Cephes' degree-5 minimax P, 2^n from the exponent bits. exp(x) for x < lo
// is returned as 0.
// The routing kernels keep lo = -64 (e^-64 ~ 1.6e-28 is below the float resolution of any sum it
// joins): this keeps subnormal numbers, which are ~100x slower in MKL's sgemm, out of the attention
// rows and their products. The entropy sums take
// kEntropyExpMin instead: a peaked row's entropy consists of exactly such tiny terms, and flushing them
// at -64 tied every row whose logit gap exceeds 64 (docs/known-issues.md, "Selection ties").
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
// the columns: row_col_max sets rm[i] = max_j s_ij and m[j] = max_i s_ij in one pass (after an sgemm tile;
// small_logits forms the maxima with the tile).
void row_col_max(const float* s, int64_t nr, int64_t nc, float* rm, float* m);
void row_col_max(const double* s, int64_t nr, int64_t nc, double* rm, double* m);
// The nr rows of a tile s (row stride ld, n columns), both ways: r[i], t[i], c[i] as exp_sums gives them
// for row i with max mi[i], and added to rr[j], tt[j], cc[j] the terms of column j against its max m[j]
// (one load of each logit for its two terms: the row's reduced in registers, the columns' added to the
// three arrays, L1-resident for a tile's width). work: n + nr scratch values; lower: a lower bound of the
// tile's logits (-inf if none is known), which may spare the flush's test.
void row_col_exp_sums(const float* s, int64_t ld, int64_t nr, int64_t n, const float* mi, const float* m, float* r,
                      float* t, float* c, float* rr, float* tt, float* cc, float* work, float lower);
void row_col_exp_sums(const double* s, int64_t ld, int64_t nr, int64_t n, const double* mi, const double* m, double* r,
                      double* t, double* c, double* rr, double* tt, double* cc, double* work, double lower);

// The nr x nc logit tile s = a b^T (row-major) of C-channel features stored channel-major: a(i, c) =
// a[c * ld + i], b(j, c) = b[c * ld + j], 1 <= C <= 8, and its maxima as row_col_max gives them. Channels
// are summed in order with FMAs vectorised along the columns: for the few channels of an image-level map,
// where sgemm's K = C is too short for its peak.
void small_logits(const float* a, const float* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, float* s, float* rm,
                  float* m);
void small_logits(const double* a, const double* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, double* s,
                  double* rm, double* m);

// The instruction-set level the float loops run at: 2 x86-64-v4 (AVX-512), 1 x86-64-v3 (AVX2), 0 x86-64,
// -1 not an x86 build. set_cpu_level(l) runs level l where the CPU has it (-1: the detected one) and
// returns the level now in use; cpu_isa() names it.
int cpu_level();
int set_cpu_level(int level);
const char* cpu_isa();

// The exp unit's rate for the reports' floor (benchmarks/harness.py): G exponentials per second of the
// register-resident vectorised exp of the entropy's kernels at the current level, without its flush, over
// an L1-resident block per thread, summing e and e*x as the entropy's epilogue does and nothing else, on
// `threads` OpenMP threads for about `seconds`.
double exp_probe_gexps(int threads, double seconds);
void fast_exp_buffer(const float* x, int64_t n, float lo, float* y);  // y = e^x, 0 below lo: the tests' view

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
  // is rescaled to the larger (this one on ties), its max's 1 joining the sum like a rescaled 1 + r in
  // update. Branch-free, so that loops of merges vectorise (merge_columns); in float the rescaling's exp
  // takes the entropy's flush: a state whose max lies more than 87 below the other's adds nothing, as its
  // logits would not in one block (double: no flush). An empty state (m = -inf) adds nothing.
  __attribute__((always_inline)) void merge(const EntropyState& o) {
    const bool lead = o.m > m;
    const T mb = lead ? o.m : m, rb = lead ? o.r : r, tb = lead ? o.t : t;
    const T ms = lead ? m : o.m, rs = lead ? r : o.r, ts = lead ? t : o.t;
    const T d = ms - mb;  // <= 0; -inf or NaN where a state is empty
    const T lo = std::is_same_v<T, float> ? T(kEntropyExpMin) : std::numeric_limits<T>::lowest();
    const bool live = d >= lo;
    const T a = live ? fast_exp(d, lo) : T(0);
    m = mb;
    r = rb + a * (1 + rs);
    t = tb + (live ? a * (ts + d * (1 + rs)) : T(0));
  }

  T entropy() const { return std::log1p(r) - t / (1 + r); }
};

// cols[j].merge of the state (m[j], rr[j] + cc[j] - 1, tt[j]) that row_col_exp_sums gave, for j < n: the
// branch-free EntropyState::merge, vectorised along the columns.
void merge_columns(EntropyState<float>* cols, const float* m, const float* rr, const float* tt, const float* cc,
                   int64_t n);
void merge_columns(EntropyState<double>* cols, const double* m, const double* rr, const double* tt, const double* cc,
                   int64_t n);

// Folds the rows of an nr x nc row-major logit tile s (nr > 0) into rows[0..nr) and, with `cols`, its
// columns into cols[0..nc) (column j holds logits of row cols[j]), with one pass for the exp sums of both
// (row_col_exp_sums). With cols, rm and m are the tile's row and column maxima (as row_col_max or
// small_logits give them) and lower a lower bound of its logits (-inf if none is known); without, they are
// not read. scratch: 5 nr + 4 nc elements.
template <typename T>
void fold_tile(const T* s, int64_t nr, int64_t nc, const T* rm, const T* m, T lower, EntropyState<T>* rows,
               EntropyState<T>* cols, T* scratch) {
  if (!cols) {
    for (int64_t i = 0; i < nr; ++i) rows[i].update(s + i * nc, nc);
    return;
  }
  T *mi = scratch, *rb = mi + nr, *tb = rb + nr, *cb = tb + nr;
  T *rr = cb + nr, *tt = rr + nc, *cc = tt + nc, *work = cc + nc;
  for (int64_t i = 0; i < nr; ++i) mi[i] = rm[i] > rows[i].m ? rm[i] : rows[i].m;
  std::fill(rr, rr + 3 * nc, T(0));
  row_col_exp_sums(s, nc, nr, nc, mi, m, rb, tb, cb, rr, tt, cc, work, lower);
  for (int64_t i = 0; i < nr; ++i) rows[i].add_sums(rm[i], rb[i], tb[i], cb[i]);
  merge_columns(cols, m, rr, tt, cc, nc);
}

}  // namespace qsattn

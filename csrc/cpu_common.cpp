// The vectorised inner loops shared by the CPU kernels, and the instruction-set level they run at.
#include "cpu_common.h"

#include <algorithm>
#include <atomic>

// The float loops are compiled three times, for the ISA levels x86-64 (SSE2), x86-64-v3 (AVX2 + FMA) and
// x86-64-v4 (AVX-512), and picked at run time by cpu_level() from the cpuid feature bits; set_cpu_level()
// (_C.set_cpu_level) runs a lower level on the same machine, so that the tests cover every dispatch path and
// the benchmarks compare the levels. Levels, not CPU models: GCC's "arch=haswell" clones dispatch on the
// model, which sends AMD's AVX2 machines to the SSE2 default. The generic loops are the templates below,
// branch-free around fast_exp (cpu_common.h) so that GCC vectorises them; at x86-64-v4 the entropy's exp
// loops are written with intrinsics instead (v4:: below: vscalefps for 2^n, mask registers for the flush
// and the max's 1).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define QSATTN_X86 1
#include <immintrin.h>
#define QSATTN_V3 __attribute__((target("arch=x86-64-v3")))
#define QSATTN_V4 __attribute__((target("arch=x86-64-v4")))
// name(params) dispatching on cpu_level() to name_impl compiled at each level; QSATTN_AT_LEVELS_V4 leaves
// the x86-64-v4 version, name_v4, to be written by hand.
#define QSATTN_AT_LEVELS_V4(ret, name, params, args)                                     \
  static ret name##_base params { return name##_impl args; }                             \
  QSATTN_V3 static ret name##_v3 params { return name##_impl args; }                     \
  ret name params {                                                                      \
    const int level = cpu_level();                                                       \
    return level >= 2 ? name##_v4 args : level == 1 ? name##_v3 args : name##_base args; \
  }
#define QSATTN_AT_LEVELS(ret, name, params, args)                    \
  QSATTN_V4 static ret name##_v4 params { return name##_impl args; } \
  QSATTN_AT_LEVELS_V4(ret, name, params, args)
#else
#define QSATTN_AT_LEVELS(ret, name, params, args) \
  ret name params { return name##_impl args; }
#endif

namespace qsattn {

#ifdef QSATTN_X86
static int detected_level() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return 2;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}
#else
static int detected_level() { return -1; }  // no x86 levels: the generic loops as the compiler built them
#endif

static std::atomic<int> forced_level{-1};

int cpu_level() {
  static const int detected = detected_level();
  const int forced = forced_level.load(std::memory_order_relaxed);
  return forced >= 0 && forced < detected ? forced : detected;
}

int set_cpu_level(int level) {
  forced_level.store(level, std::memory_order_relaxed);
  return cpu_level();
}

const char* cpu_isa() {
  static const char* const names[] = {"no x86 levels", "x86-64 (SSE2)", "x86-64-v3 (AVX2)", "x86-64-v4 (AVX-512)"};
  return names[cpu_level() + 1];
}

// The terms of one logit at d = s - max <= 0: e^d to r and e^d d to t, except for the max itself
// (d == 0), which is counted in c instead (its 1 is kept apart, docs/design.md §2). Written without a
// conditional update: fast_exp(0) is exactly 1, so x - top is exactly 0 at the max, and x d is 0 there.
// (A select on the sum made GCC emit masked stores for the column sums, which AMD's cores run ~10x
// slower than plain ones: the column pass took 2x the row pass's time.)
template <typename T>
static inline __attribute__((always_inline)) void add_exp_terms(T d, T& r, T& t, T& c) {
  const T x = fast_exp(d, T(kEntropyExpMin));
  const T top = d == T(0) ? T(1) : T(0);
  r += x - top;
  t += x * d;
  c += top;
}

template <typename T>
static inline __attribute__((always_inline)) void exp_sums_impl(const T* s, int64_t n, T m, T* rr, T* tt, T* cc) {
  T r = 0, t = 0, c = 0;
#pragma omp simd reduction(+ : r, t, c)
  for (int64_t j = 0; j < n; ++j) add_exp_terms(s[j] - m, r, t, c);
  *rr = r;
  *tt = t;
  *cc = c;
}

template <typename T>
static inline __attribute__((always_inline)) void row_col_max_impl(const T* s, int64_t nr, int64_t nc, T* rm, T* m) {
  std::fill(m, m + nc, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < nr; ++i) {
    const T* row = s + i * nc;
    T bm = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : bm)
    for (int64_t j = 0; j < nc; ++j) {
      m[j] = row[j] > m[j] ? row[j] : m[j];
      bm = row[j] > bm ? row[j] : bm;
    }
    rm[i] = bm;
  }
}

template <typename T>
static inline __attribute__((always_inline)) void row_col_exp_sums_impl(const T* s, int64_t ld, int64_t nr, int64_t n,
                                                                        const T* mi, const T* m, T* rp, T* tp, T* cp,
                                                                        T* rr, T* tt, T* cc, T* /*work*/, T /*lower*/) {
  for (int64_t i = 0; i < nr; ++i) {
    const T* row = s + i * ld;
    const T m0 = mi[i];
    T r = 0, t = 0, c = 0;
#pragma omp simd reduction(+ : r, t, c)
    for (int64_t j = 0; j < n; ++j) {
      add_exp_terms(row[j] - m0, r, t, c);
      add_exp_terms(row[j] - m[j], rr[j], tt[j], cc[j]);
    }
    rp[i] = r, tp[i] = t, cp[i] = c;
  }
}

template <typename T>
static inline __attribute__((always_inline)) T max2(T x, T y) {
  return x > y ? x : y;
}

// sum_c a(c) b(j, c), channels summed in order.
template <typename T, int C>
static inline __attribute__((always_inline)) T dot_c(const T* a, const T* b, int64_t ld, int64_t j) {
  T acc = a[0] * b[j];
  for (int c = 1; c < C; ++c) acc += a[c] * b[c * ld + j];
  return acc;
}

// R = 1 or 4 rows i.. of the tile with their maxima rm and the running column maxima m (R = 4: each
// column of b loaded once for four rows, and m loaded and stored once).
template <typename T, int C, int R>
static inline __attribute__((always_inline)) void small_logits_rows(const T* a, const T* b, int64_t ld, int64_t i,
                                                                    int64_t nc, T* s, T* rm, T* m) {
  T ai[4][C] = {};
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) ai[r][c] = a[c * ld + i + r];
  T* row = s + i * nc;
  T b0 = -std::numeric_limits<T>::infinity(), b1 = b0, b2 = b0, b3 = b0;
#pragma omp simd reduction(max : b0, b1, b2, b3)
  for (int64_t j = 0; j < nc; ++j) {
    const T x0 = dot_c<T, C>(ai[0], b, ld, j);
    row[j] = x0;
    b0 = max2(b0, x0);
    T x = x0;
    if constexpr (R == 4) {
      const T x1 = dot_c<T, C>(ai[1], b, ld, j), x2 = dot_c<T, C>(ai[2], b, ld, j), x3 = dot_c<T, C>(ai[3], b, ld, j);
      row[nc + j] = x1, row[2 * nc + j] = x2, row[3 * nc + j] = x3;
      b1 = max2(b1, x1), b2 = max2(b2, x2), b3 = max2(b3, x3);
      x = max2(max2(x0, x1), max2(x2, x3));
    }
    m[j] = max2(m[j], x);
  }
  rm[i] = b0;
  if constexpr (R == 4) rm[i + 1] = b1, rm[i + 2] = b2, rm[i + 3] = b3;
}

template <typename T, int C>
static inline __attribute__((always_inline)) void small_logits_c(const T* a, const T* b, int64_t ld, int64_t nr,
                                                                 int64_t nc, T* s, T* rm, T* m) {
  std::fill(m, m + nc, -std::numeric_limits<T>::infinity());
  int64_t i = 0;
  for (; i + 4 <= nr; i += 4) small_logits_rows<T, C, 4>(a, b, ld, i, nc, s, rm, m);
  for (; i < nr; ++i) small_logits_rows<T, C, 1>(a, b, ld, i, nc, s, rm, m);
}

template <typename T>
static inline __attribute__((always_inline)) void small_logits_impl(const T* a, const T* b, int64_t ld, int64_t C,
                                                                    int64_t nr, int64_t nc, T* s, T* rm, T* m) {
  switch (C) {
    case 1: return small_logits_c<T, 1>(a, b, ld, nr, nc, s, rm, m);
    case 2: return small_logits_c<T, 2>(a, b, ld, nr, nc, s, rm, m);
    case 3: return small_logits_c<T, 3>(a, b, ld, nr, nc, s, rm, m);
    case 4: return small_logits_c<T, 4>(a, b, ld, nr, nc, s, rm, m);
    case 5: return small_logits_c<T, 5>(a, b, ld, nr, nc, s, rm, m);
    case 6: return small_logits_c<T, 6>(a, b, ld, nr, nc, s, rm, m);
    case 7: return small_logits_c<T, 7>(a, b, ld, nr, nc, s, rm, m);
    case 8: return small_logits_c<T, 8>(a, b, ld, nr, nc, s, rm, m);
    default: TORCH_CHECK(false, "small_logits: C=", C, " channels, at most 8");
  }
}

template <typename T>
static inline __attribute__((always_inline)) void merge_columns_impl(EntropyState<T>* cols, const T* m, const T* rr,
                                                                     const T* tt, const T* cc, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) cols[j].merge(EntropyState<T>{m[j], rr[j] + (cc[j] - 1), tt[j]});
}

// One pass of the probe over n logits x in [-87, 0]: the sums of e^x and of e^x x, with the kernels'
// exp without their flush and nothing else.
static inline __attribute__((always_inline)) float probe_pass_impl(const float* x, int64_t n) {
  float se = 0, sx = 0;
#pragma omp simd reduction(+ : se, sx)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_unflushed(x[j]);
    se += e;
    sx += e * x[j];
  }
  return se + sx;
}

static inline __attribute__((always_inline)) void fast_exp_buffer_impl(const float* x, int64_t n, float lo, float* y) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = fast_exp(x[j], lo);
}

template <typename T>
static inline __attribute__((always_inline)) T exp_shift_impl(T* s, int64_t n, T m) {
  T z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t j = 0; j < n; ++j) {
    s[j] = fast_exp(s[j] - m);
    z += s[j];
  }
  return z;
}

#ifdef QSATTN_X86
// The x86-64-v4 loops of the entropy's exp: the same Cody-Waite reduction and Cephes polynomial as
// exp_unflushed, with 2^n applied by vscalefps (one instruction instead of three, no integer exponent
// arithmetic, no underflow of the intermediate), so an exp is kept as (p, n) with e^d = p 2^n; the flush
// and the max's 1 as mask registers; whole vectors loaded and stored plainly, only a row's tail masked.
namespace v4 {

struct Exp {  // e^d = p 2^n, p in [0.7, 1.42]: a column term scales p before 2^n is applied (no underflow)
  __m512 p, n;
};

QSATTN_V4 static inline __attribute__((always_inline)) Exp split_exp(__m512 d) {
  const __m512 shifter = _mm512_set1_ps(12582912.0f), one = _mm512_set1_ps(1.0f);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(d, _mm512_set1_ps(1.44269504088896341f), shifter), shifter);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), d);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_fmadd_ps(p, r, one), r, one);  // 1 + r (1 + r P) = 1 + r + r^2 P
  return {p, n};
}

// e^d where mask k is set, 0 elsewhere (d >= -87.3 where set: a normal result; exactly 1 at d = 0).
QSATTN_V4 static inline __attribute__((always_inline)) __m512 exp_where(__mmask16 k, __m512 d) {
  const Exp e = split_exp(d);
  return _mm512_maskz_scalef_ps(k, e.p, e.n);
}

QSATTN_V4 static inline __attribute__((always_inline)) __mmask16 lanes(int64_t left) {  // the first min(left, 16)
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// Adds the terms of logits at d = s - max <= 0 (lanes in k, e^d = p 2^n) as add_exp_terms does: e^d
// where lo <= d < 0 to r and e^d d to t (the two compares feed vscalefps' zero-masking); returns the lanes
// with d < 0: the others are at the max, and the callers count them as c from this mask (a popcount for
// the row, a masked subtract for the columns), with no compare of their own. Without Flush the caller
// knows that every d >= lo.
template <bool Flush>
QSATTN_V4 static inline __attribute__((always_inline)) __mmask16 add_terms(__mmask16 k, __m512 d, __m512 p, __m512 n,
                                                                           __m512& r, __m512& t) {
  const __mmask16 below = _mm512_mask_cmp_ps_mask(k, d, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __mmask16 kept = Flush ? _mm512_mask_cmp_ps_mask(below, d, _mm512_set1_ps(kEntropyExpMin), _CMP_GE_OQ) : below;
  const __m512 x = _mm512_maskz_scalef_ps(kept, p, n);
  r = _mm512_add_ps(r, x);
  t = _mm512_fmadd_ps(x, d, t);
  return below;
}

// Loads and stores of the 16 lanes at p where k is set: plain ones for a whole vector (AMD's cores run
// masked stores ~10x slower than plain ones), masked ones for the tail.
template <bool Whole>
QSATTN_V4 static inline __attribute__((always_inline)) __m512 load(__mmask16 k, const float* p) {
  return Whole ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(k, p);
}
template <bool Whole>
QSATTN_V4 static inline __attribute__((always_inline)) void store(__mmask16 k, float* p, __m512 v) {
  if (Whole)
    _mm512_storeu_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, k, v);
}

// The row terms of 16 logits x of row i (max mv) to r, t (and the number of them below the max to
// nbelow) and, with Cols, their column terms to rr, tt at column j (maxima m[j]), 1 subtracted from cc[j]
// where below its max; with Reuse, a column term comes from its row term's exp: e^{s - m_j} =
// e^{s - m_i} e^{m_i - M} e^{M - m_j}, the row's factor a = e^{m_i - M} and the columns' b = e^{M - m_j}
// given (normal floats, in [e^-32, e^32]).
template <bool Cols, bool Reuse, bool Flush, bool Whole>
QSATTN_V4 static inline __attribute__((always_inline)) void chunk(__mmask16 k, int64_t j, const float* row, __m512 mv,
                                                                  const float* m, __m512 a, const float* b, __m512& r,
                                                                  __m512& t, int64_t& nbelow, float* rr, float* tt,
                                                                  float* cc) {
  const __m512 x = load<Whole>(k, row + j), d = _mm512_sub_ps(x, mv);
  const Exp e = split_exp(d);
  nbelow += __builtin_popcount(add_terms<Flush>(k, d, e.p, e.n, r, t));
  if (!Cols) return;
  const __m512 dc = _mm512_sub_ps(x, load<Whole>(k, m + j));
  __m512 p, q;
  if (Reuse) {
    p = _mm512_mul_ps(e.p, _mm512_mul_ps(a, load<Whole>(k, b + j)));  // e^{m_i - m_j} in [e^-64, e^64]
    q = e.n;
  } else {
    const Exp ec = split_exp(dc);
    p = ec.p, q = ec.n;
  }
  __m512 rc = load<Whole>(k, rr + j), tc = load<Whole>(k, tt + j), cc_ = load<Whole>(k, cc + j);
  const __mmask16 below = add_terms<Flush>(k, dc, p, q, rc, tc);
  store<Whole>(k, rr + j, rc);
  store<Whole>(k, tt + j, tc);
  store<Whole>(k, cc + j, _mm512_mask_sub_ps(cc_, below, cc_, _mm512_set1_ps(1.0f)));
}

// The rows of an nr x n tile (row stride ld) with maxima mi, and with Cols its columns too, as
// row_col_exp_sums_impl sums them; with Reuse, one exp per logit (chunk), b = e^{M - m_j}, a = e^{m_i - M}
// for the tile constant M.
template <bool Cols, bool Reuse, bool Flush>
QSATTN_V4 static inline __attribute__((always_inline)) void sums(const float* s, int64_t ld, int64_t nr, int64_t n,
                                                                 const float* mi, const float* m, const float* b,
                                                                 const float* a, float* rp, float* tp, float* cp,
                                                                 float* rr, float* tt, float* cc) {
  const int64_t whole = n / 16 * 16;
  if (Cols)  // each row takes 1 from cc[j] where below column j's max: what is left counts the ties
    for (int64_t j = 0; j < n; ++j) cc[j] += static_cast<float>(nr);
  for (int64_t i = 0; i < nr; ++i) {
    const float* row = s + i * ld;
    const __m512 mv = _mm512_set1_ps(mi[i]);
    const __m512 ai = Reuse ? _mm512_set1_ps(a[i]) : _mm512_setzero_ps();
    __m512 r = _mm512_setzero_ps(), t = r;
    int64_t nbelow = 0;
    for (int64_t j = 0; j < whole; j += 16)
      chunk<Cols, Reuse, Flush, true>(0xFFFF, j, row, mv, m, ai, b, r, t, nbelow, rr, tt, cc);
    if (whole < n)
      chunk<Cols, Reuse, Flush, false>(lanes(n - whole), whole, row, mv, m, ai, b, r, t, nbelow, rr, tt, cc);
    rp[i] = _mm512_reduce_add_ps(r), tp[i] = _mm512_reduce_add_ps(t), cp[i] = static_cast<float>(n - nbelow);
  }
}

}  // namespace v4

QSATTN_V4 static void exp_sums_v4(const float* s, int64_t n, float m, float* rr, float* tt, float* cc) {
  v4::sums<false, false, true>(s, n, 1, n, &m, nullptr, nullptr, nullptr, rr, tt, cc, nullptr, nullptr, nullptr);
}

// One exp per logit where the tile's maxima are close: with M = max_j m_j, e^{s - m_j} = e^{s - m_i}
// e^{m_i - M} e^{M - m_j}, the row's factor computed once per row, the columns' once per tile. It needs
// M - m_j <= kReuseSpan and |m_i - M| <= kReuseSpan for every row: the factors are then normal floats in
// [e^-32, e^32] that scale the row exp's p before its vscalefps (no intermediate under- or overflows), and
// a column term that is kept (s - m_j >= -87) has a row gap s - m_i >= -87 - 2 kReuseSpan, whose rounding
// adds at most ~1e-5 relative error to it (the logits' own rounding is of that order). Other tiles take
// two exps per logit; layer 0's maxima (C = 3) lie within a few units.
constexpr float kReuseSpan = 32.0f;

QSATTN_V4 static void row_col_exp_sums_v4(const float* s, int64_t ld, int64_t nr, int64_t n, const float* mi,
                                          const float* m, float* rp, float* tp, float* cp, float* rr, float* tt,
                                          float* cc, float* work, float lower) {
  float M = m[0], mlo = m[0], ilo = mi[0], ihi = mi[0];
  for (int64_t j = 1; j < n; ++j) M = std::max(M, m[j]), mlo = std::min(mlo, m[j]);
  for (int64_t i = 1; i < nr; ++i) ilo = std::min(ilo, mi[i]), ihi = std::max(ihi, mi[i]);
  const bool flush = !(lower - std::max(ihi, M) >= kEntropyExpMin);  // else no gap of the tile is below -87
  if (M - mlo > kReuseSpan || ihi - M > kReuseSpan || M - ilo > kReuseSpan)
    return flush ? v4::sums<true, false, true>(s, ld, nr, n, mi, m, nullptr, nullptr, rp, tp, cp, rr, tt, cc)
                 : v4::sums<true, false, false>(s, ld, nr, n, mi, m, nullptr, nullptr, rp, tp, cp, rr, tt, cc);
  float *b = work, *a = work + n;  // e^{M - m_j}, e^{m_i - M}
  const __m512 Mv = _mm512_set1_ps(M);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = v4::lanes(n - j);
    _mm512_mask_storeu_ps(b + j, k, v4::exp_where(0xFFFF, _mm512_sub_ps(Mv, _mm512_maskz_loadu_ps(k, m + j))));
  }
  for (int64_t i = 0; i < nr; i += 16) {
    const __mmask16 k = v4::lanes(nr - i);
    _mm512_mask_storeu_ps(a + i, k, v4::exp_where(0xFFFF, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, mi + i), Mv)));
  }
  if (flush)
    v4::sums<true, true, true>(s, ld, nr, n, mi, m, b, a, rp, tp, cp, rr, tt, cc);
  else
    v4::sums<true, true, false>(s, ld, nr, n, mi, m, b, a, rp, tp, cp, rr, tt, cc);
}

QSATTN_V4 static float probe_pass_v4(const float* x, int64_t n) {  // n: a multiple of 16
  __m512 se = _mm512_setzero_ps(), sx = se;
  for (int64_t j = 0; j < n; j += 16) {
    const __m512 d = _mm512_loadu_ps(x + j), e = v4::exp_where(0xFFFF, d);
    se = _mm512_add_ps(se, e);
    sx = _mm512_fmadd_ps(e, d, sx);
  }
  return _mm512_reduce_add_ps(se) + _mm512_reduce_add_ps(sx);
}

namespace v4 {
// y = e^{x - m} where x - m >= lo, else 0, for the lanes of k; returns z plus their sum.
template <bool Whole>
QSATTN_V4 static inline __attribute__((always_inline)) __m512 exp_chunk(__mmask16 k, const float* x, float* y, __m512 m,
                                                                        __m512 lo, __m512 z) {
  const __m512 d = _mm512_sub_ps(load<Whole>(k, x), m);
  const __m512 e = exp_where(_mm512_mask_cmp_ps_mask(k, d, lo, _CMP_GE_OQ), d);
  store<Whole>(k, y, e);
  return _mm512_add_ps(z, e);
}

// y_j = e^{x_j - m} where x_j - m >= lo, else 0 (y may be x); returns sum_j y_j.
QSATTN_V4 static float exp_map(const float* x, int64_t n, float m, float lo, float* y) {
  const __m512 mv = _mm512_set1_ps(m), lov = _mm512_set1_ps(lo);
  __m512 z = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) z = exp_chunk<true>(0xFFFF, x + j, y + j, mv, lov, z);
  if (j < n) z = exp_chunk<false>(lanes(n - j), x + j, y + j, mv, lov, z);
  return _mm512_reduce_add_ps(z);
}
}  // namespace v4

QSATTN_V4 static void fast_exp_buffer_v4(const float* x, int64_t n, float lo, float* y) { v4::exp_map(x, n, 0, lo, y); }

QSATTN_V4 static float exp_shift_v4(float* s, int64_t n, float m) { return v4::exp_map(s, n, m, -64.0f, s); }

#define QSATTN_ENTRY QSATTN_AT_LEVELS_V4  // the x86-64-v4 version written above
#else
#define QSATTN_ENTRY QSATTN_AT_LEVELS
#endif

QSATTN_ENTRY(void, exp_sums, (const float* s, int64_t n, float m, float* rr, float* tt, float* cc),
             (s, n, m, rr, tt, cc))
void exp_sums(const double* s, int64_t n, double m, double* rr, double* tt, double* cc) {
  exp_sums_impl(s, n, m, rr, tt, cc);
}

QSATTN_ENTRY(void, row_col_exp_sums,
             (const float* s, int64_t ld, int64_t nr, int64_t n, const float* mi, const float* m, float* r, float* t,
              float* c, float* rr, float* tt, float* cc, float* work, float lower),
             (s, ld, nr, n, mi, m, r, t, c, rr, tt, cc, work, lower))
void row_col_exp_sums(const double* s, int64_t ld, int64_t nr, int64_t n, const double* mi, const double* m, double* r,
                      double* t, double* c, double* rr, double* tt, double* cc, double* work, double lower) {
  row_col_exp_sums_impl(s, ld, nr, n, mi, m, r, t, c, rr, tt, cc, work, lower);
}

QSATTN_AT_LEVELS(void, row_col_max, (const float* s, int64_t nr, int64_t nc, float* rm, float* m), (s, nr, nc, rm, m))
void row_col_max(const double* s, int64_t nr, int64_t nc, double* rm, double* m) { row_col_max_impl(s, nr, nc, rm, m); }

QSATTN_AT_LEVELS(void, small_logits,
                 (const float* a, const float* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, float* s, float* rm,
                  float* m),
                 (a, b, ld, C, nr, nc, s, rm, m))
void small_logits(const double* a, const double* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, double* s,
                  double* rm, double* m) {
  small_logits_impl(a, b, ld, C, nr, nc, s, rm, m);
}

QSATTN_AT_LEVELS(void, merge_columns,
                 (EntropyState<float> * cols, const float* m, const float* rr, const float* tt, const float* cc,
                  int64_t n),
                 (cols, m, rr, tt, cc, n))
void merge_columns(EntropyState<double>* cols, const double* m, const double* rr, const double* tt, const double* cc,
                   int64_t n) {
  merge_columns_impl(cols, m, rr, tt, cc, n);
}

QSATTN_ENTRY(float, exp_shift, (float* s, int64_t n, float m), (s, n, m))
double exp_shift(double* s, int64_t n, double m) { return exp_shift_impl(s, n, m); }

QSATTN_ENTRY(void, fast_exp_buffer, (const float* x, int64_t n, float lo, float* y), (x, n, lo, y))
QSATTN_ENTRY(float, probe_pass, (const float* x, int64_t n), (x, n))

double exp_probe_gexps(int threads, double seconds) {
  constexpr int64_t n = 2048;  // 8 KiB per thread: L1-resident
  int64_t reps = 64;
  for (;;) {
    float sink = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      float x[n];
      for (int64_t j = 0; j < n; ++j) x[j] = -20.0f * static_cast<float>(j) / n - 0.001f * omp_get_thread_num();
      for (int64_t rep = 0; rep < reps; ++rep) {
        x[rep % n] -= 1e-7f;  // the pass depends on the rep: not hoisted
        sink += probe_pass(x, n);
      }
    }
    const double dt = omp_get_wtime() - t0;
    if (dt >= seconds || reps > (int64_t(1) << 40)) {
      volatile float keep = sink;
      (void)keep;
      return static_cast<double>(threads) * reps * n / dt / 1e9;
    }
    reps *= 2;
  }
}

}  // namespace qsattn

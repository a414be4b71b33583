// The vectorised inner loops shared by the CPU kernels; the float versions are cloned for AVX2 and
// AVX-512 (GCC function multiversioning) so one build runs fast on any x86-64 machine.
#include "cpu_common.h"

#include <algorithm>

// The clones name ISA levels, not CPU models: GCC dispatches "arch=haswell" on the CPU model
// (__builtin_cpu_is), so AMD's AVX2 machines ran the SSE2 default; "arch=x86-64-v3" (AVX2 + FMA) and
// "arch=x86-64-v4" (AVX-512) are checked by feature bits (GCC >= 12).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define QSATTN_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define QSATTN_CLONES
#endif

namespace qsattn {

// The terms of one logit at d = s - max <= 0: e^d to r and e^d d to t, except for the max itself
// (d == 0), which is counted in c instead (its 1 is kept apart, docs/design.md §2).
template <typename T>
static inline __attribute__((always_inline)) void add_exp_terms(T d, T& r, T& t, T& c) {
  const bool top = d == T(0);
  const T x = fast_exp(d, T(kEntropyExpMin));  // computed on both arms: a select, which AVX2 vectorises
  const T e = top ? T(0) : x;
  r += e;
  t += e * d;
  c += top ? T(1) : T(0);
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

QSATTN_CLONES void exp_sums(const float* s, int64_t n, float m, float* rr, float* tt, float* cc) {
  exp_sums_impl(s, n, m, rr, tt, cc);
}

void exp_sums(const double* s, int64_t n, double m, double* rr, double* tt, double* cc) {
  exp_sums_impl(s, n, m, rr, tt, cc);
}

template <typename T>
static inline __attribute__((always_inline)) void col_max_impl(const T* s, int64_t nr, int64_t nc, T* m) {
  std::copy(s, s + nc, m);
  for (int64_t i = 1; i < nr; ++i) {
    const T* row = s + i * nc;
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) m[j] = row[j] > m[j] ? row[j] : m[j];
  }
}

QSATTN_CLONES void col_max(const float* s, int64_t nr, int64_t nc, float* m) { col_max_impl(s, nr, nc, m); }

void col_max(const double* s, int64_t nr, int64_t nc, double* m) { col_max_impl(s, nr, nc, m); }

template <typename T>
static inline __attribute__((always_inline)) void col_exp_sums_impl(const T* s, int64_t nr, int64_t nc, const T* m,
                                                                    T* rr, T* tt, T* cc) {
  std::fill(rr, rr + nc, T(0));
  std::fill(tt, tt + nc, T(0));
  std::fill(cc, cc + nc, T(0));
  for (int64_t i = 0; i < nr; ++i) {
    const T* row = s + i * nc;
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) add_exp_terms(row[j] - m[j], rr[j], tt[j], cc[j]);
  }
}

QSATTN_CLONES void col_exp_sums(const float* s, int64_t nr, int64_t nc, const float* m, float* rr, float* tt,
                                float* cc) {
  col_exp_sums_impl(s, nr, nc, m, rr, tt, cc);
}

void col_exp_sums(const double* s, int64_t nr, int64_t nc, const double* m, double* rr, double* tt, double* cc) {
  col_exp_sums_impl(s, nr, nc, m, rr, tt, cc);
}

template <typename T, int C>
static inline __attribute__((always_inline)) void small_logits_c(const T* a, const T* b, int64_t ld, int64_t nr,
                                                                 int64_t nc, T* s) {
  for (int64_t i = 0; i < nr; ++i) {
    T* row = s + i * nc;
    T ai[C];
    for (int c = 0; c < C; ++c) ai[c] = a[c * ld + i];
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) {
      T acc = ai[0] * b[j];
      for (int c = 1; c < C; ++c) acc += ai[c] * b[c * ld + j];
      row[j] = acc;
    }
  }
}

template <typename T>
static inline __attribute__((always_inline)) void small_logits_impl(const T* a, const T* b, int64_t ld, int64_t C,
                                                                    int64_t nr, int64_t nc, T* s) {
  switch (C) {
    case 1: return small_logits_c<T, 1>(a, b, ld, nr, nc, s);
    case 2: return small_logits_c<T, 2>(a, b, ld, nr, nc, s);
    case 3: return small_logits_c<T, 3>(a, b, ld, nr, nc, s);
    case 4: return small_logits_c<T, 4>(a, b, ld, nr, nc, s);
    case 5: return small_logits_c<T, 5>(a, b, ld, nr, nc, s);
    case 6: return small_logits_c<T, 6>(a, b, ld, nr, nc, s);
    case 7: return small_logits_c<T, 7>(a, b, ld, nr, nc, s);
    case 8: return small_logits_c<T, 8>(a, b, ld, nr, nc, s);
    default: TORCH_CHECK(false, "small_logits: C=", C, " channels, at most 8");
  }
}

QSATTN_CLONES void small_logits(const float* a, const float* b, int64_t ld, int64_t C, int64_t nr, int64_t nc,
                                float* s) {
  small_logits_impl(a, b, ld, C, nr, nc, s);
}

void small_logits(const double* a, const double* b, int64_t ld, int64_t C, int64_t nr, int64_t nc, double* s) {
  small_logits_impl(a, b, ld, C, nr, nc, s);
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

QSATTN_CLONES float exp_shift(float* s, int64_t n, float m) { return exp_shift_impl(s, n, m); }

double exp_shift(double* s, int64_t n, double m) { return exp_shift_impl(s, n, m); }

}  // namespace qsattn

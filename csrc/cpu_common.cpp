// The vectorised inner loops shared by the CPU kernels; the float versions are cloned for AVX2 and
// AVX-512 (GCC function multiversioning) so one build runs fast on any x86-64 machine.
#include "cpu_common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define QSATTN_CLONES __attribute__((target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define QSATTN_CLONES
#endif

namespace qsattn {

template <typename T>
static inline __attribute__((always_inline)) void exp_sums_impl(const T* s, int64_t n, T m, T* rr, T* tt, T* cc) {
  T r = 0, t = 0, c = 0;
#pragma omp simd reduction(+ : r, t, c)
  for (int64_t j = 0; j < n; ++j) {
    const T d = s[j] - m;
    const bool top = d == T(0);
    const T e = top ? T(0) : fast_exp(d);
    r += e;
    t += e * d;
    c += top ? T(1) : T(0);
  }
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

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
static inline void exp_sums_impl(const T* s, int64_t n, T m, T* zz, T* tt) {
  T z = 0, t = 0;
#pragma omp simd reduction(+ : z, t)
  for (int64_t j = 0; j < n; ++j) {
    const T d = s[j] - m;
    const T e = fast_exp(d);
    z += e;
    t += e * d;
  }
  *zz = z;
  *tt = t;
}

QSATTN_CLONES void exp_sums(const float* s, int64_t n, float m, float* zz, float* tt) {
  exp_sums_impl(s, n, m, zz, tt);
}

void exp_sums(const double* s, int64_t n, double m, double* zz, double* tt) { exp_sums_impl(s, n, m, zz, tt); }

template <typename T>
static inline T exp_shift_impl(T* s, int64_t n, T m) {
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

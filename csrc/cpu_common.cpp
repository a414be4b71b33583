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

QSATTN_CLONES void exp_sums(const float* s, int64_t n, float m, float* rr, float* tt, float* cc) {
  exp_sums_impl(s, n, m, rr, tt, cc);
}

void exp_sums(const double* s, int64_t n, double m, double* rr, double* tt, double* cc) {
  exp_sums_impl(s, n, m, rr, tt, cc);
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

QSATTN_CLONES void row_col_max(const float* s, int64_t nr, int64_t nc, float* rm, float* m) {
  row_col_max_impl(s, nr, nc, rm, m);
}

void row_col_max(const double* s, int64_t nr, int64_t nc, double* rm, double* m) { row_col_max_impl(s, nr, nc, rm, m); }

template <typename T>
static inline __attribute__((always_inline)) void row_col_exp_sums_impl(const T* s, int64_t ld, int64_t nr, int64_t n,
                                                                        const T* mi, const T* m, T* rp, T* tp, T* cp,
                                                                        T* rr, T* tt, T* cc) {
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

QSATTN_CLONES void row_col_exp_sums(const float* s, int64_t ld, int64_t nr, int64_t n, const float* mi, const float* m,
                                    float* r, float* t, float* c, float* rr, float* tt, float* cc) {
  row_col_exp_sums_impl(s, ld, nr, n, mi, m, r, t, c, rr, tt, cc);
}

void row_col_exp_sums(const double* s, int64_t ld, int64_t nr, int64_t n, const double* mi, const double* m, double* r,
                      double* t, double* c, double* rr, double* tt, double* cc) {
  row_col_exp_sums_impl(s, ld, nr, n, mi, m, r, t, c, rr, tt, cc);
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

// One pass of the probe over n logits x in [-87, 0]: the sums of e^x and of e^x x, with the kernels'
// exp without their flush (exp_unflushed) and nothing else.
QSATTN_CLONES static float probe_pass(const float* x, int64_t n) {
  float se = 0, sx = 0;
#pragma omp simd reduction(+ : se, sx)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_unflushed(x[j]);
    se += e;
    sx += e * x[j];
  }
  return se + sx;
}

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

QSATTN_CLONES void fast_exp_buffer(const float* x, int64_t n, float lo, float* y) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = fast_exp(x[j], lo);
}

const char* cpu_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "x86-64-v3 (AVX2)";
  return "x86-64 (SSE2)";
#else
  return "no x86 clones";
#endif
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

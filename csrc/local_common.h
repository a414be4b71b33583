// Neighbourhood helpers of the local CPU kernels: position p = h*W + w, its window x window
// neighbours in row-major (dy, dx) order; neighbours outside the map are zero features (logit 0).
#pragma once

#include <cstdint>

namespace qsattn {

// Dot product of two length-C rows.
template <typename T>
inline T dot(const T* a, const T* b, int64_t C) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < C; ++c) acc += a[c] * b[c];
  return acc;
}

// Fills nb[j] with the row index of neighbour j of position p, or -1 outside the H x W map; returns
// window*window.
inline int64_t neighbours(int64_t p, int64_t H, int64_t W, int64_t window, int64_t* nb) {
  const int64_t r = window / 2, h = p / W, w = p % W;
  int64_t j = 0;
  for (int64_t dy = -r; dy <= r; ++dy)
    for (int64_t dx = -r; dx <= r; ++dx, ++j) {
      const int64_t y = h + dy, x = w + dx;
      nb[j] = (y >= 0 && y < H && x >= 0 && x < W) ? y * W + x : -1;
    }
  return j;
}

// s[j] = f[p] . f[nb[j]] (0 outside the map) for the neighbours of row p of fb (N, C).
template <typename T>
inline void local_logits(const T* fb, int64_t C, int64_t p, const int64_t* nb, int64_t n, T* s) {
  for (int64_t j = 0; j < n; ++j) s[j] = nb[j] < 0 ? T(0) : dot(fb + p * C, fb + nb[j] * C, C);
}

}  // namespace qsattn

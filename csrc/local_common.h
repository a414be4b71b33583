// Neighbourhood helpers of the local CPU kernels: position p = h*W + w, its window x window
// neighbours in row-major (dy, dx) order; neighbours outside the map are zero features (logit 0).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu_common.h"

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

// The logits of position p of image fb (N, C rows) over its neighbourhood: nb as neighbours() fills it,
// s[j] = f_p . f_{nb[j]} (0 outside the map). Returns window*window.
template <typename T>
inline int64_t local_logits(const T* fb, int64_t H, int64_t W, int64_t C, int64_t window, int64_t p, int64_t* nb,
                            T* s) {
  const int64_t n = neighbours(p, H, W, window, nb);
  for (int64_t j = 0; j < n; ++j) s[j] = nb[j] < 0 ? T(0) : dot(fb + p * C, fb + nb[j] * C, C);
  return n;
}

// The loop of the local kernels over the B x R rows (b, r) of their output, OpenMP over the rows:
// body(b, r, nb, s) with the local_logits of position pos(b, r) of image b of f (B, H*W, C) in per-thread
// buffers of window*window elements.
template <typename T, typename Pos, typename Body>
void for_each_window(const T* f, int64_t B, int64_t R, int64_t H, int64_t W, int64_t C, int64_t window, const Pos& pos,
                     const Body& body) {
  const int64_t N = H * W, w2 = window * window;
#pragma omp parallel num_threads(num_threads())
  {
    std::vector<int64_t> nb(w2);
    std::vector<T> s(w2);
#pragma omp for schedule(static)
    for (int64_t br = 0; br < B * R; ++br) {
      const int64_t b = br / R, r = br % R;
      local_logits(f + b * N * C, H, W, C, window, pos(b, r), nb.data(), s.data());
      body(b, r, nb.data(), s.data());
    }
  }
}

}  // namespace qsattn

// CUDA kernel of qsattn::entropy_local: a block owns a 16 x 16 tile of positions (one per thread) and
// stages the tile plus its halo of window/2 pixels, CB channels at a time, in shared memory (zeros
// outside the map, so out-of-map keys get logit 0 as in the zero-padded definition). Each thread keeps
// its window^2 logits in registers/local memory and ends with the log1p entropy. Memory-bound.
#include "cuda_common.cuh"
#include "qsattn_cuda.h"

namespace qsattn {
namespace cuda {
namespace {

constexpr int TILE = 16, CB = 8, MAXW2 = kMaxWindow * kMaxWindow;

__global__ void __launch_bounds__(TILE* TILE)
    entropy_local_kernel(const float* __restrict__ f, int H, int W, int C, int window, float* __restrict__ out) {
  float* tile = dynamic_shared<float>();  // [CB][side][side]
  const int r = window / 2, side = TILE + 2 * r, w2 = window * window;
  const int b = blockIdx.z, h0 = blockIdx.y * TILE, x0 = blockIdx.x * TILE;
  const int ty = threadIdx.x / TILE, tx = threadIdx.x % TILE;
  const int64_t N = static_cast<int64_t>(H) * W;
  const float* fb = f + b * N * C;
  float s[MAXW2];
  for (int j = 0; j < w2; ++j) s[j] = 0.f;
  for (int c0 = 0; c0 < C; c0 += CB) {
    for (int e = threadIdx.x; e < side * side * CB; e += blockDim.x) {
      const int c = e % CB, p = e / CB, yy = p / side, xx = p % side;
      const int y = h0 + yy - r, x = x0 + xx - r;
      tile[(c * side + yy) * side + xx] =
          (y >= 0 && y < H && x >= 0 && x < W && c0 + c < C) ? fb[(static_cast<int64_t>(y) * W + x) * C + c0 + c] : 0.f;
    }
    __syncthreads();
    for (int c = 0; c < CB; ++c) {
      const float* tc = tile + c * side * side;
      const float q = tc[(ty + r) * side + tx + r];
      for (int dy = 0; dy < window; ++dy)
        for (int dx = 0; dx < window; ++dx)
          s[dy * window + dx] = fmaf(q, tc[(ty + dy) * side + tx + dx], s[dy * window + dx]);
    }
    __syncthreads();
  }
  const int y = h0 + ty, x = x0 + tx;
  if (y >= H || x >= W) return;
  EntState st = ent_empty();
  for (int j = 0; j < w2; ++j) st = ent_push(st, s[j]);
  out[b * N + static_cast<int64_t>(y) * W + x] = ent_value(st);
}

}  // namespace

int entropy_local(const float* f, int B, int H, int W, int C, int window, float* out, void* stream) {
  if (window > kMaxWindow || window < 1 || window % 2 == 0) return static_cast<int>(cudaErrorInvalidValue);
  if (B == 0 || H == 0 || W == 0) return 0;
  const int side = TILE + 2 * (window / 2);
  const size_t shmem = sizeof(float) * CB * side * side;
  const dim3 grid(ceil_div(W, TILE), ceil_div(H, TILE), B);
  QSATTN_LAUNCH(entropy_local_kernel, grid, TILE * TILE, shmem, static_cast<cudaStream_t>(stream))(f, H, W, C, window,
                                                                                                   out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace qsattn

// CUDA kernels of qsattn::route_local and its backward: one block per selected position, which gathers
// only its window x window neighbourhood (never the unfolded map). Warps take neighbours, lanes take
// channels, for the logits (out-of-map keys: logit 0, value 0); the softmax weights live in shared
// memory. The backward recomputes them from lse and scatters dV and dF with atomics (neighbourhoods
// of different selected positions overlap), so its float sums are not bitwise deterministic.
#include "cuda_common.cuh"
#include "qsattn_cuda.h"

namespace qsattn {
namespace cuda {
namespace {

constexpr int THREADS = 256, MAXW2 = kMaxWindow * kMaxWindow;

// Fills nb[0..w2) with the neighbour rows of p (or -1 outside) and s[0..w2) with the logits f_p . f_q.
__device__ void local_logits(const float* fb, int H, int W, int C, int window, int64_t p, int64_t* nb, float* s) {
  const int r = window / 2, w2 = window * window, h = static_cast<int>(p / W), w = static_cast<int>(p % W);
  for (int j = threadIdx.x; j < w2; j += blockDim.x) {
    const int y = h + j / window - r, x = w + j % window - r;
    nb[j] = (y >= 0 && y < H && x >= 0 && x < W) ? static_cast<int64_t>(y) * W + x : -1;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
  for (int j = wid; j < w2; j += nw) {
    float acc = 0.f;
    if (nb[j] >= 0)
      for (int c = lane; c < C; c += 32) acc += fb[p * C + c] * fb[nb[j] * C + c];
    acc = warp_sum(acc);
    if (lane == 0) s[j] = acc;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(THREADS)
    route_local_kernel(const float* __restrict__ f, const int64_t* __restrict__ idx, const float* __restrict__ v, int H,
                       int W, int C, int k, int Cv, int window, float* __restrict__ out, float* __restrict__ lse) {
  __shared__ int64_t nb[MAXW2];
  __shared__ float s[MAXW2];
  __shared__ float scratch[32];
  const int bi = blockIdx.x, b = bi / k, w2 = window * window;
  const int64_t N = static_cast<int64_t>(H) * W;
  const float* fb = f + b * N * C;
  local_logits(fb, H, W, C, window, idx[bi], nb, s);
  const float l = block_softmax(s, w2, scratch);
  if (threadIdx.x == 0) lse[bi] = l;
  const float* vb = v + b * N * Cv;
  for (int c = threadIdx.x; c < Cv; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < w2; ++j)
      if (nb[j] >= 0) acc += s[j] * vb[nb[j] * Cv + c];
    out[static_cast<int64_t>(bi) * Cv + c] = acc;
  }
}

__global__ void __launch_bounds__(THREADS)
    route_local_backward_kernel(const float* __restrict__ f, const int64_t* __restrict__ idx,
                                const float* __restrict__ v, const float* __restrict__ out,
                                const float* __restrict__ lse, const float* __restrict__ g, int H, int W, int C, int k,
                                int Cv, int window, float* __restrict__ df, float* __restrict__ dv) {
  __shared__ int64_t nb[MAXW2];
  __shared__ float pw[MAXW2];
  __shared__ float dsw[MAXW2];
  __shared__ float scratch[32];
  const int bi = blockIdx.x, b = bi / k, w2 = window * window;
  const int64_t N = static_cast<int64_t>(H) * W, p = idx[bi];
  const float* fb = f + b * N * C;
  const float* vb = v + b * N * Cv;
  const float* gr = g + static_cast<int64_t>(bi) * Cv;
  local_logits(fb, H, W, C, window, p, nb, pw);
  float dacc = 0.f;
  for (int c = threadIdx.x; c < Cv; c += blockDim.x) dacc += gr[c] * out[static_cast<int64_t>(bi) * Cv + c];
  const float dsum = block_reduce<false>(dacc, scratch);  // D = dO . O
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
  for (int j = wid; j < w2; j += nw) {
    float acc = 0.f;
    if (nb[j] >= 0)
      for (int c = lane; c < Cv; c += 32) acc += gr[c] * vb[nb[j] * Cv + c];
    acc = warp_sum(acc);
    if (lane == 0) {
      const float pj = __expf(pw[j] - lse[bi]);
      pw[j] = pj;
      dsw[j] = pj * (acc - dsum);
    }
  }
  __syncthreads();
  float* dfb = df + b * N * C;
  float* dvb = dv + b * N * Cv;
  for (int c = threadIdx.x; c < Cv; c += blockDim.x)
    for (int j = 0; j < w2; ++j)
      if (nb[j] >= 0) atomicAdd(dvb + nb[j] * Cv + c, pw[j] * gr[c]);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float dq = 0.f;
    const float fp = fb[p * C + c];
    for (int j = 0; j < w2; ++j) {
      if (nb[j] < 0) continue;
      dq += dsw[j] * fb[nb[j] * C + c];
      atomicAdd(dfb + nb[j] * C + c, dsw[j] * fp);
    }
    atomicAdd(dfb + p * C + c, dq);
  }
}

}  // namespace

int route_local(const float* f, const int64_t* idx, const float* v, int B, int H, int W, int C, int k, int Cv,
                int window, float* out, float* lse, void* stream) {
  if (window > kMaxWindow || window < 1 || window % 2 == 0) return static_cast<int>(cudaErrorInvalidValue);
  if (B == 0 || k == 0) return 0;
  QSATTN_LAUNCH(route_local_kernel, B * k, THREADS, 0, static_cast<cudaStream_t>(stream))(f, idx, v, H, W, C, k, Cv,
                                                                                          window, out, lse);
  return static_cast<int>(cudaGetLastError());
}

int route_local_backward(const float* f, const int64_t* idx, const float* v, const float* out, const float* lse,
                         const float* grad_out, int B, int H, int W, int C, int k, int Cv, int window, float* df,
                         float* dv, void* stream) {
  if (window > kMaxWindow || window < 1 || window % 2 == 0) return static_cast<int>(cudaErrorInvalidValue);
  if (B == 0 || k == 0) return 0;
  QSATTN_LAUNCH(route_local_backward_kernel, B * k, THREADS, 0, static_cast<cudaStream_t>(stream))(
      f, idx, v, out, lse, grad_out, H, W, C, k, Cv, window, df, dv);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace qsattn

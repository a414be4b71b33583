// Device helpers shared by the CUDA kernels: the online entropy state (docs/design.md §2, log1p form) and
// warp/block reductions, the launch macro and dynamic shared memory. CUDA headers only; with
// QSATTN_CUDA_EMULATION, the CPU emulation's (csrc/emulation/cuda_emulation.h) instead.
#pragma once

#ifdef QSATTN_CUDA_EMULATION
#include "emulation/cuda_emulation.h"
// Runs kernel(args) on the CPU emulation: QSATTN_LAUNCH(kernel, grid, block, smem, stream)(args...).
#define QSATTN_LAUNCH(kernel, grid, block, smem, stream) \
  ::qsattn::emu::launcher(#kernel, kernel, grid, block, smem, stream)
#else
#include <cuda_runtime.h>
// kernel<<<grid, block, smem, stream>>>(args): QSATTN_LAUNCH(kernel, grid, block, smem, stream)(args...).
#define QSATTN_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

#include <cstdint>

namespace qsattn {
namespace cuda {

// Softmax statistics of a set of logits relative to their max m: Z = 1 + r (r excludes the max's own
// 1) and t = sum e^{s-m} (s-m) <= 0; entropy = log1p(r) - t / (1 + r). Empty: m = -inf.
struct EntState {
  float m, r, t;
};

__device__ __forceinline__ EntState ent_empty() { return {-INFINITY, 0.f, 0.f}; }

// Adds one logit.
__device__ __forceinline__ EntState ent_push(EntState a, float s) {
  if (s > a.m) {
    if (a.m == -INFINITY) return {s, 0.f, 0.f};
    const float d = a.m - s, e = __expf(d);
    return {s, e * (1.f + a.r), e * (a.t + d * (1.f + a.r))};
  }
  const float d = s - a.m, e = __expf(d);
  return {a.m, a.r + e, a.t + e * d};
}

// Merges two states (either may be empty).
__device__ __forceinline__ EntState ent_merge(EntState a, EntState b) {
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  if (b.m > a.m) {
    const EntState tmp = a;
    a = b;
    b = tmp;
  }
  const float d = b.m - a.m, e = __expf(d);
  return {a.m, a.r + e * (1.f + b.r), a.t + e * (b.t + d * (1.f + b.r))};
}

__device__ __forceinline__ float ent_value(EntState a) { return log1pf(a.r) - a.t / (1.f + a.r); }

// Merges the states of `width` consecutive lanes (a power of two <= 32); every lane gets the result.
__device__ __forceinline__ EntState ent_merge_lanes(EntState a, int width) {
  for (int o = width / 2; o > 0; o /= 2) {
    EntState b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o, width);
    b.r = __shfl_xor_sync(0xffffffffu, a.r, o, width);
    b.t = __shfl_xor_sync(0xffffffffu, a.t, o, width);
    a = ent_merge(a, b);
  }
  return a;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum (or max) over the block; `scratch` holds 32 floats; every thread gets the result.
template <bool kMax>
__device__ inline float block_reduce(float x, float* scratch) {
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
  x = kMax ? warp_max(x) : warp_sum(x);
  __syncthreads();
  if (lane == 0) scratch[wid] = x;
  __syncthreads();
  float y = lane < nw ? scratch[lane] : (kMax ? -INFINITY : 0.f);
  y = kMax ? warp_max(y) : warp_sum(y);
  return y;
}

// Softmax of row[0..n) in place over the block (`scratch`: 32 floats); returns the row's log-sum-exp.
// Ends with a barrier, so shared-memory rows are ready for every thread.
__device__ inline float block_softmax(float* row, int n, float* scratch) {
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_reduce<true>(m, scratch);
  float z = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) z += __expf(row[j] - m);
  z = block_reduce<false>(z, scratch);  // its barriers order the reads above before the writes below
  const float inv = 1.f / z;
  for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] = __expf(row[j] - m) * inv;
  __syncthreads();
  return m + logf(z);
}

// The launch's dynamic shared memory (its `smem` bytes), 16-byte aligned.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef QSATTN_CUDA_EMULATION
  return static_cast<T*>(::qsattn::emu::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char qsattn_dynamic_smem[];
  return reinterpret_cast<T*>(qsattn_dynamic_smem);
#endif
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace qsattn

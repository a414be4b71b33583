// CUDA kernel of qsattn::entropy_global (fp32-faithful path: plain FP32 FMA, no tensor cores).
// A block owns BM = 64 query rows and sweeps all keys in tiles of BN = 64, the product over C in steps
// of BK = 16 staged through shared memory; each of the 256 threads computes a 4 x 4 micro-tile and
// folds it into its rows' running entropy states, which the 16 threads sharing rows merge at the end.
#include "cuda_common.cuh"
#include "qsattn_cuda.h"

namespace qsattn {
namespace cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;

__global__ void __launch_bounds__(256)
    entropy_global_kernel(const float* __restrict__ f, int N, int C, float* __restrict__ out) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int b = blockIdx.y, q0 = blockIdx.x * BM;
  const float* fb = f + static_cast<int64_t>(b) * N * C;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;  // ty: rows ty*4.., tx: cols tx*4..
  EntState st[TM];
  for (int i = 0; i < TM; ++i) st[i] = ent_empty();

  for (int k0 = 0; k0 < N; k0 += BN) {
    float acc[TM][TN] = {};
    for (int c0 = 0; c0 < C; c0 += BK) {
      // 64 x 16 elements per operand, 4 per thread; rows along threads so that loads of one row's 16
      // channels are contiguous.
      for (int e = tid; e < BM * BK; e += 256) {
        const int r = e / BK, c = e % BK;
        const int qa = q0 + r, kb = k0 + r, cc = c0 + c;
        As[c][r] = (qa < N && cc < C) ? fb[static_cast<int64_t>(qa) * C + cc] : 0.f;
        Bs[c][r] = (kb < N && cc < C) ? fb[static_cast<int64_t>(kb) * C + cc] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < BK; ++c) {
        float a[TM], bv[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = As[c][ty * TM + i];
#pragma unroll
        for (int j = 0; j < TN; ++j) bv[j] = Bs[c][tx * TN + j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      if (k0 + tx * TN + j >= N) continue;
#pragma unroll
      for (int i = 0; i < TM; ++i) st[i] = ent_push(st[i], acc[i][j]);
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const EntState s = ent_merge_lanes(st[i], 16);
    const int row = q0 + ty * TM + i;
    if (tx == 0 && row < N) out[static_cast<int64_t>(b) * N + row] = ent_value(s);
  }
}

}  // namespace

int entropy_global(const float* f, int B, int N, int C, float* out, void* stream) {
  if (B == 0 || N == 0) return 0;
  const dim3 grid(ceil_div(N, BM), B);
  QSATTN_LAUNCH(entropy_global_kernel, grid, 256, 0, static_cast<cudaStream_t>(stream))(f, N, C, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace qsattn

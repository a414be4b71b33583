// CUDA kernels of qsattn::route_global and its backward (docs/design.md §3): per image, the selected queries
// are processed in chunks of QC rows whose attention rows (QC x N floats) live in a workspace, never
// the whole k x N. All products go through one FP32 tiled GEMM (64 x 64 tiles, 4 x 4 per thread) that
// reads its operands through (row, column) strides, so transposes cost nothing, with optional row
// gathers (Q = f[idx]) and an atomic row scatter (dF[idx] += dS K). The backward recomputes
// P = exp(Q K^T - lse): dV += P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dF += dS^T Q + scatter(dS K).
#include "cuda_common.cuh"
#include "qsattn_cuda.h"

namespace qsattn {
namespace cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, QC = 128;

// A logical matrix operand: element (i, j) at p[(rows ? rows[i] : i) * rs + j * cs].
struct Mat {
  const float* p;
  int64_t rs, cs;
  const int64_t* rows;
  __device__ __forceinline__ float at(int i, int j) const {
    return p[(rows ? rows[i] : static_cast<int64_t>(i)) * rs + static_cast<int64_t>(j) * cs];
  }
};

// out (M x Nn, row stride ldc) = A (M x K) B (K x Nn) + beta * out; with out_rows, atomically added to
// rows out_rows[i] instead.
__global__ void __launch_bounds__(256) gemm_kernel(int M, int Nn, int K, Mat A, Mat B, float* __restrict__ out,
                                                   int64_t ldc, float beta, const int64_t* __restrict__ out_rows) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int c0 = 0; c0 < K; c0 += BK) {
    for (int e = tid; e < BM * BK; e += 256) {
      const int r = e / BK, c = e % BK;
      As[c][r] = (i0 + r < M && c0 + c < K) ? A.at(i0 + r, c0 + c) : 0.f;
      const int cb = e / BN, jb = e % BN;
      Bs[cb][jb] = (c0 + cb < K && j0 + jb < Nn) ? B.at(c0 + cb, j0 + jb) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < BK; ++c) {
      float a[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[c][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[c][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = i0 + ty * 4 + i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = j0 + tx * 4 + j;
      if (col >= Nn) continue;
      if (out_rows) {
        atomicAdd(out + out_rows[row] * ldc + col, acc[i][j]);
      } else {
        float* o = out + static_cast<int64_t>(row) * ldc + col;
        *o = beta == 0.f ? acc[i][j] : acc[i][j] + beta * *o;
      }
    }
  }
}

void gemm(int M, int Nn, int K, Mat A, Mat B, float* out, int64_t ldc, float beta, const int64_t* out_rows,
          cudaStream_t st) {
  if (M == 0 || Nn == 0) return;  // nothing to write (an empty grid is an invalid launch)
  const dim3 grid(ceil_div(Nn, BN), ceil_div(M, BM));
  QSATTN_LAUNCH(gemm_kernel, grid, 256, 0, st)(M, Nn, K, A, B, out, ldc, beta, out_rows);
}

// Row-wise softmax of s (rows x N) in place; lse[r] = log sum exp of the raw row.
__global__ void softmax_rows_kernel(float* __restrict__ s, int N, float* __restrict__ lse) {
  __shared__ float scratch[32];
  const float l = block_softmax(s + static_cast<int64_t>(blockIdx.x) * N, N, scratch);
  if (threadIdx.x == 0) lse[blockIdx.x] = l;
}

// d[r] = sum_c g[r, c] * o[r, c] over rows of length Cv.
__global__ void rowdot_kernel(const float* __restrict__ g, const float* __restrict__ o, int Cv, float* __restrict__ d) {
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * Cv;
  float acc = 0.f;
  for (int c = threadIdx.x; c < Cv; c += blockDim.x) acc += g[base + c] * o[base + c];
  acc = block_reduce<false>(acc, scratch);
  if (threadIdx.x == 0) d[blockIdx.x] = acc;
}

// p <- exp(s - lse[r]) and ds <- p * (ds - d[r]) for the rows x N chunk (s in p, dP in ds).
__global__ void grad_logits_kernel(float* __restrict__ p, float* __restrict__ ds, int N, const float* __restrict__ lse,
                                   const float* __restrict__ d) {
  const int r = blockIdx.y;
  const int64_t base = static_cast<int64_t>(r) * N;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < N; j += gridDim.x * blockDim.x) {
    const float pv = __expf(p[base + j] - lse[r]);
    p[base + j] = pv;
    ds[base + j] = pv * (ds[base + j] - d[r]);
  }
}

}  // namespace

std::size_t route_global_workspace(int N, int k) {
  const int qc = k < QC ? k : QC;
  return sizeof(float) * (2 * static_cast<std::size_t>(qc) * N + k);
}

int route_global(const float* f, const int64_t* idx, const float* v, int B, int N, int C, int k, int Cv, float* out,
                 float* lse, void* workspace, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  float* s = static_cast<float*>(workspace);
  for (int b = 0; b < B; ++b) {
    const float* fb = f + static_cast<int64_t>(b) * N * C;
    const float* vb = v + static_cast<int64_t>(b) * N * Cv;
    for (int i0 = 0; i0 < k; i0 += QC) {
      const int nq = k - i0 < QC ? k - i0 : QC;
      const int64_t* rows = idx + static_cast<int64_t>(b) * k + i0;
      gemm(nq, N, C, Mat{fb, C, 1, rows}, Mat{fb, 1, C, nullptr}, s, N, 0.f, nullptr, st);  // S = Q K^T
      QSATTN_LAUNCH(softmax_rows_kernel, nq, 256, 0, st)(s, N, lse + static_cast<int64_t>(b) * k + i0);
      gemm(nq, Cv, N, Mat{s, N, 1, nullptr}, Mat{vb, Cv, 1, nullptr}, out + (static_cast<int64_t>(b) * k + i0) * Cv, Cv,
           0.f, nullptr, st);  // O = P V
    }
  }
  return static_cast<int>(cudaGetLastError());
}

int route_global_backward(const float* f, const int64_t* idx, const float* v, const float* out, const float* lse,
                          const float* grad_out, int B, int N, int C, int k, int Cv, float* df, float* dv,
                          void* workspace, void* stream) {
  if (k == 0) return 0;  // df, dv stay zero
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int qc = k < QC ? k : QC;
  float* p = static_cast<float*>(workspace);
  float* ds = p + static_cast<std::size_t>(qc) * N;
  float* d = ds + static_cast<std::size_t>(qc) * N;
  for (int b = 0; b < B; ++b) {
    const float* fb = f + static_cast<int64_t>(b) * N * C;
    const float* vb = v + static_cast<int64_t>(b) * N * Cv;
    const float* gb = grad_out + static_cast<int64_t>(b) * k * Cv;
    float* dfb = df + static_cast<int64_t>(b) * N * C;
    float* dvb = dv + static_cast<int64_t>(b) * N * Cv;
    QSATTN_LAUNCH(rowdot_kernel, k, 256, 0, st)(gb, out + static_cast<int64_t>(b) * k * Cv, Cv, d);
    for (int i0 = 0; i0 < k; i0 += QC) {
      const int nq = k - i0 < QC ? k - i0 : QC;
      const int64_t* rows = idx + static_cast<int64_t>(b) * k + i0;
      const float* gq = gb + static_cast<int64_t>(i0) * Cv;
      gemm(nq, N, C, Mat{fb, C, 1, rows}, Mat{fb, 1, C, nullptr}, p, N, 0.f, nullptr, st);         // S = Q K^T
      gemm(nq, N, Cv, Mat{gq, Cv, 1, nullptr}, Mat{vb, 1, Cv, nullptr}, ds, N, 0.f, nullptr, st);  // dO V^T
      QSATTN_LAUNCH(grad_logits_kernel, dim3(ceil_div(N, 1024), nq), 256, 0, st)(
          p, ds, N, lse + static_cast<int64_t>(b) * k + i0, d + i0);
      gemm(N, Cv, nq, Mat{p, 1, N, nullptr}, Mat{gq, Cv, 1, nullptr}, dvb, Cv, 1.f, nullptr, st);  // dV += P^T dO
      gemm(N, C, nq, Mat{ds, 1, N, nullptr}, Mat{fb, C, 1, rows}, dfb, C, 1.f, nullptr, st);       // dK = dS^T Q
      gemm(nq, C, N, Mat{ds, N, 1, nullptr}, Mat{fb, C, 1, nullptr}, dfb, C, 1.f, rows, st);       // dQ = dS K
    }
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace qsattn

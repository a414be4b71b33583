// Plain C++ launcher interface of the CUDA kernels (csrc/*.cu). No torch and no CUDA types here, so
// that the .cu files compile with nvcc alone (csrc/check_cuda.sh) and the torch glue (cuda_ops.cpp)
// compiles with the host compiler. All tensors are contiguous float32 (indices int64) device
// pointers; `stream` is a cudaStream_t. Every launcher returns a cudaError_t as int (0 = success).
// One launcher per op of qsattn_fast/ops.py, named after it (its torch glue: <op>_cuda in cuda_ops.cpp).
// Rows: f (B, N, C) with N = H*W, row n = h*W + w.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qsattn {
namespace cuda {

// out (B, N): entropy of each row of softmax(f f^T) (FP32 tiled product, online log1p epilogue).
int entropy_global(const float* f, int B, int N, int C, float* out, void* stream);

// out (B, N): entropy over each zero-padded window x window neighbourhood (window <= 15).
int entropy_local(const float* f, int B, int H, int W, int C, int window, float* out, void* stream);

// out (B, k) int64: argsort(e, stable=True)[:, :k]; needs select_workspace(B, k) bytes.
std::size_t select_workspace(int B, int k);
int select(const float* e, int B, int N, int k, int64_t* out, void* workspace, void* stream);

// out (B, k, Cv) = softmax(f[idx] f^T) v and lse (B, k); needs route_global_workspace(N, k) bytes.
std::size_t route_global_workspace(int N, int k);
int route_global(const float* f, const int64_t* idx, const float* v, int B, int N, int C, int k, int Cv, float* out,
                 float* lse, void* workspace, void* stream);
// df (B, N, C) and dv (B, N, Cv), zero-initialised by the caller; same workspace size.
int route_global_backward(const float* f, const int64_t* idx, const float* v, const float* out, const float* lse,
                          const float* grad_out, int B, int N, int C, int k, int Cv, float* df, float* dv,
                          void* workspace, void* stream);

// Local routing over the window x window neighbourhood of each selected position (window <= 15).
int route_local(const float* f, const int64_t* idx, const float* v, int B, int H, int W, int C, int k, int Cv,
                int window, float* out, float* lse, void* stream);
// df, dv zero-initialised by the caller (accumulated with atomics).
int route_local_backward(const float* f, const int64_t* idx, const float* v, const float* out, const float* lse,
                         const float* grad_out, int B, int H, int W, int C, int k, int Cv, int window, float* df,
                         float* dv, void* stream);

constexpr int kMaxWindow = 15;

}  // namespace cuda
}  // namespace qsattn

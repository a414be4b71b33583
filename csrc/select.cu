// CUDA kernel of qsattn::select: one block of 1024 threads per image. The floats become
// order-preserving 32-bit keys (every NaN the largest key, as argsort puts NaN last); a radix select of
// four 8-bit digits finds the k-th smallest key K; a block scan in index order then keeps the keys < K
// and the lowest-index keys == K (the stable tie-break), k survivors, which are finally placed by their
// rank under (key, index). Deterministic; equal to argsort(stable=True)[:, :k].
#include "cuda_common.cuh"
#include "qsattn_cuda.h"

namespace qsattn {
namespace cuda {
namespace {

constexpr int THREADS = 1024;

__device__ __forceinline__ uint32_t order_key(float x) {
  if (isnan(x)) return 0xffffffffu;
  const uint32_t u = __float_as_uint(x == 0.f ? 0.f : x);  // -0.0 ties with +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of `x` over the block, in thread order; *total gets the block's sum.
__device__ int block_exclusive_scan(int x, int* scratch, int* total) {
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
  int inc = x;
  for (int o = 1; o < 32; o *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  __syncthreads();
  if (lane == 31) scratch[wid] = inc;
  __syncthreads();
  if (wid == 0) {
    int w = scratch[lane];  // THREADS / 32 == 32 warps
    for (int o = 1; o < 32; o *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    scratch[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  *total = scratch[31];
  return inc - x + (wid > 0 ? scratch[wid - 1] : 0);
}

__global__ void __launch_bounds__(THREADS)
    select_kernel(const float* __restrict__ e, int N, int k, int64_t* __restrict__ out, uint32_t* __restrict__ skey,
                  int* __restrict__ sidx) {
  __shared__ int hist[256];
  __shared__ int scratch[32];
  __shared__ uint32_t prefix_s;
  __shared__ int remaining_s;
  const int b = blockIdx.x;
  const float* eb = e + static_cast<int64_t>(b) * N;
  uint32_t* kb = skey + static_cast<int64_t>(b) * k;
  int* ib = sidx + static_cast<int64_t>(b) * k;

  // Radix select, most significant digit first: after the four passes prefix_s is the k-th key.
  if (threadIdx.x == 0) {
    prefix_s = 0;
    remaining_s = k;
  }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += THREADS) hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = prefix_s;
    const uint32_t hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
    for (int i = threadIdx.x; i < N; i += THREADS) {
      const uint32_t key = order_key(eb[i]);
      if ((key & hi_mask) == (prefix & hi_mask)) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int rem = remaining_s, d = 0;
      while (hist[d] < rem) rem -= hist[d++];
      prefix_s = prefix | (static_cast<uint32_t>(d) << shift);
      remaining_s = rem;
    }
    __syncthreads();
  }
  const uint32_t kth = prefix_s;
  const int need_eq = remaining_s;  // how many keys == kth are selected (the lowest indices)

  // Ordered compaction of the k survivors.
  int taken = 0, eq_seen = 0;
  for (int base = 0; base < N; base += THREADS) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < N ? order_key(eb[i]) : 0xffffffffu;
    const bool eq = i < N && key == kth;
    int eq_total, sel_total;
    const int eq_before = eq_seen + block_exclusive_scan(eq ? 1 : 0, scratch, &eq_total);
    const bool sel = i < N && (key < kth || (eq && eq_before < need_eq));
    const int pos = taken + block_exclusive_scan(sel ? 1 : 0, scratch, &sel_total);
    if (sel) {
      kb[pos] = key;
      ib[pos] = i;
    }
    eq_seen += eq_total;
    taken += sel_total;
  }
  __syncthreads();

  // Place every survivor at its rank under (key, index).
  for (int s = threadIdx.x; s < k; s += THREADS) {
    const uint32_t key = kb[s];
    const int idx = ib[s];
    int rank = 0;
    for (int j = 0; j < k; ++j) {
      const uint32_t kj = kb[j];
      rank += (kj < key || (kj == key && ib[j] < idx)) ? 1 : 0;
    }
    out[static_cast<int64_t>(b) * k + rank] = idx;
  }
}

}  // namespace

std::size_t select_workspace(int B, int k) {
  return static_cast<std::size_t>(B) * k * (sizeof(uint32_t) + sizeof(int));
}

int select(const float* e, int B, int N, int k, int64_t* out, void* workspace, void* stream) {
  if (k < 1 || k > N) return static_cast<int>(cudaErrorInvalidValue);
  if (B == 0) return 0;
  uint32_t* skey = static_cast<uint32_t*>(workspace);
  int* sidx = reinterpret_cast<int*>(skey + static_cast<std::size_t>(B) * k);
  QSATTN_LAUNCH(select_kernel, B, THREADS, 0, static_cast<cudaStream_t>(stream))(e, N, k, out, skey, sidx);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace qsattn

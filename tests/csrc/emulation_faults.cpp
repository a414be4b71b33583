// Kernels that a GPU would refuse or hang on, run by tests/csrc/test_cuda_emulated.py on the CPU emulation
// (built with csrc/emulation/build.sh in place of its driver): `emulation_faults CASE` launches one and
// prints the launcher's error code and the kernel's first output.
#include <cstdio>
#include <cstring>
#include <string>

#include "cuda_common.cuh"

namespace {

// Every thread writes its id to shared memory; thread 0 then sums them (ok: the emulation's own check).
__global__ void sum_ids(float* out) {
  float* s = qsattn::cuda::dynamic_shared<float>();
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (unsigned i = 0; i < blockDim.x; ++i) t += s[i];
    out[blockIdx.x] = t;
  }
}

// Thread 0 reads a shared value that no thread wrote.
__global__ void read_before_write(float* out) {
  __shared__ float s[64];
  if (threadIdx.x == 0) out[blockIdx.x] = s[5];
  __syncthreads();
  s[5] = 1.f;
}

// Half of warp 0 shuffles while every other thread waits at __syncthreads: a deadlock.
__global__ void barrier_never_reached(float* out) {
  float x = 1.f;
  if (threadIdx.x < 16) x = __shfl_xor_sync(0xffffffffu, x, 1);
  __syncthreads();
  out[0] = x;
}

// Two groups of threads wait at different __syncthreads.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[0] = 1.f;
}

__global__ void partial_mask(float* out) { out[0] = __shfl_xor_sync(0x0000ffffu, 1.f, 1); }

// Lanes 16..31 return; the others shuffle with the full mask.
__global__ void shuffle_after_return(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[0] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string c = argc > 1 ? argv[1] : "";
  static float out[4] = {0.f, 0.f, 0.f, 0.f};
  if (c == "ok")
    QSATTN_LAUNCH(sum_ids, 2, 96, 96 * sizeof(float), nullptr)(out);
  else if (c == "too_many_threads")
    QSATTN_LAUNCH(sum_ids, 1, 1025, 1025 * sizeof(float), nullptr)(out);
  else if (c == "grid_out_of_range")
    QSATTN_LAUNCH(sum_ids, dim3(1, 65536), 32, 32 * sizeof(float), nullptr)(out);
  else if (c == "too_much_shared")
    QSATTN_LAUNCH(sum_ids, 1, 32, 48 * 1024 + 4, nullptr)(out);
  else if (c == "read_before_write")
    QSATTN_LAUNCH(read_before_write, 2, 64, 0, nullptr)(out);
  else if (c == "barrier_never_reached")
    QSATTN_LAUNCH(barrier_never_reached, 1, 64, 0, nullptr)(out);
  else if (c == "divergent_barrier")
    QSATTN_LAUNCH(divergent_barrier, 1, 64, 0, nullptr)(out);
  else if (c == "partial_mask")
    QSATTN_LAUNCH(partial_mask, 1, 32, 0, nullptr)(out);
  else if (c == "shuffle_after_return")
    QSATTN_LAUNCH(shuffle_after_return, 1, 32, 0, nullptr)(out);
  else
    return 2;
  std::printf("error %d out %g %g\n", static_cast<int>(cudaGetLastError()), out[0], out[1]);
  return 0;
}

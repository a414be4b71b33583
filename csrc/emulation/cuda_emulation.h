// A SIMT emulation of the CUDA runtime and device intrinsics that csrc/*.cu use, so that the kernels run
// unchanged on the CPU as C++20 (g++ -x c++ -DQSATTN_CUDA_EMULATION; docs/gpu.md "The CUDA kernels on the
// CPU"). Every CUDA thread of a block is a std::thread; the blocks of a launch run one after another.
//   __syncthreads   a barrier of the block's live threads (a thread that returns drops out, as on a GPU);
//                   every thread must wait at the same call site; a watchdog reports a barrier that some
//                   threads never reach instead of hanging
//   __shfl_*_sync   a per-warp buffer written between two barriers of the warp's 32 lanes; the mask must
//                   name every lane of the warp, all of them live
//   __shared__      static storage in the section "qsattn_shared", shared by the threads of the running
//                   block and filled with NaN bytes before every block (reads before writes show up)
//   atomicAdd       std::atomic_ref; __expf is expf (not the GPU's approximation)
// Launches go through QSATTN_LAUNCH (csrc/cuda_common.cuh), which checks the configuration as a GPU
// would (threads per block, grid sizes, dynamic shared memory) and otherwise sets cudaGetLastError.
// Runtime: csrc/emulation/cuda_emulation.cpp.
#pragma once

#include <math.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <source_location>
#include <tuple>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };

struct CUstream_st;
using cudaStream_t = CUstream_st*;

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("qsattn_shared"), aligned(16)))

cudaError_t cudaGetLastError();

namespace qsattn {
namespace emu {

using Site = std::source_location;

// One launch: what the GPU would check before running it.
struct Launch {
  const char* kernel;
  dim3 grid, block;
  std::size_t dynamic_smem;
};

// Runs body() as every thread of every block of the launch (or refuses the launch with a message and
// cudaGetLastError's code).
void run(const Launch& launch, const std::function<void()>& body);

// The running block's dynamic shared memory (Launch::dynamic_smem bytes, NaN-filled).
void* dynamic_shared_memory();

void syncthreads(Site site);

// The value `bits` of lane src (lanes outside [0, 32) or not live: the caller's own value).
std::uint64_t shuffle(unsigned mask, std::uint64_t bits, int src, const char* what, Site site);

// Lane of the calling thread in its warp.
int lane();

template <typename... P>
struct Launcher {
  Launch launch;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    const std::tuple<P...> args(std::forward<A>(a)...);
    run(launch, [&] { std::apply(kernel, args); });
  }
};

template <typename... P>
Launcher<P...> launcher(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t) {
  return {{name, grid, block, smem}, kernel};
}

template <typename T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8);
  std::uint64_t u = 0;
  __builtin_memcpy(&u, &v, sizeof(T));
  return u;
}

template <typename T>
T from_bits(std::uint64_t u) {
  T v;
  __builtin_memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace emu
}  // namespace qsattn

inline void __syncthreads(qsattn::emu::Site site = qsattn::emu::Site::current()) { qsattn::emu::syncthreads(site); }

// Lane lane ^ lane_mask within groups of `width` lanes; a lane of a later group reads its own value.
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  qsattn::emu::Site site = qsattn::emu::Site::current()) {
  const int lane = qsattn::emu::lane(), src = lane ^ lane_mask;
  const bool in_group = src < (lane & ~(width - 1)) + width;
  return qsattn::emu::from_bits<T>(
      qsattn::emu::shuffle(mask, qsattn::emu::to_bits(v), in_group ? src : lane, "__shfl_xor_sync", site));
}

// Lane lane - delta within groups of `width` lanes; the first delta lanes of a group read their own value.
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 qsattn::emu::Site site = qsattn::emu::Site::current()) {
  const int lane = qsattn::emu::lane();
  const bool in_group = lane % width >= static_cast<int>(delta);
  return qsattn::emu::from_bits<T>(qsattn::emu::shuffle(
      mask, qsattn::emu::to_bits(v), in_group ? lane - static_cast<int>(delta) : lane, "__shfl_up_sync", site));
}

template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

inline float __expf(float x) { return expf(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }

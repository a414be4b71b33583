// Runtime of the SIMT emulation (cuda_emulation.h): launches, block and warp barriers, shuffles, shared
// memory, the watchdog and the messages for what a GPU would refuse or hang on. Every message starts with
// "cuda emulation:" and names the kernel (and the block and thread where there is one); a fault inside a
// kernel ends the process with exit code 70.
#include "cuda_emulation.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

extern "C" {
// The linker's bounds of the __shared__ variables' section (absent when no kernel declares any).
extern unsigned char __start_qsattn_shared[] __attribute__((weak));
extern unsigned char __stop_qsattn_shared[] __attribute__((weak));
}

namespace {
cudaError_t last_error = cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

namespace qsattn {
namespace emu {
namespace {

// The GPU limits a launch is checked against (every architecture since sm_30; 48 KiB of dynamic shared
// memory unless the kernel opts in with cudaFuncSetAttribute, which these kernels never do).
constexpr unsigned kMaxThreads = 1024, kMaxBlockZ = 64, kMaxGridYZ = 65535;
constexpr unsigned long long kMaxGridX = 2147483647ull;
constexpr std::size_t kMaxDynamicSmem = 48 * 1024;
// Bytes of a quiet NaN with payload 1: a float read is NaN, an int or int64 read a large positive number
// (an index made of it is out of bounds).
constexpr uint32_t kFill = 0x7fc00001u;

double watchdog_seconds() {
  const char* s = std::getenv("QSATTN_EMU_TIMEOUT_S");
  return s && *s ? std::atof(s) : 60.0;
}

// "file.cu:line" (the file's base name).
std::string where(const char* path, uint_least32_t line) {
  const std::string file = path;
  const auto slash = file.find_last_of('/');
  return file.substr(slash == std::string::npos ? 0 : slash + 1) + ":" + std::to_string(line);
}

std::string where(const Site& s) { return where(s.file_name(), s.line()); }

// A barrier of `expected` threads, which a thread can leave for good (as a returning CUDA thread does).
// Lock-free: the count word packs (expected, arrived); the last arrival bumps `phase` (release), and the
// waiters sleep on it with a futex (acquire), which ThreadSanitizer sees as the barrier's ordering.
struct Barrier {
  std::atomic<uint64_t> count{0};  // expected << 32 | arrived
  std::atomic<uint32_t> phase{0};
  std::atomic<uint64_t> site_key{0};  // the phase's call site (block barrier), 0 before its first arrival
  std::atomic<const char*> site_file{""};
  std::atomic<uint_least32_t> site_line{0};
  std::atomic<bool> left_waiters{false};  // a phase was completed by a thread leaving

  void reset(int n) {
    count.store(static_cast<uint64_t>(n) << 32);
    site_key.store(0);
    left_waiters.store(false);
  }
  // Called by the thread that completes the phase.
  void complete() {
    site_key.store(0);
    phase.fetch_add(1, std::memory_order_acq_rel);
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&phase), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
  }
  // Sleeps while the phase is `old` (at most `seconds`); false on time-out.
  bool sleep_while(uint32_t old, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (phase.load(std::memory_order_acquire) == old) {
      const auto left = end - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds(0)) return false;
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&phase), FUTEX_WAIT_PRIVATE, old, &ts, nullptr, 0);
    }
    return true;
  }
};

struct Warp {
  Barrier bar;
  uint64_t buf[2][32];            // shuffle n writes buf[n % 2]: one barrier per shuffle (see shuffle())
  unsigned all = 0;               // the lanes the warp has
  std::atomic<unsigned> live{0};  // the lanes that have not returned
};

// What a thread is doing, for the watchdog's report.
struct Doing {
  std::atomic<const char*> what{"running"};
  std::atomic<uint_least32_t> line{0};
  std::atomic<const char*> file{""};
};

struct State {
  const Launch& launch;
  int nthreads = 0;
  long long nblocks = 0;
  Barrier block_bar, end_bar;
  std::vector<std::unique_ptr<Warp>> warps;
  std::unique_ptr<Doing[]> doing;
  std::unique_ptr<uint64_t[]> shuffles;  // per thread: shuffles done in this block
  unsigned char* dyn = nullptr;
  explicit State(const Launch& l) : launch(l) {}
};

struct Ctx {
  State* s = nullptr;
  int tid = 0;
};
thread_local Ctx ctx;

std::string block_name() {
  return "(" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + ")";
}

[[noreturn]] void fault(const std::string& msg) {
  std::fprintf(stderr, "cuda emulation: kernel %s, block %s, thread %d: %s\n", ctx.s->launch.kernel,
               block_name().c_str(), ctx.tid, msg.c_str());
  std::fflush(stderr);
  std::_Exit(70);
}

__attribute__((no_sanitize_address)) void fill(unsigned char* p, unsigned char* end) {
  for (volatile unsigned char* q = p; q < end; ++q) {
    const uintptr_t i = reinterpret_cast<uintptr_t>(q) % 4;
    *q = static_cast<unsigned char>(kFill >> (8 * i));
  }
}

// Before every block: full barriers, every lane live, shared memory (static and dynamic) NaN-filled.
void prepare_block(State& s) {
  s.block_bar.reset(s.nthreads);
  for (auto& w : s.warps) {
    w->bar.reset(std::popcount(w->all));
    w->live.store(w->all);
  }
  std::fill(s.shuffles.get(), s.shuffles.get() + s.nthreads, 0);
  if (__start_qsattn_shared != nullptr) fill(__start_qsattn_shared, __stop_qsattn_shared);
  if (s.dyn) fill(s.dyn, s.dyn + s.launch.dynamic_smem);
}

// The report of a barrier some threads never reach: where each live thread waits.
[[noreturn]] void hang(Barrier& b, const char* what, const Site& site) {
  std::map<std::string, int> others;
  for (int t = 0; t < ctx.s->nthreads; ++t) {
    const Doing& d = ctx.s->doing[t];
    const std::string w = d.what.load();
    if (w == "returned") continue;
    const std::string at = w == "running" ? w : w + " (" + where(d.file.load(), d.line.load()) + ")";
    ++others[at];
  }
  std::string list;
  for (const auto& [at, n] : others) list += (list.empty() ? "" : ", ") + std::to_string(n) + " at " + at;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%g", watchdog_seconds());
  fault(std::string(what) + " at " + where(site) + " waited " + secs + " s (QSATTN_EMU_TIMEOUT_S): " +
        std::to_string(b.count.load() & 0xffffffffu) + " of " + std::to_string(b.count.load() >> 32) +
        " threads arrived (a barrier that some threads never reach); live threads: " + list);
}

void note(const char* what, const Site& site) {
  Doing& d = ctx.s->doing[ctx.tid];
  d.file.store(site.file_name());
  d.line.store(site.line());
  d.what.store(what);
}

// Waits for the phase to complete; the last arriver runs on_last() first.
template <typename F>
void arrive_and_wait(Barrier& b, const char* what, const Site& site, bool same_site, F&& on_last) {
  note(what, site);
  if (same_site) {
    const uint64_t key = reinterpret_cast<uintptr_t>(site.file_name()) * 65536 + site.line();
    uint64_t first = 0;
    if (b.site_key.compare_exchange_strong(first, key)) {
      b.site_file.store(site.file_name());
      b.site_line.store(site.line());
    } else if (first != key) {
      fault(std::string("threads of one block wait at different barriers: ") + what + " at " + where(site) +
            " and at " + where(b.site_file.load(), b.site_line.load()) + " (on a GPU: undefined, often a hang)");
    }
  }
  const uint32_t phase = b.phase.load(std::memory_order_acquire);
  const uint64_t c = b.count.fetch_add(1, std::memory_order_acq_rel) + 1;
  if ((c & 0xffffffffu) == (c >> 32)) {
    b.count.fetch_sub(c & 0xffffffffu, std::memory_order_acq_rel);
    on_last();
    b.complete();
  } else if (!b.sleep_while(phase, watchdog_seconds())) {
    hang(b, what, site);
  }
  note("running", site);
}

void leave(Barrier& b) {
  const uint64_t c = b.count.fetch_sub(uint64_t{1} << 32, std::memory_order_acq_rel) - (uint64_t{1} << 32);
  const uint64_t arrived = c & 0xffffffffu;
  if (arrived > 0 && arrived == c >> 32) {
    b.count.fetch_sub(arrived, std::memory_order_acq_rel);
    b.left_waiters.store(true);
    b.complete();
  }
}

void thread_main(State& s, int tid, const std::function<void()>& body) {
  const Launch& L = s.launch;
  ctx = {&s, tid};
  blockDim = L.block;
  gridDim = L.grid;
  threadIdx = {tid % L.block.x, (tid / L.block.x) % L.block.y, tid / (L.block.x * L.block.y)};
  Warp& w = *s.warps[tid / 32];
  for (long long n = 0; n < s.nblocks; ++n) {
    blockIdx = {static_cast<unsigned>(n % L.grid.x), static_cast<unsigned>(n / L.grid.x % L.grid.y),
                static_cast<unsigned>(n / (static_cast<long long>(L.grid.x) * L.grid.y))};
    body();
    s.doing[tid].what.store("returned");
    w.live.fetch_and(~(1u << (tid % 32)));
    leave(w.bar);
    leave(s.block_bar);
    arrive_and_wait(s.end_bar, "the end of the block", Site::current(), false, [&] { prepare_block(s); });
  }
}

// The threads that run the launches, kept from one launch to the next (a thread's creation costs about
// a millisecond under ThreadSanitizer): worker t runs CUDA thread t of every block of a launch.
class Pool {
 public:
  void run(State& s, const std::function<void()>& body) {
    while (static_cast<int>(go_.size()) < s.nthreads) {
      go_.push_back(std::make_unique<std::binary_semaphore>(0));
      std::thread(&Pool::work, this, go_.back().get(), static_cast<int>(go_.size()) - 1).detach();
    }
    state_ = &s;
    body_ = &body;
    remaining_.store(s.nthreads);
    for (int t = 0; t < s.nthreads; ++t) go_[t]->release();
    done_.acquire();
  }

 private:
  void work(std::binary_semaphore* go, int tid) {
    for (;;) {
      go->acquire();
      thread_main(*state_, tid, *body_);
      if (remaining_.fetch_sub(1) == 1) done_.release();
    }
  }
  std::vector<std::unique_ptr<std::binary_semaphore>> go_;
  std::binary_semaphore done_{0};
  std::atomic<int> remaining_{0};
  State* state_ = nullptr;
  const std::function<void()>* body_ = nullptr;
};

std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// Why a GPU would refuse the launch ("" if it would not), and its error code.
std::string refusal(const Launch& L, cudaError_t* code) {
  *code = cudaErrorInvalidConfiguration;
  const unsigned long long threads = 1ull * L.block.x * L.block.y * L.block.z;
  if (threads == 0 || threads > kMaxThreads || L.block.z > kMaxBlockZ)
    return "block " + dims(L.block) + " has " + std::to_string(threads) + " threads (1 to 1024, z at most 64)";
  if (L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0 || L.grid.x > kMaxGridX || L.grid.y > kMaxGridYZ ||
      L.grid.z > kMaxGridYZ)
    return "grid " + dims(L.grid) + " out of range (x in [1, 2^31-1], y and z in [1, 65535])";
  *code = cudaErrorInvalidValue;
  if (L.dynamic_smem > kMaxDynamicSmem)
    return std::to_string(L.dynamic_smem) + " bytes of dynamic shared memory, above the 49152 of a launch";
  return "";
}

}  // namespace

void run(const Launch& L, const std::function<void()>& body) {
  cudaError_t code;
  const std::string why = refusal(L, &code);
  if (!why.empty()) {
    std::fprintf(stderr, "cuda emulation: launch of %s with grid %s, block %s refused: %s\n", L.kernel,
                 dims(L.grid).c_str(), dims(L.block).c_str(), why.c_str());
    last_error = code;
    return;
  }
  State s(L);
  s.nthreads = static_cast<int>(L.block.x * L.block.y * L.block.z);
  s.nblocks = static_cast<long long>(L.grid.x) * L.grid.y * L.grid.z;
  for (int t = 0; t < s.nthreads; t += 32) {
    s.warps.push_back(std::make_unique<Warp>());
    const int lanes = s.nthreads - t < 32 ? s.nthreads - t : 32;
    s.warps.back()->all = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  }
  s.doing = std::make_unique<Doing[]>(s.nthreads);
  s.shuffles = std::make_unique<uint64_t[]>(s.nthreads);
  s.dyn = L.dynamic_smem ? static_cast<unsigned char*>(std::malloc(L.dynamic_smem)) : nullptr;
  s.end_bar.reset(s.nthreads);
  prepare_block(s);
  static Pool* pool = new Pool;  // never destroyed: its threads wait for the next launch until the process ends
  pool->run(s, body);
  std::free(s.dyn);
}

void* dynamic_shared_memory() { return ctx.s->dyn; }

void syncthreads(Site site) {
  arrive_and_wait(ctx.s->block_bar, "__syncthreads", site, true, [] {});
}

int lane() { return ctx.tid % 32; }

uint64_t shuffle(unsigned mask, uint64_t bits, int src, const char* what, Site site) {
  Warp& w = *ctx.s->warps[ctx.tid / 32];
  char hex[64];
  if (mask != w.all) {
    std::snprintf(hex, sizeof hex, "0x%08x, the warp's lanes are 0x%08x", mask, w.all);
    fault(std::string(what) + " at " + where(site) + " with mask " + hex +
          ": the emulation runs full-warp shuffles only");
  }
  // Shuffle n of the warp writes buf[n % 2] and reads it after the barrier; a lane that writes
  // buf[n % 2] again (shuffle n + 2) has passed shuffle n + 1's barrier, so every lane has read it.
  const unsigned live = w.live.load();
  uint64_t* buf = w.buf[ctx.s->shuffles[ctx.tid]++ % 2];
  buf[ctx.tid % 32] = bits;
  if (live == w.all) arrive_and_wait(w.bar, what, site, false, [] {});
  if (live != w.all || w.bar.left_waiters.load()) {
    std::snprintf(hex, sizeof hex, "0x%08x", w.all & ~w.live.load());
    fault(std::string(what) + " at " + where(site) + " with lanes " + hex +
          " of its mask returned from the kernel (on a GPU: undefined)");
  }
  return buf[src];
}

}  // namespace emu
}  // namespace qsattn

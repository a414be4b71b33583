// qsattn-cuda-emu: runs one launcher of csrc/qsattn_cuda.h on the CPU emulation (cuda_emulation.h), with
// its inputs read from and its outputs written to raw little-endian files in DIR (float32, indices int64;
// row-major in the launcher's layout). Each buffer is a malloc of exactly its size, so AddressSanitizer
// sees every access outside it; the gradients and routed outputs start as the launchers expect.
//   entropy_global        DIR B N C                       f               -> out
//   entropy_local         DIR B H W C window              f               -> out
//   select                DIR B N k                       e               -> out (int64)
//   route_global          DIR B N C k Cv                  f idx v         -> out lse
//   route_global_backward DIR B N C k Cv                  f idx v out lse grad_out -> df dv
//   route_local           DIR B H W C k Cv window         f idx v         -> out lse
//   route_local_backward  DIR B H W C k Cv window         f idx v out lse grad_out -> df dv
// Exit codes: 0 done; 2 bad usage or files; 3 the launcher returned a CUDA error; 70 a fault in a kernel.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "qsattn_cuda.h"

namespace {

[[noreturn]] void die(int code, const std::string& msg) {
  std::fprintf(stderr, "qsattn-cuda-emu: %s\n", msg.c_str());
  std::exit(code);
}

struct Buffers {
  std::string dir;
  struct Buffer {
    void* p;
    std::size_t bytes;
    bool result;
  };
  std::map<std::string, Buffer> buffers;
  ~Buffers() {
    for (auto& [name, b] : buffers) std::free(b.p);
  }
  std::string path(const std::string& name) const { return dir + "/" + name + ".bin"; }

  // DIR/name.bin, which must hold exactly n elements of T.
  template <typename T>
  T* in(const std::string& name, std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    void* p = std::malloc(bytes ? bytes : 1);
    FILE* fp = std::fopen(path(name).c_str(), "rb");
    if (!fp) die(2, "cannot open " + path(name));
    const std::size_t got = std::fread(p, 1, bytes, fp);
    const bool longer = std::fgetc(fp) != EOF;
    std::fclose(fp);
    if (got != bytes || longer) die(2, path(name) + ": expected " + std::to_string(bytes) + " bytes");
    buffers[name] = {p, bytes, false};
    return static_cast<T*>(p);
  }
  // An output of n elements of T (zeros), written to DIR/name.bin at the end.
  template <typename T>
  T* result(const std::string& name, std::size_t n) {
    void* p = std::calloc(n ? n : 1, sizeof(T));
    buffers[name] = {p, n * sizeof(T), true};
    return static_cast<T*>(p);
  }
  void write() const {
    for (const auto& [name, b] : buffers) {
      if (!b.result) continue;
      FILE* fp = std::fopen(path(name).c_str(), "wb");
      if (!fp || std::fwrite(b.p, 1, b.bytes, fp) != b.bytes || std::fclose(fp) != 0)
        die(2, "cannot write " + path(name));
    }
  }
};

void check(int err, const char* op) {
  if (err != 0) die(3, std::string(op) + ": the launcher returned CUDA error " + std::to_string(err));
}

}  // namespace

int main(int argc, char** argv) {
  namespace qc = qsattn::cuda;
  static const std::map<std::string, int> kArity = {
      {"entropy_global", 3},      {"entropy_local", 5},         {"select", 3},
      {"route_global", 5},        {"route_global_backward", 5}, {"route_local", 7},
      {"route_local_backward", 7}};
  if (argc < 3 || !kArity.count(argv[1]) || argc != 3 + kArity.at(argv[1]))
    die(2, "usage: qsattn-cuda-emu OP DIR SIZES... (see csrc/emulation/emulate.cpp)");
  const std::string op = argv[1];
  std::vector<int> a;
  for (int i = 3; i < argc; ++i) a.push_back(std::atoi(argv[i]));
  Buffers io{argv[2], {}};
  using u = std::size_t;
  if (op == "entropy_global") {
    const int B = a[0], N = a[1], C = a[2];
    const float* f = io.in<float>("f", u(B) * N * C);
    check(qc::entropy_global(f, B, N, C, io.result<float>("out", u(B) * N), nullptr), argv[1]);
  } else if (op == "entropy_local") {
    const int B = a[0], H = a[1], W = a[2], C = a[3], window = a[4];
    const float* f = io.in<float>("f", u(B) * H * W * C);
    check(qc::entropy_local(f, B, H, W, C, window, io.result<float>("out", u(B) * H * W), nullptr), argv[1]);
  } else if (op == "select") {
    const int B = a[0], N = a[1], k = a[2];
    const float* e = io.in<float>("e", u(B) * N);
    void* ws = std::malloc(qc::select_workspace(B, k));
    check(qc::select(e, B, N, k, io.result<int64_t>("out", u(B) * k), ws, nullptr), argv[1]);
    std::free(ws);
  } else if (op.rfind("route_global", 0) == 0) {
    const int B = a[0], N = a[1], C = a[2], k = a[3], Cv = a[4];
    const float* f = io.in<float>("f", u(B) * N * C);
    const int64_t* idx = io.in<int64_t>("idx", u(B) * k);
    const float* v = io.in<float>("v", u(B) * N * Cv);
    void* ws = std::malloc(qc::route_global_workspace(N, k));
    if (op == "route_global") {
      check(qc::route_global(f, idx, v, B, N, C, k, Cv, io.result<float>("out", u(B) * k * Cv),
                             io.result<float>("lse", u(B) * k), ws, nullptr),
            argv[1]);
    } else {
      const float* out = io.in<float>("out", u(B) * k * Cv);
      const float* lse = io.in<float>("lse", u(B) * k);
      const float* g = io.in<float>("grad_out", u(B) * k * Cv);
      check(qc::route_global_backward(f, idx, v, out, lse, g, B, N, C, k, Cv, io.result<float>("df", u(B) * N * C),
                                      io.result<float>("dv", u(B) * N * Cv), ws, nullptr),
            argv[1]);
    }
    std::free(ws);
  } else {
    const int B = a[0], H = a[1], W = a[2], C = a[3], k = a[4], Cv = a[5], window = a[6];
    const u N = u(H) * W;
    const float* f = io.in<float>("f", B * N * C);
    const int64_t* idx = io.in<int64_t>("idx", u(B) * k);
    const float* v = io.in<float>("v", B * N * Cv);
    if (op == "route_local") {
      check(qc::route_local(f, idx, v, B, H, W, C, k, Cv, window, io.result<float>("out", u(B) * k * Cv),
                            io.result<float>("lse", u(B) * k), nullptr),
            argv[1]);
    } else {
      const float* out = io.in<float>("out", u(B) * k * Cv);
      const float* lse = io.in<float>("lse", u(B) * k);
      const float* g = io.in<float>("grad_out", u(B) * k * Cv);
      check(qc::route_local_backward(f, idx, v, out, lse, g, B, H, W, C, k, Cv, window,
                                     io.result<float>("df", B * N * C), io.result<float>("dv", B * N * Cv), nullptr),
            argv[1]);
    }
  }
  io.write();
  return 0;
}

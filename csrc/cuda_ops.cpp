// TORCH_LIBRARY_IMPL(qsattn, CUDA): the torch glue of the CUDA kernels, the overloads qsattn::<op>.native of
// the schemas in qsattn_fast/ops.py. It checks the arguments, makes the inputs contiguous float32, allocates
// outputs and workspaces with the caching allocator and calls the plain launchers of qsattn_cuda.h on the
// current stream. Compiled only when torch has CUDA (setup.py); the kernels themselves are in csrc/*.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "op_checks.h"
#include "qsattn_cuda.h"

namespace qsattn {
namespace {

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

void check_cuda_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, ": the CUDA kernels take float32, got ", t.scalar_type());
}

void check_window(int64_t window) {
  TORCH_CHECK(window <= cuda::kMaxWindow, "window: the CUDA kernels support window <= ", cuda::kMaxWindow, ", got ",
              window);
}

void launched(int err) { C10_CUDA_CHECK(static_cast<cudaError_t>(err)); }

int i32(int64_t x, const char* what) {
  TORCH_CHECK(x <= INT32_MAX, what, ": ", x, " exceeds the CUDA kernels' 32-bit sizes");
  return static_cast<int>(x);
}

at::Tensor entropy_global_cuda(const at::Tensor& f_, std::optional<std::string_view> precision) {
  check_float_input(f_, "f", 3);
  check_precision(precision);
  check_cuda_float(f_, "f");
  const c10::cuda::CUDAGuard guard(f_.device());
  const at::Tensor f = f_.contiguous();
  at::Tensor out = at::empty({f.size(0), f.size(1)}, f.options());
  launched(cuda::entropy_global(f.data_ptr<float>(), i32(f.size(0), "B"), i32(f.size(1), "N"), i32(f.size(2), "C"),
                                out.data_ptr<float>(), current_stream()));
  return out;
}

at::Tensor entropy_local_cuda(const at::Tensor& f_, int64_t H, int64_t W, int64_t window) {
  check_float_input(f_, "f", 3);
  check_cuda_float(f_, "f");
  check_grid(f_, H, W, window);
  check_window(window);
  const c10::cuda::CUDAGuard guard(f_.device());
  const at::Tensor f = f_.contiguous();
  at::Tensor out = at::empty({f.size(0), f.size(1)}, f.options());
  launched(cuda::entropy_local(f.data_ptr<float>(), i32(f.size(0), "B"), i32(H, "H"), i32(W, "W"), i32(f.size(2), "C"),
                               static_cast<int>(window), out.data_ptr<float>(), current_stream()));
  return out;
}

at::Tensor select_cuda(const at::Tensor& e_, int64_t k) {
  check_float_input(e_, "entropy", 2);
  check_cuda_float(e_, "entropy");
  TORCH_CHECK(k >= 1 && k <= e_.size(1), "k: must lie in [1, N = ", e_.size(1), "], got ", k);
  const c10::cuda::CUDAGuard guard(e_.device());
  const at::Tensor e = e_.contiguous();
  const int B = i32(e.size(0), "B"), kk = i32(k, "k");
  at::Tensor out = at::empty({e.size(0), k}, e.options().dtype(at::kLong));
  at::Tensor ws = at::empty({static_cast<int64_t>(cuda::select_workspace(B, kk))}, e.options().dtype(at::kByte));
  launched(cuda::select(e.data_ptr<float>(), B, i32(e.size(1), "N"), kk, out.data_ptr<int64_t>(), ws.data_ptr(),
                        current_stream()));
  return out;
}

// The value tensors side by side along channels, (B, ·, sum C_i) contiguous: the CUDA kernels take one value
// tensor, so several value maps are concatenated here and the results split again (the CPU kernels route
// the list without the copy).
at::Tensor cat_channels(at::TensorList t) { return t.size() == 1 ? t[0].contiguous() : at::cat(t, 2); }

// The per-map parts of a (B, ·, sum C_i) result: views of x, one per tensor of `like`.
std::vector<at::Tensor> split_channels(const at::Tensor& x, at::TensorList like) {
  std::vector<int64_t> sizes;
  for (const auto& t : like) sizes.push_back(t.size(2));
  return x.split_with_sizes(sizes, 2);
}

// The forward's results out_i (B, k, C_i), contiguous.
std::vector<at::Tensor> split_outputs(const at::Tensor& out, at::TensorList v) {
  std::vector<at::Tensor> outs;
  for (const auto& o : split_channels(out, v)) outs.push_back(o.contiguous());
  return outs;
}

// The routing ops' common preparation: checks, contiguous copies (v: the maps concatenated) and the sizes
// as ints.
struct RouteArgs {
  at::Tensor f, idx, v;
  int B, N, C, k, Cv;
  RouteArgs(const at::Tensor& f_, const at::Tensor& idx_, at::TensorList v_) {
    check_values(f_, idx_, v_);
    check_cuda_float(f_, "f");
    f = f_.contiguous();
    idx = idx_.contiguous();
    v = cat_channels(v_);
    B = i32(f.size(0), "B");
    N = i32(f.size(1), "N");
    C = i32(f.size(2), "C");
    k = i32(idx.size(1), "k");
    Cv = i32(v.size(2), "C_v");
  }
};

std::tuple<std::vector<at::Tensor>, at::Tensor> route_global_cuda(const at::Tensor& f_, const at::Tensor& idx_,
                                                                  at::TensorList v_,
                                                                  std::optional<std::string_view> precision) {
  check_precision(precision);
  const c10::cuda::CUDAGuard guard(f_.device());
  const RouteArgs a(f_, idx_, v_);
  at::Tensor out = at::empty({a.B, a.k, a.Cv}, a.f.options());
  at::Tensor lse = at::empty({a.B, a.k}, a.f.options());
  at::Tensor ws =
      at::empty({static_cast<int64_t>(cuda::route_global_workspace(a.N, a.k))}, a.f.options().dtype(at::kByte));
  launched(cuda::route_global(a.f.data_ptr<float>(), a.idx.data_ptr<int64_t>(), a.v.data_ptr<float>(), a.B, a.N, a.C,
                              a.k, a.Cv, out.data_ptr<float>(), lse.data_ptr<float>(), ws.data_ptr(),
                              current_stream()));
  return {split_outputs(out, v_), lse};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> route_global_backward_cuda(const at::Tensor& f_, const at::Tensor& idx_,
                                                                           at::TensorList v_, at::TensorList out_,
                                                                           const at::Tensor& lse, at::TensorList g_,
                                                                           std::optional<std::string_view> precision) {
  check_precision(precision);
  const c10::cuda::CUDAGuard guard(f_.device());
  const RouteArgs a(f_, idx_, v_);
  check_saved_values(f_, idx_, v_, out_, lse, g_);
  const at::Tensor out = cat_channels(out_), g = cat_channels(g_);
  at::Tensor df = at::zeros_like(a.f), dv = at::zeros_like(a.v);
  at::Tensor ws =
      at::empty({static_cast<int64_t>(cuda::route_global_workspace(a.N, a.k))}, a.f.options().dtype(at::kByte));
  launched(cuda::route_global_backward(a.f.data_ptr<float>(), a.idx.data_ptr<int64_t>(), a.v.data_ptr<float>(),
                                       out.data_ptr<float>(), lse.contiguous().data_ptr<float>(), g.data_ptr<float>(),
                                       a.B, a.N, a.C, a.k, a.Cv, df.data_ptr<float>(), dv.data_ptr<float>(),
                                       ws.data_ptr(), current_stream()));
  return {in_layout(df, f_), in_layouts(split_channels(dv, v_), v_)};
}

std::tuple<std::vector<at::Tensor>, at::Tensor> route_local_cuda(const at::Tensor& f_, const at::Tensor& idx_,
                                                                 at::TensorList v_, int64_t H, int64_t W,
                                                                 int64_t window) {
  const c10::cuda::CUDAGuard guard(f_.device());
  const RouteArgs a(f_, idx_, v_);
  check_grid(f_, H, W, window);
  check_window(window);
  at::Tensor out = at::empty({a.B, a.k, a.Cv}, a.f.options());
  at::Tensor lse = at::empty({a.B, a.k}, a.f.options());
  launched(cuda::route_local(a.f.data_ptr<float>(), a.idx.data_ptr<int64_t>(), a.v.data_ptr<float>(), a.B, i32(H, "H"),
                             i32(W, "W"), a.C, a.k, a.Cv, static_cast<int>(window), out.data_ptr<float>(),
                             lse.data_ptr<float>(), current_stream()));
  return {split_outputs(out, v_), lse};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> route_local_backward_cuda(const at::Tensor& f_, const at::Tensor& idx_,
                                                                          at::TensorList v_, at::TensorList out_,
                                                                          const at::Tensor& lse, at::TensorList g_,
                                                                          int64_t H, int64_t W, int64_t window) {
  const c10::cuda::CUDAGuard guard(f_.device());
  const RouteArgs a(f_, idx_, v_);
  check_grid(f_, H, W, window);
  check_window(window);
  check_saved_values(f_, idx_, v_, out_, lse, g_);
  const at::Tensor out = cat_channels(out_), g = cat_channels(g_);
  at::Tensor df = at::zeros_like(a.f), dv = at::zeros_like(a.v);
  launched(cuda::route_local_backward(a.f.data_ptr<float>(), a.idx.data_ptr<int64_t>(), a.v.data_ptr<float>(),
                                      out.data_ptr<float>(), lse.contiguous().data_ptr<float>(), g.data_ptr<float>(),
                                      a.B, i32(H, "H"), i32(W, "W"), a.C, a.k, a.Cv, static_cast<int>(window),
                                      df.data_ptr<float>(), dv.data_ptr<float>(), current_stream()));
  return {in_layout(df, f_), in_layouts(split_channels(dv, v_), v_)};
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CUDA, m) {
  m.impl("entropy_global.native", &entropy_global_cuda);
  m.impl("entropy_local.native", &entropy_local_cuda);
  m.impl("select.native", &select_cuda);
  m.impl("route_global.native", &route_global_cuda);
  m.impl("route_global_backward.native", &route_global_backward_cuda);
  m.impl("route_local.native", &route_local_cuda);
  m.impl("route_local_backward.native", &route_local_backward_cuda);
}

}  // namespace qsattn

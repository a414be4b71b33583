// Argument checks shared by the CPU kernels and the CUDA glue, each raising a c10::Error whose message
// starts with the name of the offending argument; and the gradients' layout (in_layout).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <vector>

namespace qsattn {

// Raises a c10::Error naming the argument unless `t` is a float32/float64 tensor of rank `dim`.
inline void check_float_input(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected float32 or float64 (cast half inputs up first), got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": dtype ", t.scalar_type(), " differs from ",
              ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, ": on ", t.device(), " but the features are on ", ref.device());
}

// idx (B, k) int64 with entries in [0, n).
inline void check_index(const at::Tensor& idx, int64_t B, int64_t n) {
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == B, "idx: expected shape (B=", B, ", k), got ", idx.sizes());
  TORCH_CHECK(idx.scalar_type() == at::kLong, "idx: expected int64 indices, got ", idx.scalar_type());
  if (idx.numel() > 0 && idx.device().is_cpu()) {  // on CUDA the API checks the range (check_finite=True)
    TORCH_CHECK(idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < n, "idx: indices must lie in [0, ", n,
                ")");
  }
}

// H, W, window for the local ops on rows f (B, N, C).
inline void check_grid(const at::Tensor& f, int64_t H, int64_t W, int64_t window) {
  TORCH_CHECK(H >= 1 && W >= 1 && H * W == f.size(1), "H, W: H*W must equal N = ", f.size(1), ", got H=", H, ", W=", W);
  TORCH_CHECK(window >= 1 && window % 2 == 1, "window: must be a positive odd number, got ", window);
}

// f (B, N, C), idx (B, k), v (B, N, C_v) of a routing op.
inline void check_route_inputs(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v) {
  check_float_input(f, "f", 3);
  check_float_input(v, "v", 3);
  check_same_dtype(v, "v", f);
  TORCH_CHECK(v.size(0) == f.size(0) && v.size(1) == f.size(1), "v: expected shape (B=", f.size(0), ", N=", f.size(1),
              ", C_v), got ", v.sizes());
  TORCH_CHECK(idx.device() == f.device(), "idx: on ", idx.device(), " but the features are on ", f.device());
  check_index(idx, f.size(0), f.size(1));
}

// Every value map v_i of a routing op's list (at least one).
inline void check_values(const at::Tensor& f, const at::Tensor& idx, at::TensorList v) {
  TORCH_CHECK(!v.empty(), "v: expected at least one value tensor");
  for (const auto& x : v) check_route_inputs(f, idx, x);
}

// The forward's outputs and the incoming gradient of a routing backward.
inline void check_saved_inputs(const at::Tensor& f, const at::Tensor& idx, const at::Tensor& v, const at::Tensor& out,
                               const at::Tensor& lse, const at::Tensor& g) {
  const int64_t B = f.size(0), k = idx.size(1);
  TORCH_CHECK(out.sizes() == at::IntArrayRef({B, k, v.size(2)}), "out: expected shape (B, k, C_v), got ", out.sizes());
  TORCH_CHECK(g.sizes() == out.sizes(), "grad_out: expected the shape of out ", out.sizes(), ", got ", g.sizes());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({B, k}), "lse: expected shape (B, k), got ", lse.sizes());
  check_same_dtype(out, "out", f);
  check_same_dtype(lse, "lse", f);
  check_same_dtype(g, "grad_out", f);
}

// The saved lists of a routing backward: one out_i and one grad_out_i per value map v_i.
inline void check_saved_values(const at::Tensor& f, const at::Tensor& idx, at::TensorList v, at::TensorList out,
                               const at::Tensor& lse, at::TensorList g) {
  TORCH_CHECK(out.size() == v.size() && g.size() == v.size(), "out, grad_out: expected one tensor per value map (",
              v.size(), "), got ", out.size(), " and ", g.size());
  for (size_t i = 0; i < v.size(); ++i) check_saved_inputs(f, idx, v[i], out[i], lse, g[i]);
}

// `str? precision` of the global ops: the native kernels compute in plain IEEE arithmetic only.
inline void check_precision(std::optional<std::string_view> precision) {
  TORCH_CHECK(!precision || *precision == "ieee", "precision: the native kernels support only None or \"ieee\", got \"",
              *precision, "\"");
}

// A gradient t in the layout of its input `like` (the contract, qsattn_fast/ops.py), so that autograd hands it
// on without a transposing copy; a copy only where the strides differ.
inline at::Tensor in_layout(const at::Tensor& t, const at::Tensor& like) {
  return t.strides() == like.strides() ? t : at::empty_like(like).copy_(t);
}

// Each gradient dv_i in the layout of its v_i.
inline std::vector<at::Tensor> in_layouts(std::vector<at::Tensor> dv, at::TensorList v) {
  for (size_t i = 0; i < dv.size(); ++i) dv[i] = in_layout(dv[i], v[i]);
  return dv;
}

}  // namespace qsattn

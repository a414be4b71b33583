// Operator schemas of the compiled extension qsattn_fast._C (namespace `qsattn`).
// Feature maps enter as rows f (B, N, C), N = H*W, row n = h*W + w, float32 or float64; entropies and
// log-sum-exps come back in the features' dtype. The CPU kernels register in *_cpu.cpp, the CUDA ones
// in cuda_ops.cpp; fake (meta) kernels and autograd are registered from Python (qsattn_fast/native.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(qsattn, m) {
  // (B, N) entropy of each row of softmax(f f^T).
  m.def("entropy_global(Tensor f) -> Tensor");
  // (B, N) entropy of the softmax over each zero-padded window x window neighbourhood.
  m.def("entropy_local(Tensor f, int H, int W, int window) -> Tensor");
  // (B, k) int64: argsort(entropy, stable=True)[:, :k].
  m.def("select(Tensor entropy, int k) -> Tensor");
  // out_i = softmax(f[idx] f^T) v_i (B, k, C_i) for every value map v_i (B, N, C_i), routed by the
  // same attention rows, and the row log-sum-exps (B, k).
  m.def("route_global(Tensor f, Tensor idx, Tensor[] v) -> (Tensor[], Tensor)");
  // (df, [dv_i]) of route_global, recomputing the attention rows from lse.
  m.def("route_global_backward(Tensor f, Tensor idx, Tensor[] v, Tensor[] out, Tensor lse, Tensor[] grad_out)"
        " -> (Tensor, Tensor[])");
  // out = softmax over the window x window neighbourhood of each idx, applied to the same
  // neighbourhood of v (zero outside the map), (B, k, C_v), and the log-sum-exps (B, k).
  m.def("route_local(Tensor f, Tensor idx, Tensor v, int H, int W, int window) -> (Tensor, Tensor)");
  m.def("route_local_backward(Tensor f, Tensor idx, Tensor v, Tensor out, Tensor lse, Tensor grad_out, "
        "int H, int W, int window) -> (Tensor, Tensor)");
}

// Importing qsattn_fast._C runs the static registrations above; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "qsattn operators (torch.ops.qsattn)", -1, nullptr};
  return PyModule_Create(&def);
}

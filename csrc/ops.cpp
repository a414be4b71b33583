// Module init of the compiled extension qsattn_fast._C. The operator schemas (namespace `qsattn`) live in
// qsattn_fast/ops.py (docs/design.md §7), which defines them before this module is imported; the
// extension only implements the overloads `qsattn::<op>.native`: CPU kernels in *_cpu.cpp, CUDA ones in
// cuda_ops.cpp. Fake (meta) kernels and autograd are registered in qsattn_fast/ops.py as well.
#include <Python.h>

// Importing qsattn_fast._C runs the static kernel registrations of the other files; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "qsattn operators (torch.ops.qsattn.<op>.native)", -1,
                            nullptr};
  return PyModule_Create(&def);
}

// Module init of the compiled extension qsattn_fast._C. The operator schemas (namespace `qsattn`) live in
// qsattn_fast/ops.py (docs/design.md §7), which defines them before this module is imported; the
// extension only implements the overloads `qsattn::<op>.native`: CPU kernels in *_cpu.cpp, CUDA ones in
// cuda_ops.cpp. Fake (meta) kernels and autograd are registered in qsattn_fast/ops.py as well.
#include <Python.h>

#include "cpu_common.h"
#include "qsattn_cuda.h"

// Importing qsattn_fast._C runs the static kernel registrations of the other files. The module's own
// functions serve the benchmarks' floor (exp_probe_gexps(threads, seconds), cpu_isa()), the tests
// (fast_exp_f32, set_cpu_level) and both (constants).
static PyObject* py_exp_probe_gexps(PyObject*, PyObject* args) {
  int threads;
  double seconds;
  if (!PyArg_ParseTuple(args, "id", &threads, &seconds)) return nullptr;
  double rate;
  Py_BEGIN_ALLOW_THREADS rate = qsattn::exp_probe_gexps(threads, seconds);
  Py_END_ALLOW_THREADS return PyFloat_FromDouble(rate);
}

static PyObject* py_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(qsattn::cpu_isa()); }

static PyObject* py_set_cpu_level(PyObject*, PyObject* args) {
  int level;
  if (!PyArg_ParseTuple(args, "i", &level)) return nullptr;
  return PyLong_FromLong(qsattn::set_cpu_level(level));
}

// The kernels' constants that the tests and the native backend's limits use, by name.
static PyObject* py_constants(PyObject*, PyObject*) {
  return Py_BuildValue("{s:L,s:L,s:i}", "entropy_global_tile",
                       static_cast<long long>(qsattn::entropy_global_tiling::TS), "entropy_global_small_c",
                       static_cast<long long>(qsattn::entropy_global_tiling::SMALL_C), "cuda_max_window",
                       qsattn::cuda::kMaxWindow);
}

// fast_exp over a buffer of float32 (the tests compare it with a float64 exp).
static PyObject* py_fast_exp_f32(PyObject*, PyObject* args) {
  Py_buffer in;
  float lo;
  if (!PyArg_ParseTuple(args, "y*f", &in, &lo)) return nullptr;
  const Py_ssize_t n = in.len / static_cast<Py_ssize_t>(sizeof(float));
  PyObject* out = PyBytes_FromStringAndSize(nullptr, n * static_cast<Py_ssize_t>(sizeof(float)));
  if (out)
    qsattn::fast_exp_buffer(static_cast<const float*>(in.buf), n, lo, reinterpret_cast<float*>(PyBytes_AS_STRING(out)));
  PyBuffer_Release(&in);
  return out;
}

static PyMethodDef methods[] = {
    {"exp_probe_gexps", py_exp_probe_gexps, METH_VARARGS,
     "exp_probe_gexps(threads, seconds) -> G exp/s of the register-resident vectorised exp (the floor's rate)"},
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "cpu_isa() -> the instruction-set level the CPU kernels dispatch to"},
    {"set_cpu_level", py_set_cpu_level, METH_VARARGS,
     "set_cpu_level(level) -> level in use: run the float loops at x86-64 (0), -v3 (1) or -v4 (2) where the CPU "
     "has it, or at the detected level (-1); for the tests and benchmarks"},
    {"constants", py_constants, METH_NOARGS,
     "constants() -> {entropy_global_tile, entropy_global_small_c, cuda_max_window}: the kernels' tile edge, "
     "small-channel bound and the CUDA kernels' largest window"},
    {"fast_exp_f32", py_fast_exp_f32, METH_VARARGS,
     "fast_exp_f32(float32 bytes, lo) -> bytes: the kernels' exp of each value, 0 below lo (for the tests)"},
    {nullptr, nullptr, 0, nullptr}};

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "qsattn operators (torch.ops.qsattn.<op>.native)", -1,
                            methods};
  return PyModule_Create(&def);
}

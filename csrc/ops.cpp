// One registration file: the schemas of genperf's kernels (torch.ops.genperf_kernels.*) and the
// Python module genperf._C. The CPU kernels live in *_cpu.cpp, the CUDA kernels in *_cuda.cu.
// The module is plain CPython: pybind11 (torch/extension.h) would double this file's compile time for one function.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(genperf_kernels, m) {
  // x, s_raw, t: (N, C, ...), each sample contiguous (a channel slice of a larger tensor will do), L elements per
  // (n, c) plane; outputs contiguous; scale: (C,) in the accumulation dtype (fp32, fp64 for fp64 x); mask: None or
  // (1|N, 1|C, L) fp32 contiguous; bias: None or (2C,) in the accumulation dtype, added to s_raw (first C) and t
  // (last C) per channel: the s/t network's last bias, fused here. The backward's bias gradient is (0,) without one.
  m.def("coupling_forward(Tensor x, Tensor s_raw, Tensor t, Tensor scale, Tensor? mask, Tensor? bias, bool reverse) "
        "-> (Tensor, Tensor)");
  m.def("coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor s_raw, Tensor t, Tensor scale, "
        "Tensor? mask, Tensor? bias, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // coupling_forward with its gradient (coupling_autograd.cpp): what genperf.ops calls for the cpu and cuda backends.
  m.def("affine_coupling(Tensor x, Tensor s_raw, Tensor t, Tensor scale, Tensor? mask, Tensor? bias, bool reverse) "
        "-> (Tensor, Tensor)");
  // real, fake, grad: (N, L) contiguous; eps: (N,).
  m.def("gp_interpolate(Tensor real, Tensor fake, Tensor eps) -> Tensor");
  // (weight * mean_n (sqrt(|grad_n|^2 + norm_eps) - 1)^2, per-sample |grad_n|^2 for the backward), in one pass.
  m.def("gp_penalty(Tensor grad, float weight, float norm_eps) -> (Tensor, Tensor)");
  m.def("gp_penalty_backward(Tensor grad_out, Tensor grad, Tensor sumsq, float weight, float norm_eps) -> Tensor");
}

static PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef GENPERF_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"has_cuda", has_cuda, METH_NOARGS, "whether genperf._C was compiled with its CUDA kernels"},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "genperf's C++/CUDA kernels (torch.ops.genperf_kernels)",
                                 -1, methods};

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }

// Shared by the CPU and CUDA kernels: input validation (messages name the argument), dtype dispatch.
#pragma once
// ATen and the op registry only: torch/extension.h (pybind11, the C++ frontend) triples the compile time.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace genperf {

#define GENPERF_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// Calls f.template operator()<HAS_MASK, REVERSE>() for the runtime flags.
template <typename F>
void with_flags(bool has_mask, bool reverse, const F& f) {
  if (has_mask) {
    reverse ? f.template operator()<true, true>() : f.template operator()<true, false>();
  } else {
    reverse ? f.template operator()<false, true>() : f.template operator()<false, false>();
  }
}

// The one dispatch of every coupling kernel: calls f.template operator()<x_t, st_t, HAS_MASK, REVERSE>()
// for x's dtype, s_raw's (and t's) dtype and the runtime flags.
template <typename F>
void dispatch_coupling(const at::Tensor& x, const at::Tensor& s_raw, bool has_mask, bool reverse, const F& f) {
  GENPERF_DISPATCH_FLOATS(x.scalar_type(), "affine_coupling", [&] {
    using x_t = scalar_t;
    GENPERF_DISPATCH_FLOATS(s_raw.scalar_type(), "affine_coupling", [&] {
      using st_t = scalar_t;
      with_flags(has_mask, reverse, [&]<bool HAS_MASK, bool REVERSE>() {
        f.template operator()<x_t, st_t, HAS_MASK, REVERSE>();
      });
    });
  });
}

// Elements per (n, c) plane of a contiguous (N, C, ...) tensor.
inline int64_t plane_size(const at::Tensor& x) {
  const int64_t planes = x.size(0) * x.size(1);
  return planes == 0 ? 0 : x.numel() / planes;
}

// Per-sample strides of x, s_raw and t (their samples may sit inside larger tensors; planes are contiguous).
struct SampleStrides {
  int64_t x, r, t;
};

// Every op's argument checks (checks.cpp). They are compiled by the host C++ compiler only, whatever the device
// of the kernel calling them, so that the CUDA kernels' translation units never build an error message; each
// check comes before any access to the tensors' memory, device first, and names the argument.
SampleStrides check_coupling_forward_args(const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                          const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                          const c10::optional<at::Tensor>& bias, c10::DeviceType device);
SampleStrides check_coupling_backward_args(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                           const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                           const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                           const c10::optional<at::Tensor>& bias, c10::DeviceType device);
void check_gp_interpolate_args(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps,
                               c10::DeviceType device);
void check_gp_penalty_args(const at::Tensor& grad, c10::DeviceType device);
void check_gp_penalty_backward_args(const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& sumsq,
                                    c10::DeviceType device);

// Offsets of one (n, c) plane of the mask, which may be shared over N and/or C.
inline int64_t mask_plane(const at::Tensor& m, int64_t n, int64_t c) {
  return ((m.size(0) > 1 ? n : 0) * m.size(1) + (m.size(1) > 1 ? c : 0)) * m.size(2);
}

}  // namespace genperf

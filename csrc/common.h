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

// Elements from one sample to the next of an (N, C, ...) tensor each of whose samples is one contiguous
// block, as a contiguous tensor or a channel slice of one (st.chunk(2, 1)) is; fails for any other layout.
inline int64_t sample_stride(const char* name, const at::Tensor& v) {
  int64_t block = 1;
  for (int64_t d = v.dim() - 1; d >= 1; --d) {
    TORCH_CHECK(v.size(d) == 1 || v.stride(d) == block, "coupling: ", name,
                " must be contiguous within each sample, got strides ", v.strides(), " for shape ", v.sizes());
    block *= v.size(d);
  }
  TORCH_CHECK(v.size(0) <= 1 || v.stride(0) >= block, "coupling: ", name, " has overlapping samples (strides ",
              v.strides(), ")");
  return v.size(0) <= 1 ? block : v.stride(0);
}

// Per-sample strides of x, s_raw and t (their samples may sit inside larger tensors; planes are contiguous).
struct SampleStrides {
  int64_t x, r, t;
};

inline SampleStrides check_coupling_inputs(const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                           const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                           c10::DeviceType device) {
  TORCH_CHECK(x.dim() >= 2, "coupling: x must be (N, C, ...), got ", x.sizes());
  TORCH_CHECK(x.device().type() == device, "coupling: x is on ", x.device(), ", this kernel runs on ", device);
  for (const auto& [name, v] : {std::pair<const char*, const at::Tensor*>{"s_raw", &s_raw}, {"t", &t}}) {
    TORCH_CHECK(v->sizes() == x.sizes(), "coupling: ", name, " has shape ", v->sizes(), ", expected ", x.sizes());
    TORCH_CHECK(v->device() == x.device(), "coupling: ", name, " is on ", v->device(), ", x on ", x.device());
  }
  const SampleStrides strides{sample_stride("x", x), sample_stride("s_raw", s_raw), sample_stride("t", t)};
  TORCH_CHECK(s_raw.scalar_type() == t.scalar_type(), "coupling: t is ", t.scalar_type(), " but s_raw is ",
              s_raw.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == x.size(1), "coupling: scale must be (", x.size(1), ",), got ",
              scale.sizes());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(scale.scalar_type() == acc && scale.is_contiguous() && scale.device() == x.device(),
              "coupling: scale must be a contiguous ", acc, " tensor on x's device, got ", scale.scalar_type());
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK(m.dim() == 3 && (m.size(0) == 1 || m.size(0) == x.size(0)) &&
                    (m.size(1) == 1 || m.size(1) == x.size(1)) && m.size(2) == plane_size(x),
                "coupling: mask must be (1|N, 1|C, L), got ", m.sizes(), " for x of ", x.sizes());
    TORCH_CHECK(m.scalar_type() == at::kFloat && m.is_contiguous() && m.device() == x.device(),
                "coupling: mask must be a contiguous float32 tensor on x's device");
  }
  return strides;
}

inline void check_rows(const char* op, const char* name, const at::Tensor& v, const at::Tensor& like,
                       c10::DeviceType device) {
  TORCH_CHECK(v.dim() == 2, op, ": ", name, " must be (N, L), got ", v.sizes());
  TORCH_CHECK(v.device().type() == device, op, ": ", name, " is on ", v.device(), ", this kernel runs on ", device);
  TORCH_CHECK(v.sizes() == like.sizes(), op, ": ", name, " has shape ", v.sizes(), ", expected ", like.sizes());
  TORCH_CHECK(v.scalar_type() == like.scalar_type(), op, ": ", name, " is ", v.scalar_type(), ", expected ",
              like.scalar_type());
  TORCH_CHECK(v.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Offsets of one (n, c) plane of the mask, which may be shared over N and/or C.
inline int64_t mask_plane(const at::Tensor& m, int64_t n, int64_t c) {
  return ((m.size(0) > 1 ? n : 0) * m.size(1) + (m.size(1) > 1 ? c : 0)) * m.size(2);
}

}  // namespace genperf

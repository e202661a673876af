// The argument checks of every genperf kernel, for CPU and CUDA alike (declared in common.h). A check fails with
// a RuntimeError naming the argument and what was expected; the device comes first, and nothing reads a
// tensor's memory before all of its checks have passed.
#include "common.h"

namespace genperf {
namespace {

void check_device(const char* op, const char* name, const at::Tensor& v, c10::DeviceType device) {
  TORCH_CHECK(v.device().type() == device, op, ": ", name, " is on ", v.device(), ", this kernel runs on ", device);
}

void check_same_device(const char* op, const char* name, const at::Tensor& v, const at::Tensor& like) {
  TORCH_CHECK(v.device() == like.device(), op, ": ", name, " is on ", v.device(), ", expected ", like.device());
}

// Elements from one sample to the next of an (N, C, ...) tensor each of whose samples is one contiguous block,
// as a contiguous tensor or a channel slice of one (st.chunk(2, 1)) is; fails for any other layout.
int64_t sample_stride(const char* name, const at::Tensor& v) {
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

void check_rows(const char* op, const char* name, const at::Tensor& v, const at::Tensor& like,
                c10::DeviceType device) {
  check_device(op, name, v, device);
  check_same_device(op, name, v, like);
  TORCH_CHECK(v.dim() == 2, op, ": ", name, " must be (N, L), got ", v.sizes());
  TORCH_CHECK(v.sizes() == like.sizes(), op, ": ", name, " has shape ", v.sizes(), ", expected ", like.sizes());
  TORCH_CHECK(v.scalar_type() == like.scalar_type(), op, ": ", name, " is ", v.scalar_type(), ", expected ",
              like.scalar_type());
  TORCH_CHECK(v.is_contiguous(), op, ": ", name, " must be contiguous");
}

at::ScalarType accumulation_type(const at::Tensor& v) {
  return v.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

SampleStrides check_coupling_forward_args(const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                          const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                          const c10::optional<at::Tensor>& bias, c10::DeviceType device) {
  const char* op = "coupling";
  check_device(op, "x", x, device);
  check_same_device(op, "s_raw", s_raw, x);
  check_same_device(op, "t", t, x);
  check_same_device(op, "scale", scale, x);
  if (mask.has_value()) check_same_device(op, "mask", *mask, x);
  if (bias.has_value()) check_same_device(op, "bias", *bias, x);
  TORCH_CHECK(x.dim() >= 2, "coupling: x must be (N, C, ...), got ", x.sizes());
  TORCH_CHECK(s_raw.sizes() == x.sizes(), "coupling: s_raw has shape ", s_raw.sizes(), ", expected ", x.sizes());
  TORCH_CHECK(t.sizes() == x.sizes(), "coupling: t has shape ", t.sizes(), ", expected ", x.sizes());
  const SampleStrides strides{sample_stride("x", x), sample_stride("s_raw", s_raw), sample_stride("t", t)};
  TORCH_CHECK(s_raw.scalar_type() == t.scalar_type(), "coupling: t is ", t.scalar_type(), " but s_raw is ",
              s_raw.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == x.size(1), "coupling: scale must be (", x.size(1), ",), got ",
              scale.sizes());
  const auto acc = accumulation_type(x);
  TORCH_CHECK(scale.scalar_type() == acc && scale.is_contiguous(), "coupling: scale must be a contiguous ", acc,
              " tensor, got ", scale.scalar_type());
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK(m.dim() == 3 && (m.size(0) == 1 || m.size(0) == x.size(0)) &&
                    (m.size(1) == 1 || m.size(1) == x.size(1)) && m.size(2) == plane_size(x),
                "coupling: mask must be (1|N, 1|C, L), got ", m.sizes(), " for x of ", x.sizes());
    TORCH_CHECK(m.scalar_type() == at::kFloat && m.is_contiguous(), "coupling: mask must be a contiguous float32 "
                "tensor, got ", m.scalar_type());
  }
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == 2 * x.size(1) && b.scalar_type() == acc && b.is_contiguous(),
                "coupling: bias must be a contiguous (", 2 * x.size(1), ",) ", acc, " tensor, got ", b.sizes(), " ",
                b.scalar_type());
  }
  return strides;
}

SampleStrides check_coupling_backward_args(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                           const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                           const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                           const c10::optional<at::Tensor>& bias, c10::DeviceType device) {
  const auto strides = check_coupling_forward_args(x, s_raw, t, scale, mask, bias, device);
  check_same_device("coupling_backward", "grad_y", grad_y, x);
  check_same_device("coupling_backward", "grad_logdet", grad_logdet, x);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() && grad_y.is_contiguous(),
              "coupling_backward: grad_y must match x (shape, dtype, contiguous), got ", grad_y.sizes(), " ",
              grad_y.scalar_type());
  const auto acc = accumulation_type(x);
  TORCH_CHECK(grad_logdet.dim() == 1 && grad_logdet.size(0) == x.size(0) && grad_logdet.scalar_type() == acc &&
                  grad_logdet.is_contiguous(),
              "coupling_backward: grad_logdet must be a contiguous (", x.size(0), ",) ", acc, " tensor, got ",
              grad_logdet.sizes(), " ", grad_logdet.scalar_type());
  return strides;
}

void check_gp_interpolate_args(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps,
                               c10::DeviceType device) {
  check_rows("gp_interpolate", "real", real, real, device);
  check_rows("gp_interpolate", "fake", fake, real, device);
  check_same_device("gp_interpolate", "eps", eps, real);
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == real.size(0) && eps.scalar_type() == real.scalar_type() &&
                  eps.is_contiguous(),
              "gp_interpolate: eps must be a contiguous (", real.size(0), ",) tensor of real's dtype, got ",
              eps.sizes(), " ", eps.scalar_type());
}

void check_gp_penalty_args(const at::Tensor& grad, c10::DeviceType device) {
  check_rows("gp_penalty", "grad", grad, grad, device);
}

void check_gp_penalty_backward_args(const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& sumsq,
                                    c10::DeviceType device) {
  check_rows("gp_penalty_backward", "grad", grad, grad, device);
  check_same_device("gp_penalty_backward", "sumsq", sumsq, grad);
  check_same_device("gp_penalty_backward", "grad_out", grad_out, grad);
  const auto acc = accumulation_type(grad);
  TORCH_CHECK(sumsq.dim() == 1 && sumsq.size(0) == grad.size(0) && sumsq.scalar_type() == acc &&
                  sumsq.is_contiguous(),
              "gp_penalty_backward: sumsq must be a contiguous (", grad.size(0), ",) ", acc, " tensor, got ",
              sumsq.sizes(), " ", sumsq.scalar_type());
  TORCH_CHECK(grad_out.numel() == 1 && grad_out.scalar_type() == at::kFloat,
              "gp_penalty_backward: grad_out must be one float32 value, got ", grad_out.sizes(), " ",
              grad_out.scalar_type());
}

}  // namespace genperf

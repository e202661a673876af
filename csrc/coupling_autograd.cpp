// genperf_kernels::affine_coupling: the coupling with its backward wired in C++, so an eager call
// costs one dispatcher call each way instead of the Python custom-op machinery (about 0.1 ms per
// coupling). The device kernels are coupling_forward / coupling_backward (*_cpu.cpp, *_cuda.cu).
#include <torch/autograd.h>
#include <torch/library.h>

namespace genperf {
namespace {

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                                const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                                const c10::optional<at::Tensor>& bias, bool reverse) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("genperf_kernels::coupling_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, bool)>();
  return op.call(x, s_raw, t, scale, mask, bias, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& s_raw,
    const at::Tensor& t, const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, bool reverse) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("genperf_kernels::coupling_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                           const c10::optional<at::Tensor>&, bool)>();
  return op.call(grad_y, grad_logdet, x, s_raw, t, scale, mask, bias, reverse);
}

c10::optional<at::Tensor> defined_or_none(const at::Tensor& v) {
  return v.defined() ? c10::optional<at::Tensor>(v) : c10::nullopt;
}

class CouplingFunction : public torch::autograd::Function<CouplingFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& s_raw, const at::Tensor& t,
                                                const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                                const c10::optional<at::Tensor>& bias, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, logdet] = call_forward(x, s_raw, t, scale, mask, bias, reverse);
    ctx->save_for_backward({x, s_raw, t, scale, mask.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["reverse"] = reverse;
    return {y, logdet};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto bias = defined_or_none(saved[5]);
    // Autograd hands over zero-filled or strided grads; the kernels take contiguous ones.
    auto [dx, dr, dt, dscale, dbias] =
        call_backward(grads[0].contiguous(), grads[1].contiguous(), saved[0], saved[1], saved[2], saved[3],
                      defined_or_none(saved[4]), bias, ctx->saved_data["reverse"].toBool());
    return {dx, dr, dt, dscale, at::Tensor(), bias.has_value() ? dbias : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> coupling_autograd(const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
                                                     const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
                                                     const c10::optional<at::Tensor>& bias, bool reverse) {
  auto out = CouplingFunction::apply(x, s_raw, t, scale, mask, bias, reverse);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(genperf_kernels, Autograd, m) { m.impl("affine_coupling", &coupling_autograd); }
// Below autograd (no_grad tensors under inference mode, fake tensors, other dispatch keys) it is the forward kernel.
TORCH_LIBRARY_IMPL(genperf_kernels, CompositeExplicitAutograd, m) { m.impl("affine_coupling", &call_forward); }

}  // namespace genperf

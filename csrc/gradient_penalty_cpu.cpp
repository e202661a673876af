// WGAN-GP pieces on CPU: per-sample interpolation, the penalty from the critic's input gradient (per-sample sums
// of squares, norms and their mean in one pass), and the penalty's backward in one pass over that gradient.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "common.h"

// The loops sit inside AT_DISPATCH macro arguments, where only the _Pragma operator can carry a pragma.

namespace genperf {
namespace {


at::Tensor gp_interpolate_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_gp_interpolate_args(real, fake, eps, c10::DeviceType::CPU);
  const int64_t N = real.size(0), L = real.size(1);
  auto out = at::empty_like(real);
  GENPERF_DISPATCH_FLOATS(real.scalar_type(), "gp_interpolate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *rd = real.data_ptr<scalar_t>(), *fd = fake.data_ptr<scalar_t>(), *ed = eps.data_ptr<scalar_t>();
    scalar_t* od = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const acc_t e = static_cast<acc_t>(ed[n]);
        _Pragma("omp simd")
        for (int64_t i = n * L; i < (n + 1) * L; ++i) {
          const acc_t f = static_cast<acc_t>(fd[i]);
          od[i] = static_cast<scalar_t>(f + e * (static_cast<acc_t>(rd[i]) - f));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gp_penalty_cpu(const at::Tensor& grad, double weight, double norm_eps) {
  check_gp_penalty_args(grad, c10::DeviceType::CPU);
  const int64_t N = grad.size(0), L = grad.size(1);
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto sumsq = at::empty({N}, grad.options().dtype(acc_type));
  auto penalty = at::empty({}, grad.options().dtype(acc_type));
  GENPERF_DISPATCH_FLOATS(grad.scalar_type(), "gp_penalty_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gd = grad.data_ptr<scalar_t>();
    acc_t* sd = sumsq.data_ptr<acc_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        acc_t sum = 0;
        _Pragma("omp simd reduction(+ : sum)")
        for (int64_t i = n * L; i < (n + 1) * L; ++i) {
          const acc_t g = static_cast<acc_t>(gd[i]);
          sum += g * g;
        }
        sd[n] = sum;
      }
    });
    double total = 0;  // N terms, in order: the same value for any thread count
    for (int64_t n = 0; n < N; ++n) {
      const double norm = std::sqrt(static_cast<double>(sd[n]) + norm_eps);
      total += (norm - 1.0) * (norm - 1.0);
    }
    *penalty.data_ptr<acc_t>() = static_cast<acc_t>(N > 0 ? weight * total / static_cast<double>(N) : 0.0);
  });
  return {penalty, sumsq};
}

at::Tensor gp_penalty_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& sumsq,
                                   double weight, double norm_eps) {
  check_gp_penalty_backward_args(grad_out, grad, sumsq, c10::DeviceType::CPU);
  const int64_t N = grad.size(0), L = grad.size(1);
  auto dg = at::empty_like(grad);
  const double go = grad_out.item<double>();
  auto ss = sumsq.to(at::kDouble);
  const double* sd = ss.data_ptr<double>();
  GENPERF_DISPATCH_FLOATS(grad.scalar_type(), "gp_penalty_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gd = grad.data_ptr<scalar_t>();
    scalar_t* od = dg.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        // d/dg of weight * mean_n (||g_n|| - 1)^2 = weight * 2 (norm - 1) / (N norm) * g
        const double norm = std::sqrt(sd[n] + norm_eps);
        const acc_t coef = static_cast<acc_t>(go * weight * 2.0 * (norm - 1.0) / (static_cast<double>(N) * norm));
        _Pragma("omp simd")
        for (int64_t i = n * L; i < (n + 1) * L; ++i) od[i] = static_cast<scalar_t>(coef * static_cast<acc_t>(gd[i]));
      }
    });
  });
  return dg;
}

}  // namespace

TORCH_LIBRARY_IMPL(genperf_kernels, CPU, m) {
  m.impl("gp_interpolate", &gp_interpolate_cpu);
  m.impl("gp_penalty", &gp_penalty_cpu);
  m.impl("gp_penalty_backward", &gp_penalty_backward_cpu);
}

}  // namespace genperf

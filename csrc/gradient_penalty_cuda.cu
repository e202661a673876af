// WGAN-GP pieces on CUDA: per-sample interpolation, the penalty from the critic's input gradient in one kernel
// (a block per sample: its sum of squares, norm and term of the mean, one atomic add), and the penalty's backward
// in one pass.
#include "common.h"
#include "cuda_common.cuh"

namespace genperf {
namespace {

template <typename scalar_t>
__global__ void interpolate_kernel(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake,
                                   const scalar_t* __restrict__ eps, scalar_t* __restrict__ out, int64_t L) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = blockIdx.x, base = n * L;
  const acc_t e = static_cast<acc_t>(eps[n]);
  for (int64_t i = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; i < L; i += (int64_t)gridDim.y * blockDim.x) {
    const acc_t f = static_cast<acc_t>(fake[base + i]);
    out[base + i] = static_cast<scalar_t>(f + e * (static_cast<acc_t>(real[base + i]) - f));
  }
}

// One block per sample: its sum of squares, then its term of the mean, added to the penalty by one atomic.
template <typename scalar_t>
__global__ void penalty_kernel(const scalar_t* __restrict__ grad, at::opmath_type<scalar_t>* __restrict__ sumsq,
                               at::opmath_type<scalar_t>* __restrict__ penalty, int64_t N, int64_t L, double weight,
                               double norm_eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = blockIdx.x, base = n * L;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad[base + i]);
    sum += g * g;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    sumsq[n] = sum;
    const acc_t gap = sqrt(sum + static_cast<acc_t>(norm_eps)) - acc_t(1);
    atomicAdd(penalty, static_cast<acc_t>(weight) * gap * gap / static_cast<acc_t>(N));
  }
}

template <typename scalar_t>
__global__ void penalty_bwd_kernel(const float* __restrict__ grad_out, const scalar_t* __restrict__ grad,
                                   const at::opmath_type<scalar_t>* __restrict__ sumsq, scalar_t* __restrict__ dg,
                                   int64_t N, int64_t L, double weight, double norm_eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = blockIdx.x, base = n * L;
  // d/dg of weight * mean_n (||g_n|| - 1)^2 = weight * 2 (norm - 1) / (N norm) * g
  const acc_t norm = sqrt(sumsq[n] + static_cast<acc_t>(norm_eps));
  const acc_t coef = static_cast<acc_t>(grad_out[0]) * static_cast<acc_t>(weight) * acc_t(2) * (norm - acc_t(1)) /
                     (static_cast<acc_t>(N) * norm);
  for (int64_t i = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; i < L; i += (int64_t)gridDim.y * blockDim.x)
    dg[base + i] = static_cast<scalar_t>(coef * static_cast<acc_t>(grad[base + i]));
}

at::Tensor gp_interpolate_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_gp_interpolate_args(real, fake, eps, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(real.device());
  auto out = at::empty_like(real);
  if (real.numel() == 0) return out;
  const dim3 grid(static_cast<unsigned>(real.size(0)), row_blocks(real.size(1)));
  GENPERF_DISPATCH_FLOATS(real.scalar_type(), "gp_interpolate_cuda", [&] {
    interpolate_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        real.data_ptr<scalar_t>(), fake.data_ptr<scalar_t>(), eps.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        real.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gp_penalty_cuda(const at::Tensor& grad, double weight, double norm_eps) {
  check_gp_penalty_args(grad, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto sumsq = at::empty({grad.size(0)}, grad.options().dtype(acc_type));
  auto penalty = at::zeros({}, grad.options().dtype(acc_type));
  if (grad.size(0) == 0) return {penalty, sumsq};
  GENPERF_DISPATCH_FLOATS(grad.scalar_type(), "gp_penalty_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    penalty_kernel<scalar_t><<<static_cast<unsigned>(grad.size(0)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<scalar_t>(), sumsq.data_ptr<acc_t>(), penalty.data_ptr<acc_t>(), grad.size(0), grad.size(1),
        weight, norm_eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {penalty, sumsq};
}

at::Tensor gp_penalty_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad, const at::Tensor& sumsq,
                                    double weight, double norm_eps) {
  check_gp_penalty_backward_args(grad_out, grad, sumsq, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto dg = at::empty_like(grad);
  if (grad.numel() == 0) return dg;
  const dim3 grid(static_cast<unsigned>(grad.size(0)), row_blocks(grad.size(1)));
  GENPERF_DISPATCH_FLOATS(grad.scalar_type(), "gp_penalty_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    penalty_bwd_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad_out.data_ptr<float>(), grad.data_ptr<scalar_t>(), sumsq.data_ptr<acc_t>(), dg.data_ptr<scalar_t>(),
        grad.size(0), grad.size(1), weight, norm_eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dg;
}

}  // namespace

TORCH_LIBRARY_IMPL(genperf_kernels, CUDA, m) {
  m.impl("gp_interpolate", &gp_interpolate_cuda);
  m.impl("gp_penalty", &gp_penalty_cuda);
  m.impl("gp_penalty_backward", &gp_penalty_backward_cuda);
}

}  // namespace genperf

// RealNVP affine coupling + log-det on CUDA: one pass forward, one pass backward. Grid: x = the
// (n, c) plane, y = blocks along it; per-sample log-det and per-channel scale gradient are one
// block reduction and one atomic add per block. tanh/exp are recomputed in the backward.
#include "common.h"
#include "cuda_common.cuh"

namespace genperf {
namespace {

template <typename x_t, typename st_t, bool HAS_MASK, bool REVERSE>
__global__ void coupling_fwd_kernel(const x_t* __restrict__ x, const st_t* __restrict__ r, const st_t* __restrict__ t,
                                    const at::opmath_type<x_t>* __restrict__ scale,
                                    const at::opmath_type<x_t>* __restrict__ bias, const float* __restrict__ mask,
                                    x_t* __restrict__ y, at::opmath_type<x_t>* __restrict__ logdet, int64_t C,
                                    int64_t L, SampleStrides ss, int64_t mask_sn, int64_t mask_sc) {
  using acc_t = at::opmath_type<x_t>;
  const int64_t plane = blockIdx.x, n = plane / C, c = plane % C, base = plane * L;
  x += n * ss.x + c * L;
  r += n * ss.r + c * L;
  t += n * ss.t + c * L;
  const acc_t sc = scale[c], s_bias = bias ? bias[c] : acc_t(0), t_bias = bias ? bias[C + c] : acc_t(0);
  const float* m = HAS_MASK ? mask + n * mask_sn + c * mask_sc : nullptr;
  acc_t sum = 0;
  for (int64_t i = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; i < L; i += (int64_t)gridDim.y * blockDim.x) {
    acc_t s = sc * dtanh(static_cast<acc_t>(r[i]) + s_bias);
    acc_t tt = static_cast<acc_t>(t[i]) + t_bias;
    if (HAS_MASK) {
      const acc_t keep = acc_t(1) - static_cast<acc_t>(m[i]);
      s *= keep;
      tt *= keep;
    }
    const acc_t xv = static_cast<acc_t>(x[i]);
    y[base + i] = static_cast<x_t>(REVERSE ? (xv - tt) * dexp(-s) : xv * dexp(s) + tt);
    sum += s;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) atomicAdd(logdet + n, REVERSE ? -sum : sum);
}

template <typename x_t, typename st_t, bool HAS_MASK, bool REVERSE>
__global__ void coupling_bwd_kernel(const x_t* __restrict__ gy, const at::opmath_type<x_t>* __restrict__ gl,
                                    const x_t* __restrict__ x, const st_t* __restrict__ r, const st_t* __restrict__ t,
                                    const at::opmath_type<x_t>* __restrict__ scale,
                                    const at::opmath_type<x_t>* __restrict__ bias, const float* __restrict__ mask,
                                    x_t* __restrict__ dx, st_t* __restrict__ dr, st_t* __restrict__ dt,
                                    at::opmath_type<x_t>* __restrict__ dscale, at::opmath_type<x_t>* __restrict__ dbias,
                                    int64_t C, int64_t L,
                                    SampleStrides ss, int64_t mask_sn, int64_t mask_sc) {
  using acc_t = at::opmath_type<x_t>;
  const int64_t plane = blockIdx.x, n = plane / C, c = plane % C, base = plane * L;
  x += n * ss.x + c * L;
  r += n * ss.r + c * L;
  t += n * ss.t + c * L;
  const acc_t sc = scale[c], gln = gl[n];
  const acc_t s_bias = bias ? bias[c] : acc_t(0), t_bias = bias ? bias[C + c] : acc_t(0);
  const float* m = HAS_MASK ? mask + n * mask_sn + c * mask_sc : nullptr;
  acc_t sum = 0, ds_bias = 0, dt_bias = 0;
  for (int64_t i = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; i < L; i += (int64_t)gridDim.y * blockDim.x) {
    const acc_t th = dtanh(static_cast<acc_t>(r[i]) + s_bias);
    const acc_t keep = HAS_MASK ? acc_t(1) - static_cast<acc_t>(m[i]) : acc_t(1);
    const acc_t s = sc * th * keep, g = static_cast<acc_t>(gy[base + i]), xv = static_cast<acc_t>(x[i]);
    acc_t dxv, dtv, ds;
    if (REVERSE) {
      const acc_t e = dexp(-s);
      dxv = g * e;
      dtv = -dxv * keep;
      ds = -(g * (xv - (static_cast<acc_t>(t[i]) + t_bias) * keep) * e + gln) * keep;
    } else {
      const acc_t e = dexp(s);
      dxv = g * e;
      dtv = g * keep;
      ds = (g * xv * e + gln) * keep;
    }
    const acc_t drv = ds * sc * (acc_t(1) - th * th);
    dx[base + i] = static_cast<x_t>(dxv);
    dt[base + i] = static_cast<st_t>(dtv);
    dr[base + i] = static_cast<st_t>(drv);
    sum += ds * th;
    ds_bias += drv;
    dt_bias += dtv;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) atomicAdd(dscale + c, sum);
  if (bias) {  // the same for every thread of the block, so the block sums' barriers are reached by all
    ds_bias = block_sum(ds_bias);
    dt_bias = block_sum(dt_bias);
    if (threadIdx.x == 0) {
      atomicAdd(dbias + c, ds_bias);
      atomicAdd(dbias + C + c, dt_bias);
    }
  }
}

struct MaskStrides {
  const float* ptr = nullptr;
  int64_t sn = 0, sc = 0;
};

MaskStrides mask_strides(const c10::optional<at::Tensor>& mask) {
  MaskStrides out;
  if (!mask.has_value()) return out;
  const auto& m = *mask;
  out.ptr = m.data_ptr<float>();
  out.sn = m.size(0) > 1 ? m.size(1) * m.size(2) : 0;
  out.sc = m.size(1) > 1 ? m.size(2) : 0;
  return out;
}

std::tuple<at::Tensor, at::Tensor> coupling_forward_cuda(const at::Tensor& x, const at::Tensor& s_raw,
                                                         const at::Tensor& t, const at::Tensor& scale,
                                                         const c10::optional<at::Tensor>& mask,
                                                         const c10::optional<at::Tensor>& bias, bool reverse) {
  const auto ss = check_coupling_forward_args(x, s_raw, t, scale, mask, bias, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), L = plane_size(x);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto logdet = at::zeros({N}, x.options().dtype(scale.scalar_type()));
  if (x.numel() == 0) return {y, logdet};
  const auto ms = mask_strides(mask);
  const dim3 grid(static_cast<unsigned>(N * C), row_blocks(L));
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_coupling(x, s_raw, ms.ptr != nullptr, reverse, [&]<typename x_t, typename st_t, bool HAS_MASK, bool REVERSE>() {
    using acc_t = at::opmath_type<x_t>;
    coupling_fwd_kernel<x_t, st_t, HAS_MASK, REVERSE><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<x_t>(), s_raw.data_ptr<st_t>(), t.data_ptr<st_t>(), scale.data_ptr<acc_t>(),
        bias.has_value() ? bias->data_ptr<acc_t>() : nullptr, ms.ptr, y.data_ptr<x_t>(), logdet.data_ptr<acc_t>(), C,
        L, ss, ms.sn, ms.sc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& s_raw,
    const at::Tensor& t, const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, bool reverse) {
  const auto ss =
      check_coupling_backward_args(grad_y, grad_logdet, x, s_raw, t, scale, mask, bias, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), L = plane_size(x);
  const auto contiguous = at::MemoryFormat::Contiguous;
  auto dx = at::empty_like(x, contiguous), dr = at::empty_like(s_raw, contiguous), dt = at::empty_like(t, contiguous);
  auto dscale = at::zeros({C}, scale.options());
  auto dbias = at::zeros({bias.has_value() ? 2 * C : 0}, scale.options());
  if (x.numel() == 0) return {dx, dr, dt, dscale, dbias};
  const auto ms = mask_strides(mask);
  const dim3 grid(static_cast<unsigned>(N * C), row_blocks(L));
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_coupling(x, s_raw, ms.ptr != nullptr, reverse, [&]<typename x_t, typename st_t, bool HAS_MASK, bool REVERSE>() {
    using acc_t = at::opmath_type<x_t>;
    coupling_bwd_kernel<x_t, st_t, HAS_MASK, REVERSE><<<grid, kThreads, 0, stream>>>(
        grad_y.data_ptr<x_t>(), grad_logdet.data_ptr<acc_t>(), x.data_ptr<x_t>(), s_raw.data_ptr<st_t>(),
        t.data_ptr<st_t>(), scale.data_ptr<acc_t>(), bias.has_value() ? bias->data_ptr<acc_t>() : nullptr, ms.ptr,
        dx.data_ptr<x_t>(), dr.data_ptr<st_t>(), dt.data_ptr<st_t>(), dscale.data_ptr<acc_t>(),
        dbias.data_ptr<acc_t>(), C, L, ss, ms.sn, ms.sc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, dr, dt, dscale, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(genperf_kernels, CUDA, m) {
  m.impl("coupling_forward", &coupling_forward_cuda);
  m.impl("coupling_backward", &coupling_backward_cuda);
}

}  // namespace genperf

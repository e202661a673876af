// RealNVP affine coupling + log-det on CPU: one pass forward, one pass backward, parallel over the
// (n, c) planes with at::parallel_for (OpenMP), inner loops vectorized (omp simd).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "common.h"
#include "cpu_math.h"

namespace genperf {
namespace {

// One plane's per-channel values: the scale and the (fused) biases of s_raw and t going in, their gradients' sums
// over the plane coming out.
template <typename acc_t>
struct Channel {
  acc_t scale, s_bias, t_bias;
};

template <typename acc_t>
Channel<acc_t> channel_params(const acc_t* scale, const acc_t* bias, int64_t c, int64_t C) {
  return {scale[c], bias ? bias[c] : acc_t(0), bias ? bias[C + c] : acc_t(0)};
}

// The plane loops stay out of line: inlined into the parallel region, GCC gives up on vectorizing
// their omp simd reductions.
template <typename scalar_t, typename st_t, bool HAS_MASK, bool REVERSE>
__attribute__((noinline)) at::opmath_type<scalar_t> forward_plane(const scalar_t* x, const st_t* r, const st_t* t,
                                                                  const float* m, scalar_t* y, int64_t len,
                                                                  Channel<at::opmath_type<scalar_t>> pp) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) {
    acc_t s = pp.scale * vtanh(widen(r[i]) + pp.s_bias);
    acc_t tt = widen(t[i]) + pp.t_bias;
    if constexpr (HAS_MASK) {
      const acc_t keep = acc_t(1) - static_cast<acc_t>(m[i]);
      s *= keep;
      tt *= keep;
    }
    const acc_t xv = widen(x[i]);
    y[i] = narrow<scalar_t>(REVERSE ? (xv - tt) * vexp(-s) : xv * vexp(s) + tt);
    sum += s;
  }
  return REVERSE ? -sum : sum;
}

template <typename scalar_t, typename st_t, bool HAS_MASK, bool REVERSE>
__attribute__((noinline)) Channel<at::opmath_type<scalar_t>> backward_plane(
    const scalar_t* gy, const scalar_t* x, const st_t* r, const st_t* t, const float* m, scalar_t* dx, st_t* dr,
    st_t* dt, int64_t len, Channel<at::opmath_type<scalar_t>> pp, at::opmath_type<scalar_t> gl) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t dscale = 0, ds_bias = 0, dt_bias = 0;
#pragma omp simd reduction(+ : dscale, ds_bias, dt_bias)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t th = vtanh(widen(r[i]) + pp.s_bias);
    acc_t keep = 1;
    if constexpr (HAS_MASK) keep = acc_t(1) - static_cast<acc_t>(m[i]);
    const acc_t s = pp.scale * th * keep;
    const acc_t g = widen(gy[i]);
    const acc_t xv = widen(x[i]);
    acc_t dxv, dtv, ds;
    if constexpr (REVERSE) {
      const acc_t e = vexp(-s);
      dxv = g * e;
      dtv = -dxv * keep;
      ds = -(g * (xv - (widen(t[i]) + pp.t_bias) * keep) * e + gl) * keep;
    } else {
      const acc_t e = vexp(s);
      dxv = g * e;
      dtv = g * keep;
      ds = (g * xv * e + gl) * keep;
    }
    const acc_t drv = ds * pp.scale * (acc_t(1) - th * th);
    dx[i] = narrow<scalar_t>(dxv);
    dt[i] = narrow<st_t>(dtv);
    dr[i] = narrow<st_t>(drv);
    dscale += ds * th;
    ds_bias += drv;
    dt_bias += dtv;
  }
  return {dscale, ds_bias, dt_bias};
}

std::tuple<at::Tensor, at::Tensor> coupling_forward_cpu(const at::Tensor& x, const at::Tensor& s_raw,
                                                        const at::Tensor& t, const at::Tensor& scale,
                                                        const c10::optional<at::Tensor>& mask,
                                                        const c10::optional<at::Tensor>& bias, bool reverse) {
  const auto ss = check_coupling_forward_args(x, s_raw, t, scale, mask, bias, c10::DeviceType::CPU);
  const int64_t N = x.size(0), C = x.size(1), L = plane_size(x);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partial = at::empty({N * C}, x.options().dtype(acc_type));
  const float* mp = mask.has_value() ? mask->data_ptr<float>() : nullptr;
  dispatch_coupling(x, s_raw, mp != nullptr, reverse, [&]<typename x_t, typename st_t, bool HAS_MASK, bool REVERSE>() {
    using acc_t = at::opmath_type<x_t>;
    const acc_t* sc = scale.data_ptr<acc_t>();
    const acc_t* bd = bias.has_value() ? bias->data_ptr<acc_t>() : nullptr;
    const x_t* xd = x.data_ptr<x_t>();
    const st_t* rd = s_raw.data_ptr<st_t>();
    const st_t* td = t.data_ptr<st_t>();
    x_t* yd = y.data_ptr<x_t>();
    acc_t* pd = partial.data_ptr<acc_t>();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        pd[p] = forward_plane<x_t, st_t, HAS_MASK, REVERSE>(xd + n * ss.x + c * L, rd + n * ss.r + c * L,
                                                            td + n * ss.t + c * L,
                                                            HAS_MASK ? mp + mask_plane(*mask, n, c) : nullptr,
                                                            yd + p * L, L, channel_params(sc, bd, c, C));
      }
    });
  });
  return {y, partial.view({N, C}).sum(1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& s_raw,
    const at::Tensor& t, const at::Tensor& scale, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& bias, bool reverse) {
  const auto ss =
      check_coupling_backward_args(grad_y, grad_logdet, x, s_raw, t, scale, mask, bias, c10::DeviceType::CPU);
  const int64_t N = x.size(0), C = x.size(1), L = plane_size(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto contiguous = at::MemoryFormat::Contiguous;
  auto dx = at::empty_like(x, contiguous), dr = at::empty_like(s_raw, contiguous), dt = at::empty_like(t, contiguous);
  auto partial = at::empty({N, C, 3}, x.options().dtype(acc_type));  // per plane: scale, s_bias, t_bias
  const float* mp = mask.has_value() ? mask->data_ptr<float>() : nullptr;
  dispatch_coupling(x, s_raw, mp != nullptr, reverse, [&]<typename x_t, typename st_t, bool HAS_MASK, bool REVERSE>() {
    using acc_t = at::opmath_type<x_t>;
    const acc_t* sc = scale.data_ptr<acc_t>();
    const acc_t* bd = bias.has_value() ? bias->data_ptr<acc_t>() : nullptr;
    const x_t* gyd = grad_y.data_ptr<x_t>();
    const acc_t* gld = grad_logdet.data_ptr<acc_t>();
    const x_t* xd = x.data_ptr<x_t>();
    const st_t* rd = s_raw.data_ptr<st_t>();
    const st_t* td = t.data_ptr<st_t>();
    x_t* dxd = dx.data_ptr<x_t>();
    st_t* drd = dr.data_ptr<st_t>();
    st_t* dtd = dt.data_ptr<st_t>();
    acc_t* pd = partial.data_ptr<acc_t>();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C, o = p * L;
        const auto sums = backward_plane<x_t, st_t, HAS_MASK, REVERSE>(
            gyd + o, xd + n * ss.x + c * L, rd + n * ss.r + c * L, td + n * ss.t + c * L,
            HAS_MASK ? mp + mask_plane(*mask, n, c) : nullptr, dxd + o, drd + o, dtd + o, L,
            channel_params(sc, bd, c, C), gld[n]);
        pd[3 * p] = sums.scale;
        pd[3 * p + 1] = sums.s_bias;
        pd[3 * p + 2] = sums.t_bias;
      }
    });
  });
  const auto per_channel = partial.sum(0);  // (C, 3)
  auto dbias = bias.has_value() ? per_channel.slice(1, 1, 3).t().reshape({2 * C}) : at::empty({0}, scale.options());
  return {dx, dr, dt, per_channel.select(1, 0).contiguous(), dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(genperf_kernels, CPU, m) {
  m.impl("coupling_forward", &coupling_forward_cpu);
  m.impl("coupling_backward", &coupling_backward_cpu);
}

}  // namespace genperf

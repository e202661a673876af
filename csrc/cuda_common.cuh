// Helpers shared by genperf's CUDA kernels.
#pragma once
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace genperf {

constexpr int kThreads = 256;

__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
__device__ __forceinline__ float dtanh(float v) { return tanhf(v); }
__device__ __forceinline__ double dtanh(double v) { return tanh(v); }

// Sum over the block; the result is valid in thread 0. Every thread of the block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kThreads / 32];
  __syncthreads();  // a previous call's readers are done with warp_sums
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Blocks along a row of `len` elements: enough to fill the GPU, each thread doing a few elements.
inline unsigned row_blocks(int64_t len) {
  const int64_t per_block = kThreads * 4;
  return static_cast<unsigned>(std::min<int64_t>((len + per_block - 1) / per_block, 65535));
}


}  // namespace genperf

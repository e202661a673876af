// exp and tanh the compiler can vectorize: plain arithmetic and bit operations, no libm calls. Always inlined:
// GCC 12 kept vexp out of line in the omp simd loops (a call per element, 4-8x slower than eager torch).
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>

namespace genperf {

// exp(x) = 2^k exp(r), r = x - k ln 2 in [-ln2/2, ln2/2], exp(r) by the Cephes polynomial (about 1 ulp).
// 2^k is built from two exponent fields so that k up to 254 (x up to 88.72) does not overflow early.
__attribute__((always_inline)) inline float vexp(float x) {
  x = x < -103.0f ? -103.0f : (x > 88.72283f ? 88.72283f : x);
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest: + 1.5 * 2^23
  float r = std::fma(k, -0.693359375f, x);
  r = std::fma(k, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r) + 1.0f;
  const int32_t ki = static_cast<int32_t>(k);
  const int32_t k1 = ki >> 1, k2 = ki - k1;
  return p * __builtin_bit_cast(float, (k1 + 127) << 23) * __builtin_bit_cast(float, (k2 + 127) << 23);
}

// tanh(r) = 1 - 2 / (exp(2r) + 1): exact limits +-1, absolute error a few ulp of 1.
__attribute__((always_inline)) inline float vtanh(float r) { return 1.0f - 2.0f / (vexp(2.0f * r) + 1.0f); }

inline double vexp(double x) { return std::exp(x); }
inline double vtanh(double r) { return std::tanh(r); }

// Loads and stores between a tensor's dtype and its accumulation type. bf16 goes by bit operations, which GCC
// vectorizes; c10::BFloat16's own conversions (memcpy, a NaN branch) kept every loop reading or writing bf16 scalar
// (bf16 coupling backward 3x slower than fp32's instead of faster).
template <typename T>
__attribute__((always_inline)) inline at::opmath_type<T> widen(T v) {
  return static_cast<at::opmath_type<T>>(v);
}

template <>
__attribute__((always_inline)) inline float widen(c10::BFloat16 v) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(v.x) << 16);
}

template <typename T>
__attribute__((always_inline)) inline T narrow(at::opmath_type<T> v) {
  return static_cast<T>(v);
}

// Round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN.
template <>
__attribute__((always_inline)) inline c10::BFloat16 narrow(float v) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, v);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(v != v ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

}  // namespace genperf

// exp and tanh the compiler can vectorize: plain arithmetic and bit operations, no libm calls.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace genperf {

// exp(x) = 2^k exp(r), r = x - k ln 2 in [-ln2/2, ln2/2], exp(r) by the Cephes polynomial (about 1 ulp).
// 2^k is built from two exponent fields so that k up to 254 (x up to 88.72) does not overflow early.
inline float vexp(float x) {
  x = std::fmin(std::fmax(x, -103.0f), 88.72283f);
  const float k = std::nearbyint(x * 1.44269504088896341f);
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
  const int32_t k1 = ki / 2, k2 = ki - ki / 2;
  const int32_t b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
  float f1, f2;
  std::memcpy(&f1, &b1, 4);
  std::memcpy(&f2, &b2, 4);
  return p * f1 * f2;
}

// tanh(r) = 1 - 2 / (exp(2r) + 1): exact limits +-1, absolute error a few ulp of 1.
inline float vtanh(float r) { return 1.0f - 2.0f / (vexp(2.0f * r) + 1.0f); }

inline double vexp(double x) { return std::exp(x); }
inline double vtanh(double r) { return std::tanh(r); }

}  // namespace genperf

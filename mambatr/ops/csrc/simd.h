// Fixed-width SIMD helpers for the CPU kernels (GCC/Clang vector extensions).
//
// A Vec<T> holds 64 bytes (16 floats / 8 doubles): one AVX-512 register, two AVX2 ones, or four SSE
// ones; the compiler picks the instructions from -march. Kernels vectorise over channels, which
// are contiguous in mambatr's (batch, length, channels) layout, so loads are plain row slices.
// float exp/log are Cephes-style polynomials (about 1 ulp); double uses libm per lane, since
// double only serves gradient checks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace mambatr {

constexpr int kVecBytes = 64;

template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
constexpr int lanes() {
  return kVecBytes / static_cast<int>(sizeof(T));
}

template <typename T>
inline Vec<T> bcast(T x) {
  return Vec<T>{} + x;
}

// Loads n <= lanes values (zero padded); a full block is one unaligned vector load.
template <typename T>
inline Vec<T> load(const T* p, int n) {
  Vec<T> v{};
  if (n == lanes<T>()) {
    std::memcpy(&v, p, sizeof(Vec<T>));
  } else {
    std::memcpy(&v, p, sizeof(T) * static_cast<size_t>(n));
  }
  return v;
}

template <typename T>
inline void store(T* p, Vec<T> v, int n) {
  if (n == lanes<T>()) {
    std::memcpy(p, &v, sizeof(Vec<T>));
  } else {
    std::memcpy(p, &v, sizeof(T) * static_cast<size_t>(n));
  }
}

// Element type of a vector (the Vec<T> alias is not deducible in templates).
template <typename V>
using Elem = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

template <typename V>
inline Elem<V> hsum(V v) {
  Elem<V> s = 0;
  for (int i = 0; i < lanes<Elem<V>>(); ++i) s += v[i];
  return s;
}

// ---- float: polynomial exp / log ----------------------------------------------------------------
using VecF = Vec<float>;
typedef int32_t VecI __attribute__((vector_size(kVecBytes)));

// exp(x); saturates at exp(88) above and returns 0 below -87.3 (the float normal range).
inline VecF vexp(VecF x) {
  const VecF hi = bcast(88.0f), lo = bcast(-87.33654f);
  const VecF xc = x > hi ? hi : (x < lo ? lo : x);
  const VecF fx = xc * 1.44269504088896341f + 0.5f;
  VecI n = __builtin_convertvector(fx, VecI);  // truncation; fix it up to floor
  n += (__builtin_convertvector(n, VecF) > fx);  // comparison yields -1 where true
  const VecF nf = __builtin_convertvector(n, VecF);
  const VecF r = xc - nf * 0.693359375f + nf * 2.12194440e-4f;
  VecF p = bcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VecI bits = (n + 127) << 23;
  const VecF y = p * reinterpret_cast<const VecF&>(bits);
  return x < lo ? bcast(0.0f) : y;
}

// log(x) for finite x >= 1 (all we need: log(1 + exp(v))).
inline VecF vlog_ge1(VecF x) {
  const VecI bits = reinterpret_cast<const VecI&>(x);
  VecI e = ((bits >> 23) & 0xff) - 126;
  const VecI mbits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  VecF m = reinterpret_cast<const VecF&>(mbits);
  const VecI small = m < 0.707106781186547524f;
  e += small;
  m = (small ? m + m : m) - 1.0f;
  const VecF ef = __builtin_convertvector(e, VecF);
  const VecF z = m * m;
  VecF p = bcast(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  VecF y = p * m * z - ef * 2.12194440e-4f - 0.5f * z;
  return m + y + ef * 0.693359375f;
}

// ---- per-type activations -----------------------------------------------------------------------
// softplus matches torch (threshold 20); sigmoid_sp is its derivative, torch's exact formula.
inline void softplus(VecF x, VecF& value, VecF& grad) {
  const VecF e = vexp(x > 20.0f ? bcast(20.0f) : x);
  const VecF w = e + 1.0f;
  const VecF lp = vlog_ge1(w) + (e - (w - 1.0f)) / w;  // log1p(e) with the rounding of 1 + e undone
  value = x > 20.0f ? x : lp;
  grad = x > 20.0f ? bcast(1.0f) : e / w;
}

inline void softplus(Vec<double> x, Vec<double>& value, Vec<double>& grad) {
  for (int i = 0; i < lanes<double>(); ++i) {
    const double e = std::exp(std::min(x[i], 20.0));
    value[i] = x[i] > 20.0 ? x[i] : std::log1p(e);
    grad[i] = x[i] > 20.0 ? 1.0 : e / (e + 1.0);
  }
}

inline VecF sigmoid(VecF x) { return 1.0f / (1.0f + vexp(-x)); }

inline Vec<double> sigmoid(Vec<double> x) {
  Vec<double> s;
  for (int i = 0; i < lanes<double>(); ++i) s[i] = 1.0 / (1.0 + std::exp(-x[i]));
  return s;
}

inline VecF exp_vec(VecF x) { return vexp(x); }

inline Vec<double> exp_vec(Vec<double> x) {
  Vec<double> y;
  for (int i = 0; i < lanes<double>(); ++i) y[i] = std::exp(x[i]);
  return y;
}

// silu'(x) from s = sigmoid(x).
template <typename V>
inline V silu_grad(V x, V s) {
  using T = Elem<V>;
  return s * (T(1) + x * (T(1) - s));
}

}  // namespace mambatr

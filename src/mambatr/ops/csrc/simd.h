// Fixed-width SIMD helpers for the CPU kernels (GCC/Clang vector extensions).
//
// A Vec<T> is one native vector register: 64 bytes (16 floats / 8 doubles) with AVX-512, 32 bytes with
// AVX2 (a wider vector would be split into register pairs and the scan's N states would spill); the
// compiler picks the instructions from -march. Kernels vectorise over channels, which
// are contiguous in mambatr's (batch, length, channels) layout, so loads are plain row slices.
// float exp/log are Cephes-style polynomials (about 1 ulp); double uses libm per lane, since
// double only serves gradient checks. The scan's decay uses vexp2 on exponents pre-scaled by log2(e)
// (as mamba_ssm's kernels do): about half the instructions of exp.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace mambatr {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

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

// 2^x, relative error <= 2.4e-7 (degree-5 polynomial on [-0.5, 0.5]); 0 for x <= -150 (and -inf).
// AVX-512 scales by 2^n with vscalefps, which also handles overflow (+inf) and denormal results; otherwise
// the exponent is built with integer shifts and x is clamped to the normal range [-126, 127], where the
// difference is below 2^-126 (or the result saturates at 2^127 instead of +inf).
inline VecF vexp2(VecF x) {
#if defined(__AVX512F__)
  const VecF xc = (VecF)_mm512_max_ps((__m512)x, (__m512)bcast(-150.0f));
  const VecF n = (VecF)_mm512_roundscale_ps((__m512)xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const VecF xc = x < -126.0f ? bcast(-126.0f) : (x > 127.0f ? bcast(127.0f) : x);
  const VecF magic = bcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  const VecF shifted = xc + magic;
  const VecF n = shifted - magic;
#endif
  const VecF f = xc - n;
  VecF p = bcast(1.3276471e-3f);
  p = p * f + 9.6755410e-3f;
  p = p * f + 5.5507131e-2f;
  p = p * f + 2.4022120e-1f;
  p = p * f + 6.9314694e-1f;
  p = p * f + 1.0000001f;
#if defined(__AVX512F__)
  return (VecF)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  const VecI bits = (reinterpret_cast<const VecI&>(shifted) - 0x4b400000 + 127) << 23;
  return p * reinterpret_cast<const VecF&>(bits);
#endif
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

// 1 / x for positive normal x: AVX-512's 14-bit estimate refined by one Newton step (about 1 ulp),
// a division elsewhere. Divisions are the slowest vector instruction on these cores.
inline VecF recip(VecF x) {
#if defined(__AVX512F__)
  const VecF r = (VecF)_mm512_rcp14_ps((__m512)x);
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}

// ---- per-type activations -----------------------------------------------------------------------
// softplus matches torch (threshold 20); its derivative is the sigmoid. exp goes through vexp2: the
// rounding of x log2 e moves e by at most 6e-7 relatively (x <= 20), below float32 resolution of the
// result. log1p(e) = log(w) + (e - (w - 1)) / w with w = 1 + e undoes the rounding of 1 + e; that
// correction is below one ulp of 1, so an approximate reciprocal is plenty for it.
inline void softplus(VecF x, VecF& value, VecF& grad) {
  const VecF e = vexp2((x > 20.0f ? bcast(20.0f) : x) * 1.44269504088896341f);
  const VecF w = e + 1.0f;
  const VecF inv = recip(w);
  value = x > 20.0f ? x : vlog_ge1(w) + (e - (w - 1.0f)) * inv;
  grad = x > 20.0f ? bcast(1.0f) : e * inv;
}

inline VecF softplus_value(VecF x) {
  VecF value, grad;
  softplus(x, value, grad);  // the unused gradient is one multiply, removed by the compiler
  return value;
}

inline void softplus(Vec<double> x, Vec<double>& value, Vec<double>& grad) {
  for (int i = 0; i < lanes<double>(); ++i) {
    const double e = std::exp(std::min(x[i], 20.0));
    value[i] = x[i] > 20.0 ? x[i] : std::log1p(e);
    grad[i] = x[i] > 20.0 ? 1.0 : e / (e + 1.0);
  }
}

// 1 / (1 + 2^(-x log2 e)): vexp2's cost; the rounding of x log2 e moves the result by at most 3e-8 * |x|
// relatively, where the sigmoid's tail makes that immaterial.
inline Vec<double> softplus_value(Vec<double> x) {
  Vec<double> value, grad;
  softplus(x, value, grad);
  return value;
}

// 1 / (1 + e^-x); x is clamped at -80 (sigmoid 2e-35) so that 1 + e^-x stays finite for recip.
inline VecF sigmoid(VecF x) {
  const VecF xc = x < -80.0f ? bcast(-80.0f) : x;
  return recip(1.0f + vexp2(xc * -1.44269504088896341f));
}

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

// The scan's decay exp(x * A): float evaluates vexp2 on A pre-scaled by log2(e); double uses libm exp
// on A itself, so float64 stays exact against the reference.
template <typename T>
struct Decay;
template <>
struct Decay<float> {
  static constexpr float kScale = 1.44269504088896341f;
  static VecF exp(VecF scaled) { return vexp2(scaled); }
};
template <>
struct Decay<double> {
  static constexpr double kScale = 1.0;
  static Vec<double> exp(Vec<double> x) { return exp_vec(x); }
};

// Flushes denormals to zero while alive (a state decaying past 2^-126 would otherwise take the slow
// microcode path); results differ from IEEE only below 1.2e-38. Restores the caller's mode.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

}  // namespace mambatr

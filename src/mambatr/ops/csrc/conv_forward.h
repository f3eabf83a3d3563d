// The depthwise causal conv's forward on CPU, free of torch: the C++ kernels (conv.cpp) and the
// onnxruntime custom op (ops/ort/ort_ops.cpp) both run it, so the two compute the same values.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "rows.h"

namespace mambatr {

constexpr int64_t kMaxTaps = 8;

template <typename T>
struct ConvInputs {
  Rows<T> x;
  const T* wt = nullptr;  // weight transposed to (K, E)
  const T* bias = nullptr;
  int64_t batch = 0, L = 0, E = 0, K = 0;
  bool silu = false, reverse = false;

  int64_t time(int64_t step) const { return reverse ? L - 1 - step : step; }
};

// Rows [t0, t1) of batch element b, all channels: row by row, so the input and output stream through
// memory in order (walking one channel block down the rows instead makes every row a new DRAM page).
// The K input rows of an output row are recent, so they come from L1; `zeros` stands in for padding.
template <typename T, int K>
void forward_rows(const ConvInputs<T>& in, int64_t b, int64_t t0, int64_t t1, const T* zeros, T* out) {
  for (int64_t t = t0; t < t1; ++t) {
    const T* rows[K];
    for (int k = 0; k < K; ++k) {
      const int64_t s = in.reverse ? t + (K - 1 - k) : t - (K - 1) + k;
      rows[k] = s >= 0 && s < in.L ? in.x.row(b, s) : zeros;
    }
    T* o = out + (b * in.L + t) * in.E;
    for (int64_t e0 = 0; e0 < in.E; e0 += lanes<T>()) {
      const int ne = static_cast<int>(std::min<int64_t>(lanes<T>(), in.E - e0));
      Vec<T> y = in.bias ? load(in.bias + e0, ne) : Vec<T>{};
      for (int k = 0; k < K; ++k) y += load(in.wt + k * in.E + e0, ne) * load(rows[k] + e0, ne);
      store(o + e0, in.silu ? y * sigmoid(y) : y, ne);
    }
  }
}

// Calls f(std::integral_constant<int, K>) for the runtime tap count K (1 .. kMaxTaps).
template <int K = 1, typename F>
void with_taps(int64_t taps, F&& f) {
  if (taps == K) {
    f(std::integral_constant<int, K>{});
  } else if constexpr (K < kMaxTaps) {
    with_taps<K + 1>(taps, f);
  }
}

}  // namespace mambatr

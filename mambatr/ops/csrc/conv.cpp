// Depthwise causal conv1d over time (+ optional SiLU), forward and backward, on CPU.
//
// Layout (mambatr's): x, out (batch, length, E) with contiguous channels (rows may be strided, e.g.
// x is a chunk of the in_proj output); weight (E, K); bias (E). Output t mixes inputs t-K+1 .. t
// (zero padded on the left); `reverse` mixes t .. t+K-1 instead (anti-causal, the Vim backward
// branch without flips). Vectorised over channels, parallel over (batch, time) rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common.h"

namespace mambatr {
namespace {

template <typename T>
struct ConvInputs {
  Rows<T> x;
  const T* wt = nullptr;  // weight transposed to (K, E)
  const T* bias = nullptr;
  int64_t batch = 0, L = 0, E = 0, K = 0;
  bool reverse = false;

  // Input time read by tap k of output t, or -1 inside the zero padding.
  int64_t source(int64_t t, int64_t k) const {
    const int64_t s = reverse ? t + (K - 1 - k) : t - (K - 1) + k;
    return s >= 0 && s < L ? s : -1;
  }
  // Output time that reads input s through tap k, or -1 outside the sequence.
  int64_t target(int64_t s, int64_t k) const {
    const int64_t t = reverse ? s - (K - 1 - k) : s + (K - 1) - k;
    return t >= 0 && t < L ? t : -1;
  }
};

template <typename T>
Vec<T> pre_activation(const ConvInputs<T>& in, int64_t b, int64_t t, int64_t e0, int ne) {
  Vec<T> acc = in.bias ? load(in.bias + e0, ne) : Vec<T>{};
  for (int64_t k = 0; k < in.K; ++k) {
    const int64_t s = in.source(t, k);
    if (s >= 0) acc += load(in.wt + k * in.E + e0, ne) * load(in.x.row(b, s) + e0, ne);
  }
  return acc;
}

template <typename T>
ConvInputs<T> make_inputs(const at::Tensor& x, const at::Tensor& wt, const std::optional<at::Tensor>& bias,
                          bool reverse) {
  ConvInputs<T> in;
  in.batch = x.size(0);
  in.L = x.size(1);
  in.E = x.size(2);
  in.K = wt.size(0);
  in.x = Rows<T>(x);
  in.wt = wt.data_ptr<T>();
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == in.E && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type(),
                "bias must be a contiguous (E,) tensor of the input dtype");
    in.bias = bias->data_ptr<T>();
  }
  in.reverse = reverse;
  return in;
}

at::Tensor transposed_weight(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu(), "x must be a CPU (batch, length, E) tensor");
  check_rows(x, "x", x.size(0), x.size(1), x.size(2));
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2) && weight.scalar_type() == x.scalar_type(),
              "weight must be (E, K) of the input dtype");
  return weight.t().contiguous();
}

constexpr int64_t kRowGrain = 32;

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    bool silu, bool reverse) {
  const at::Tensor wt = transposed_weight(x, weight);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mambatr_conv_fwd", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(x, wt, bias, reverse);
    T* o = out.data_ptr<T>();
    at::parallel_for(0, in.batch * in.L, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / in.L, t = row % in.L;
        for (int64_t e0 = 0; e0 < in.E; e0 += lanes<T>()) {
          const int ne = static_cast<int>(std::min<int64_t>(lanes<T>(), in.E - e0));
          const Vec<T> y = pre_activation(in, b, t, e0, ne);
          store(o + row * in.E + e0, silu ? y * sigmoid(y) : y, ne);
        }
      }
    });
  });
  return out;
}

// Returns [dx, dweight (E, K), dbias (E)].
std::vector<at::Tensor> conv_bwd(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, bool silu, bool reverse) {
  const at::Tensor wt = transposed_weight(x, weight);
  const int64_t batch = x.size(0), L = x.size(1), E = x.size(2), K = weight.size(1);
  check_rows(dout, "dout", batch, L, E);
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dx = at::empty({batch, L, E}, opts);
  // Enough (batch, time chunk) tasks for every thread; each owns partial weight/bias gradients.
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t chunks = std::min(L, std::max<int64_t>(1, (want + batch - 1) / batch));
  const int64_t chunk_len = (L + chunks - 1) / chunks;
  at::Tensor dw_part = at::zeros({batch * chunks, K, E}, opts), db_part = at::zeros({batch * chunks, E}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mambatr_conv_bwd", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(x, wt, bias, reverse);
    TORCH_CHECK(dout.scalar_type() == x.scalar_type(), "dout must have the input dtype");
    // Gradient at the pre-activation: dout itself, or dout * silu'(pre) recomputed from x.
    at::Tensor dpre_buf = silu ? at::empty({batch, L, E}, opts) : dout;
    if (silu) {
      const Rows<T> g(dout);
      T* d = dpre_buf.data_ptr<T>();
      at::parallel_for(0, batch * L, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / L, t = row % L;
          for (int64_t e0 = 0; e0 < E; e0 += lanes<T>()) {
            const int ne = static_cast<int>(std::min<int64_t>(lanes<T>(), E - e0));
            const Vec<T> y = pre_activation(in, b, t, e0, ne);
            store(d + row * E + e0, load(g.row(b, t) + e0, ne) * silu_grad(y, sigmoid(y)), ne);
          }
        }
      });
    }
    const Rows<T> dpre(dpre_buf);
    T *pdx = dx.data_ptr<T>(), *pdw = dw_part.data_ptr<T>(), *pdb = db_part.data_ptr<T>();
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, t0 = (task % chunks) * chunk_len, t1 = std::min(L, t0 + chunk_len);
        T* dw = pdw + task * K * E;
        T* db = pdb + task * E;
        for (int64_t t = t0; t < t1; ++t) {
          for (int64_t e0 = 0; e0 < E; e0 += lanes<T>()) {
            const int ne = static_cast<int>(std::min<int64_t>(lanes<T>(), E - e0));
            const Vec<T> gt = load(dpre.row(b, t) + e0, ne);
            store(db + e0, load(db + e0, ne) + gt, ne);
            Vec<T> acc{};
            for (int64_t k = 0; k < K; ++k) {
              const int64_t s = in.source(t, k);
              if (s >= 0) store(dw + k * E + e0, load(dw + k * E + e0, ne) + gt * load(in.x.row(b, s) + e0, ne), ne);
              const int64_t o = in.target(t, k);
              if (o >= 0) acc += load(in.wt + k * E + e0, ne) * load(dpre.row(b, o) + e0, ne);
            }
            store(pdx + (b * L + t) * E + e0, acc, ne);
          }
        }
      }
    });
  });
  return {dx, dw_part.sum(0).t().contiguous(), db_part.sum(0)};
}

}  // namespace
}  // namespace mambatr

TORCH_LIBRARY_FRAGMENT(mambatr, m) {
  m.def("conv_fwd(Tensor x, Tensor weight, Tensor? bias, bool silu, bool reverse) -> Tensor");
  m.def("conv_bwd(Tensor dout, Tensor x, Tensor weight, Tensor? bias, bool silu, bool reverse) -> Tensor[]");
  m.impl("conv_fwd", c10::DispatchKey::CPU, TORCH_FN(mambatr::conv_fwd));
  m.impl("conv_bwd", c10::DispatchKey::CPU, TORCH_FN(mambatr::conv_bwd));
}

// Depthwise causal conv1d over time (+ optional SiLU), forward and backward, on CPU.
//
// Layout (mambatr's): x, out (batch, length, E) with contiguous channels (rows may be strided, e.g.
// x is a chunk of the in_proj output); weight (E, K); bias (E). Output t mixes inputs t-K+1 .. t
// (zero padded on the left); `reverse` mixes t .. t+K-1 instead (anti-causal, the Vim backward
// branch without flips). Both are the same conv in scan order (reverse walks time backwards), so one
// kernel serves both.
//
// Work is split over (batch, block of `lanes` channels); a task walks its sequence once, keeping the
// K taps and the sliding window of the last K inputs in vector registers (K is a compile-time constant,
// 1..kMaxTaps): one load, K FMAs, the SiLU and one store per output vector, so the conv streams its input
// and output once. The backward walks each sequence once in reverse scan order, recomputing the
// pre-activation for SiLU's gradient from a window of inputs and keeping a window of its gradients for
// dx; weight and bias gradients accumulate in registers per task and are summed over the batch at the
// end (fixed order: results do not depend on the thread count).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common.h"
#include "conv_forward.h"

namespace mambatr {
namespace {

// One task: batch element b, channels [e0, e0 + ne).
template <typename T>
struct Lane {
  int64_t b, e0;
  int ne;
};

// Reverse scan order. At step s: pre_s from the input window s-K+1 .. s, its gradient dpre_s, then
// dx_s = sum_k w_k dpre_{s+K-1-k} from the window of gradients s .. s+K-1.
template <typename T, int K>
void backward_task(const ConvInputs<T>& in, const Rows<T>& dout, const Lane<T>& lane, T* dx, T* dw, T* db) {
  const int64_t L = in.L, E = in.E, e0 = lane.e0;
  const int ne = lane.ne;
  Vec<T> w[K], xwin[K] = {}, gwin[K] = {}, dw_acc[K] = {};
  for (int k = 0; k < K; ++k) w[k] = load(in.wt + k * E + e0, ne);
  const Vec<T> bias = in.bias ? load(in.bias + e0, ne) : Vec<T>{};
  Vec<T> db_acc{};
  // xwin[k] holds the input at step s - (K - 1 - k); prime it with steps L-K .. L-1 (zero before 0).
  for (int k = 0; k < K; ++k) {
    const int64_t step = L - K + k;
    xwin[k] = step >= 0 ? load(in.x.row(lane.b, in.time(step)) + e0, ne) : Vec<T>{};
  }
  for (int64_t s = L - 1; s >= 0; --s) {
    const int64_t t = in.time(s);
    Vec<T> pre = bias;
    for (int k = 0; k < K; ++k) pre += w[k] * xwin[k];
    Vec<T> g = load(dout.row(lane.b, t) + e0, ne);
    if (in.silu) g *= silu_grad(pre, sigmoid(pre));
    db_acc += g;
    for (int k = 0; k < K; ++k) dw_acc[k] += g * xwin[k];
    // gwin[k] holds the gradient at step s + (K - 1 - k): shift towards the future, insert s at K - 1.
    for (int k = 0; k + 1 < K; ++k) gwin[k] = gwin[k + 1];
    gwin[K - 1] = g;
    Vec<T> acc{};
    for (int k = 0; k < K; ++k) acc += w[k] * gwin[k];
    store(dx + (lane.b * L + t) * E + e0, acc, ne);
    // Slide the input window one step back: drop step s, bring in step s - K.
    for (int k = K - 1; k > 0; --k) xwin[k] = xwin[k - 1];
    const int64_t older = s - K;
    xwin[0] = older >= 0 ? load(in.x.row(lane.b, in.time(older)) + e0, ne) : Vec<T>{};
  }
  for (int k = 0; k < K; ++k) store(dw + (lane.b * K + k) * E + e0, dw_acc[k], ne);
  store(db + lane.b * E + e0, db_acc, ne);
}

template <typename T>
ConvInputs<T> make_inputs(const at::Tensor& x, const at::Tensor& wt, const std::optional<at::Tensor>& bias,
                          bool silu, bool reverse) {
  ConvInputs<T> in;
  in.batch = x.size(0);
  in.L = x.size(1);
  in.E = x.size(2);
  in.K = wt.size(0);
  in.x = rows_of<T>(x);
  in.wt = wt.data_ptr<T>();
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == in.E && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type(),
                "bias must be a contiguous (E,) tensor of the input dtype");
    in.bias = bias->data_ptr<T>();
  }
  in.silu = silu;
  in.reverse = reverse;
  return in;
}

at::Tensor transposed_weight(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu(), "x must be a CPU (batch, length, E) tensor");
  check_rows(x, "x", x.size(0), x.size(1), x.size(2));
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2) && weight.scalar_type() == x.scalar_type(),
              "weight must be (E, K) of the input dtype");
  TORCH_CHECK(weight.size(1) >= 1 && weight.size(1) <= kMaxTaps, "impl='cpu' supports kernel widths 1 to ",
              kMaxTaps, ", got ", weight.size(1), "; use impl='torch'");
  return weight.t().contiguous();
}

// Runs f(Lane) for every (batch, channel block), spread over threads.
template <typename T, typename F>
void for_each_lane(int64_t batch, int64_t E, F&& f) {
  const int64_t blocks = (E + lanes<T>() - 1) / lanes<T>();
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t e0 = (task % blocks) * lanes<T>();
      f(Lane<T>{task / blocks, e0, static_cast<int>(std::min<int64_t>(lanes<T>(), E - e0))});
    }
  });
}

constexpr int64_t kRowsPerTask = 16;

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    bool silu, bool reverse) {
  const at::Tensor wt = transposed_weight(x, weight);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor zeros = at::zeros({x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mambatr_conv_fwd", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(x, wt, bias, silu, reverse);
    T* o = out.data_ptr<T>();
    const T* z = zeros.data_ptr<T>();
    const int64_t chunks = (in.L + kRowsPerTask - 1) / kRowsPerTask;
    with_taps(in.K, [&](auto taps) {
      at::parallel_for(0, in.batch * chunks, 1, [&](int64_t begin, int64_t end) {
        const FlushDenormals ftz;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / chunks, t0 = (task % chunks) * kRowsPerTask;
          forward_rows<T, decltype(taps)::value>(in, b, t0, std::min(in.L, t0 + kRowsPerTask), z, o);
        }
      });
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
  at::Tensor dw_part = at::empty({batch, K, E}, opts), db_part = at::empty({batch, E}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mambatr_conv_bwd", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(x, wt, bias, silu, reverse);
    TORCH_CHECK(dout.scalar_type() == x.scalar_type(), "dout must have the input dtype");
    const Rows<T> g = rows_of<T>(dout);
    T *pdx = dx.data_ptr<T>(), *pdw = dw_part.data_ptr<T>(), *pdb = db_part.data_ptr<T>();
    with_taps(K, [&](auto taps) {
      for_each_lane<T>(batch, E, [&](const Lane<T>& lane) {
        backward_task<T, decltype(taps)::value>(in, g, lane, pdx, pdw, pdb);
      });
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

// Selective scan (Mamba SSM recurrence) forward and backward on CPU.
//
// Layout (mambatr's): u, delta, z, out (batch, length, E); B, C (batch, length, N); A (E, N);
// D, delta_bias (E); gap (batch, length) or undefined. Rows may be strided (e.g. B and C are slices
// of the x_proj output); the channel dimension must be contiguous.
//
// Work is split over (batch, block of `lanes` channels), one vector register wide. A block first makes
// one pass over the sequence for everything that needs no state (softplus, the gap term, dt * u); then,
// for each chunk of states that fits in registers (all 16 with AVX-512), walks the sequence keeping
// the chunk's states in registers: per step two broadcasts of B_t[n], C_t[n] shared by the block's
// channels, one vexp2 (A pre-scaled by log2 e) and three FMAs per state. The backward recomputes each
// chunk's states and decays into a per-thread buffer (L x chunk vectors) instead of storing
// (batch, L, E, N) in the forward, then runs the adjoint recurrence in reverse order. dB and dC are
// reductions over channels: they are accumulated as lane vectors over all blocks of a channel group and
// reduced horizontally once per group. The channel groups do not depend on the thread count, so results
// are bitwise identical for any number of threads.
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
struct ScanInputs {
  Rows<T> u, delta, B, C, z;
  const T* A = nullptr;
  const T* D = nullptr;
  const T* bias = nullptr;
  const T* gap = nullptr;  // contiguous (batch, length)
  int64_t batch = 0, length = 0, E = 0, N = 0;
  bool softplus = false, reverse = false, has_z = false;

  int64_t time(int64_t step) const { return reverse ? length - 1 - step : step; }
  T gap_at(int64_t b, int64_t t) const { return gap ? gap[b * length + t] : T(0); }
};

// States kept in registers per pass over the sequence: all 16 of a Mamba layer with AVX-512 (32 vector
// registers), 8 with AVX2 (16). The backward keeps two vectors per state (adjoint and dA), so half.
constexpr int kChunk = kVecBytes == 64 ? 16 : 8;
constexpr int kBackwardChunk = kChunk / 2;

// Calls f(std::integral_constant<int, C>, n0) for consecutive chunks of the N states: chunks of C, then
// of C/2, ... 1 for the remainder, so every chunk size is a compile-time constant (unrolled loops,
// states in registers) whatever N is.
template <int C, typename F>
void for_each_chunk(int64_t N, int64_t n0, F&& f) {
  for (; n0 + C <= N; n0 += C) f(std::integral_constant<int, C>{}, n0);
  if constexpr (C > 1) for_each_chunk<C / 2>(N, n0, f);
}

// Per-thread scratch, allocated once per parallel range (never per step). Per step in scan order: delta
// after bias and softplus (dt), its derivative (dt_grad), the decay exponent a, dt * u, and y (the output
// without gate); the backward adds the gated output gradient dy, the state-summed terms dsB and da, and
// per chunk the states (after a leading zero state) and decays (L * kBackwardChunk vectors each: bounded
// by the chunk, not by N).
template <typename T>
struct Scratch {
  std::vector<Vec<T>> A, dt, dt_grad, a, dtu, y, dy, dsB, da, states, decay, dA, dB, dC;
  Scratch(int64_t L, int64_t N, bool backward)
      : A(N), dt(L), dt_grad(L), a(L), dtu(L), y(L), dy(backward ? L : 0), dsB(backward ? L : 0),
        da(backward ? L : 0), states(backward ? (L + 1) * kBackwardChunk : 0), decay(backward ? L * kBackwardChunk : 0),
        dA(backward ? N : 0), dB(backward ? L * N : 0), dC(backward ? L * N : 0) {}
};

// What step `step` contributes before any state is involved: delta after bias and softplus (dt), its
// derivative (dt_grad), the decay exponent a = dt + gap * dt_prev (the pruned positions decay with the
// previous token's delta), dt * u, and the skip term D * u.
template <typename T>
struct StepInputs {
  Vec<T> dt, dt_grad, a, dtu, skip;
};

// One block of channels [e0, e0 + ne) of batch element b: its A columns (scaled for Decay<T>::exp) and
// per-channel parameters as vectors.
template <typename T>
struct Block {
  const ScanInputs<T>& in;
  int64_t b, e0;
  int ne;
  Vec<T> D{}, bias{};

  Block(const ScanInputs<T>& inputs, int64_t batch_index, int64_t block, Scratch<T>& sc)
      : in(inputs), b(batch_index), e0(block * lanes<T>()) {
    ne = static_cast<int>(std::min<int64_t>(lanes<T>(), in.E - e0));
    for (int64_t n = 0; n < in.N; ++n) {
      Vec<T> a{};
      for (int i = 0; i < ne; ++i) a[i] = in.A[(e0 + i) * in.N + n] * Decay<T>::kScale;
      sc.A[n] = a;
    }
    D = in.D ? load(in.D + e0, ne) : Vec<T>{};
    bias = in.bias ? load(in.bias + e0, ne) : Vec<T>{};
  }

  Vec<T> row(const Rows<T>& rows, int64_t step) const { return load(rows.row(b, in.time(step)) + e0, ne); }
  T* out_row(T* base, int64_t step) const { return base + (b * in.length + in.time(step)) * in.E + e0; }

  // `prev_dt` is the previous step's dt (ignored at step 0); `with_grad` also computes dt_grad.
  StepInputs<T> step_inputs(int64_t step, Vec<T> prev_dt, bool with_grad) const {
    StepInputs<T> x{};
    const Vec<T> u = row(in.u, step);
    const Vec<T> raw = row(in.delta, step) + bias;
    if (!in.softplus) {
      x.dt = raw;
      x.dt_grad = bcast(T(1));
    } else if (with_grad) {
      softplus(raw, x.dt, x.dt_grad);
    } else {
      x.dt = softplus_value(raw);
    }
    x.a = in.gap && step ? x.dt + in.gap_at(b, in.time(step)) * prev_dt : x.dt;
    x.dtu = x.dt * u;
    x.skip = D * u;
    return x;
  }

  // The step inputs of the whole sequence into the scratch buffers, y starting at the skip term.
  void fill(Scratch<T>& sc, bool with_grad) const {
    Vec<T> prev{};
    for (int64_t step = 0; step < in.length; ++step) {
      const StepInputs<T> x = step_inputs(step, prev, with_grad);
      sc.dt[step] = prev = x.dt;
      sc.dt_grad[step] = x.dt_grad;
      sc.a[step] = x.a;
      sc.dtu[step] = x.dtu;
      sc.y[step] = x.skip;
    }
  }

  Vec<T> gate(Vec<T> y, int64_t step) const {
    if (!in.has_z) return y;
    const Vec<T> z = row(in.z, step);
    return y * z * sigmoid(z);
  }
};

// s = exp(a A) s + dt u B for the C states in registers; returns <s, C>.
template <typename T, int C>
inline Vec<T> update_states(Vec<T> (&s)[C], const Vec<T>* A, Vec<T> a, Vec<T> dtu, const T* Bt, const T* Ct) {
  Vec<T> y0{}, y1{};  // two accumulators halve the dependency chain of the sum over states
#pragma GCC unroll 16
  for (int j = 0; j < C; ++j) {
    s[j] = Decay<T>::exp(a * A[j]) * s[j] + dtu * Bt[j];
    if (j % 2) {
      y1 += s[j] * Ct[j];
    } else {
      y0 += s[j] * Ct[j];
    }
  }
  return y0 + y1;
}

// Forward over the sequence for states [n0, n0 + C), the step inputs read from scratch; adds to sc.y.
template <typename T, int C>
void forward_chunk(const Block<T>& blk, int64_t n0, Scratch<T>& sc) {
  const ScanInputs<T>& in = blk.in;
  Vec<T> s[C] = {};
  for (int64_t step = 0; step < in.length; ++step) {
    const int64_t t = in.time(step);
    sc.y[step] += update_states<T, C>(s, sc.A.data() + n0, sc.a[step], sc.dtu[step], in.B.row(blk.b, t) + n0,
                                      in.C.row(blk.b, t) + n0);
  }
}

// The whole forward in one pass over the sequence when all N states fit in registers (N == kChunk):
// no scratch traffic at all.
template <typename T>
void forward_fused(const Block<T>& blk, const Scratch<T>& sc, T* out) {
  const ScanInputs<T>& in = blk.in;
  Vec<T> s[kChunk] = {}, prev{};
  for (int64_t step = 0; step < in.length; ++step) {
    const int64_t t = in.time(step);
    const StepInputs<T> x = blk.step_inputs(step, prev, false);
    prev = x.dt;
    const Vec<T> y = x.skip + update_states<T, kChunk>(s, sc.A.data(), x.a, x.dtu, in.B.row(blk.b, t),
                                                       in.C.row(blk.b, t));
    store(blk.out_row(out, step), blk.gate(y, step), blk.ne);
  }
}

template <typename T>
void forward_block(const ScanInputs<T>& in, int64_t b, int64_t block, Scratch<T>& sc, T* out) {
  const Block<T> blk(in, b, block, sc);
  if (in.N == kChunk) return forward_fused(blk, sc, out);
  blk.fill(sc, false);
  for_each_chunk<kChunk>(in.N, 0, [&](auto c, int64_t n0) { forward_chunk<T, decltype(c)::value>(blk, n0, sc); });
  for (int64_t step = 0; step < in.length; ++step) store(blk.out_row(out, step), blk.gate(sc.y[step], step), blk.ne);
}

// Backward for states [n0, n0 + C): recompute the chunk's states and decays in scan order (adding to y,
// which dz needs), then run the adjoint recurrence in reverse: ds_t = dy_t C_t + exp(a_{t+1} A) ds_{t+1}.
// dB/dC lane partials accumulate into sc.dB / sc.dC; the state-summed dsB and da into per-step vectors.
template <typename T, int C>
void backward_chunk(const Block<T>& blk, int64_t n0, Scratch<T>& sc) {
  const ScanInputs<T>& in = blk.in;
  const int64_t L = in.length, N = in.N;
  const Vec<T>* A = sc.A.data() + n0;
  Vec<T> s[C] = {};
  std::fill(sc.states.begin(), sc.states.begin() + C, Vec<T>{});
  for (int64_t step = 0; step < L; ++step) {
    const int64_t t = in.time(step);
    const T* Bt = in.B.row(blk.b, t) + n0;
    const T* Ct = in.C.row(blk.b, t) + n0;
    const Vec<T> a = sc.a[step], dtu = sc.dtu[step];
    Vec<T>* st = &sc.states[(step + 1) * C];  // sc.states[0 .. C) stays zero: the state before step 0
    Vec<T>* et = &sc.decay[step * C];
    Vec<T> y{};
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      et[j] = Decay<T>::exp(a * A[j]);
      s[j] = et[j] * s[j] + dtu * Bt[j];
      st[j] = s[j];
      y += s[j] * Ct[j];
    }
    sc.y[step] += y;
  }
  Vec<T> ds_carry[C] = {}, dA[C] = {};
  for (int64_t step = L - 1; step >= 0; --step) {
    const int64_t t = in.time(step);
    const T* Bt = in.B.row(blk.b, t) + n0;
    const T* Ct = in.C.row(blk.b, t) + n0;
    const Vec<T> dy = sc.dy[step], a = sc.a[step], dtu = sc.dtu[step];
    const Vec<T>* st = &sc.states[(step + 1) * C];
    const Vec<T>* sp = &sc.states[step * C];
    const Vec<T>* et = &sc.decay[step * C];
    Vec<T>* dBt = &sc.dB[step * N + n0];
    Vec<T>* dCt = &sc.dC[step * N + n0];
    Vec<T> dsB{}, da{};
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      const Vec<T> ds = ds_carry[j] + dy * Ct[j];
      dCt[j] += dy * st[j];
      dBt[j] += ds * dtu;
      dsB += ds * Bt[j];
      const Vec<T> w = ds * sp[j] * et[j];  // d loss / d (a * A[j])
      dA[j] += w * a;
      da += w * A[j];
      ds_carry[j] = ds * et[j];
    }
    sc.dsB[step] += dsB;
    sc.da[step] += da;
  }
  for (int j = 0; j < C; ++j) sc.dA[n0 + j] = dA[j];
}

// Gradients of one channel block; dB/dC lane partials accumulate into sc.dB / sc.dC.
template <typename T>
void backward_block(const ScanInputs<T>& in, const Rows<T>& dout, int64_t b, int64_t block, Scratch<T>& sc,
                    T* du, T* ddelta, T* dz, T* dA_part, T* dD_part, T* dbias_part) {
  const int64_t L = in.length, N = in.N, E = in.E;
  const Block<T> blk(in, b, block, sc);
  blk.fill(sc, true);
  for (int64_t step = 0; step < L; ++step) {
    Vec<T> dy = blk.row(dout, step);
    if (in.has_z) {
      const Vec<T> z = blk.row(in.z, step);
      dy *= z * sigmoid(z);
    }
    sc.dy[step] = dy;
    sc.dsB[step] = Vec<T>{};
    sc.da[step] = Vec<T>{};
  }
  for_each_chunk<kBackwardChunk>(N, 0, [&](auto c, int64_t n0) { backward_chunk<T, decltype(c)::value>(blk, n0, sc); });
  // Per step, reverse scan order: d delta through softplus and the gap term, which also feeds the
  // previous step's delta (a_t = dt_t + g_t * dt_prev); du; dz from the ungated output y.
  Vec<T> dD{}, dbias{}, carry{};
  for (int64_t step = L - 1; step >= 0; --step) {
    const int64_t t = in.time(step);
    const Vec<T> u = blk.row(in.u, step);
    const Vec<T> dy = sc.dy[step];
    const Vec<T> da = sc.da[step] * (T(1) / Decay<T>::kScale);  // sc.A holds A * kScale
    const Vec<T> draw = (carry + sc.dsB[step] * u + da) * sc.dt_grad[step];
    carry = in.gap ? in.gap_at(b, t) * da : Vec<T>{};
    dbias += draw;
    dD += dy * u;
    store(blk.out_row(du, step), dy * blk.D + sc.dsB[step] * sc.dt[step], blk.ne);
    store(blk.out_row(ddelta, step), draw, blk.ne);
    if (in.has_z) {
      const Vec<T> z = blk.row(in.z, step);
      store(blk.out_row(dz, step), blk.row(dout, step) * sc.y[step] * silu_grad(z, sigmoid(z)), blk.ne);
    }
  }
  for (int i = 0; i < blk.ne; ++i) {
    for (int64_t n = 0; n < N; ++n) dA_part[(b * E + blk.e0 + i) * N + n] = sc.dA[n][i];
    dD_part[b * E + blk.e0 + i] = dD[i];
    dbias_part[b * E + blk.e0 + i] = dbias[i];
  }
}

template <typename T>
ScanInputs<T> make_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                          const at::Tensor& C, const std::optional<at::Tensor>& D,
                          const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                          const std::optional<at::Tensor>& gap, bool softplus, bool reverse) {
  ScanInputs<T> in;
  in.batch = u.size(0);
  in.length = u.size(1);
  in.E = u.size(2);
  in.N = A.size(1);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == in.E && A.is_contiguous(), "A must be contiguous (E, N)");
  check_rows(u, "u", in.batch, in.length, in.E);
  check_rows(delta, "delta", in.batch, in.length, in.E);
  check_rows(B, "B", in.batch, in.length, in.N);
  check_rows(C, "C", in.batch, in.length, in.N);
  for (const at::Tensor& t : {u, delta, A, B, C}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == u.scalar_type(), "all inputs must be CPU, same dtype");
  }
  in.u = Rows<T>(u);
  in.delta = Rows<T>(delta);
  in.B = Rows<T>(B);
  in.C = Rows<T>(C);
  in.A = A.data_ptr<T>();
  auto vector_param = [&](const std::optional<at::Tensor>& p, const char* name) -> const T* {
    if (!p.has_value()) return nullptr;
    TORCH_CHECK(p->dim() == 1 && p->size(0) == in.E && p->is_contiguous() && p->scalar_type() == u.scalar_type(),
                name, " must be a contiguous (E,) tensor of the input dtype");
    return p->data_ptr<T>();
  };
  in.D = vector_param(D, "D");
  in.bias = vector_param(delta_bias, "delta_bias");
  if (z.has_value()) {
    check_rows(*z, "z", in.batch, in.length, in.E);
    in.z = Rows<T>(*z);
    in.has_z = true;
  }
  if (gap.has_value()) {
    TORCH_CHECK(gap->dim() == 2 && gap->size(0) == in.batch && gap->size(1) == in.length && gap->is_contiguous() &&
                    gap->scalar_type() == u.scalar_type(),
                "gap must be a contiguous (batch, length) tensor of the input dtype");
    in.gap = gap->data_ptr<T>();
  }
  in.softplus = softplus;
  in.reverse = reverse;
  return in;
}

int64_t num_blocks(int64_t E, int64_t lanes) { return (E + lanes - 1) / lanes; }

constexpr int64_t kTasks = 32;

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& gap,
                    bool softplus, bool reverse) {
  TORCH_CHECK(u.dim() == 3, "u must be (batch, length, E)");
  at::Tensor out = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambatr_scan_fwd", [&] {
    const auto in = make_inputs<scalar_t>(u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse);
    const int64_t blocks = num_blocks(in.E, lanes<scalar_t>());
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.batch * blocks, 1, [&](int64_t begin, int64_t end) {
      const FlushDenormals ftz;
      Scratch<scalar_t> sc(in.length, in.N, false);
      for (int64_t task = begin; task < end; ++task) {
        forward_block(in, task / blocks, task % blocks, sc, o);
      }
    });
  });
  return out;
}

// Returns [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]; dz is empty without z.
std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                                 const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& gap,
                                 bool softplus, bool reverse) {
  TORCH_CHECK(u.dim() == 3, "u must be (batch, length, E)");
  const int64_t batch = u.size(0), L = u.size(1), E = u.size(2), N = A.size(1);
  check_rows(dout, "dout", batch, L, E);
  const auto opts = u.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor du = at::empty({batch, L, E}, opts), ddelta = at::empty({batch, L, E}, opts);
  at::Tensor dz = z.has_value() ? at::empty({batch, L, E}, opts) : at::empty({0}, opts);
  at::Tensor dA_part = at::empty({batch, E, N}, opts), dD_part = at::empty({batch, E}, opts);
  at::Tensor dbias_part = at::empty({batch, E}, opts);
  at::Tensor dB_part, dC_part;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambatr_scan_bwd", [&] {
    using T = scalar_t;
    const auto in = make_inputs<T>(u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse);
    TORCH_CHECK(dout.scalar_type() == u.scalar_type(), "dout must have the input dtype");
    const Rows<T> g(dout);
    const int64_t blocks = num_blocks(E, lanes<T>());
    // Channel groups per batch element: enough tasks for up to kTasks threads. Not derived from the
    // thread count, so the dB/dC summation order, and the gradients, do not depend on it.
    const int64_t groups = std::min(blocks, std::max<int64_t>(1, (kTasks + batch - 1) / batch));
    dB_part = at::empty({groups, batch, L, N}, opts);
    dC_part = at::empty({groups, batch, L, N}, opts);
    T *pdu = du.data_ptr<T>(), *pdd = ddelta.data_ptr<T>(), *pdz = z.has_value() ? dz.data_ptr<T>() : nullptr;
    T *pdA = dA_part.data_ptr<T>(), *pdD = dD_part.data_ptr<T>(), *pdb = dbias_part.data_ptr<T>();
    T *pdB = dB_part.data_ptr<T>(), *pdC = dC_part.data_ptr<T>();
    at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
      const FlushDenormals ftz;
      Scratch<T> sc(L, N, true);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / groups, grp = task % groups;
        std::fill(sc.dB.begin(), sc.dB.end(), Vec<T>{});
        std::fill(sc.dC.begin(), sc.dC.end(), Vec<T>{});
        for (int64_t blk = grp * blocks / groups; blk < (grp + 1) * blocks / groups; ++blk) {
          backward_block(in, g, b, blk, sc, pdu, pdd, pdz, pdA, pdD, pdb);
        }
        T* outB = pdB + (grp * batch + b) * L * N;
        T* outC = pdC + (grp * batch + b) * L * N;
        for (int64_t step = 0; step < L; ++step) {
          const int64_t t = in.time(step);
          for (int64_t n = 0; n < N; ++n) {
            outB[t * N + n] = hsum(sc.dB[step * N + n]);
            outC[t * N + n] = hsum(sc.dC[step * N + n]);
          }
        }
      }
    });
  });
  return {du, ddelta, dA_part.sum(0), dB_part.sum(0), dC_part.sum(0), dD_part.sum(0), dz, dbias_part.sum(0)};
}

}  // namespace
}  // namespace mambatr

TORCH_LIBRARY_FRAGMENT(mambatr, m) {
  m.def("scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? delta_bias, Tensor? gap, bool softplus, bool reverse) -> Tensor");
  m.def("scan_bwd(Tensor dout, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? delta_bias, Tensor? gap, bool softplus, bool reverse) -> Tensor[]");
  m.impl("scan_fwd", c10::DispatchKey::CPU, TORCH_FN(mambatr::scan_fwd));
  m.impl("scan_bwd", c10::DispatchKey::CPU, TORCH_FN(mambatr::scan_bwd));
}

// The selective scan's forward on CPU (Mamba SSM recurrence), free of torch: the C++ kernels
// (scan.cpp) and the onnxruntime custom op (ops/ort/ort_ops.cpp) both run it, so the two compute the
// same float32 values in the same order. How the work is laid out is described in scan.cpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "rows.h"

namespace mambatr {

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

}  // namespace mambatr

// Selective scan (Mamba SSM recurrence) forward and backward on CPU.
//
// Layout (mambatr's): u, delta, z, out (batch, length, E); B, C (batch, length, N); A (E, N);
// D, delta_bias (E); gap (batch, length) or undefined. Rows may be strided (e.g. B and C are slices
// of the x_proj output); the channel dimension must be contiguous.
//
// Work is split over (batch, block of `lanes` channels); each block keeps its N states in vector
// registers and walks the sequence in scan order, so every operation is a vector op over channels.
// The backward pass recomputes the block's states into a per-thread buffer (L * N vectors) instead
// of storing (batch, L, E, N) in the forward, then runs the adjoint recurrence in reverse order.
// dB and dC are reductions over channels: they are accumulated as lane vectors over all blocks of a
// channel group and reduced horizontally once per group.
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

// One block of channels [e0, e0 + ne): its A columns and per-channel parameters as vectors.
template <typename T>
struct Block {
  int64_t e0 = 0;
  int ne = 0;
  Vec<T> D{}, bias{};

  void init(const ScanInputs<T>& in, int64_t block, Vec<T>* A) {
    e0 = block * lanes<T>();
    ne = static_cast<int>(std::min<int64_t>(lanes<T>(), in.E - e0));
    for (int64_t n = 0; n < in.N; ++n) {
      Vec<T> a{};
      for (int i = 0; i < ne; ++i) a[i] = in.A[(e0 + i) * in.N + n];
      A[n] = a;
    }
    D = in.D ? load(in.D + e0, ne) : Vec<T>{};
    bias = in.bias ? load(in.bias + e0, ne) : Vec<T>{};
  }

  // Per step (scan order): delta after bias and softplus, its derivative w.r.t. the raw delta, and the
  // decay exponent a = delta + gap * previous delta. A separate pass, so these independent
  // transcendental evaluations pipeline instead of sitting on the recurrence's critical path.
  void deltas(const ScanInputs<T>& in, int64_t b, Vec<T>* dt, Vec<T>* grad, Vec<T>* a) const {
    for (int64_t step = 0; step < in.length; ++step) {
      const int64_t t = in.time(step);
      const Vec<T> raw = load(in.delta.row(b, t) + e0, ne) + bias;
      if (in.softplus) {
        softplus(raw, dt[step], grad[step]);
      } else {
        dt[step] = raw;
        grad[step] = bcast(T(1));
      }
      a[step] = in.gap && step ? dt[step] + in.gap_at(b, t) * dt[step - 1] : dt[step];
    }
  }
};

// Per-thread scratch: A columns, states, and per-step delta vectors; the backward adds the stored
// states and decays of one block and the lane partials of dB and dC for one channel group.
template <typename T>
struct Scratch {
  std::vector<Vec<T>> A, s, dA_acc, dt, dt_grad, a, zeros, states, decay, dB, dC;
  Scratch(int64_t L, int64_t N, bool backward)
      : A(N), s(N), dA_acc(N), dt(L), dt_grad(L), a(L), zeros(N), states(backward ? L * N : 0), decay(backward ? L * N : 0),
        dB(backward ? L * N : 0), dC(backward ? L * N : 0) {}
};

template <typename T>
void forward_block(const ScanInputs<T>& in, int64_t b, int64_t block, Scratch<T>& sc, T* out) {
  Block<T> blk;
  blk.init(in, block, sc.A.data());
  blk.deltas(in, b, sc.dt.data(), sc.dt_grad.data(), sc.a.data());
  const Vec<T>* A = sc.A.data();
  Vec<T>* s = sc.s.data();
  std::fill(s, s + in.N, Vec<T>{});
  for (int64_t step = 0; step < in.length; ++step) {
    const int64_t t = in.time(step);
    const Vec<T> u = load(in.u.row(b, t) + blk.e0, blk.ne);
    const Vec<T> a = sc.a[step];
    const Vec<T> dtu = sc.dt[step] * u;
    const T* Bt = in.B.row(b, t);
    const T* Ct = in.C.row(b, t);
    Vec<T> y = blk.D * u;
    for (int64_t n = 0; n < in.N; ++n) {
      s[n] = exp_vec(a * A[n]) * s[n] + dtu * Bt[n];
      y += s[n] * Ct[n];
    }
    if (in.has_z) {
      const Vec<T> z = load(in.z.row(b, t) + blk.e0, blk.ne);
      y *= z * sigmoid(z);
    }
    store(out + (b * in.length + t) * in.E + blk.e0, y, blk.ne);
  }
}

// Gradients of one channel block; dB/dC lane partials accumulate into sc.dB / sc.dC.
template <typename T>
void backward_block(const ScanInputs<T>& in, const Rows<T>& dout, int64_t b, int64_t block, Scratch<T>& sc,
                    T* du, T* ddelta, T* dz, T* dA_part, T* dD_part, T* dbias_part) {
  const int64_t L = in.length, N = in.N, E = in.E;
  Block<T> blk;
  blk.init(in, block, sc.A.data());
  const Vec<T>* A = sc.A.data();
  const int64_t e0 = blk.e0;
  const int ne = blk.ne;

  // Pass 1, scan order: states and decays; dz needs the ungated output.
  blk.deltas(in, b, sc.dt.data(), sc.dt_grad.data(), sc.a.data());
  for (int64_t step = 0; step < L; ++step) {
    const int64_t t = in.time(step);
    const Vec<T> u = load(in.u.row(b, t) + e0, ne);
    const Vec<T> a = sc.a[step];
    const Vec<T> dtu = sc.dt[step] * u;
    const T* Bt = in.B.row(b, t);
    const T* Ct = in.C.row(b, t);
    const Vec<T>* sp = step ? &sc.states[(step - 1) * N] : sc.zeros.data();
    Vec<T>* st = &sc.states[step * N];
    Vec<T>* et = &sc.decay[step * N];
    Vec<T> y = blk.D * u;
    for (int64_t n = 0; n < N; ++n) {
      et[n] = exp_vec(a * A[n]);
      st[n] = et[n] * sp[n] + dtu * Bt[n];
      y += st[n] * Ct[n];
    }
    if (in.has_z) {
      const Vec<T> z = load(in.z.row(b, t) + e0, ne);
      const Vec<T> g = load(dout.row(b, t) + e0, ne);
      store(dz + (b * L + t) * E + e0, g * y * silu_grad(z, sigmoid(z)), ne);
    }
  }

  // Pass 2, reverse scan order: adjoint states ds (d loss / d s_t, carried back through decay).
  Vec<T>* ds_carry = sc.s.data();  // reuses the forward state slots
  std::fill(ds_carry, ds_carry + N, Vec<T>{});
  std::vector<Vec<T>>& dA = sc.dA_acc;
  std::fill(dA.begin(), dA.end(), Vec<T>{});
  Vec<T> dD{}, dbias{}, carry{};
  for (int64_t step = L - 1; step >= 0; --step) {
    const int64_t t = in.time(step);
    const Vec<T> u = load(in.u.row(b, t) + e0, ne);
    Vec<T> dy = load(dout.row(b, t) + e0, ne);
    if (in.has_z) {
      const Vec<T> z = load(in.z.row(b, t) + e0, ne);
      dy *= z * sigmoid(z);
    }
    const Vec<T> dt = sc.dt[step];
    const Vec<T> a = sc.a[step];
    const Vec<T> dtu = dt * u;
    const T* Bt = in.B.row(b, t);
    const T* Ct = in.C.row(b, t);
    const Vec<T>* st = &sc.states[step * N];
    const Vec<T>* sp = step ? &sc.states[(step - 1) * N] : sc.zeros.data();
    const Vec<T>* et = &sc.decay[step * N];
    Vec<T>* dBt = &sc.dB[step * N];
    Vec<T>* dCt = &sc.dC[step * N];
    Vec<T> dsB{}, da{};
    for (int64_t n = 0; n < N; ++n) {
      const Vec<T> ds = ds_carry[n] + dy * Ct[n];
      dCt[n] += dy * st[n];
      dBt[n] += ds * dtu;
      dsB += ds * Bt[n];
      const Vec<T> w = ds * sp[n] * et[n];  // d loss / d (a * A[n])
      dA[n] += w * a;
      da += w * A[n];
      ds_carry[n] = ds * et[n];
    }
    dD += dy * u;
    const Vec<T> ddt = carry + dsB * u + da;
    // a_t = dt_t + g_t * dt_prev: the decay exponent also feeds the previous step's delta.
    carry = in.gap ? in.gap_at(b, t) * da : Vec<T>{};
    const Vec<T> draw = ddt * sc.dt_grad[step];
    dbias += draw;
    store(du + (b * L + t) * E + e0, dy * blk.D + dsB * dt, ne);
    store(ddelta + (b * L + t) * E + e0, draw, ne);
  }
  for (int i = 0; i < ne; ++i) {
    for (int64_t n = 0; n < N; ++n) dA_part[(b * E + e0 + i) * N + n] = dA[n][i];
    dD_part[b * E + e0 + i] = dD[i];
    dbias_part[b * E + e0 + i] = dbias[i];
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
    // Channel groups per batch element: enough tasks to keep every thread busy.
    const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
    const int64_t groups = std::min(blocks, std::max<int64_t>(1, (want + batch - 1) / batch));
    dB_part = at::empty({groups, batch, L, N}, opts);
    dC_part = at::empty({groups, batch, L, N}, opts);
    T *pdu = du.data_ptr<T>(), *pdd = ddelta.data_ptr<T>(), *pdz = z.has_value() ? dz.data_ptr<T>() : nullptr;
    T *pdA = dA_part.data_ptr<T>(), *pdD = dD_part.data_ptr<T>(), *pdb = dbias_part.data_ptr<T>();
    T *pdB = dB_part.data_ptr<T>(), *pdC = dC_part.data_ptr<T>();
    at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
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

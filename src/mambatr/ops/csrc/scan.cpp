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
#include "scan_forward.h"

namespace mambatr {
namespace {

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
  in.u = rows_of<T>(u);
  in.delta = rows_of<T>(delta);
  in.B = rows_of<T>(B);
  in.C = rows_of<T>(C);
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
    in.z = rows_of<T>(*z);
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
    const Rows<T> g = rows_of<T>(dout);
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

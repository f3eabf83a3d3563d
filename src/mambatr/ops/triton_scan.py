"""Selective scan in Triton (``impl="triton"``), forward and backward; see docs/scan.md.

One program per (batch element, block of channels) walks the sequence in scan order with the state
block (channels x states) in registers, computing in float32 (float64 for float64 inputs). The
backward saves nothing but the inputs: it recomputes the states chunk by chunk from checkpoints and
runs the adjoint recurrence in reverse. Imported lazily (only for ``impl="triton"``); with
TRITON_INTERPRET=1 set before the first use, the kernels run in Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import triton
import triton.language as tl

from mambatr.ops import dispatch
from mambatr.ops.triton_launch import Launch, keep_whole_when_traced

Tensor = torch.Tensor

# The kernels below are decorated for Triton's interpreter iff TRITON_INTERPRET is set at this import.
INTERPRETED = dispatch.triton_interpreter()
CHUNKS_VAR = "MAMBATR_TRITON_CHUNKS"


@triton.jit
def _softplus(x):
    """torch's softplus (linear above 20); log1p(exp(x)) via Kahan's log1p, exact for tiny exp(x)."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _time(i, L, REVERSE: tl.constexpr):
    """The time index of scan step i, in int64: t * row stride can pass 2**31."""
    if REVERSE:
        t = L - 1 - i
    else:
        t = i
    return t.to(tl.int64)


@triton.jit
def _per_channel(ptr, e, me, PRESENT: tl.constexpr, BLOCK_E: tl.constexpr):
    """A per-channel parameter (D, delta_bias) for the block, zeros when absent."""
    if PRESENT:
        v = tl.load(ptr + e, mask=me, other=0.0)
    else:
        v = tl.zeros([BLOCK_E], ptr.dtype.element_ty)
    return v


@triton.jit
def _delta(ptr, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Load one row of delta; returns (delta + bias, softplus of it when asked) in the compute dtype."""
    x = tl.load(ptr, mask=mask, other=0.0).to(bias.dtype)
    if HAS_BIAS:
        x += bias
    if SOFTPLUS:
        step = _softplus(x)
    else:
        step = x
    return x, step


@triton.jit
def _step(
    state, i, b, e, n, me, mn, A, bias, u, delta, B, gap, s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb, L,
    HAS_BIAS: tl.constexpr, HAS_GAP: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """Scan step i: returns (new state, delta_t (biased, softplus'ed), a_t, exp(a_t A), u_t, B_t)."""
    t = _time(i, L, REVERSE)
    _, step = _delta(delta + b * s_db + t * s_dt + e, me, bias, HAS_BIAS, SOFTPLUS)
    decay = step
    if HAS_GAP:
        tp = _time(tl.maximum(i - 1, 0), L, REVERSE)  # clamped: the first step has no previous delta
        _, prev = _delta(delta + b * s_db + tp * s_dt + e, me, bias, HAS_BIAS, SOFTPLUS)
        decay += tl.load(gap + b * s_gb + t).to(step.dtype) * tl.where(i > 0, prev, 0.0)
    u_t = tl.load(u + b * s_ub + t * s_ut + e, mask=me, other=0.0).to(step.dtype)
    B_t = tl.load(B + b * s_bb + t * s_bt + n, mask=mn, other=0.0).to(step.dtype)
    decay_a = tl.exp(decay[:, None] * A)
    new = decay_a * state + (step * u_t)[:, None] * B_t[None, :]
    return new, step, decay, decay_a, u_t, B_t


@triton.jit
def _chunk_slots(b, blk, c, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets of chunk c's end state (a state tile) and summed decay (per channel) in the scratch of
    (batch element, channel block) (b, blk)."""
    slot = (b * tl.num_programs(1) + blk) * tl.num_programs(2) + c
    rows = tl.arange(0, BLOCK_E)
    tile = slot * (BLOCK_E * BLOCK_N) + rows[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    return tile, slot * BLOCK_E + rows


@triton.jit
def _scan_chunk_states(
    u, delta, A, B, bias, gap, states, decays, L, E, N, chunk,
    s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb,
    HAS_BIAS: tl.constexpr, HAS_GAP: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Chunked forward, pass 1: one (batch element, channel block, chunk of time) scans its chunk from a
    zero state and stores the end state and the chunk's summed decay a (its decay is exp(A sum a))."""
    b = tl.program_id(0).to(tl.int64)
    blk, c = tl.program_id(1), tl.program_id(2)
    e = blk * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    A_blk = tl.load(A + e[:, None] * N + n[None, :], mask=me[:, None] & mn[None, :], other=0.0)
    bias_v = _per_channel(bias, e, me, HAS_BIAS, BLOCK_E)
    state = tl.zeros([BLOCK_E, BLOCK_N], A_blk.dtype)
    total = tl.zeros([BLOCK_E], A_blk.dtype)
    for i in range(c * chunk, tl.minimum(c * chunk + chunk, L)):
        state, _, decay, _, _, _ = _step(
            state, i, b, e, n, me, mn, A_blk, bias_v, u, delta, B, gap,
            s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb, L, HAS_BIAS, HAS_GAP, SOFTPLUS, REVERSE,
        )  # fmt: skip
        total += decay
    tile, rows = _chunk_slots(b, blk, c, BLOCK_E, BLOCK_N)
    tl.store(states + tile, state)
    tl.store(decays + rows, total)


@triton.jit
def _scan_fwd(
    u, delta, A, B, C, D, z, bias, gap, y, states, decays,
    L, E, N, chunk, s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_cb, s_ct, s_zb, s_zt, s_gb, s_yb, s_yt,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAP: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """y for one (batch element, channel block, chunk of time), in scan order. With one chunk (the
    sequential scan) the state starts at zero; otherwise the state entering chunk c is combined from
    pass 1's chunk end states: s = exp(A sum a_c') s + end state of c', over the chunks before c."""
    b = tl.program_id(0).to(tl.int64)
    blk, c = tl.program_id(1), tl.program_id(2)
    e = blk * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    A_blk = tl.load(A + e[:, None] * N + n[None, :], mask=me[:, None] & mn[None, :], other=0.0)
    bias_v = _per_channel(bias, e, me, HAS_BIAS, BLOCK_E)
    D_v = _per_channel(D, e, me, HAS_D, BLOCK_E)
    state = tl.zeros([BLOCK_E, BLOCK_N], A_blk.dtype)
    for before in range(c):
        tile, rows = _chunk_slots(b, blk, before, BLOCK_E, BLOCK_N)
        state = tl.exp(tl.load(decays + rows)[:, None] * A_blk) * state + tl.load(states + tile)
    for i in range(c * chunk, tl.minimum(c * chunk + chunk, L)):
        t = _time(i, L, REVERSE)
        state, _, _, _, u_t, _ = _step(
            state, i, b, e, n, me, mn, A_blk, bias_v, u, delta, B, gap,
            s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb, L, HAS_BIAS, HAS_GAP, SOFTPLUS, REVERSE,
        )  # fmt: skip
        C_t = tl.load(C + b * s_cb + t * s_ct + n, mask=mn, other=0.0).to(A_blk.dtype)
        out = tl.sum(state * C_t[None, :], 1)
        if HAS_D:
            out += D_v * u_t
        if HAS_Z:
            z_t = tl.load(z + b * s_zb + t * s_zt + e, mask=me, other=0.0).to(A_blk.dtype)
            out *= z_t * tl.sigmoid(z_t)
        tl.store(y + b * s_yb + t * s_yt + e, out.to(y.dtype.element_ty), mask=me)


@triton.jit
def _scan_bwd(
    u, delta, A, B, C, D, z, bias, gap, dout, du, ddelta, dz, dA_part, dB_part, dC_part, dD_part,
    dbias_part, scratch, L, E, N, chunk, n_chunks,
    s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_cb, s_ct, s_zb, s_zt, s_gb, s_ob, s_ot, s_xb, s_xt,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAP: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Gradients of one (batch element, channel block). du/ddelta/dz are written densely (batch, L, E);
    dB/dC as per-block partials (batch, blocks, L, N), dA/dD/dbias as per-batch partials."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    e = blk * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    men = me[:, None] & mn[None, :]
    A_blk = tl.load(A + e[:, None] * N + n[None, :], mask=men, other=0.0)
    bias_v = _per_channel(bias, e, me, HAS_BIAS, BLOCK_E)
    D_v = _per_channel(D, e, me, HAS_D, BLOCK_E)
    # this program's scratch: n_chunks checkpoints (the state before each chunk), then the `chunk`
    # states before each step of the chunk being differentiated
    tile = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    own = scratch + (b * tl.num_programs(1) + blk) * (n_chunks + chunk) * (BLOCK_E * BLOCK_N) + tile
    steps = own + n_chunks * (BLOCK_E * BLOCK_N)
    dB_row = dB_part + (b * tl.num_programs(1) + blk) * L * N + n
    dC_row = dC_part + (b * tl.num_programs(1) + blk) * L * N + n

    state = tl.zeros([BLOCK_E, BLOCK_N], A_blk.dtype)
    for c in range(n_chunks):  # pass 1: checkpoints
        tl.store(own + c * (BLOCK_E * BLOCK_N), state)
        for i in range(c * chunk, tl.minimum(c * chunk + chunk, L)):
            state, _, _, _, _, _ = _step(
                state, i, b, e, n, me, mn, A_blk, bias_v, u, delta, B, gap,
                s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb, L, HAS_BIAS, HAS_GAP, SOFTPLUS, REVERSE,
            )  # fmt: skip

    grad = tl.zeros([BLOCK_E, BLOCK_N], A_blk.dtype)  # exp(a_{i+1} A) * ds_{i+1}: from the step after
    carry = tl.zeros([BLOCK_E], A_blk.dtype)  # gap_{i+1} * d a_{i+1}: the gap term's share for delta_i
    dA_acc = tl.zeros([BLOCK_E, BLOCK_N], A_blk.dtype)
    dD_acc = tl.zeros([BLOCK_E], A_blk.dtype)
    dbias_acc = tl.zeros([BLOCK_E], A_blk.dtype)
    for cc in range(n_chunks):  # pass 2: chunks in reverse scan order
        c = n_chunks - 1 - cc
        lo = c * chunk
        hi = tl.minimum(lo + chunk, L)
        tl.debug_barrier()  # the previous chunk's reads are done before its slots are rewritten
        state = tl.load(own + c * (BLOCK_E * BLOCK_N))
        for i in range(lo, hi):
            tl.store(steps + (i - lo) * (BLOCK_E * BLOCK_N), state)
            state, _, _, _, _, _ = _step(
                state, i, b, e, n, me, mn, A_blk, bias_v, u, delta, B, gap,
                s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb, L, HAS_BIAS, HAS_GAP, SOFTPLUS, REVERSE,
            )  # fmt: skip
        tl.debug_barrier()  # stores visible to every thread of the program
        for k in range(hi - lo):
            i = hi - 1 - k
            t = _time(i, L, REVERSE)
            before = tl.load(steps + (i - lo) * (BLOCK_E * BLOCK_N))
            state, step, decay, decay_a, u_t, B_t = _step(
                before, i, b, e, n, me, mn, A_blk, bias_v, u, delta, B, gap,
                s_ub, s_ut, s_db, s_dt, s_bb, s_bt, s_gb, L, HAS_BIAS, HAS_GAP, SOFTPLUS, REVERSE,
            )  # fmt: skip
            C_t = tl.load(C + b * s_cb + t * s_ct + n, mask=mn, other=0.0).to(A_blk.dtype)
            dy = tl.load(dout + b * s_ob + t * s_ot + e, mask=me, other=0.0).to(A_blk.dtype)
            if HAS_Z:
                z_t = tl.load(z + b * s_zb + t * s_zt + e, mask=me, other=0.0).to(A_blk.dtype)
                sig = tl.sigmoid(z_t)
                out = tl.sum(state * C_t[None, :], 1)
                if HAS_D:
                    out += D_v * u_t
                dz_t = dy * out * sig * (1.0 + z_t * (1.0 - sig))
                tl.store(dz + b * s_xb + t * s_xt + e, dz_t.to(dz.dtype.element_ty), mask=me)
                dy = dy * z_t * sig
            grad += dy[:, None] * C_t[None, :]  # ds_i
            tl.store(dC_row + t * N, tl.sum(state * dy[:, None], 0), mask=mn)
            tl.store(dB_row + t * N, tl.sum(grad * (step * u_t)[:, None], 0), mask=mn)
            grad_B = tl.sum(grad * B_t[None, :], 1)
            du_t = step * grad_B
            if HAS_D:
                du_t += D_v * dy
                dD_acc += dy * u_t
            tl.store(du + b * s_xb + t * s_xt + e, du_t.to(du.dtype.element_ty), mask=me)
            through_decay = grad * decay_a * before  # d s_i / d decay_i, per state, times ds_i
            d_decay = tl.sum(through_decay * A_blk, 1)
            dA_acc += through_decay * decay[:, None]
            d_step = u_t * grad_B + d_decay + carry
            if HAS_GAP:
                carry = tl.load(gap + b * s_gb + t).to(A_blk.dtype) * d_decay
            if SOFTPLUS:
                x, _ = _delta(delta + b * s_db + t * s_dt + e, me, bias_v, HAS_BIAS, False)
                d_step = tl.where(x > 20.0, d_step, d_step * tl.sigmoid(x))
            dbias_acc += d_step
            tl.store(ddelta + b * s_xb + t * s_xt + e, d_step.to(ddelta.dtype.element_ty), mask=me)
            grad *= decay_a
    tl.store(dA_part + b * E * N + e[:, None] * N + n[None, :], dA_acc, mask=men)
    tl.store(dD_part + b * E + e, dD_acc, mask=me)
    tl.store(dbias_part + b * E + e, dbias_acc, mask=me)


# Tile sizes (state values per program) and values per thread, from the registers ptxas reports for
# sm_80 / sm_90 (benchmarks/triton_compile.py, docs/scan.md): the forward holds one state tile, the
# backward about five (state, adjoint, dA, the reloaded state, the decay), so it gets a quarter of the
# tile. ``maxnreg=255`` keeps ptxas from capping itself at 80-128 registers and spilling.
FORWARD_TILE, BACKWARD_TILE = 1024, 256
FORWARD_PER_THREAD, BACKWARD_PER_THREAD = 8, 4
MAX_REGISTERS = 255


def _blocks(E: int, N: int, tile: int, per_thread: int) -> tuple[int, int, int]:
    """(BLOCK_E, BLOCK_N, num_warps): all (padded) states of up to 32 channels, at most ``tile`` values
    (one channel when a channel's states alone fill it), ``per_thread`` values per thread."""
    block_n = max(2, triton.next_power_of_2(N))
    block_e = max(1, min(32, triton.next_power_of_2(E), tile // block_n))
    warps = max(1, min(8, block_e * block_n // (32 * per_thread)))
    return block_e, block_n, warps


def _rows(t: Tensor | None) -> Tensor | None:
    """Row strides are passed to the kernels; only the last dimension must be contiguous."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _launch_args(
    u, delta, A, B, C, D, z, bias, gap, softplus, reverse, backward
) -> tuple[tuple, tuple, dict]:
    """Pointers (an absent input's slot gets a tensor that is never read), row strides and flags."""
    zz = u if z is None else z
    rows = (u, delta, B, C, zz)
    strides = (*(s for t in rows for s in t.stride()[:2]), 0 if gap is None else gap.stride(0))
    pointers = tuple(A if t is None else t for t in (u, delta, A, B, C, D, zz, bias, gap))
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, HAS_GAP=gap is not None)
    tile, per_thread = (
        (BACKWARD_TILE, BACKWARD_PER_THREAD) if backward else (FORWARD_TILE, FORWARD_PER_THREAD)
    )
    block_e, block_n, warps = _blocks(u.shape[2], A.shape[1], tile, per_thread)
    flags.update(SOFTPLUS=softplus, REVERSE=reverse, BLOCK_E=block_e, BLOCK_N=block_n)
    flags.update(num_warps=warps, maxnreg=MAX_REGISTERS)
    return pointers, strides, flags


def forward_launches(
    u, delta, A, B, C, D, z, bias, gap, softplus, reverse, chunks: int = 1
) -> tuple[list[Launch], Tensor]:
    """The forward's launches and the output they write: one sequential kernel, or for ``chunks`` > 1
    pass 1 (chunk end states, in parallel over chunks) and the output pass."""
    pointers, strides, flags = _launch_args(u, delta, A, B, C, D, z, bias, gap, softplus, reverse, False)
    batch, L, E = u.shape
    N = A.shape[1]
    y = torch.empty(batch, L, E, dtype=u.dtype, device=u.device)
    blocks = triton.cdiv(E, flags["BLOCK_E"])
    chunk = triton.cdiv(L, chunks)
    grid = (batch, blocks, triton.cdiv(L, chunk))
    states = decays = pointers[2]  # one chunk: never read
    # each kernel named in an assignment or the return: torch.library finds a triton_op's kernels by
    # reading its source (and this function's), for torch.compile's AOTAutograd cache key
    passes: list[Launch] = []
    if grid[2] > 1:
        states = torch.empty(
            batch * blocks * grid[2] * flags["BLOCK_E"] * flags["BLOCK_N"], dtype=A.dtype, device=u.device
        )
        decays = torch.empty(batch * blocks * grid[2] * flags["BLOCK_E"], dtype=A.dtype, device=u.device)
        u_, delta_, A_, B_, _, _, _, bias_, gap_ = pointers
        row_strides = (*strides[:6], strides[10])
        pass_flags = {k: v for k, v in flags.items() if k not in ("HAS_D", "HAS_Z")}
        args = (u_, delta_, A_, B_, bias_, gap_, states, decays, L, E, N, chunk, *row_strides)
        passes = [Launch(_scan_chunk_states, grid, args, pass_flags)]
    args = (*pointers, y, states, decays, L, E, N, chunk, *strides, L * E, E)
    return [*passes, Launch(_scan_fwd, grid, args, flags)], y


def backward_launch(u, delta, A, B, C, D, z, bias, gap, softplus, reverse, dout) -> tuple[Launch, dict]:
    """The backward kernel's launch and the buffers it writes (per-block / per-batch partials)."""
    pointers, strides, flags = _launch_args(u, delta, A, B, C, D, z, bias, gap, softplus, reverse, True)
    dout = _rows(dout)
    batch, L, E = u.shape
    N = A.shape[1]
    blocks = triton.cdiv(E, flags["BLOCK_E"])
    chunk = math.isqrt(L - 1) + 1  # checkpoints + one chunk's states: about 2 sqrt(L) state blocks
    n_chunks = triton.cdiv(L, chunk)
    acc = dict(dtype=A.dtype, device=u.device)
    tile = flags["BLOCK_E"] * flags["BLOCK_N"]
    scratch = torch.empty(batch * blocks * (n_chunks + chunk) * tile, **acc)
    out = dict(
        du=torch.empty(batch, L, E, dtype=u.dtype, device=u.device),
        ddelta=torch.empty(batch, L, E, dtype=delta.dtype, device=u.device),
        dz=None if z is None else torch.empty(batch, L, E, dtype=z.dtype, device=u.device),
        dA=torch.empty(batch, E, N, **acc),
    )
    out["dD"], out["dbias"] = torch.empty(2, batch, E, **acc)
    out["dB"], out["dC"] = torch.empty(2, batch, blocks, L, N, **acc)  # per channel block
    # without z, dz's slot gets a buffer of its own, never written: were it du, a traced kernel call
    # whose stores torch cannot analyse (it then counts every pointer as written) would take du's
    # value from the unwritten dz copy
    dz = u.new_empty(1) if z is None else out["dz"]
    args = (
        *pointers, dout, out["du"], out["ddelta"], dz, out["dA"],
        out["dB"], out["dC"], out["dD"], out["dbias"], scratch, L, E, N, chunk, n_chunks, *strides,
        *dout.stride()[:2], L * E, E,
    )  # fmt: skip
    return Launch(_scan_bwd, (batch, blocks), args, flags), out


@torch.library.triton_op("mambatr::triton_scan_fwd", mutates_args=())
def scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, gap: Tensor | None, softplus: bool, reverse: bool, chunks: int,
) -> Tensor:  # fmt: skip
    """The forward's kernels on :func:`_prepared` inputs: y, in u's dtype."""
    launches, y = forward_launches(u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse, chunks)
    for launch in launches:
        launch.run()
    return y


@torch.library.triton_op("mambatr::triton_scan_bwd", mutates_args=())
def scan_bwd(
    dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, delta_bias: Tensor | None, gap: Tensor | None, softplus: bool, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The backward kernel (it recomputes the states): (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias),
    each in its input's dtype; dz is empty without z, dD and ddelta_bias are zeros without D / bias
    (as the C++ ``mambatr::scan_bwd``)."""
    launch, out = backward_launch(u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse, dout)
    launch.run()
    return (
        out["du"],
        out["ddelta"],
        out["dA"].sum(0),
        out["dB"].sum(1).to(B.dtype),
        out["dC"].sum(1).to(C.dtype),
        out["dD"].sum(0),
        u.new_empty(0) if z is None else out["dz"],
        out["dbias"].sum(0),
    )


@scan_fwd.register_fake
def _scan_fwd_fake(u: Tensor, *_: object) -> Tensor:
    return u.new_empty(u.shape)


@scan_bwd.register_fake
def _scan_bwd_fake(
    dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, *_: object,
) -> tuple[Tensor, ...]:  # fmt: skip
    E, N = A.shape
    rows, states = u.shape, (*u.shape[:2], N)
    dz = u.new_empty(0) if z is None else z.new_empty(rows)
    parameters = (A.new_empty(E, N), B.new_empty(states), C.new_empty(states), A.new_empty(E))
    return u.new_empty(rows), delta.new_empty(rows), *parameters, dz, A.new_empty(E)


def _scan_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    """Save only the inputs: the backward kernel recomputes the states."""
    *tensors, softplus, reverse, _ = inputs
    ctx.save_for_backward(*tensors)
    ctx.flags = (softplus, reverse)


def _scan_backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of the tensors that are there (D, z, delta_bias, gap may be None; gap gets none)."""
    D, z, delta_bias = ctx.saved_tensors[5:8]
    du, ddelta, dA, dB, dC, dD, dz, dbias = scan_bwd(dout, *ctx.saved_tensors, *ctx.flags)
    optional = [None if t is None else grad for grad, t in ((dD, D), (dz, z), (dbias, delta_bias))]
    return du, ddelta, dA, dB, dC, *optional, None, None, None, None


scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup_context)
if INTERPRETED:
    for _op in (scan_fwd, scan_bwd):
        keep_whole_when_traced(_op)


def _prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap, reverse) -> tuple:
    """The kernels' arguments: activations with contiguous channels, A / D / delta_bias in the compute
    dtype (float32, float64 for float64 u)."""
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    small = [None if t is None else t.to(compute).contiguous() for t in (A, D, delta_bias)]
    gap = None if gap is None else gap.contiguous()
    activations = [_rows(t) for t in (u, delta, B, C, z)]
    return (*activations[:2], small[0], *activations[2:4], small[1], activations[4], small[2], gap,
            delta_softplus, reverse)  # fmt: skip


def launches(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, gap=None, reverse=False,
    chunks=1,
) -> list[Launch]:  # fmt: skip
    """The forward and backward launches of that ``selective_scan_triton`` call, without running them
    (meta tensors work: what tests/test_triton_compile.py compiles for a GPU)."""
    prepared = _prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap, reverse)
    forward, y = forward_launches(*prepared, chunks)
    return [*forward, backward_launch(*prepared, torch.empty_like(y))[0]]


def forward_chunks() -> int:
    """How many chunks of time the forward splits the sequence into: $MAMBATR_TRITON_CHUNKS, default 1
    (the sequential scan; the chunked one is for small batches and long sequences, and becomes a
    default only with GPU figures that show it faster, docs/scan.md)."""
    value = os.environ.get(CHUNKS_VAR, "1").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${CHUNKS_VAR}={value!r}: expected a whole number of chunks, 1 or more")
    return int(value)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    gap: Tensor | None = None,
    reverse: bool = False,
) -> Tensor:
    """The Triton kernels; compute in float32 (float64 for float64 u) and return u's dtype.

    u, delta, z, B, C are read in their own dtypes with their row strides; A, D and delta_bias are cast
    to the compute dtype (autograd casts their gradients back).
    """
    dispatch.check_triton_kernels("selective_scan", u.device, INTERPRETED)
    prepared = _prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap, reverse)
    return scan_fwd(*prepared, forward_chunks())

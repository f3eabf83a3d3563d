"""Selective scan and causal conv on CPU: forward+backward times of three implementations.

(a) mamba_ssm's ``selective_scan_ref`` re-implemented (a Python loop slicing ``[:, :, t]`` in layout
(batch, E, length)), (b) the best plain-PyTorch time-major loop (``impl="torch"``), (c) the C++ kernel
(``impl="cpu"``); plus the conv kernel against F.conv1d with the transposes and flips the model needs.

    python benchmarks/scan.py [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mambatr.ops import backend_info, causal_conv1d, selective_scan

Tensor = torch.Tensor


def mamba_selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref (real A, B/C of shape (batch, N, length)), layout (batch, E, length)."""
    dtype_in = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    state = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        state = delta_a[:, :, i] * state + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype_in)


def scan_inputs(batch: int, length: int, E: int, N: int, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, length, E, generator=g),
        "delta": torch.randn(batch, length, E, generator=g) * 0.5 - 1,
        "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1),
        "B": torch.randn(batch, length, N, generator=g),
        "C": torch.randn(batch, length, N, generator=g),
        "D": torch.ones(E),
        "z": torch.randn(batch, length, E, generator=g),
        "delta_bias": torch.randn(E, generator=g) * 0.1,
    }


def channels_first(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """(batch, length, X) -> (batch, X, length) contiguous, the layout mamba_ssm's functions take."""
    return {k: v.transpose(1, 2).contiguous() if v.dim() == 3 else v for k, v in inputs.items()}


def timed(fn: Callable[[], object], reps: int, warmup: bool = True) -> tuple[float, object]:
    """Median seconds over ``reps`` calls (after one warm-up call) and the last call's result."""
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def rel_err(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max(1, max |want|)."""
    return ((got - want).abs().max() / want.abs().max().clamp(min=1)).item()


def fwd_bwd(
    fn: Callable[..., Tensor], inputs: dict[str, Tensor], grad: Tensor
) -> tuple[Tensor, list[Tensor]]:
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    y = fn(**leaves)
    return y, list(torch.autograd.grad(y, list(leaves.values()), grad))


def scan_row(batch: int, length: int, E: int, N: int, reps: dict[str, int]) -> dict[str, object]:
    """Forward+backward with gradients for every input; (a) runs once (no warm-up): it is slow."""
    inputs = scan_inputs(batch, length, E, N)
    grad = torch.randn(batch, length, E, generator=torch.Generator().manual_seed(1))
    first, grad_first = channels_first(inputs), grad.transpose(1, 2).contiguous()
    ours = lambda impl: lambda **kw: selective_scan(**kw, delta_softplus=True, impl=impl)
    row: dict[str, object] = {"case": f"fwd+bwd B={batch} L={length} E={E} N={N}"}
    row["a_mamba_ref"], (y_ref, g_ref) = timed(
        lambda: fwd_bwd(lambda **kw: mamba_selective_scan_ref(**kw, delta_softplus=True), first, grad_first),
        reps["a_mamba_ref"],
        warmup=False,
    )
    row["b_torch"], _ = timed(lambda: fwd_bwd(ours("torch"), inputs, grad), reps["b_torch"])
    row["c_cpu"], (y, grads) = timed(lambda: fwd_bwd(ours("cpu"), inputs, grad), reps["c_cpu"])
    row["rel_err_y"] = rel_err(y, y_ref.transpose(1, 2))
    row["rel_err_grad"] = max(
        rel_err(got, want.transpose(1, 2) if want.dim() == 3 else want)
        for got, want in zip(grads, g_ref, strict=True)
    )
    return row


def inference_row(batch: int, length: int, E: int, N: int, reps: dict[str, int]) -> dict[str, object]:
    inputs = scan_inputs(batch, length, E, N)
    first = channels_first(inputs)
    row: dict[str, object] = {"case": f"inference fwd B={batch} L={length} E={E} N={N}"}
    with torch.inference_mode():
        ref = lambda: mamba_selective_scan_ref(**first, delta_softplus=True)
        row["a_mamba_ref"], y_ref = timed(ref, reps["a_mamba_ref"])
        for name, impl in (("b_torch", "torch"), ("c_cpu", "cpu")):
            ours = lambda impl=impl: selective_scan(**inputs, delta_softplus=True, impl=impl)
            row[name], y = timed(ours, reps[name])
        row["rel_err_y"] = rel_err(y, y_ref.transpose(1, 2))
    return row


def conv_row(batch: int, length: int, E: int, K: int, reps: int) -> dict[str, object]:
    """Both directions (causal and anti-causal), as one Vim layer runs them."""
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*shape, generator=g) for shape in ((batch, length, E), (E, K), (E,)))
    grad = torch.randn(batch, length, E, generator=g)
    row: dict[str, object] = {"case": f"conv fwd+bwd B={batch} L={length} E={E} K={K} x2 dirs"}
    for name, impl in (("b_torch", "torch"), ("c_cpu", "cpu")):

        def both(impl: str = impl) -> None:
            for reverse in (False, True):
                conv = lambda r=reverse, **kw: causal_conv1d(**kw, silu=True, reverse=r, impl=impl)
                fwd_bwd(conv, {"x": x, "weight": w, "bias": b}, grad)

        row[name], _ = timed(both, reps)
    return row


def print_table(rows: list[dict[str, object]]) -> None:
    head = f"{'(a) mamba ref':>13} {'(b) torch':>10} {'(c) ours':>9} {'a/c':>7} {'b/c':>6}"
    print(f"{'case':<44} {head}  rel. error (c) vs (a)")
    for r in rows:
        a = r.get("a_mamba_ref")
        cells = [
            f"{a * 1e3:10.1f} ms" if a else f"{'-':>13}",
            f"{r['b_torch'] * 1e3:7.1f} ms",
            f"{r['c_cpu'] * 1e3:6.1f} ms",
            f"{a / r['c_cpu']:6.1f}x" if a else f"{'-':>7}",
            f"{r['b_torch'] / r['c_cpu']:5.1f}x",
        ]
        err = f"y {r['rel_err_y']:.1e}" if "rel_err_y" in r else ""
        err += f", grads {r['rel_err_grad']:.1e}" if "rel_err_grad" in r else ""
        print(f"{r['case']:<44} " + " ".join(cells) + "  " + err)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    selective_scan(**scan_inputs(1, 2, 8, 2), impl="cpu")  # build/load the kernels before timing
    info = backend_info("cpu")
    print(
        f"threads {torch.get_num_threads()}, torch {torch.__version__}; "
        + ", ".join(f"{k}: {v}" for k, v in info.items())
    )
    reps = {"a_mamba_ref": 1, "b_torch": 2, "c_cpu": 5}
    rows = [scan_row(64, length, E, 16, reps) for length in (50, 197) for E in (192, 384)]
    rows.append(inference_row(64, 197, 384, 16, {"a_mamba_ref": 2, "b_torch": 3, "c_cpu": 10}))
    rows.append(conv_row(64, 197, 384, 4, reps=10))
    print_table(rows)
    print("rel. error: max |(c) - (a)| / max(1, max |(a)|), for y and the worst input gradient")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "backends": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

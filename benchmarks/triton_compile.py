"""Compile mambatr's Triton kernels for real GPUs on a machine without one, and report registers/spills.

Every launch is built by the launchers themselves (``triton_scan.launches`` / ``triton_conv.launches``)
on meta tensors shaped like a Vim layer's calls (BiMambaMixer._branch: x and z halves of the in_proj
output, B and C slices of the x_proj output, Vim's int64 gap counts), then compiled to a cubin with
Triton's own argument specialisation (mambatr.ops.triton_launch). Specialisations that come out
identical (ViM-T and ViM-S give the same ones) are compiled once.

    python benchmarks/triton_compile.py --json docs/results/triton_compile.json   # the full sweep
    python benchmarks/triton_compile.py --subset     # what tests/test_triton_compile.py compiles

The full sweep: every model family's Vim layer (ViM-T/S/B, stride 8, the Fashion-MNIST testbeds,
VideoMamba) x float32 / bfloat16 / float16 / float64 x gap or not x reverse x z or not (the
capture path) x the sequential or the chunked forward (4 chunks), the block sizes the launcher picks
for N = 1 ... 1024 and E = 16 / 768 with every optional input off, for sm_80 and sm_90. Fails (exit 1)
on a compile error or on a spill in a float32 / bfloat16 / float16 kernel; float64 (gradient checks
only) may spill and is reported.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

import mambatr
from mambatr.ops import triton_conv, triton_scan
from mambatr.ops.triton_launch import CompiledReport, Launch, compile_for_gpu, specialisation_key
from mambatr.table import markdown_table

ARCHES = (80, 90)
FULL_MODELS = ("vim_tiny", "vim_small", "vim_base", "vim_fmnist", "vim_fmnist_p2", "vim_small_stride8")
FULL_MODELS += ("videomamba_middle",)
FULL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BOTH, ALL_FOUR = ((False, False), (True, True)), tuple(itertools.product((False, True), repeat=2))
# the test's subset, (model, dtypes, (gap, reverse) pairs, forward chunks): every kernel x float32 /
# bfloat16 x gap x reverse on ViM-S, float64 at two of the four, the chunked forward (its two kernels),
# and the other models' own specialisations (ViM-T and vim_fmnist_p2 give ViM-S's; ViM-B's B/C row
# stride is 16-divisible, vim_fmnist's length differs)
SUBSET = (
    ("vim_small", (torch.float32, torch.bfloat16), ALL_FOUR, 1),
    ("vim_small", (torch.float64,), BOTH, 1),
    ("vim_small", (torch.float32, torch.bfloat16), BOTH, 4),
    ("vim_base", (torch.float32, torch.bfloat16), BOTH, 1),
    ("vim_fmnist", (torch.float32, torch.bfloat16), BOTH, 1),
    ("vim_tiny", (torch.float32,), BOTH, 1),
    ("vim_fmnist_p2", (torch.float32,), BOTH, 1),
)
STATE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
META = dict(device="meta")


class Case(NamedTuple):
    """One specialisation to compile: where it comes from, and the launch."""

    source: str
    dtype: torch.dtype
    launch: Launch


def _compute(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _config(model: str):
    with torch.device("meta"):
        return mambatr.create_model(model).config


def vim_layer(
    model: str, dtype: torch.dtype, gap: bool, reverse: bool, z: bool = True, chunks: int = 1
) -> list[Launch]:
    """The conv and scan launches of one Vim mixer branch (autocast: activations in ``dtype``,
    parameters and A, D, delta bias in the compute dtype), batch 2."""
    config = _config(model)
    E, N, R, K, L = config.d_inner, config.d_state, config.rank, config.d_conv, config.seq_len
    acc = _compute(dtype)
    x, z_half = torch.empty(2, L, 2 * E, dtype=dtype, **META).chunk(2, dim=-1)
    weight, bias = torch.empty(E, K, dtype=acc, **META), torch.empty(E, dtype=acc, **META)
    conv = triton_conv.launches(x, weight, bias, silu=True, reverse=reverse)
    xc, dt = torch.empty(2, 2, L, E, dtype=dtype, **META)
    _, B, C = torch.empty(2, L, R + 2 * N, dtype=dtype, **META).split([R, N, N], dim=-1)
    A, D = torch.empty(E, N, dtype=acc, **META), torch.empty(E, dtype=acc, **META)
    gaps = torch.empty(2, L, dtype=torch.long, **META) if gap else None
    scan = triton_scan.launches(xc, dt, A, B, C, D, z_half if z else None, bias, True, gaps, reverse, chunks)
    return conv + scan


def block_sizes(N: int, E: int, dtype: torch.dtype) -> list[Launch]:
    """The scan with every optional input off, at the blocks the launcher picks for (E, N)."""
    u = torch.empty(2, 50, E, dtype=dtype, **META)
    B = torch.empty(2, 50, N, dtype=dtype, **META)
    return triton_scan.launches(u, u, torch.empty(E, N, dtype=_compute(dtype), **META), B, B)


def cases(full: bool) -> Iterator[Case]:
    """The full sweep, or the test's subset."""
    plan = [(m, FULL_DTYPES, ALL_FOUR, c) for m in FULL_MODELS for c in (1, 4)] if full else SUBSET
    for model, dtypes, pairs, chunks in plan:
        for dtype, (gap, reverse), z in itertools.product(dtypes, pairs, (True, False) if full else (True,)):
            source = f"{model} gap={gap} reverse={reverse}" + ("" if z else " no z")
            source += f" {chunks} chunks" if chunks > 1 else ""
            launches = vim_layer(model, dtype, gap, reverse, z, chunks)
            yield from (Case(source, dtype, launch) for launch in launches)
    if full:
        for N, E, dtype in itertools.product(STATE_SIZES, (16, 768), FULL_DTYPES):
            yield from (Case(f"N={N} E={E} plain", dtype, launch) for launch in block_sizes(N, E, dtype))


def distinct(all_cases: Iterator[Case], arches: tuple[int, ...]) -> list[tuple[Case, int]]:
    """(case, arch) pairs with duplicate specialisations dropped (the first source is kept)."""
    seen, kept = set(), []
    for case, arch in itertools.product(all_cases, arches):
        key = (arch, specialisation_key(case.launch, arch))
        if key not in seen:
            seen.add(key)
            kept.append((case, arch))
    return kept


def must_not_spill(dtype: torch.dtype) -> bool:
    return dtype != torch.float64


def compile_all(pairs: list[tuple[Case, int]], progress: bool = True) -> list[dict]:
    """Compile each pair; a row per pair with registers, spill bytes, or the compile error."""
    rows = []
    for case, arch in tqdm(pairs, desc="compiling", disable=not progress, file=sys.stderr):
        launch = case.launch
        row = dict(
            kernel=launch.name,
            arch=f"sm_{arch}",
            dtype=str(case.dtype).removeprefix("torch."),
            blocks="x".join(
                str(launch.options[k]) for k in ("BLOCK_T", "BLOCK_E", "BLOCK_N") if k in launch.options
            ),
            warps=launch.options.get("num_warps", 4),
            source=case.source,
        )
        try:
            report: CompiledReport = compile_for_gpu(launch, arch)
            row.update(registers=report.registers, spill_bytes=report.spill_bytes, error=None)
        except Exception as error:  # a compile error is a result here: reported, and the run fails
            row.update(registers=None, spill_bytes=None, error=f"{type(error).__name__}: {str(error)[:500]}")
        rows.append(row)
    return rows


def failures(rows: list[dict]) -> list[dict]:
    """Compile errors, and spills where they must not be (float32 / bfloat16 / float16)."""
    return [r for r in rows if r["error"] or (r["spill_bytes"] and r["dtype"] != "float64")]


def summary(rows: list[dict]) -> list[list[object]]:
    """Per kernel x arch x dtype x blocks: how many specialisations, registers range, worst spill."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["arch"], r["dtype"], r["blocks"], r["warps"]), []).append(r)
    table = []
    for key, group in sorted(groups.items()):
        compiled = [r for r in group if r["error"] is None]
        regs = sorted(r["registers"] for r in compiled)
        spill = max((r["spill_bytes"] for r in compiled), default=None)
        span = f"{regs[0]}-{regs[-1]}" if regs else "-"
        table.append([*key, len(group), len(group) - len(compiled), span, spill])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--subset", action="store_true", help="only what tests/test_triton_compile.py compiles"
    )
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args(argv)
    import triton

    start = time.perf_counter()
    pairs = distinct(cases(full=not args.subset), ARCHES)
    rows = compile_all(pairs)
    seconds = time.perf_counter() - start
    headers = [
        "kernel",
        "arch",
        "dtype",
        "blocks",
        "warps",
        "specialisations",
        "errors",
        "registers",
        "max spill B",
    ]
    print(
        f"triton {triton.__version__}, torch {torch.__version__}: {len(rows)} compiles in {seconds:.0f} s\n"
    )
    print(markdown_table(headers, summary(rows)))
    bad = failures(rows)
    for r in bad:
        print(f"FAILED: {r}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = dict(triton=triton.__version__, torch=torch.__version__, seconds=seconds, rows=rows)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

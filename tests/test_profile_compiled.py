"""benchmarks/profile_compiled.py: a compiled model's ops and Inductor kernels, with their self times."""

from __future__ import annotations

import torch
from benchmark_scripts import load_benchmark

import mambatr


def test_profile_names_mambatr_ops_and_inductor_kernels(capsys) -> None:
    bench = load_benchmark("profile_compiled")
    torch.manual_seed(0)
    model = mambatr.create_model("vim_custom", img_size=16, patch_size=4, stride=4, embed_dim=16, depth=2,
                                 d_state=4, num_classes=3).eval()  # fmt: skip
    ms, rows = bench.profiled(model, torch.randn(2, 3, 16, 16), runs=2)
    names = [name for _, _, name in rows]
    assert ms > 0 and [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    assert "mambatr::scan_fwd" in names and "mambatr::conv_fwd" in names
    assert any(name.startswith("graph_") and "cpp_fused" in name for name in names)  # kernel profiling on
    scans = next(calls for _, calls, name in rows if name == "mambatr::scan_fwd")
    assert scans == 4  # 2 blocks x 2 directions, per call
    bench.report("tiny", ms, rows, top=3)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("tiny: ") and "self ms" in out[1] and len(out) == 6  # title, head, rule, 3 rows

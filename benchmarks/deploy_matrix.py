"""Every registered method (and the dense model) on every backbone family of the contract test: does it
compile with ``torch.compile(fullgraph=True)``, export with ``torch.export`` (dynamic batch), and run
as ONNX in onnxruntime within 1e-4 relative of eager? A table of the 40 cells and the counts.

    python benchmarks/deploy_matrix.py            # about 40 minutes on 2 cores (ONNX: ~40 s a cell)
    python benchmarks/deploy_matrix.py --no-onnx  # compile and export only (~8 minutes)
    python benchmarks/deploy_matrix.py --onnx-ops custom --only-onnx   # mambatr's onnxruntime custom ops
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import mambatr
from mambatr import deploy
from mambatr.reduction import METHODS
from mambatr.table import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_contract import FAMILIES, TARGET, tiny_model  # noqa: E402

TOLERANCE = 1e-4


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def check_cell(
    method: str | None, family: str, onnx_ops: list[str], compile_export: bool, folder: Path
) -> dict[str, str]:
    model, inputs = tiny_model(family)
    model, inputs = model.float(), inputs.float()
    if method is not None:
        mambatr.apply(model, method, TARGET)
    more = torch.cat((inputs, inputs[:2]))
    with torch.no_grad():
        eager, eager_more = model(inputs), model(more)
    cell = {}

    def attempt(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            error = fn()
            verdict = "ok" if error <= TOLERANCE else "WRONG"
            cell[name] = f"{verdict} {error:.0e} ({time.perf_counter() - start:.0f} s)"
        except Exception as failure:  # a failure is a result here: reported, not raised
            cell[name] = f"FAIL {type(failure).__name__}: {str(failure).splitlines()[0][:80]}"
            traceback.print_exc(file=sys.stderr)

    def compiled() -> float:
        torch._dynamo.reset()
        with torch.no_grad():
            return relative_error(torch.compile(model, fullgraph=True, backend="aot_eager")(inputs), eager)

    def exported() -> float:
        with torch.no_grad():
            return relative_error(deploy.export_program(model, inputs).module()(more), eager_more)

    def onnx_file(ops: str) -> float:
        path = folder / "m.onnx"
        deploy.save(model, inputs, "onnx", path, onnx_ops=ops)
        return relative_error(deploy.load("onnx", path)(more), eager_more)

    if compile_export:
        attempt("compile", compiled)
        attempt("export", exported)
    for ops in onnx_ops:
        attempt(f"onnx {ops}", lambda ops=ops: onnx_file(ops))
    return cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX column")
    parser.add_argument(
        "--onnx-ops", default="standard", help=f"comma-separated, of {deploy.ONNX_OPS}: one ONNX column each"
    )
    parser.add_argument("--only-onnx", action="store_true", help="skip the compile and export columns")
    parser.add_argument("--methods", default=",".join(sorted(METHODS)))
    args = parser.parse_args(argv)
    onnx_ops = [] if args.no_onnx else args.onnx_ops.split(",")
    if set(onnx_ops) - set(deploy.ONNX_OPS):
        parser.error(f"--onnx-ops: unknown {sorted(set(onnx_ops) - set(deploy.ONNX_OPS))}")
    rows, counts = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for method in [None, *args.methods.split(",")]:
            for family in FAMILIES:
                cell = check_cell(method, family, onnx_ops, not args.only_onnx, Path(folder))
                print(f"{method or 'dense'} {family}: {cell}", file=sys.stderr, flush=True)
                rows.append([method or "dense", family, *cell.values()])
                if method is not None:
                    for name, verdict in cell.items():
                        counts.setdefault(name, [0, 0])
                        counts[name][0] += verdict.startswith("ok")
                        counts[name][1] += 1
    headers = ["method", "family"]
    headers += [] if args.only_onnx else ["compile (fullgraph)", "torch.export (dynamic batch)"]
    headers += [f"ONNX ({ops} ops) in onnxruntime" for ops in onnx_ops]
    print(markdown_table(headers, rows))
    print("methods x families: " + ", ".join(f"{k} {ok} / {n}" for k, (ok, n) in counts.items()))


if __name__ == "__main__":
    main()

"""Reduced (or dense) models out of Python's eager loop: ``torch.export`` programs (.pt2) and ONNX files.

A method's per-layer counts are fixed for a given schedule, so every shape in a reduced model is
static but the batch size: both formats keep the batch dimension dynamic.

* **pt2** (``torch.export``): the graph calls mambatr's C++ operators (``torch.ops.mambatr.*``);
  ``torch.export.load`` needs them registered, i.e. ``import mambatr`` first.
* **ONNX**: standard ONNX ops only, runnable by onnxruntime without mambatr. The scan is exported
  in its chunked formulation (``mambatr.ops.chunked_scan``: no loop over time), the conv as
  ``Conv``; stable sorts (``argsort(stable=True)``, used by the methods' rankings) become ``TopK``,
  which ONNX defines to break ties by the lower index, as a stable sort does.
* **ONNX with custom ops** (``onnx_ops="custom"``, opt-in): the scan and the conv as nodes of the
  "mambatr" domain (``SelectiveScan``, ``CausalConv1d``), everything else standard. onnxruntime runs
  them from a small library built from mambatr's C++ sources (``mambatr.ops.ort_build``), registered
  with ``SessionOptions.register_custom_ops_library``; :class:`OnnxRunner` does that itself.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from mambatr.ops import _cpu_kernels, ort_build
from mambatr.outputs import atomic_path

FORMATS = ("pt2", "onnx")
ONNX_OPS = ("standard", "custom")
MAX_BATCH = 4096
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _dynamic_batch() -> tuple[dict[int, torch.export.Dim]]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _traceable(example: torch.Tensor) -> torch.Tensor:
    """The example batch, doubled when it holds one image (a size-1 dimension would be specialised)."""
    return torch.cat((example, example)) if len(example) == 1 else example


@contextmanager
def scan_impl(model: torch.nn.Module, impl: str) -> Iterator[None]:
    """Run ``model``'s scans and convs with ``impl`` inside the block, then restore its choice."""
    previous = model.scan_impl
    model.scan_impl = impl
    try:
        yield
    finally:
        model.scan_impl = previous


def export_program(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (in eval mode) with a dynamic batch dimension."""
    with torch.no_grad():
        return torch.export.export(model.eval(), (_traceable(example),), dynamic_shapes=_dynamic_batch())


def _onnx_sort_stable(self, stable=None, dim: int = -1, descending: bool = False):
    """aten.sort.stable as ONNX TopK over the whole axis (ties: lower index first, as a stable sort)."""
    from onnxscript import opset18 as op  # optional: the `export` extra

    size = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    return op.TopK(self, size, axis=dim, largest=int(descending), sorted=1)


CUSTOM_OPS = {  # name -> (inputs, how many of them are required, the two int attributes)
    "SelectiveScan": (
        ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "gap"),
        5,
        ("softplus", "reverse"),
    ),
    "CausalConv1d": (("x", "weight", "bias"), 2, ("silu", "reverse")),
}


@functools.cache
def _custom_ops():
    """The "mambatr" domain's ops for onnxscript (which needs an ONNX schema to build a node),
    registering their schemas with onnx once per process."""
    import onnx
    from onnx.defs import OpSchema
    from onnxscript import values

    ops = {}
    for name, (inputs, required, flags) in CUSTOM_OPS.items():
        if not onnx.defs.has(name, ort_build.DOMAIN):
            optional = OpSchema.FormalParameterOption.Optional
            formal = [
                OpSchema.FormalParameter(x, "T", **({} if i < required else {"param_option": optional}))
                for i, x in enumerate(inputs)
            ]
            schema = OpSchema(
                name, ort_build.DOMAIN, 1, inputs=formal, outputs=[OpSchema.FormalParameter("y", "T")],
                type_constraints=[("T", ["tensor(float)"], "float32")],
                attributes=[OpSchema.Attribute(flag, OpSchema.AttrType.INT, "0 or 1") for flag in flags],
            )  # fmt: skip
            onnx.defs.register_schema(schema)
        ops[name] = values.Opset(ort_build.DOMAIN, 1)[name]
    return ops


def _onnx_custom_scan(u, delta, A, B, C, D, z, delta_bias, gap, softplus: bool, reverse: bool):  # noqa: N803
    """mambatr.scan_fwd (the C++ kernel's op) as a node of the custom "mambatr" domain."""
    op = _custom_ops()["SelectiveScan"]
    return op(u, delta, A, B, C, D, z, delta_bias, gap, softplus=int(softplus), reverse=int(reverse))


def _onnx_custom_conv(x, weight, bias, silu: bool, reverse: bool):
    """mambatr.conv_fwd as a node of the custom "mambatr" domain."""
    return _custom_ops()["CausalConv1d"](x, weight, bias, silu=int(silu), reverse=int(reverse))


def _check_onnx_ops(ops: str) -> None:
    """Refuse an unknown ``onnx_ops`` value, before any export work."""
    if ops not in ONNX_OPS:
        raise ValueError(f"unknown ONNX ops {ops!r}: expected one of {ONNX_OPS}")


def require_onnx() -> None:
    """Raise ImportError naming the extra when onnx / onnxscript are missing."""
    missing = []
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'mambatr[export]' "
            "(onnx, onnxscript, onnxruntime)"
        )


def export_onnx(model: torch.nn.Module, example: torch.Tensor, optimize: bool = False, ops: str = "standard"):
    """``torch.onnx.export`` (the torch.export-based exporter) of ``model`` with a dynamic batch;
    returns the ``torch.onnx.ONNXProgram``. ``ops="standard"``: the scans in the chunked formulation;
    ``"custom"``: the scans and convs as "mambatr" domain nodes (the C++ kernels' ops, translated).

    The exporter's own graph optimiser (``optimize``, onnxscript's) is off by default: onnxruntime
    optimises the graph itself when it loads it, and benchmarks/onnx_variants.py measured no gain
    from it (docs/deploy.md)."""
    _check_onnx_ops(ops)
    require_onnx()
    table = {torch.ops.aten.sort.stable: _onnx_sort_stable}
    if ops == "custom":
        _cpu_kernels.load()  # the ops the custom nodes stand for are traced from the C++ kernels
        table[torch.ops.mambatr.scan_fwd.default] = _onnx_custom_scan
        table[torch.ops.mambatr.conv_fwd.default] = _onnx_custom_conv
    with scan_impl(model, "chunked" if ops == "standard" else "cpu"), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (_traceable(example),),
            dynamo=True,
            dynamic_shapes=_dynamic_batch(),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=ONNX_OPSET,
            custom_translation_table=table,
            optimize=optimize,
            verbose=False,
        )
    return program


def save(
    model: torch.nn.Module, example: torch.Tensor, fmt: str, path: str | Path, onnx_ops: str = "standard"
) -> None:
    """Export ``model`` as ``fmt`` ("pt2" or "onnx") to ``path``, written whole or not at all;
    ``onnx_ops`` ("standard" or "custom") as in :func:`export_onnx`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {FORMATS}")
    _check_onnx_ops(onnx_ops)
    if fmt == "pt2":
        program = export_program(model, example)
        with atomic_path(path) as temporary:
            torch.export.save(program, temporary)
        return
    program = export_onnx(model, example, ops=onnx_ops)
    with atomic_path(path) as temporary:
        program.save(str(temporary), external_data=False)


def uses_custom_ops(path: str | Path) -> bool:
    """Whether the ONNX file at ``path`` calls mambatr's custom-op domain (False without ``onnx``:
    onnxruntime then names the op it lacks)."""
    try:
        import onnx
    except ImportError:
        return False

    model = onnx.load(str(path), load_external_data=False)
    return any(opset.domain == ort_build.DOMAIN for opset in model.opset_import)


class OnnxRunner:
    """An onnxruntime session on the CPU execution provider, called like a model: images -> logits.
    A file with mambatr's custom ops gets their library registered (built first if needed)."""

    @staticmethod
    def require() -> None:
        """Raise ImportError naming the extra when onnxruntime is missing."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ImportError("running ONNX files needs onnxruntime: pip install 'mambatr[export]'") from None

    def __init__(self, path: str | Path, threads: int | None = None, options=None) -> None:
        """``options``: an ``onnxruntime.SessionOptions`` (default: onnxruntime's, all graph
        optimisations); ``threads`` sets its intra-op thread count."""
        self.require()
        import onnxruntime

        options = options or onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if uses_custom_ops(path):
            options.register_custom_ops_library(str(ort_build.build()))
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images.detach().cpu().float().numpy()})
        return torch.from_numpy(logits)


def load(fmt: str, path: str | Path, threads: int | None = None):
    """A callable images -> logits for an exported file: the pt2 program's module, or onnxruntime."""
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    return OnnxRunner(path, threads)


@torch.inference_mode()
def agreement(
    model: torch.nn.Module, exported, batches, total: int, desc: str = "compare", tolerance: float = 1e-4
) -> dict:
    """The exported model beside the eager one on the same inputs: top-1 agreement, the largest
    |logit difference| (absolute and relative to the largest |logit|), how many images differ by more
    than ``tolerance`` relative to their own largest |logit| (and where the worst one is, counting
    images in the order given), and both top-1s on the labels."""
    same = correct_eager = correct_exported = images = beyond = worst_image = 0
    max_diff = max_logit = 0.0
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for inputs, labels in batches:
            eager, other = model(inputs).float(), exported(inputs).float()
            top_eager, top_other = eager.argmax(-1), other.argmax(-1)
            same += int((top_eager == top_other).sum())
            correct_eager += int((top_eager == labels).sum())
            correct_exported += int((top_other == labels).sum())
            per_image = (eager - other).abs().amax(-1)
            beyond += int((per_image > tolerance * eager.abs().amax(-1)).sum())
            if float(per_image.max()) > max_diff:
                max_diff, worst_image = float(per_image.max()), images + int(per_image.argmax())
            max_logit = max(max_logit, float(eager.abs().max()))
            images += len(inputs)
            bar.update(len(inputs))
    return {
        "images": images,
        "top1_agreement": 100.0 * same / images,
        "max_abs_logit_diff": max_diff,
        "max_rel_logit_diff": max_diff / max(max_logit, 1e-30),
        "images_beyond_tolerance": beyond,
        "tolerance_rel": tolerance,
        "worst_image": worst_image,
        "top1_eager": 100.0 * correct_eager / images,
        "top1_exported": 100.0 * correct_exported / images,
    }


@torch.inference_mode()
def images_per_s(fn, images: torch.Tensor, warmup: int = 2, runs: int = 10) -> float:
    """Median images/s of ``runs`` calls of ``fn`` on one batch, after ``warmup`` calls."""
    for _ in range(warmup):
        fn(images)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(images)
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates)


def round_robin(
    cells: list[tuple[object, torch.Tensor]],
    rounds: int = 5,
    warmup: int = 1,
    runs: int = 5,
    desc: str = "rounds",
) -> list[float]:
    """Median images/s of each (callable, images) cell over ``rounds`` rounds, every round timing every
    cell in turn (:func:`images_per_s`), so load that comes and goes on a shared machine slows all alike.
    Compiled cells must be compiled for their images before: a recompile while timing raises, as it
    would be timed as if it were the model."""
    rates: list[list[float]] = [[] for _ in cells]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in tqdm(range(rounds), desc=desc, leave=False):
            for fn_rates, (fn, images) in zip(rates, cells, strict=True):
                fn_rates.append(images_per_s(fn, images, warmup=warmup, runs=runs))
    return [statistics.median(r) for r in rates]

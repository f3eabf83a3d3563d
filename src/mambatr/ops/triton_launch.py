"""A Triton kernel launch as data, so the same launch can be run or compiled for a GPU without one.

The launchers in triton_scan.py / triton_conv.py build :class:`Launch` records, which the
``torch.library.triton_op`` operators there run through ``torch.library.wrap_triton``; with
meta tensors instead of real ones, :func:`compile_for_gpu` compiles exactly those launches ahead of
time for a CUDA target (ptxas ships in the triton wheel), which is how tests/test_triton_compile.py
and benchmarks/triton_compile.py check the kernels for sm_80 / sm_90 on a machine without a GPU.
Triton specialises a launch on its arguments (dtypes, 16-divisible integers, constexprs); this uses
Triton's own binder for that, as a real launch does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import triton
from torch._library.custom_ops import CustomOpDef
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.library import wrap_triton


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel[grid](*args, **options)`` (options: constexprs and num_warps)."""

    kernel: Any  # triton.runtime.JITFunction, or its InterpretedFunction under TRITON_INTERPRET=1
    grid: tuple[int, ...]
    args: tuple
    options: dict

    def run(self) -> None:
        """Launch through ``wrap_triton``: traced as a kernel call (which Inductor compiles) when a
        ``triton_op`` is traced on a GPU, a plain launch otherwise. A kernel Triton cannot build for
        this GPU raises a RuntimeError naming the way round."""
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources, PTXASError

        try:
            wrap_triton(self.kernel)[self.grid](*self.args, **self.options)
        except (CompilationError, PTXASError, OutOfResources) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise RuntimeError(
                f"{self.name}: triton {triton.__version__} could not build mambatr's kernel for this GPU "
                f"({type(error).__name__}: {first}); run without the Triton kernels with "
                f"MAMBATR_OPS_IMPL=torch (or MAMBATR_OPS_IMPL=cuda with mamba_ssm installed, no gaps)"
            ) from error

    @property
    def name(self) -> str:
        return self.kernel.__name__


def keep_whole_when_traced(op: CustomOpDef) -> None:
    """Make AOTAutograd (torch.compile, opcheck's aot_dispatch tests) keep ``op`` as one graph node
    instead of tracing into its kernels, as torch.export does with every triton_op.

    For the interpreter (TRITON_INTERPRET=1): ``wrap_triton`` hands an interpreted kernel back as it
    is, since it lacks the JIT metadata a traced kernel call needs (torch/_library/triton.py,
    pytorch/pytorch#152868), so tracing into the op would run the interpreter on FakeTensors, whose
    argument copy (``set_`` of a host storage) fails. Kept whole, the op's fake kernel gives the
    shapes and the real op runs the kernels when the graph runs.
    """

    def whole(mode: FunctionalTensorMode, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        return mode.__torch_dispatch__(func, types, args, kwargs)

    op.register_torch_dispatch(FunctionalTensorMode, whole)


@dataclass(frozen=True)
class CompiledReport:
    """What ptxas made of one launch for one GPU: registers per thread, local-memory (spill) bytes."""

    kernel: str
    arch: int
    registers: int
    # ptxas's stack frame: Triton allocates no local arrays, so it is where registers spill (0: no
    # spill; a spilling kernel's "bytes spill stores" in ptxas -v is of the same order)
    spill_bytes: int
    shared_bytes: int


def cuobjdump() -> str | None:
    """The cuobjdump that ships with triton's NVIDIA backend (or on PATH); None when neither has one."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else shutil.which("cuobjdump")


def _specialised(launch: Launch, arch: int) -> tuple[Any, Any, Any]:
    """(target, Triton's source for the specialised kernel, its compile options), as a launch on a GPU
    of compute capability ``arch`` would specialise it."""
    from triton._utils import find_paths_if, get_iterable_path
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, _ = binder(*launch.args, **launch.options)
    # what JITFunction.run does with the binder's answer before compiling (triton 3.4 to 3.9)
    kinds = [kind for kind, _ in specialization]
    signature = dict(zip([p.name for p in kernel.params], kinds, strict=True))
    constexpr_paths = find_paths_if(kinds, lambda _, kind: kind == "constexpr")
    constexprs = {path: get_iterable_path(list(bound.values()), path) for path in constexpr_paths}
    hints = ["" if kind == "constexpr" else hint for kind, hint in specialization]
    hint_paths = find_paths_if(hints, lambda _, hint: isinstance(hint, str))
    attrs = {path: backend.parse_attr(get_iterable_path(hints, path)) for path in hint_paths}
    options = backend.parse_options(launch.options)
    return target, ASTSource(kernel, signature, constexprs, attrs), options


def specialisation_key(launch: Launch, arch: int) -> tuple[str, str]:
    """Equal for two launches that compile to the same kernel (signature, constexprs, alignment, options)."""
    _, source, options = _specialised(launch, arch)
    return source.hash(), options.hash()


def compile_for_gpu(launch: Launch, arch: int) -> CompiledReport:
    """Compile ``launch`` to a cubin for compute capability ``arch`` (80, 90, ...) and read its registers
    and spills from the cubin. Raises whatever Triton raises on a compile error."""
    target, source, options = _specialised(launch, arch)
    compiled = triton.compile(source, target=target, options=options.__dict__)
    return _resources(launch.name, arch, compiled.asm["cubin"])


def _resources(name: str, arch: int, cubin: bytes) -> CompiledReport:
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (it ships with triton's NVIDIA backend)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", file.name], capture_output=True, text=True)
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage.stdout)
    if usage.returncode != 0 or found is None:
        raise RuntimeError(
            f"cuobjdump --dump-resource-usage failed on {name}: {usage.stderr or usage.stdout}"
        )
    registers, stack, shared, local = map(int, found.groups())
    return CompiledReport(name, arch, registers, stack + local, shared)

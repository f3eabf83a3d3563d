"""The contract of every registered method on every backbone family, driven by the registries: a new
method (``mambatr.reduction.registry``) or a new family (``FAMILIES``) is checked by registering it.

Per (method, family), on a tiny random float64 model: ratio 0 is bit-identical to the dense model;
the FLOPs target is met within the solver's tolerance and the model runs exactly the token counts the
report claims; every reduction step removes exactly its count, keeps the survivors in original order
and the class token at its position, and accounts for every original token (a token's size is the
number of original tokens it holds, none is held twice); each image reduced alone gives the batched
result; ``remove`` restores the dense logits exactly.
"""

from __future__ import annotations

import pytest
import torch

import mambatr
from mambatr import deploy
from mambatr.reduction import METHODS
from mambatr.reduction.api import intercept_reduction
from mambatr.reduction.schedule import TOLERANCE
from mambatr.tokens import TokenState

TARGET = 0.3
TINY = dict(embed_dim=16, depth=4, d_state=4, num_classes=5)
# family -> (registered model, overrides): about 64 tokens each, so every method meets the target
FAMILIES = {
    "vim_middle_cls": ("vim_custom", dict(img_size=32, patch_size=4, stride=4, **TINY)),
    "vim_no_cls": ("vim_custom", dict(img_size=32, patch_size=4, stride=4, cls_position="none", **TINY)),
    "videomamba_image_cls_first": ("videomamba_tiny", dict(img_size=32, patch_size=4, stride=4, **TINY)),
    "plainmamba": ("plainmamba_custom", dict(img_size=32, patch_size=4, stem_channels=8, **TINY)),
    "videomamba_video": (
        "videomamba_tiny_k400",
        dict(img_size=16, patch_size=4, stride=4, num_frames=4, **TINY),
    ),
}


def tiny_model(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The family's tiny model in float64, every parameter moved away from its init, and 3 inputs."""
    name, overrides = FAMILIES[family]
    torch.manual_seed(0)
    model = mambatr.create_model(name, **overrides).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    inputs = torch.randn(model.config.input_shape(3), generator=torch.Generator().manual_seed(1))
    return model, inputs.double()


def reduction_steps(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[tuple]]:
    """The logits and every reduction step as (tokens before, count, state after), with sources tracked."""
    steps = []

    def record(reduce, state: TokenState, internals, count: int) -> TokenState:
        out = reduce(state, internals, count)
        steps.append((state.length, count, out))
        return out

    model.track_sources = True
    try:
        with torch.no_grad(), intercept_reduction(model, record):
            logits = model(inputs)
    finally:
        model.track_sources = False
    return logits, steps


def check_step(config, before: int, count: int, out: TokenState) -> None:
    assert out.length == before - count
    assert (out.positions.diff(dim=1) > 0).all()  # survivors in original order
    if config.cls_index is not None:
        rows = torch.arange(out.positions.shape[0])
        assert (out.positions[rows, out.cls_index()] == config.cls_index).all()
    held = out.sources  # (B, L, L0): which original tokens each token holds
    assert (held.sum(dim=1) <= 1).all()  # no original token is held twice
    assert torch.equal(out.sizes, held.sum(dim=-1).to(out.sizes.dtype))
    assert (torch.gather(held, 2, out.positions[..., None]) == 1).all()  # each token holds its own position


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_on_backbone(method: str, family: str) -> None:
    model, inputs = tiny_model(family)
    config = model.config
    with torch.no_grad():
        dense = model(inputs)
        mambatr.apply(model, method, ratio=0.0)
        assert torch.equal(model(inputs), dense)

    report = mambatr.apply(model, method, TARGET)
    assert abs(report.flops_reduction_achieved - TARGET) <= TOLERANCE
    logits, steps = reduction_steps(model, inputs)
    assert logits.shape == dense.shape and torch.isfinite(logits).all() and not torch.equal(logits, dense)
    reducing = [layer for layer, count in sorted(report.removals.items()) if count]
    assert [out.length for _, _, out in steps] == [report.tokens_per_layer[layer + 1] for layer in reducing]
    for before, count, out in steps:
        check_step(config, before, count, out)

    for image in range(inputs.shape[0]):  # batched equals per image
        alone, alone_steps = reduction_steps(model, inputs[image : image + 1])
        for (_, _, batched), (_, _, single) in zip(steps, alone_steps, strict=True):
            assert torch.equal(single.positions, batched.positions[image : image + 1])
            torch.testing.assert_close(
                single.hidden, batched.hidden[image : image + 1], rtol=1e-9, atol=1e-12
            )
            torch.testing.assert_close(single.sizes, batched.sizes[image : image + 1])
        torch.testing.assert_close(alone, logits[image : image + 1], rtol=1e-9, atol=1e-12)

    mambatr.remove(model)
    with torch.no_grad():
        assert torch.equal(model(inputs), dense)


def deploy_cases() -> list:
    """Every family dense and every method on one family (rotating), in the default run; the rest of
    the method x family product is marked ``matrix`` (``pytest -m matrix``, about 8 minutes)."""
    families = list(FAMILIES)
    default = {(None, family) for family in families}
    default |= {(method, families[i % len(families)]) for i, method in enumerate(sorted(METHODS))}
    cases = []
    for method in [None, *sorted(METHODS)]:
        for family in families:
            marks = () if (method, family) in default else (pytest.mark.matrix,)
            cases.append(pytest.param(method, family, marks=marks, id=f"{method or 'dense'}-{family}"))
    return cases


@pytest.mark.parametrize("method,family", deploy_cases())
def test_compiles_and_exports(method: str | None, family: str) -> None:
    """Dense and reduced, every family: torch.compile(fullgraph=True) traces with no graph break
    (Dynamo and AOTAutograd with the ops' fake kernels; Inductor's code generation is left to
    benchmarks/deploy.py, it takes minutes on 2 cores), and torch.export gives a program with a
    dynamic batch whose logits equal eager's at another batch size."""
    model, inputs = tiny_model(family)
    if method is not None:
        mambatr.apply(model, method, TARGET)
    with torch.no_grad():
        eager = model(inputs)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    program = deploy.export_program(model, inputs)
    more = torch.cat((inputs, inputs.flip(0), inputs[:1]))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(more), model(more), rtol=1e-12, atol=1e-12)


# a merging method and the scan with gaps (HSA) in the default run: each ONNX export takes about 40 s on
# 2 cores; the whole method x family matrix is benchmarks/deploy_matrix.py
ONNX_CASES = [
    ("mtr", "vim_middle_cls"),
    ("hsa", "videomamba_video"),
    pytest.param("stm", "plainmamba", marks=pytest.mark.matrix),
    pytest.param("tome", "vim_no_cls", marks=pytest.mark.matrix),
    # exact ties in MTR's Δ score (a token and its transpose on PlainMamba's snakes), docs/deploy.md
    pytest.param("mtr", "plainmamba", marks=pytest.mark.matrix),
]
EXTRA = "the `export` extra: pip install 'mambatr[export]'"


@pytest.mark.slow
@pytest.mark.parametrize("method,family", ONNX_CASES)
def test_onnx_runs_in_onnxruntime(method: str, family: str, tmp_path) -> None:
    """The ONNX file (standard ops, chunked scan) gives eager's float32 logits within 1e-4 relative in
    onnxruntime, at the export's batch size and another."""
    pytest.importorskip("onnxscript", reason=f"ONNX export needs {EXTRA}")
    pytest.importorskip("onnxruntime", reason=f"running ONNX needs {EXTRA}")
    model, inputs = tiny_model(family)
    model, inputs = model.float(), inputs.float()
    mambatr.apply(model, method, TARGET)
    deploy.save(model, inputs, "onnx", tmp_path / "m.onnx")
    runner = deploy.load("onnx", tmp_path / "m.onnx")
    for batch in (inputs, torch.cat((inputs, inputs[:2]))):
        with torch.no_grad():
            eager = model(batch)
        error = (runner(batch) - eager).abs().max() / eager.abs().max()
        assert error < 1e-4

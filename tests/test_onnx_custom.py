"""ONNX with mambatr's custom ops (deploy onnx_ops="custom"): the library builds, its SelectiveScan and
CausalConv1d nodes match the reference ops in onnxruntime (gaps, reverse, absent optional inputs,
channel and state counts off the vector width), a reduced model's file matches eager, and a node
given bad shapes fails with the op's name."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_chunked_scan import inputs

import mambatr
from mambatr import deploy
from mambatr.ops import causal_conv1d_reference, selective_scan_reference

onnx = pytest.importorskip("onnx", reason="ONNX files need the `export` extra: pip install 'mambatr[export]'")
ort = pytest.importorskip("onnxruntime", reason="running ONNX needs the `export` extra")
if not (shutil.which("c++") or shutil.which("g++")):
    pytest.skip("the custom-op library needs a C++ compiler", allow_module_level=True)

from onnx import TensorProto, helper  # noqa: E402

from mambatr.ops import ort_build  # noqa: E402


def run_node(op: str, feeds: dict[str, np.ndarray | None], **attributes) -> np.ndarray:
    """One mambatr-domain node in onnxruntime; a None feed is an absent optional input."""
    names = [name if value is not None else "" for name, value in feeds.items()]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, ["y"], domain=ort_build.DOMAIN, **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names if name],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(ort_build.DOMAIN, 1)]
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(ort_build.build()))
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=opsets).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    return session.run(None, {name: value for name, value in feeds.items() if value is not None})[0]


def relative(y: np.ndarray, expected: torch.Tensor) -> float:
    return float(np.abs(y - expected.numpy()).max() / expected.abs().max())


@pytest.mark.parametrize("length,E,N", [(1, 8, 4), (37, 20, 16), (50, 13, 6)])
@pytest.mark.parametrize("gap,reverse", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("absent", [(), ("D", "z"), ("delta_bias",)])
def test_scan_node_matches_the_reference(length, E, N, gap, reverse, absent):
    x = inputs(2, length, E, N, 0.5)
    gaps = (
        torch.randint(0, 4, (2, length), generator=torch.Generator().manual_seed(1)).float() if gap else None
    )
    x = {k: (None if k in absent else v) for k, v in x.items()} | {"gap": gaps}
    expected = selective_scan_reference(
        **{k: None if v is None else v.double() for k, v in x.items()}, delta_softplus=True, reverse=reverse
    )
    feeds = {k: None if v is None else v.numpy() for k, v in x.items()}
    y = run_node("SelectiveScan", feeds, softplus=1, reverse=int(reverse))
    assert y.shape == expected.shape and relative(y, expected) < 1e-4


@pytest.mark.parametrize("E,K", [(20, 4), (9, 3)])
@pytest.mark.parametrize("silu,reverse", [(True, False), (False, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_node_matches_the_reference(E, K, silu, reverse, bias):
    g = torch.Generator().manual_seed(0)
    x, weight, b = (
        torch.randn(2, 11, E, generator=g),
        torch.randn(E, K, generator=g),
        torch.randn(E, generator=g),
    )
    expected = causal_conv1d_reference(
        x.double(), weight.double(), b.double() if bias else None, silu, reverse
    )
    feeds = {"x": x.numpy(), "weight": weight.numpy(), "bias": b.numpy() if bias else None}
    y = run_node("CausalConv1d", feeds, silu=int(silu), reverse=int(reverse))
    assert relative(y, expected) < 1e-4


def test_cli_refuses_custom_ops_outside_onnx(tmp_path, capsys):
    from mambatr.cli import main

    argv = ["export", "--model", "vim_fmnist_p2", "--format", "pt2", "--onnx-ops", "custom"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "m.pt2")])
    assert exit_info.value.code == 2 and "--onnx-ops custom needs --format onnx" in capsys.readouterr().err


def test_bad_shapes_fail_with_the_op_name():
    x = {k: v.numpy() for k, v in inputs(1, 5, 8, 4, 0.5).items()}
    x["B"] = x["B"][:, :3]  # 3 steps instead of 5
    with pytest.raises(Exception, match="mambatr.SelectiveScan"):
        run_node("SelectiveScan", x, softplus=1, reverse=0)


@pytest.mark.slow
def test_reduced_model_file_matches_eager(tmp_path):
    """A tiny Vim reduced by MTR: the custom-op file calls only the "mambatr" domain for the scans and
    convs (no chunked scan left) and gives eager's logits at another batch size."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the `export` extra")
    torch.manual_seed(0)
    config = dict(
        img_size=28, patch_size=7, stride=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, d_state=4
    )
    model = mambatr.create_model("vim_custom", **config).eval()
    mambatr.apply(model, "mtr", ratio=0.3, layers=[0])
    path = tmp_path / "m.onnx"
    deploy.save(model, torch.randn(2, 1, 28, 28), "onnx", path, onnx_ops="custom")
    ops = [(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node]
    assert ops.count(("mambatr", "SelectiveScan")) == ops.count(("mambatr", "CausalConv1d")) == 2 * 3
    assert ("", "CumSum") not in ops and deploy.uses_custom_ops(path)
    images = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        expected = model(images)
    logits = deploy.OnnxRunner(path, threads=1)(images)
    assert float((logits - expected).abs().max() / expected.abs().max()) < 1e-4

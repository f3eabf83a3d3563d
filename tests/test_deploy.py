"""`mambatr export`: the file is written, loaded back and compared with eager on real images; the ONNX
file runs in a process that imports neither mambatr nor torch; bad input is refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from fake_data import write_fashion_mnist
from safetensors.torch import save_file

import mambatr
from mambatr import deploy
from mambatr.cli import main

SMALL = dict(
    img_size=28, patch_size=7, stride=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, d_state=4
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny vim_custom (16 patches + class token) as a safetensors export with its JSON, and
    Fashion-MNIST-layout data (40 test images)."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = mambatr.create_model("vim_custom", **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_file(model.state_dict(), str(root / "vim_custom.safetensors"))
    (root / "vim_custom.json").write_text(json.dumps({"model": "vim_custom", "config": SMALL}))
    write_fashion_mnist(root / "data", train=64)
    return root


def export_argv(root, fmt: str, out, *extra: str) -> list[str]:
    model = ["--model", "vim_custom", "--checkpoint", str(root / "vim_custom.safetensors")]
    return ["export", *model, "--data", str(root / "data"), "--format", fmt, "--out", str(out), *extra]


def test_pt2_export_agrees_with_eager(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    main(
        [
            *export_argv(checkpoint, "pt2", out, "--method", "mtr", "--ratio", "0.3", "--layers", "0,1"),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and result["images"] == 40 and result["format"] == "pt2"
    assert result["top1_agreement"] == 100.0 and result["max_abs_logit_diff"] <= 1e-5
    assert result["tokens_per_layer"][-1] < result["tokens_per_layer"][0]
    program = torch.export.load(str(out))
    assert program.module()(torch.randn(3, 1, 28, 28)).shape == (3, 10)  # the batch stays dynamic


@pytest.mark.slow
def test_onnx_runs_without_mambatr_or_torch(checkpoint, tmp_path, capsys):
    pytest.importorskip(
        "onnxscript", reason="ONNX export needs the `export` extra: pip install 'mambatr[export]'"
    )
    pytest.importorskip("onnxruntime", reason="running ONNX needs the `export` extra")
    out = tmp_path / "m.onnx"
    main(
        [
            *export_argv(checkpoint, "onnx", out, "--method", "hsa", "--ratio", "0.3", "--layers", "0"),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["top1_agreement"] == 100.0 and result["max_rel_logit_diff"] < 1e-4
    model = mambatr.create_model("vim_custom", checkpoint=str(checkpoint / "vim_custom.safetensors")).eval()
    mambatr.apply(model, "hsa", ratio=0.3, layers=[0])
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model(images).numpy())
    np.save(tmp_path / "images.npy", images.numpy())
    script = f"""
import sys, numpy as np, onnxruntime
session = onnxruntime.InferenceSession({str(out)!r}, providers=["CPUExecutionProvider"])
(logits,) = session.run(None, {{"images": np.load({str(tmp_path / "images.npy")!r})}})
expected = np.load({str(tmp_path / "expected.npy")!r})
assert "mambatr" not in sys.modules and "torch" not in sys.modules
print(float(np.abs(logits - expected).max() / np.abs(expected).max()))
"""
    error = float(
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    )
    assert error < 1e-4


def test_bad_input_is_refused_before_work(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(export_argv(checkpoint, "pt2", tmp_path))  # a folder, not a file
    assert exit_info.value.code == 2 and "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(export_argv(checkpoint, "tflite", tmp_path / "m"))
    assert exit_info.value.code == 2 and "--format" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(export_argv(checkpoint, "pt2", tmp_path / "m.pt2", "--flops-reduction", "0.3"))
    assert exit_info.value.code == 2 and "--method" in capsys.readouterr().err
    assert not (tmp_path / "m.pt2").exists()


def test_export_first_leaves_the_eager_model_real():
    """torch.export traces with fake tensors: nothing the trace builds may be cached for later eager
    calls (PlainMamba's snake paths were, and the next eager forward returned a FakeTensor)."""
    from mambatr import deploy
    from mambatr.models import plainmamba

    torch.manual_seed(0)
    model = mambatr.create_model(
        "plainmamba_custom", img_size=24, patch_size=4, stem_channels=8, embed_dim=16, depth=1, d_state=4
    ).eval()
    images = torch.randn(2, 3, 24, 24)
    plainmamba._cached_snake_paths.cache_clear()  # the export is the first forward
    program = deploy.export_program(model, images)
    with torch.no_grad():
        eager = model(images)
    assert type(eager) is torch.Tensor
    torch.testing.assert_close(program.module()(images), eager)


def test_compiled_model_survives_another_impl_and_an_export(tmp_path):
    """A compiled model keeps its compiled code when other code in the process runs another scan impl
    (an ONNX export runs "chunked"): the dispatcher's eager bookkeeping was traced and became a guard."""
    torch.manual_seed(0)
    model = mambatr.create_model("vim_custom", img_size=16, patch_size=4, stride=4, embed_dim=16, depth=2,
                                 d_state=4, num_classes=3).eval()  # fmt: skip
    images = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        first = compiled(images)
        with deploy.scan_impl(model, "chunked"):
            model(images)
        with deploy.scan_impl(model, "torch"):
            model(images)
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(compiled(images), first)


def test_agreement_counts_and_locates_images_beyond_tolerance():
    model = torch.nn.Flatten()  # "logits" = the inputs themselves
    inputs = torch.rand(6, 4) + 1.0

    def exported(batch: torch.Tensor) -> torch.Tensor:
        out = batch.flatten(1).clone()
        out[out[:, 0] == inputs[4, 0], 1] += 1e-2  # image 4 (second batch) differs by ~0.5 % of its logits
        out[:, 2] += 1e-7  # every image differs by far less than the tolerance
        return out

    batches = [(inputs[:3], torch.zeros(3)), (inputs[3:], torch.zeros(3))]
    result = deploy.agreement(model, exported, batches, total=6)
    assert result["images_beyond_tolerance"] == 1 and result["worst_image"] == 4
    assert result["max_abs_logit_diff"] == pytest.approx(1e-2, rel=1e-3)


def test_round_robin_refuses_to_time_a_recompile():
    """A compiled cell not yet compiled for its images would time Dynamo and the backend, not the model."""
    compiled = torch.compile(lambda x: x * 2, fullgraph=True, backend="eager", dynamic=False)
    ready, fresh = torch.randn(2, 3), torch.randn(5, 3)
    with torch.inference_mode():  # as round_robin calls it
        compiled(ready)
    assert len(deploy.round_robin([(compiled, ready)], rounds=2, warmup=0, runs=1)) == 1
    with pytest.raises(Exception, match="[Rr]ecompil"):
        deploy.round_robin([(compiled, fresh)], rounds=1, warmup=0, runs=1)
    assert not torch._dynamo.config.error_on_recompile

import argparse

import pytest
import torch
from safetensors.torch import save_file

import mambatr
from mambatr.models import CheckpointError


def _official_training_dict(model):
    """The layout of hustvl/Vim's released .pth files: a full training checkpoint with pickled args."""
    args = argparse.Namespace(
        model="vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
        batch_size=128,
        lr=5e-4,
        input_size=224,
    )
    return {
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {},
        "epoch": 299,
        "model_ema": model.state_dict(),
        "scaler": {},
        "args": args,
    }


def test_strict_load_official_vim_tiny_layout(tmp_path):
    torch.manual_seed(0)
    source = mambatr.create_model("vim_tiny")
    path = tmp_path / "vim_t_midclstok_76p1acc.pth"
    torch.save(_official_training_dict(source), path)
    loaded = mambatr.create_model("vim_tiny", checkpoint=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_module_prefix_and_flat_dict(tmp_path, tiny_vim):
    source = tiny_vim()
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = tiny_vim(img_size=16)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    mambatr.load_checkpoint(target, path)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(target(x), source(x))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd.pop("layers.1.mixer.A_b_log"), r"missing keys \(1\): \['layers.1.mixer.A_b_log'\]"),
        (
            lambda sd: sd.__setitem__("layers.9.mixer.D", torch.ones(32)),
            r"unexpected keys \(1\): \['layers.9.mixer.D'\]",
        ),
        (
            lambda sd: sd.__setitem__("head.weight", torch.ones(7, 16)),
            r"head.weight: checkpoint \(7, 16\) vs model \(5, 16\)",
        ),
    ],
)
def test_bad_checkpoint_names_the_keys(tmp_path, tiny_vim, corrupt, message):
    sd = tiny_vim().state_dict()
    corrupt(sd)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=message):
        mambatr.load_checkpoint(tiny_vim(), path)


class NotAllowListed:
    """An arbitrary class: unpickling it would run code, so loading must refuse it."""


def test_unsafe_pickle_is_refused(tmp_path, tiny_vim):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_vim().state_dict(), "extra": NotAllowListed()}, path)
    with pytest.raises(CheckpointError) as error:
        mambatr.load_checkpoint(tiny_vim(), path)
    message = str(error.value)
    assert "holds code" in message and "NotAllowListed" in message and "refused" in message
    assert "\n" not in message and "\x1b" not in message and "weights_only=False" not in message


def test_unreadable_checkpoint_files_say_what_they_are(tmp_path, tiny_vim):
    """A folder, a text file, a truncated .pth and a truncated .safetensors: one line naming the file."""
    torch.save({"model": tiny_vim().state_dict()}, tmp_path / "good.pth")
    save_file(tiny_vim().state_dict(), str(tmp_path / "good.safetensors"))
    (tmp_path / "notes.pth").write_text("lr: 0.001\nepochs: 300\n")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:300])
    (tmp_path / "truncated.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes()[:300])
    (tmp_path / "text.safetensors").write_text("not weights")
    (tmp_path / "folder.pth").mkdir()
    expected = {
        "folder.pth": "is a folder, not a weights file",
        "notes.pth": "is not a PyTorch checkpoint",
        "truncated.pth": "is a damaged PyTorch checkpoint",
        "truncated.safetensors": "is not a readable safetensors file",
        "text.safetensors": "is not a readable safetensors file",
    }
    for name, words in expected.items():
        with pytest.raises(CheckpointError) as error:
            mambatr.load_checkpoint(tiny_vim(), tmp_path / name)
        assert words in str(error.value) and name in str(error.value) and "\n" not in str(error.value)


def test_missing_file(tiny_vim):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        mambatr.load_checkpoint(tiny_vim(), "/nonexistent/vim.pth")


def test_pos_embed_resampled_for_other_image_size(tmp_path, tiny_vim):
    source = tiny_vim()  # 16x16 -> 4x4 grid, class token at row 8
    path = tmp_path / "small.pth"
    torch.save({"model": source.state_dict()}, path)
    bigger = tiny_vim(img_size=24)  # 6x6 grid, class token at row 18
    mambatr.load_checkpoint(bigger, path)
    assert bigger.pos_embed.shape == (1, 37, 16)
    torch.testing.assert_close(bigger.pos_embed[0, 18], source.pos_embed[0, 8])
    same = tiny_vim()
    mambatr.load_checkpoint(same, path)
    torch.testing.assert_close(same.pos_embed, source.pos_embed)
    assert bigger(torch.randn(1, 3, 24, 24)).shape == (1, 5)

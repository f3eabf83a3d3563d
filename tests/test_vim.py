import pytest
import torch
from official_vim import official_forward

import mambatr
from mambatr.models import VimConfig


@pytest.mark.parametrize("cls_mode", ["middle", "first"])
def test_matches_official_math_float64(tiny_vim, cls_mode):
    model = tiny_vim(cls_position=cls_mode, divide_output=cls_mode == "middle").double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ours = model(images)
    official = official_forward(
        model.state_dict(), images, 4, 4, 4, div2=cls_mode == "middle", cls_mode=cls_mode
    )
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)


def test_matches_official_math_float32(tiny_vim):
    model = tiny_vim()
    images = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(
        model(images), official_forward(model.state_dict(), images, 4, 4, 4), rtol=1e-5, atol=1e-5
    )


def test_fast_and_reference_scan_give_same_logits(tiny_vim):
    model = tiny_vim()
    images = torch.randn(4, 3, 16, 16)
    model.scan_impl = "reference"
    reference = model(images)
    model.scan_impl = "auto"
    torch.testing.assert_close(model(images), reference, rtol=1e-5, atol=1e-5)


def test_backward_branch_runs_on_flipped_sequence(tiny_vim):
    model = tiny_vim()
    images = torch.randn(2, 3, 16, 16)
    before = model(images)
    with torch.no_grad():
        model.layers[1].mixer.x_proj_b.weight.mul_(1.5)
    after = model(images)
    assert (after - before).abs().max() > 1e-4
    # and the backward branch is causal in reversed time: the first token's branch output sees all tokens
    mixer = model.layers[0].mixer
    u = torch.randn(1, 6, 16)
    x, z = mixer.in_proj(u).chunk(2, dim=-1)
    y_b, _ = mixer._branch(x, z, backward=True, gap=None, capture=False)
    u2 = u.clone()
    u2[:, -1] += 1.0
    x2, z2 = mixer.in_proj(u2).chunk(2, dim=-1)
    y_b2, _ = mixer._branch(x2, z2, backward=True, gap=None, capture=False)
    assert (y_b2[:, 0] - y_b[:, 0]).abs().max() > 0  # last token reaches the first one backward
    y_f, _ = mixer._branch(x, z, backward=False, gap=None, capture=False)
    y_f2, _ = mixer._branch(x2, z2, backward=False, gap=None, capture=False)
    torch.testing.assert_close(y_f2[:, :-1], y_f[:, :-1], rtol=0, atol=0)  # forward is causal


def test_batch_size_one_and_dtypes(tiny_vim):
    model = tiny_vim()
    images = torch.randn(1, 3, 16, 16)
    assert model(images).shape == (1, 5)
    batch = torch.randn(3, 3, 16, 16)
    full = model(batch)
    torch.testing.assert_close(model(batch[1:2]), full[1:2], rtol=1e-5, atol=1e-5)
    assert model.double()(batch.double()).dtype == torch.float64
    bf16 = model.float().to(torch.bfloat16)(batch.to(torch.bfloat16))
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16.float()).all()
    assert (bf16.float() - full).abs().max() < 0.1 * full.abs().max() + 0.05


def test_block_internals_seam(tiny_vim):
    model = tiny_vim()
    tokens = model.embed(torch.randn(2, 3, 16, 16))
    hidden, residual, internals = model.layers[0](tokens, None, capture=True)
    assert internals is not None
    hidden_plain, residual_plain, none = model.layers[0](tokens, None)
    assert none is None
    torch.testing.assert_close(hidden, hidden_plain)
    assert residual.dtype == torch.float32
    for branch in (internals.forward, internals.backward):
        assert branch.delta.shape == (2, 17, 32) and (branch.delta > 0).all()
        assert branch.B.shape == branch.C.shape == (2, 17, 4)
        assert branch.y.shape == (2, 17, 32)
    mixer = model.layers[0].mixer
    combined = mixer.out_proj((internals.forward.y + internals.backward.y) / 2)
    torch.testing.assert_close(combined, hidden)


def test_official_sizes_and_keys():
    with torch.device("meta"):
        tiny = mambatr.create_model("vim_tiny")
        s8 = mambatr.create_model("vim_small_stride8")
    assert sum(p.numel() for p in tiny.parameters()) == 7_148_008
    assert len(tiny.state_dict()) == 415 and not list(tiny.buffers())
    assert tiny.config.cls_index == 98 and s8.config.cls_index == 364 and s8.pos_embed.shape == (1, 730, 384)


@pytest.mark.parametrize("bad", [dict(embed_dim=0), dict(cls_position="last"), dict(img_size=2)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        VimConfig(**bad)


def test_unknown_model_and_wrong_image_size(tiny_vim):
    with pytest.raises(KeyError, match="unknown model 'vim_huge'"):
        mambatr.create_model("vim_huge")
    with pytest.raises(ValueError, match="expected 16x16 images, got 32x32"):
        tiny_vim()(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        tiny_vim()(torch.randn(1, 1, 16, 16))


def test_fmnist_p2_is_the_196_token_testbed():
    with torch.device("meta"):
        p2 = mambatr.create_model("vim_fmnist_p2")
        p4 = mambatr.create_model("vim_fmnist")
    assert p2.pos_embed.shape == (1, 197, 96) and p2.config.cls_index == 98
    assert p4.pos_embed.shape == (1, 50, 96) and p4.config.cls_index == 24
    assert len(p2.state_dict()) == len(p4.state_dict())


def test_pretrained_without_shipped_weights_names_the_model():
    with torch.device("meta"), pytest.raises(ValueError, match="'vim_custom' has no shipped weights"):
        mambatr.create_model("vim_custom", pretrained=True)

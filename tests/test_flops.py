import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mambatr
from mambatr.flops import count_flops
from mambatr.models import VimConfig


def test_matmul_part_matches_torch_flop_counter(tiny_vim):
    model = tiny_vim()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 16, 16))
    report = count_flops(model.config)
    matmul_parts = ("in_proj", "x_proj", "dt_proj", "out_proj")
    analytic = report.embed["patch_embed"] + report.final["head"]
    analytic += sum(layer.parts[p] for layer in report.layers for p in matmul_parts)
    assert counter.get_total_flops() == 2 * analytic  # torch counts a multiply-add as 2


def test_totals_and_per_layer_consistent():
    config = VimConfig(img_size=28, patch_size=4, stride=4, in_chans=1, num_classes=10, embed_dim=32, depth=4)
    dense = count_flops(config)
    assert dense.total == sum(dense.embed.values()) + sum(x.total for x in dense.layers) + sum(
        dense.final.values()
    )
    assert [x.tokens for x in dense.layers] == [50] * 4
    reduced = count_flops(config, tokens_per_layer=[50, 50, 30, 30], overhead={1: 1000})
    assert reduced.total < dense.total
    assert reduced.layers[2].total == count_flops(config, tokens_per_layer=[30] * 4).layers[2].total
    assert reduced.to_dict()["overhead"] == {1: 1000}


@pytest.mark.parametrize("name, paper", [("vim_tiny", 1.50), ("vim_small", 5.10)])
def test_paper_convention_close_to_published(name, paper):
    with torch.device("meta"):
        config = mambatr.create_model(name).config
    assert abs(count_flops(config, convention="paper").gflops / paper - 1) < 0.05


def test_bad_inputs():
    config = VimConfig(depth=2)
    with pytest.raises(ValueError, match="depth-2"):
        count_flops(config, tokens_per_layer=[10])
    with pytest.raises(ValueError, match="at least one token"):
        count_flops(config, tokens_per_layer=[10, 0])
    with pytest.raises(ValueError, match="unknown FLOPs convention"):
        count_flops(config, convention="fvcore")

import pytest
import torch

import mambatr
from mambatr.models.backbone import BlockInternals, BranchInternals
from mambatr.reduction.hsa import HSA, preset_layers
from mambatr.tokens import TokenState


def _internals(y_forward: torch.Tensor, y_backward: torch.Tensor) -> BlockInternals:
    def branch(y):
        ones = torch.ones(*y.shape[:2], 2)
        return BranchInternals(
            delta=torch.ones_like(y), B=ones, C=ones, y=y, y_ungated=y, A=-torch.ones(2, 2)
        )

    hidden = torch.zeros(*y_forward.shape[:2], 3)
    return BlockInternals((branch(y_forward), branch(y_backward)), hidden=hidden, residual=hidden)


def test_prunes_lowest_clipped_output_and_keeps_order():
    # 6 tokens, class token at 2; per-token channel values (2 channels), both directions
    y_f = torch.tensor([[[1.0, 1.0], [-5.0, 0.1], [0.0, 0.0], [3.0, -9.0], [0.2, 0.2], [2.0, 0.0]]])
    y_b = torch.zeros_like(y_f)
    hidden = torch.arange(18, dtype=torch.float32).reshape(1, 6, 3)
    state = TokenState.initial(hidden, 2).with_streams(hidden, hidden * 2)
    # clipped scores: [2, 0.1, cls, 3, 0.4, 2] -> prune tokens 1 and 4
    out = HSA().reduce(state, _internals(y_f, y_b), count=2)
    assert out.positions.tolist() == [[0, 2, 3, 5]]
    torch.testing.assert_close(out.hidden, hidden[:, [0, 2, 3, 5]])
    torch.testing.assert_close(out.residual, hidden[:, [0, 2, 3, 5]] * 2)
    assert out.cls_index().tolist() == [1]
    # without clipping token 3 scores -6: it goes first
    out = HSA(clip=False).reduce(state, _internals(y_f, y_b), count=2)
    assert out.positions.tolist() == [[0, 2, 4, 5]]
    forward_gaps, backward_gaps = out.position_gaps()
    assert forward_gaps.tolist() == [[0, 1, 1, 0]] and backward_gaps.tolist() == [[1, 1, 0, 0]]


def test_clipped_ties_prune_the_later_tokens():
    """Tokens whose outputs are all negative clip to the same score 0; the stable ranking keeps the
    earlier ones, as ONNX's TopK does (an unstable sort broke such ties per runtime and thread count)."""
    tokens = 40
    y_f = torch.full((1, tokens, 2), -1.0)  # every token clips to 0: all tied
    y_f[0, 0] = 1.0  # but the class token's neighbour, which ranks first
    hidden = torch.arange(tokens * 3, dtype=torch.float32).reshape(1, tokens, 3)
    state = TokenState.initial(hidden, 1).with_streams(hidden, hidden)
    out = HSA().reduce(state, _internals(y_f, torch.zeros_like(y_f)), count=30)
    assert out.positions.tolist() == [list(range(10))]


def test_alignment_changes_logits(tiny_vim):
    model = tiny_vim()
    images = torch.randn(2, 3, 16, 16)
    mambatr.apply(model, "hsa", ratio=0.4, layers=[0])
    aligned = model(images)
    mambatr.apply(model, "hsa", ratio=0.4, layers=[0], align=False)
    plain = model(images)
    assert (aligned - plain).abs().max() > 1e-6


def test_presets_scale_with_depth():
    assert preset_layers("paper", 24) == [4, 9, 14, 19]
    assert preset_layers("code", 24) == [4, 9, 14]
    assert preset_layers("paper_tiny", 24) == [9, 19]
    assert preset_layers("paper", 12) == [1, 4, 7, 9]
    with pytest.raises(ValueError, match="unknown HSA preset"):
        preset_layers("fast", 24)
    with torch.device("meta"):
        model = mambatr.create_model("vim_small")
    assert mambatr.apply(model, "hsa", 0.3, preset="paper").layers == [4, 9, 14, 19]
    assert mambatr.apply(model, "hsa", ratio=0.2, preset="code").removals == {4: 39, 9: 31, 14: 25}


@pytest.mark.parametrize("target", [0.2, 0.3, 0.4])
def test_solver(target):
    with torch.device("meta"):
        model = mambatr.create_model("vim_small")
    report = mambatr.apply(model, "hsa", target)
    assert abs(report.flops_reduction_achieved - target) <= 0.005

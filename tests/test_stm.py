import pytest
import torch

import mambatr
from mambatr.models.backbone import BlockInternals, BranchInternals
from mambatr.ops.reference import selective_scan_reference
from mambatr.reduction.stm import STM, protection_weights
from mambatr.tokens import TokenState


def _branch(delta, B, A):
    zeros = torch.zeros_like(delta)
    return BranchInternals(delta=delta, B=B, C=B, y=zeros, y_ungated=zeros, A=A)


@pytest.mark.parametrize("reverse", [False, True])
def test_protected_merge_reproduces_the_state_with_one_state_dim(reverse):
    """The derivation's case (N = 1, same delta / B in the next scan): the merged token carries
    exactly the state the removed tokens would have passed on, so all later outputs are unchanged."""
    torch.manual_seed(0)
    batch, length, channels = 2, 7, 3
    u = torch.randn(batch, length, channels, dtype=torch.float64)
    delta = torch.rand(batch, length, channels, dtype=torch.float64) + 0.1
    B = torch.rand(batch, length, 1, dtype=torch.float64) + 0.5
    C = torch.randn(batch, length, 1, dtype=torch.float64)
    A = -torch.rand(channels, 1, dtype=torch.float64) - 0.2
    full = selective_scan_reference(u, delta, A, B, C, reverse=reverse)
    reduced, absorber = ([0, 1], 2) if not reverse else ([5, 6], 4)
    weights = protection_weights(_branch(delta, B, A), torch.tensor(reduced), absorber, not reverse)
    merged = u.clone()
    merged[:, absorber] += (weights * u[:, reduced]).sum(1)
    keep = [i for i in range(length) if i not in reduced]
    compact = selective_scan_reference(
        merged[:, keep], delta[:, keep], A, B[:, keep], C[:, keep], reverse=reverse
    )
    torch.testing.assert_close(compact, full[:, keep], rtol=1e-12, atol=1e-12)


def test_bnnm_merges_outermost_tokens_toward_the_class_token():
    hidden = torch.arange(7 * 2, dtype=torch.float32).reshape(1, 7, 2)
    state = TokenState.initial(hidden, 3).with_streams(hidden, hidden.clone())
    ones = torch.ones(1, 7, 4)
    branch = _branch(ones, torch.ones(1, 7, 2), -torch.ones(4, 2))
    internals = BlockInternals((branch, branch), hidden=hidden, residual=hidden)
    out = STM(protect=False).reduce(state, internals, count=2)  # token 0 -> 1, token 6 -> 5
    assert out.positions.tolist() == [[1, 2, 3, 4, 5]]
    torch.testing.assert_close(out.hidden[0, 0], (hidden[0, 0] + hidden[0, 1]) / 2)
    torch.testing.assert_close(out.hidden[0, -1], (hidden[0, 5] + hidden[0, 6]) / 2)
    torch.testing.assert_close(out.hidden[0, 1:4], hidden[0, 2:5])
    assert out.sizes.tolist() == [[2, 1, 1, 1, 2]] and out.cls_index().tolist() == [2]
    protected = STM().reduce(state, internals, count=2)
    weight = torch.exp(torch.tensor(-1.0))  # equal delta and B: w = exp(delta * A)
    torch.testing.assert_close(protected.hidden[0, 0], hidden[0, 1] + weight * hidden[0, 0])


def test_without_class_token_merges_toward_the_middle(tiny_vim):
    hidden = torch.arange(8 * 2, dtype=torch.float32).reshape(1, 8, 2)
    state = TokenState.initial(hidden, None).with_streams(hidden, hidden.clone())
    branch = _branch(torch.ones(1, 8, 4), torch.ones(1, 8, 2), -torch.ones(4, 2))
    internals = BlockInternals((branch, branch), hidden=hidden, residual=hidden)
    out = STM(protect=False).reduce(state, internals, count=4)  # 0, 1 -> 2 and 6, 7 -> 5; 4 is the centre
    assert out.positions.tolist() == [[2, 3, 4, 5]] and out.sizes.tolist() == [[3, 1, 1, 3]]
    torch.testing.assert_close(out.hidden[0, 0], hidden[0, :3].mean(0))
    torch.testing.assert_close(out.hidden[0, -1], hidden[0, 5:].mean(0))
    model = tiny_vim(cls_position="none")
    report = mambatr.apply(model, "stm", ratio=1)
    assert report.tokens_per_layer == [16, 14, 12]
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()


def test_class_token_first_merges_on_the_right_only(tiny_vim):
    model = tiny_vim(cls_position="first", divide_output=False)
    report = mambatr.apply(model, "stm", ratio=1)
    assert report.removals == {0: 2, 1: 2}
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_every_layer_default_and_protection_matters(tiny_vim):
    model = tiny_vim()
    images = torch.randn(2, 3, 16, 16)
    report = mambatr.apply(model, "stm", ratio=1)
    assert report.layers == [0, 1] and report.tokens_per_layer == [17, 15, 13]
    assert 0 < report.flops_reduction_achieved < report.token_reduction + 0.05
    protected = model(images)
    mambatr.apply(model, "stm", ratio=1, protect=False)
    assert (protected - model(images)).abs().max() > 1e-6


@pytest.mark.parametrize("target", [0.2, 0.3, 0.4])
def test_solver(target):
    with torch.device("meta"):
        model = mambatr.create_model("vim_small")
    report = mambatr.apply(model, "stm", target)
    assert abs(report.flops_reduction_achieved - target) <= 0.005

import pytest
import torch
from handmade import make_internals, make_state

import mambatr
from mambatr.reduction.mtr import MTR
from mambatr.tokens import TokenState


def test_groups_and_merged_values_on_hand_made_tokens():
    # 7 tokens, class token at 3. Importance (Δ): keep = {5}, source = {1}, targets = {0, 2, 4, 6} for c = 1.
    delta = [0.5, 0.1, 0.4, 9.0, 0.3, 0.9, 0.35]
    hidden = torch.tensor([[[1.0, 0], [0.9, 0.1], [0, 1], [5, 5], [-1, 0], [0, -1], [0.5, 0.5]]])
    state = make_state(hidden, cls_position=3)
    out = MTR().reduce(state, make_internals(hidden, delta), count=1)
    # token 1 (least important) is most similar (cosine) to token 0 -> merged into it, mean
    assert out.positions.tolist() == [[0, 2, 3, 4, 5, 6]]
    expected = hidden[0, [0, 2, 3, 4, 5, 6]].clone()
    expected[0] = (hidden[0, 0] + hidden[0, 1]) / 2
    torch.testing.assert_close(out.hidden[0], expected)
    torch.testing.assert_close(out.residual[0], expected * 10)
    assert out.sizes.tolist() == [[2, 1, 1, 1, 1, 1]]
    assert out.cls_index().tolist() == [2]


def test_keep_tokens_untouched_and_size_weighted_mean():
    delta = [0.5, 0.1, 0.2, 9.0, 0.3, 0.9, 0.35]
    hidden = torch.randn(2, 7, 3)
    state = make_state(hidden, cls_position=3)
    state.sizes[:, 0] = 3.0
    out = MTR(weights="size").reduce(
        state, make_internals(hidden, delta), count=2
    )  # keep {5, 0}, source {1, 2}
    assert out.length == 5
    kept = (out.positions == 5).nonzero()[:, 1]
    torch.testing.assert_close(out.hidden[[0, 1], kept], hidden[:, 5])
    assert out.sizes.sum(dim=1).tolist() == [9.0, 9.0]  # sizes are conserved


@pytest.mark.parametrize("weights", ["mean", "size"])
def test_merging_identical_tokens_changes_nothing(weights):
    hidden = torch.randn(1, 1, 6).expand(2, 9, 6).contiguous()
    state = make_state(hidden, cls_position=4)
    out = MTR(weights=weights).reduce(state, make_internals(hidden, torch.rand(9).tolist()), count=3)
    assert out.length == 6
    torch.testing.assert_close(out.hidden, hidden[:, :6])
    torch.testing.assert_close(out.residual, hidden[:, :6] * 10)
    assert (out.positions.diff(dim=1) > 0).all()


@pytest.mark.parametrize("cls_position", ["middle", "first", "none"])
def test_removals_are_the_ratio_of_the_reducible_tokens(tiny_vim, cls_position):
    model = tiny_vim(cls_position=cls_position)
    report = mambatr.apply(model, "mtr", ratio=0.3, layers=[0, 1])
    n, has_cls = model.config.seq_len, int(model.config.has_cls)
    first = n - int(0.3 * (n - has_cls))
    assert report.tokens_per_layer == [n, first, first - int(0.3 * (first - has_cls))]


@pytest.mark.parametrize("indicator", ["delta", "B", "C", "cls", "norm", "random"])
@pytest.mark.parametrize("strategy", ["merge", "prune", "hybrid"])
def test_every_indicator_and_strategy_runs(tiny_vim, indicator, strategy):
    model = tiny_vim()
    mambatr.apply(model, "mtr", ratio=0.25, indicator=indicator, strategy=strategy)
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_gradients(tiny_vim, dtype):
    model = tiny_vim().to(dtype)
    mambatr.apply(model, "mtr", ratio=0.3)
    images = torch.randn(2, 3, 16, 16, dtype=dtype, requires_grad=True)
    logits = model(images)
    assert logits.dtype == dtype
    if dtype == torch.float32:
        logits.sum().backward()
        assert images.grad is not None and torch.isfinite(images.grad).all()
        assert model.layers[-1].mixer.in_proj.weight.grad is not None


@pytest.mark.parametrize(
    "name, target",
    [
        ("vim_small", 0.2),
        ("vim_small", 0.3),
        ("vim_small", 0.4),
        ("vim_tiny", 0.3),
        ("vim_fmnist", 0.2),
        ("vim_fmnist", 0.3),
        ("vim_fmnist", 0.4),
    ],
)
def test_solver_hits_target(name, target):
    with torch.device("meta"):
        model = mambatr.create_model(name)
    report = mambatr.apply(model, "mtr", target)
    assert abs(report.flops_reduction_achieved - target) <= 0.005
    assert report.gflops < report.gflops_dense


def test_clear_errors(tiny_vim):
    model = tiny_vim()
    for bad in (0.0, 0.9, 1.2, -0.1):
        with pytest.raises(ValueError, match=r"flops_reduction must be in \(0, 0.9\)"):
            mambatr.apply(model, "mtr", bad)
    with pytest.raises(ValueError, match="unknown reduction method 'tome2'"):
        mambatr.apply(model, "tome2", 0.3)
    with pytest.raises(ValueError, match="indicator='attention' is not one of"):
        mambatr.apply(model, "mtr", 0.3, indicator="attention")
    with pytest.raises(ValueError, match=r"reduction layers \[5\] out of range"):
        mambatr.apply(model, "mtr", 0.3, layers=[0, 5])
    with pytest.raises(ValueError, match="exactly one of"):
        mambatr.apply(model, "mtr", 0.3, ratio=0.2)
    with pytest.raises(ValueError, match="cannot remove 9 of 17 tokens"):
        MTR().reduce(TokenState.initial(torch.randn(1, 17, 4), 8), None, count=9)


def test_importance_sums_every_scan_direction():
    """Four-scan backbones (PlainMamba): Δ of every direction counts, not only the first two."""
    from dataclasses import replace

    from mambatr.reduction.mtr import importance

    hidden = torch.randn(1, 5, 3)
    base = make_internals(hidden).branches[0]
    late = torch.tensor([0.0, 0, 0, 4, 0]).reshape(1, 5, 1).expand(1, 5, 4)
    branches = (base, base, base, replace(base, delta=base.delta + late))
    internals = type(make_internals(hidden))(branches, hidden=hidden, residual=hidden)
    score = importance(make_state(hidden, None), internals, "delta")
    torch.testing.assert_close(score, torch.tensor([[4.0, 4, 4, 8, 4]]))


def test_delta_raw_and_delta_b_indicators():
    """delta_raw undoes softplus exactly; delta_b multiplies each direction's mean Δ by its mean |B|."""
    from dataclasses import replace

    import torch.nn.functional as F

    from mambatr.reduction.mtr import importance

    hidden = torch.randn(1, 5, 3)
    raw = torch.tensor([-3.0, -0.5, 0.0, 2.0, 25.0]).reshape(1, 5, 1).expand(1, 5, 4)
    base = replace(make_internals(hidden).branches[0], delta=F.softplus(raw))
    forward = replace(base, B=torch.full((1, 5, 2), -2.0))
    internals = type(make_internals(hidden))((forward, base), hidden=hidden, residual=hidden)
    state = make_state(hidden, None)
    torch.testing.assert_close(
        importance(state, internals, "delta_raw"), 2 * raw[..., 0], rtol=1e-5, atol=1e-5
    )
    expected = F.softplus(raw[..., 0]) * (2.0 + 1.0)  # |B| = 2 forward, 1 backward
    torch.testing.assert_close(importance(state, internals, "delta_b"), expected)


def test_plainmamba_transposed_tokens_tie_exactly_and_rank_by_index():
    """PlainMamba's snakes read Δ in sequence order, so on the full grid a token and its transpose get
    the same four Δ in another order: their scores must be bit-equal (a left-to-right float sum broke
    the tie by rounding, differently in onnxruntime), and a tie at the cut keeps the earlier token."""
    from mambatr.reduction.mtr import importance

    torch.manual_seed(0)
    model = mambatr.create_model(
        "plainmamba_custom", img_size=32, patch_size=4, stem_channels=8, embed_dim=16, depth=1, d_state=4
    ).eval()
    tokens = model.config.grid**2
    with torch.no_grad():
        state = TokenState.initial(model.embed(torch.randn(1, 3, 32, 32)), None, False)
        hidden, residual, internals = model.layers[0](
            state.hidden, None, capture=True, **model.layer_inputs(state)
        )
    state = state.with_streams(hidden, residual)
    score = importance(state, internals, "delta")[0]
    transposed = torch.arange(tokens).view(model.config.grid, -1).t().reshape(-1)
    assert torch.equal(score, score[transposed])
    assert len(score.unique()) == (tokens + model.config.grid) // 2  # the pairs tie, nothing else
    order = score.argsort(descending=True, stable=True)
    cut = next(k for k in range(tokens // 2 + 1, tokens) if score[order[k - 1]] == score[order[k]])
    earlier, later = order[cut - 1], order[cut]  # a tied pair across the cut: `later` is a source
    assert earlier < later
    out = MTR(strategy="prune").step(state, internals, tokens - cut)
    assert earlier in out.positions[0] and later not in out.positions[0]

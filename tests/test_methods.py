"""UTR, EViT, PuMer and ToMe: hand-made tokens with known answers, then their options' variants."""

import pytest
import torch
import torch.nn.functional as F
from handmade import make_internals, make_state

import mambatr
from mambatr.reduction.evit import EViT
from mambatr.reduction.pumer import PuMer
from mambatr.reduction.tome import ToMe, rmeeto_layers
from mambatr.reduction.utr import UTR
from mambatr.tokens import TokenState

METHODS = ["utr", "evit", "pumer", "tome"]
VARIANTS = [
    ("utr", {}),
    ("utr", {"rest": "zero", "weights": "size", "metric": "clipped"}),
    ("evit", {}),
    ("evit", {"fuse": True}),
    ("evit", {"indicator": "clip"}),
    ("pumer", {}),
    ("pumer", {"prune_first": True}),
    ("tome", {}),
    ("tome", {"weights": "mean", "metric": "clipped"}),
]


def _check(
    out: TokenState, positions: list[int], hidden: torch.Tensor, residual: torch.Tensor, sizes: list[float]
) -> None:
    assert out.positions.tolist() == [positions]
    torch.testing.assert_close(out.hidden[0], hidden)
    torch.testing.assert_close(out.residual[0], residual)
    assert out.sizes.tolist() == [sizes]


def test_tome_alternating_sets_and_size_weighted_merge():
    # class token at 3; reducible 0 1 2 4 5 6 -> A = {0, 2, 5}, B = {1, 4, 6}
    t = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [5, 5], [-1, 0], [0, -1], [0.2, 0.8]])
    state = make_state(t[None], cls_position=3)
    state.sizes[0, 1] = 3.0
    out = ToMe().reduce(state, make_internals(t[None]), count=2)  # 0 -> 1 (cos 0.99), 2 -> 6 (0.97); 5 stays
    merged = torch.stack([(t[0] + 3 * t[1]) / 4, t[3], t[4], t[5], (t[2] + t[6]) / 2])
    _check(out, [1, 3, 4, 5, 6], merged, merged * 10, [4, 1, 1, 1, 2])
    assert out.cls_index().tolist() == [1]
    out = ToMe(weights="mean").reduce(state, make_internals(t[None]), count=1)
    merged = torch.stack([(t[0] + t[1]) / 2, t[2], t[3], t[4], t[5], t[6]])
    _check(out, [1, 2, 3, 4, 5, 6], merged, merged * 10, [4, 1, 1, 1, 1, 1])


# class token first; reducible 1 2 3 4 -> A = {1, 3}, B = {2, 4}. Token 1 is closest to 4 in the hidden
# state (cos 0.99 against 0.71) but identical to 2 once clipped (cos 1 against 0.98).
PUMER_TOKENS = torch.tensor([[1.0, 1, 1], [1, 0.2, -1], [1, 0.2, 0], [0, 1, 0], [1, 0, -1]])


def test_pumer_matches_on_clipped_features_where_tome_uses_hidden():
    t = PUMER_TOKENS
    state = make_state(t[None], cls_position=0)
    out = PuMer().reduce(state, make_internals(t[None]), count=1)
    merged = torch.stack([t[0], (t[1] + t[2]) / 2, t[3], t[4]])
    _check(out, [0, 2, 3, 4], merged, merged * 10, [1, 2, 1, 1])
    out = ToMe().reduce(state, make_internals(t[None]), count=1)
    merged = torch.stack([t[0], t[2], t[3], (t[1] + t[4]) / 2])
    _check(out, [0, 2, 3, 4], merged, merged * 10, [1, 1, 1, 2])


def test_pumer_prune_first_prunes_half_then_merges():
    t = PUMER_TOKENS
    # class similarity: 1: 0.08, 2: 0.68, 3: 0.58, 4: 0.0 -> prune 4; then A = {1, 3}, B = {2}: 1 -> 2
    out = PuMer(prune_first=True).reduce(
        make_state(t[None], cls_position=0), make_internals(t[None]), count=2
    )
    merged = torch.stack([t[0], (t[1] + t[2]) / 2, t[3]])
    _check(out, [0, 2, 3], merged, merged * 10, [1, 2, 1])
    assert PuMer(prune_first=True).split(5) == (2, 3)
    assert PuMer(prune_first=True, prune_share=1.0).max_removal(10, True) == 8


# class token at 2 = [1, 0]; class similarity: 0: 0.995, 1: 0.707, 3: 0.447, 4: 0.981, 5: -1
EVIT_TOKENS = torch.tensor([[1.0, 0.1], [1, 1], [1, 0], [1, 2], [1, 0.2], [-1, 0]])


def test_evit_keeps_the_tokens_closest_to_the_class_token():
    t = EVIT_TOKENS
    out = EViT().reduce(make_state(t[None], cls_position=2), make_internals(t[None]), count=2)
    kept = t[[0, 1, 2, 4]]
    _check(out, [0, 1, 2, 4], kept, kept * 10, [1, 1, 1, 1])
    assert out.cls_index().tolist() == [2]


def test_evit_fuse_weights_by_importance_at_the_top_fused_position():
    t = EVIT_TOKENS
    out = EViT(fuse=True).reduce(make_state(t[None], cls_position=2), make_internals(t[None]), count=2)
    weights = F.cosine_similarity(t[[1, 3, 5]], t[2:3], dim=-1).clamp(min=0) + 1e-6
    fused = (weights[:, None] * t[[1, 3, 5]]).sum(0) / weights.sum()
    expected = torch.stack([t[0], fused, t[2], t[4]])
    _check(out, [0, 1, 2, 4], expected, expected * 10, [1, 3, 1, 1])


def test_evit_without_class_token_compares_with_the_mean_token():
    t = torch.tensor([[1.0, 0], [1, 0.1], [-1, 0.2], [1, -0.1]])  # mean (0.5, 0.05): token 2 is the outlier
    out = EViT().reduce(make_state(t[None], cls_position=None), make_internals(t[None]), count=1)
    assert out.positions.tolist() == [[0, 1, 3]]


def test_utr_importance_halves_hybrid_hidden_and_merged_residual():
    # importance (clipped channel sum): 1: 5, 2: 6, 5: 7 (more important); 3: 1.2, 4: 1, 6: 0.8 (less)
    t = torch.tensor([[9.0, 9, 9], [4, 0, 1], [0, 5, 1], [1, 0, 0.2], [-1, 1, 0], [1, 1, 5], [0.1, 0.1, 0.6]])
    state = make_state(t[None], cls_position=0)
    out = UTR().reduce(
        state, make_internals(t[None]), count=2
    )  # 3 -> 1 (cos 0.999), 6 -> 5 (0.9997); 4 stays
    residual = torch.stack([t[0], (t[1] + t[3]) / 2, t[2], t[4], (t[5] + t[6]) / 2]) * 10
    # per channel the top floor(2 / 2) = 1 reduced token by value shares it: channel 0: 3; 1 and 2: 6
    hidden = torch.stack([t[0], torch.tensor([2.5, 0, 1]), t[2], t[4], torch.tensor([1, 0.55, 2.8])])
    _check(out, [0, 1, 2, 4, 5], hidden, residual, [1, 2, 1, 1, 2])
    out = UTR(rest="zero").reduce(state, make_internals(t[None]), count=2)  # unshared channels average with 0
    hidden = torch.stack([t[0], torch.tensor([2.5, 0, 0.5]), t[2], t[4], torch.tensor([0.5, 0.55, 2.8])])
    _check(out, [0, 1, 2, 4, 5], hidden, residual, [1, 2, 1, 1, 2])


@pytest.mark.parametrize("name, options", VARIANTS)
def test_zero_count_keeps_themake_state(name, options):
    hidden = torch.randn(2, 9, 6)
    state = make_state(hidden, cls_position=4)
    out = mambatr.reduction.registry.build_method(name, **options).reduce(
        state, make_internals(hidden), count=0
    )
    assert torch.equal(out.hidden, state.hidden) and torch.equal(out.residual, state.residual)
    assert torch.equal(out.positions, state.positions)


@pytest.mark.parametrize("name, options", [variant for variant in VARIANTS if variant[1]])
@pytest.mark.parametrize("cls_position", ["middle", "first", "none"])
def test_options_keep_order_class_token_and_sizes(tiny_vim, name, options, cls_position):
    """The options' variants (the defaults: tests/test_contract.py, on every backbone family)."""
    model = tiny_vim(cls_position=cls_position)
    images = torch.randn(3, 3, 16, 16)
    report = mambatr.apply(model, name, ratio=0.3, layers=[0, 1], **options)
    assert report.tokens_per_layer[-1] < report.tokens_per_layer[0]
    seen, original = [], model.reduction.method.reduce

    def spy(state, internals, count):
        out = original(state, internals, count)
        assert out.length == state.length - count
        seen.append(out)
        return out

    model.reduction.method.reduce = spy
    assert torch.isfinite(model(images)).all()
    assert len(seen) == 2
    for out in seen:
        assert (out.positions.diff(dim=1) > 0).all()
        pruning = name == "evit" and not options.get("fuse") or options.get("prune_first")
        assert (
            (out.sizes.sum(dim=1) < model.config.seq_len)
            if pruning
            else (out.sizes.sum(dim=1) == model.config.seq_len)
        ).all()  # merging conserves sizes
        if model.config.cls_index is not None:
            assert (out.positions[torch.arange(3), out.cls_index()] == model.config.cls_index).all()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_and_gradients(tiny_vim, name, dtype):
    model = tiny_vim().to(dtype)
    mambatr.apply(model, name, ratio=0.3)
    images = torch.randn(2, 3, 16, 16, dtype=dtype, requires_grad=True)
    logits = model(images)
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()
    if dtype == torch.float32:
        logits.sum().backward()
        assert images.grad is not None and torch.isfinite(images.grad).all()
        assert model.layers[-1].mixer.in_proj.weight.grad is not None


@pytest.mark.parametrize("name, options", VARIANTS)
@pytest.mark.parametrize("model_name", ["vim_small", "vim_fmnist"])
@pytest.mark.parametrize("target", [0.2, 0.3, 0.4])
def test_solver_hits_target(name, options, model_name, target):
    with torch.device("meta"):
        model = mambatr.create_model(model_name)
    report = mambatr.apply(model, name, target, **options)
    assert abs(report.flops_reduction_achieved - target) <= 0.005
    assert report.gflops < report.gflops_dense


def test_rmeeto_layers_map_to_our_convention(tiny_vim):
    assert rmeeto_layers(24) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21]  # before blocks 2, 4, ..., 22
    with torch.device("meta"):
        model = mambatr.create_model("vim_small")
    assert mambatr.apply(model, "tome", 0.3, preset="rmeeto").layers == rmeeto_layers(24)


def test_clear_errors():
    state = TokenState.initial(torch.randn(1, 9, 4), 4)
    for method, too_many in ((UTR(), 5), (EViT(), 8), (EViT(fuse=True), 7), (PuMer(), 5), (ToMe(), 5)):
        with pytest.raises(ValueError, match=f"cannot (remove|reduce) {too_many} of 9 tokens"):
            method.reduce(state, make_internals(state.hidden), count=too_many)
    with pytest.raises(ValueError, match="prune_share must be in"):
        PuMer(prune_share=1.5)
    with pytest.raises(ValueError, match="rest='drop' is not one of"):
        UTR(rest="drop")

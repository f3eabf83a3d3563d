"""PlainMamba: official numerics, snake scans, reduction on token subsets, checkpoints, FLOPs."""

import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from official_plainmamba import (
    DOWN,
    LEFT,
    RIGHT,
    UP,
    mixer_on_subset,
    official_forward,
    official_layer,
    official_mixer,
    official_orders,
    official_state_shapes,
)
from torch.utils.flop_counter import FlopCounterMode

import mambatr
from mambatr.flops import count_flops
from mambatr.models import CheckpointError
from mambatr.models.checkpoint import resample_pos_embed
from mambatr.models.plainmamba import MOVE_CODES, PlainMambaConfig, snake_paths
from mambatr.reduction.api import intercept_reduction
from mambatr.tokens import TokenState

# 18x18 RGB: stem 9x9, "corner" padded to 10, projection 2x2 -> 5x5 grid (odd side: path 2 starts right)
TINY = dict(
    img_size=18,
    patch_size=4,
    embed_dim=16,
    depth=3,
    d_state=4,
    num_classes=5,
    stem_channels=8,
    num_convs_patch_embed=1,
    layers_with_dwconv=(0,),
)


@pytest.fixture
def tiny_pm():
    def build(**overrides):
        torch.manual_seed(0)
        model = mambatr.create_model("plainmamba_custom", **{**TINY, **overrides})
        with torch.no_grad():  # away from the init so every parameter (and BN statistic) matters
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            for name, buffer in model.named_buffers():
                if name.endswith("running_mean"):
                    buffer.normal_(0, 0.1)
                elif name.endswith("running_var"):
                    buffer.uniform_(0.5, 1.5)
        return model.eval()

    return build


# Logits in float64: backbone.readout forms the mean-pool weights from the float32 token sizes, so
# 1/L carries a float32 rounding (~1e-8 relative, up to 1e-8 absolute here); blocks match to 1e-12.
LOGITS_F64 = dict(rtol=1e-6, atol=1e-7)


def _sd(model):
    return {k: v for k, v in model.state_dict().items()}


def _random_subsets(batch, cells, keep, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(cells, generator=g)[:keep].sort().values for _ in range(batch)])


# ----------------------------------------------------------------------------------------- scan paths


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (4, 1), (2, 3), (3, 4), (5, 5), (4, 6), (14, 14)])
def test_snake_paths_equal_official_permute_order(shape):
    paths = snake_paths(*shape)
    orders, inverses, codes = official_orders(*shape)
    assert paths.orders.tolist() == orders
    assert paths.ranks.tolist() == inverses
    for k in range(4):  # our codes are indexed by position, the official ones by scan step
        assert paths.codes[k, paths.orders[k]].tolist() == codes[k]


@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (5, 5), (6, 6)])
def test_snake_paths_are_neighbour_walks_with_matching_codes(shape):
    height, width = shape
    paths = snake_paths(height, width)
    x = torch.randn(height * width, 3)
    moves = {(0, 1): RIGHT, (0, -1): LEFT, (-1, 0): UP, (1, 0): DOWN}
    for k in range(4):
        order = paths.orders[k]
        assert sorted(order.tolist()) == list(range(height * width))  # every cell once
        torch.testing.assert_close(x[order][paths.ranks[k]], x, rtol=0, atol=0)  # permute, un-permute
        cells = [divmod(p, width) for p in order.tolist()]
        assert paths.codes[k, order[0]] == MOVE_CODES["start"]
        for (r0, c0), (r1, c1), cell in zip(cells, cells[1:], order[1:].tolist(), strict=False):
            assert abs(r1 - r0) + abs(c1 - c0) == 1  # grid neighbours
            assert paths.codes[k, cell] == moves[(r1 - r0, c1 - c0)]
    assert paths.orders[1].tolist() == paths.orders[0].flip(0).tolist()  # branches 0/1: scan + reverse
    assert paths.orders[3].tolist() == paths.orders[2].flip(0).tolist()


def test_scan_gaps_on_hand_made_subset():
    # 3x3 grid. Row snake: 0 1 2 5 4 3 6 7 8; column snake: 0 3 6 7 4 1 2 5 8 (and their reverses).
    model = mambatr.create_model("plainmamba_custom", img_size=12, patch_size=4, embed_dim=8, depth=2)
    assert model.config.grid == 3
    positions = torch.tensor([[0, 2, 4, 5, 8]])
    state = TokenState.initial(torch.zeros(1, 5, 8), None)
    state.positions = positions
    gaps = [g.tolist() for g in model.scan_gaps(state)]
    # path 0 visits 0 (rank 0), 2 (2), 5 (3), 4 (4), 8 (8); path 1: 8, 4, 5, 2, 0 at ranks 0 4 5 6 8
    # path 2 visits 0 (0), 4 (4), 2 (6), 5 (7), 8 (8); path 3: 8, 5, 2, 4, 0 at ranks 0 1 2 4 8
    assert gaps == [[[0, 1, 0, 0, 3]], [[0, 3, 0, 0, 1]], [[0, 3, 1, 0, 0]], [[0, 0, 0, 1, 3]]]
    dense = TokenState.initial(torch.zeros(2, 9, 8), None)
    assert all((g == 0).all() for g in model.scan_gaps(dense))


# ----------------------------------------------------------------------------------- official numerics


def test_matches_official_math_float64(tiny_pm):
    model = tiny_pm().double()
    images = torch.randn(2, 3, 18, 18, dtype=torch.float64)
    torch.testing.assert_close(model(images), official_forward(_sd(model), images, 4), **LOGITS_F64)


def test_matches_official_math_float32_with_layer_scale(tiny_pm):
    model = tiny_pm(layer_scale=0.5, layers_with_dwconv=(0, 2), num_convs_patch_embed=2)
    assert model.layers[1].mamba.gamma.shape == (16,)
    images = torch.randn(3, 3, 18, 18)
    torch.testing.assert_close(model(images), official_forward(_sd(model), images, 4), rtol=1e-5, atol=1e-5)


def test_fast_and_reference_scan_give_same_logits(tiny_pm):
    model = tiny_pm()
    images = torch.randn(2, 3, 18, 18)
    model.scan_impl = "reference"
    reference = model(images)
    model.scan_impl = "auto"
    torch.testing.assert_close(model(images), reference, rtol=1e-5, atol=1e-5)


def test_quirks_matter(tiny_pm):
    """direction_Bs and the raster-order delta / B / C change the output (no silent simplification)."""
    model = tiny_pm().double()
    images = torch.randn(1, 3, 18, 18, dtype=torch.float64)
    base = model(images)
    with torch.no_grad():
        model.layers[1].mamba.direction_Bs[DOWN] += 0.5
    assert (model(images) - base).abs().max() > 1e-6


def test_batch_size_one_dtypes_and_training(tiny_pm):
    model = tiny_pm()
    batch = torch.randn(3, 3, 18, 18)
    full = model(batch)
    torch.testing.assert_close(model(batch[1:2]), full[1:2], rtol=1e-5, atol=1e-5)
    bf16 = model.to(torch.bfloat16)(batch.to(torch.bfloat16))
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16.float()).all()
    model = model.float().train()
    model(batch).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ------------------------------------------------------------------------------ reduction on subsets


@pytest.mark.parametrize("layer, align", [(0, False), (1, True), (2, False)])
def test_block_on_token_subset_matches_reference(tiny_pm, layer, align):
    model = tiny_pm().double()
    block = model.layers[layer]
    positions = _random_subsets(2, 25, 14, seed=layer)
    stream = torch.randn(2, 14, 16, dtype=torch.float64)
    state = TokenState.initial(stream, None)
    state.positions = positions
    gaps = model.scan_gaps(state) if align else None
    hidden, residual, internals = block(stream, None, gaps=gaps, capture=True, positions=positions)
    sd = _sd(model)
    pre = f"layers.{layer}."
    normed = torch.nn.functional.layer_norm(stream, (16,), sd[f"{pre}norm.weight"], sd[f"{pre}norm.bias"])
    mixed, directions = mixer_on_subset(sd, f"{pre}mamba.", normed, positions, 5, 5, align)
    expected = official_layer(sd, layer, stream, 5, 5, positions, align)
    torch.testing.assert_close(residual + hidden, expected, rtol=1e-10, atol=1e-12)
    if layer != 0:  # no dw: hidden is the mixer output
        torch.testing.assert_close(hidden, mixed, rtol=1e-10, atol=1e-12)
    assert len(internals.branches) == 4
    for branch, (y_ungated, delta, B, C) in zip(
        internals.branches, directions, strict=True
    ):  # all in position order
        torch.testing.assert_close(branch.y_ungated, y_ungated, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(branch.delta, delta, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(branch.B, B, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(branch.C, C, rtol=1e-10, atol=1e-12)


def test_subset_reference_on_full_grid_is_official(tiny_pm):
    model = tiny_pm().double()
    sd = _sd(model)
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    full = torch.arange(25).expand(2, -1)
    subset, _ = mixer_on_subset(sd, "layers.1.mamba.", x, full, 5, 5, align=True)
    torch.testing.assert_close(subset, official_mixer(sd, "layers.1.mamba.", x, 5, 5), rtol=1e-10, atol=1e-12)
    ours, _ = model.layers[1].mamba(x, positions=full)
    torch.testing.assert_close(ours, subset, rtol=1e-10, atol=1e-12)


def test_dense_capture_internals_sum_to_the_mixer_output(tiny_pm):
    model = tiny_pm()
    tokens = model.embed(torch.randn(2, 3, 18, 18))
    hidden, residual, internals = model.layers[1](tokens, None, capture=True)
    plain, _, none = model.layers[1](tokens, None)
    assert none is None
    torch.testing.assert_close(hidden, plain)
    mixer = model.layers[1].mamba
    y = sum(branch.y for branch in internals.branches)
    torch.testing.assert_close(mixer.out_proj(y), hidden, rtol=1e-5, atol=1e-5)
    # dense, step j of every scan reads C / delta / B of raster slot j: in position order, branch k holds
    # them at the token its step j visits (orders[k][j]); B also carries that token's arrival code
    paths = snake_paths(5, 5)
    offsets = mixer.direction_Bs.detach()
    for k, branch in enumerate(internals.branches):
        order = paths.orders[k]
        first = internals.branches[0]
        torch.testing.assert_close(branch.C[:, order], first.C[:, paths.orders[0]], rtol=0, atol=0)
        torch.testing.assert_close(branch.delta[:, order], first.delta[:, paths.orders[0]], rtol=0, atol=0)
        raw = branch.B[:, order] - offsets[paths.codes[k, order]]
        torch.testing.assert_close(
            raw, first.B[:, paths.orders[0]] - offsets[paths.codes[0, paths.orders[0]]]
        )


@pytest.mark.parametrize("align", [True, False])
def test_hsa_end_to_end_equals_reference_with_the_same_pruning(tiny_pm, align):
    model = tiny_pm(depth=4).double()
    mambatr.apply(model, "hsa", ratio=0.3, layers=[0, 1], align=align)
    images = torch.randn(2, 3, 18, 18, dtype=torch.float64)
    kept = {}

    def record(reduce, state, internals, count):
        out = reduce(state, internals, count)
        kept[len(kept)] = out.positions.clone()
        return out

    with intercept_reduction(model, record):
        logits = model(images)
    assert [kept[i].shape[1] for i in kept] == [18, 13]
    reference = official_forward(_sd(model), images, 4, keep={0: kept[0], 1: kept[1]}, align=align)
    torch.testing.assert_close(logits, reference, **LOGITS_F64)


# --------------------------------------------------------------------------------------- checkpoints


def _mmcls_checkpoint(shapes, seed=0, fill=None):
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    state._metadata = OrderedDict()
    meta = {"mmcv_version": "1.7.1", "time": "Sat Mar 23 10:00:00 2024", "epoch": 300, "iter": 375300}
    return {"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def test_strict_load_official_l1_layout(tmp_path):
    shapes = official_state_shapes(192, 24, 1, layers_with_dwconv=(0,))
    assert len(shapes) == 361
    checkpoint = _mmcls_checkpoint(shapes)
    path = tmp_path / "l1.pth"
    torch.save(checkpoint, path)
    model = mambatr.create_model("plainmamba_l1", checkpoint=path)
    loaded = model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded[key.removeprefix("backbone.")], value), key
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.")) == 7_358_656


@pytest.mark.parametrize(
    "name, arch, backbone_params",
    [
        ("plainmamba_l1", (192, 24, 1, (0,)), 7_358_656),  # README: 7.3 M
        ("plainmamba_l2", (384, 24, 2, ()), 25_760_832),  # 25.7 M
        ("plainmamba_l3", (448, 36, 2, ()), 50_507_456),  # 50.5 M
    ],
)
def test_official_layouts_map_onto_the_models(name, arch, backbone_params):
    with torch.device("meta"):
        model = mambatr.create_model(name)
        shapes = official_state_shapes(*arch[:3], layers_with_dwconv=arch[3])
        official = {k: torch.empty(s) for k, s in shapes.items()}
    adapted = model.adapt_state_dict(official)
    assert {k: tuple(v.shape) for k, v in adapted.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.")) == backbone_params


def _tiny_official(model):
    return {
        ("backbone." + k if not k.startswith("head.") else k): v.clone()
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd.pop("backbone.layers.2.mamba.direction_Bs"), "layers.2.mamba.direction_Bs"),
        (
            lambda sd: sd.setdefault("backbone.layers.1.dw.0.weight", torch.zeros(16, 1, 3, 3)),
            "layers.1.dw.0",
        ),
        (lambda sd: sd.__setitem__("head.fc.weight", torch.zeros(7, 16)), "head.fc.weight"),
    ],
)
def test_bad_checkpoint_names_the_key(tmp_path, tiny_pm, corrupt, message):
    model = tiny_pm()
    sd = _tiny_official(model)
    corrupt(sd)
    path = tmp_path / "bad.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        mambatr.create_model("plainmamba_custom", checkpoint=path, **TINY)


def test_ema_buffers_dropped_and_pos_embed_resampled(tmp_path, tiny_pm):
    model = tiny_pm()
    sd = _tiny_official(model)
    sd["ema_backbone_pos_embed"] = sd["backbone.pos_embed"].clone()  # mmcv EMA hook buffer
    path = tmp_path / "ema.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    same = mambatr.create_model("plainmamba_custom", checkpoint=path, **TINY).eval()
    images = torch.randn(1, 3, 18, 18)
    torch.testing.assert_close(same(images), model(images))
    bigger = mambatr.create_model("plainmamba_custom", checkpoint=path, **{**TINY, "img_size": 26})
    assert bigger.config.grid == 7
    torch.testing.assert_close(bigger.pos_embed, resample_pos_embed(model.pos_embed.detach(), 7, None, None))


# -------------------------------------------------------------------------------------------- config


def test_config_geometry_and_validation():
    config = PlainMambaConfig()
    assert (config.grid, config.seq_len, config.rank, config.has_cls, config.cls_index) == (
        14,
        196,
        12,
        False,
        None,
    )
    assert config.num_directions == 4 and config.input_shape(2) == (2, 3, 224, 224)
    fmnist = mambatr.create_model("plainmamba_fmnist").config
    assert (fmnist.grid, fmnist.in_chans, fmnist.num_classes) == (7, 1, 10)
    assert config.with_overrides(layers_with_dwconv=[1, 2]).layers_with_dwconv == (1, 2)
    with pytest.raises(TypeError, match="unknown"):
        config.with_overrides(stride=8)
    for bad in ({"patch_size": 3}, {"conv_size": 4}, {"layers_with_dwconv": (30,)}):
        with pytest.raises(ValueError):
            PlainMambaConfig(**bad)
    model = mambatr.create_model("plainmamba_custom", **TINY)
    with pytest.raises(ValueError, match="18x18"):
        model(torch.randn(1, 3, 20, 20))


def test_imports_in_any_order():
    code = (
        "from mambatr.models.plainmamba import PlainMambaConfig\n"
        "import mambatr\n"
        "print(round(mambatr.count_flops(PlainMambaConfig(), convention='paper').gflops, 2))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.02"


# --------------------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize(
    "name, published", [("plainmamba_l1", 3.0), ("plainmamba_l2", 8.1), ("plainmamba_l3", 14.4)]
)
def test_paper_convention_matches_published(name, published):
    with torch.device("meta"):
        config = mambatr.create_model(name).config
    paper = count_flops(config, convention="paper").gflops
    assert abs(paper / published - 1) < 0.01
    assert count_flops(config).gflops > paper


def test_full_convention_hand_count():
    config = PlainMambaConfig(
        img_size=8,
        patch_size=4,
        in_chans=1,
        num_classes=3,
        embed_dim=4,
        depth=2,
        d_state=2,
        expand=2,
        conv_size=3,
        stem_channels=2,
        num_convs_patch_embed=1,
        layers_with_dwconv=(1,),
    )
    # stem 4x4, grid 2x2 = 4 tokens; D 4, E 8, N 2, R 1
    stem = 16 * 2 * 1 * 49 + 3 * 32  # 7x7 conv, BN, ReLU on 4x4x2
    convs = 16 * 2 * 2 * 9 + 3 * 32
    projection = 4 * 4 * 2 * 4 + 4 * 4
    embed = stem + convs + projection + 4 * 4  # + pos_embed

    def block(L, dw):
        macs = 5 * L * 4  # residual add + LayerNorm
        macs += L * 4 * 16 + 2 * L * 8  # in_proj + bias
        macs += 9 * L * 8 + 2 * L * 8  # conv2d 3x3 + bias + SiLU
        macs += L * 8 * (1 + 4)  # x_proj
        macs += L * 1 * 8 + L * 8  # dt_proj + bias
        macs += 4 * L * 2  # direction offsets
        macs += 4 * 2 * L * 8  # bias + softplus per scan
        macs += 4 * 9 * L * 8 * 2  # four scans
        macs += 4 * L * 8  # D skip
        macs += 5 * L * 8  # sum of scans, SiLU(z), gate
        macs += L * 8 * 4 + L * 4  # out_proj + bias
        if dw:
            macs += 9 * L * 4 + 2 * L * 4 + L * 4
        return macs

    def final(L):
        return 5 * L * 4 + 4 * 3  # LayerNorm + mean, head

    assert count_flops(config).total == embed + block(4, False) + block(4, True) + final(4)
    reduced = count_flops(config, tokens_per_layer=[4, 3], overhead={0: 7})
    assert reduced.total == embed + block(4, False) + block(3, True) + final(3) + 7
    assert count_flops(config, tokens_per_layer=[4, 3]).layers[1].tokens == 3


def test_matmul_and_conv_part_matches_torch_flop_counter(tiny_pm):
    model = tiny_pm()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 18, 18))
    config, report = model.config, count_flops(model.config)
    L, D, E, N, R = config.seq_len, config.embed_dim, config.d_inner, config.d_state, config.rank
    pixels = config.stem_size**2 * config.stem_channels
    analytic = pixels * 3 * 49 + pixels * config.stem_channels * 9  # stem + one extra conv
    analytic += L * D * config.stem_channels * 4  # projection 2x2
    analytic += config.depth * L * (D * 2 * E + 49 * E + E * (R + 2 * N) + R * E + E * D)
    analytic += 9 * L * D  # the dw conv of layer 0
    analytic += D * config.num_classes
    assert counter.get_total_flops() == 2 * analytic  # torch counts a multiply-add as 2
    assert report.total > analytic

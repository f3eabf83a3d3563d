"""Which patches a reduction kept, merged together or pruned, drawn on the input image (as ToMe's vis).

One panel per reducing layer, each titled with its block and its kept / merged / pruned counts: each
patch still standing alone shows the image, each merged group is filled with one colour of its own,
pruned patches are black with a grey cross (group colours are saturated, never black or grey; the
cross tells a pruned patch from black background). A legend says so, and the figure title names the
method and target. A second PNG plots, per reducing layer, the importance score the method ranked
tokens by, on the patch grid.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mambatr.models.backbone import ReducibleBackbone
from mambatr.outputs import atomic_path
from mambatr.reduction.api import intercept_reduction
from mambatr.tokens import TokenState

if TYPE_CHECKING:
    import matplotlib.figure

PANEL_SCALE = 8  # pixels per input pixel in the drawing
PRUNED_COLOR = (0, 0, 0)  # black fill of a pruned patch: no merge group's colour (all saturated)
PRUNED_MARK = (190, 190, 190)  # the grey cross over it: tells it from black image background


@dataclass
class LayerTrace:
    layer: int
    sources: torch.Tensor  # (L, L0) original tokens held by each surviving token
    positions: torch.Tensor  # (L,)
    scores: torch.Tensor | None  # (L_before,) importance of the tokens before reduction
    score_positions: torch.Tensor  # (L_before,)


@torch.inference_mode()
def trace(model: ReducibleBackbone, image: torch.Tensor) -> list[LayerTrace]:
    """Run one image (C, H, W) through the reduced model and record every reduction step."""
    if model.reduction is None:
        raise ValueError("the model has no reduction applied: call mambatr.apply first")
    method = model.reduction.method
    traces: list[LayerTrace] = []

    def recording(reduce, state: TokenState, internals, count: int) -> TokenState:
        out = reduce(state, internals, count)
        scores = method.scores(state, internals)
        traces.append(
            LayerTrace(
                -1,
                out.sources[0].cpu(),
                out.positions[0].cpu(),
                None if scores is None else scores[0].float().cpu(),
                state.positions[0].cpu(),
            )
        )
        return out

    model.track_sources = True
    try:
        with intercept_reduction(model, recording):
            model(image[None])
    finally:
        model.track_sources = False
    reducing = [layer for layer, count in sorted(model.reduction.removals.items()) if count > 0]
    for trace_, layer in zip(traces, reducing, strict=True):
        trace_.layer = layer
    return traces


def group_colors(count: int) -> np.ndarray:
    """``count`` distinct saturated RGB colours (golden-ratio hue steps), as floats in 0..255."""
    return np.array([colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95) for i in range(count)]) * 255


def patch_assignment(trace_: LayerTrace, num_tokens: int) -> np.ndarray:
    """(L0,) the surviving token each original token belongs to, -1 where pruned."""
    owner = np.full(num_tokens, -1)
    holds = trace_.sources.numpy() > 0
    for token, row in enumerate(holds):
        owner[row] = token
    return owner


def patch_owners(model: ReducibleBackbone, trace_: LayerTrace) -> tuple[np.ndarray, np.ndarray]:
    """(owner of each patch token in raster order, -1 where pruned; size of each surviving token's group)."""
    config = model.config
    owner = patch_assignment(trace_, config.seq_len)
    if config.cls_index is not None:
        owner = np.delete(owner, config.cls_index)  # patch tokens only, raster order
    return owner, np.bincount(owner[owner >= 0], minlength=trace_.sources.shape[0])


def layer_counts(model: ReducibleBackbone, trace_: LayerTrace) -> dict[str, int]:
    """Patches still alone ("kept"), in merged groups ("merged", in "groups" groups), and "pruned"."""
    owner, sizes = patch_owners(model, trace_)
    alone = owner >= 0
    alone[alone] = sizes[owner[alone]] == 1
    return {
        "kept": int(alone.sum()),
        "merged": int(((owner >= 0) & ~alone).sum()),
        "groups": int((sizes > 1).sum()),
        "pruned": int((owner < 0).sum()),
    }


def render_layer(model: ReducibleBackbone, image: np.ndarray, trace_: LayerTrace) -> np.ndarray:
    """(H*s, W*s, 3) uint8 panel; ``image`` is (H, W, 3) uint8."""
    config = model.config
    owner, sizes = patch_owners(model, trace_)
    colors = group_colors(len(sizes))
    panel = image.astype(float).copy()
    p = config.patch_size
    stride = getattr(config, "stride", p)  # PlainMamba's patches do not overlap
    for patch, token in enumerate(owner):
        row, col = divmod(patch, config.grid)
        window = (slice(row * stride, row * stride + p), slice(col * stride, col * stride + p))
        if token < 0:
            panel[window] = PRUNED_COLOR
        elif sizes[token] > 1:
            panel[window] = colors[token]
    panel = np.repeat(np.repeat(panel, PANEL_SCALE, 0), PANEL_SCALE, 1)
    size = p * PANEL_SCALE
    i, j = np.indices((size, size))
    width = max(1, PANEL_SCALE // 4)
    cross = (np.abs(i - j) < width) | (np.abs(i + j - (size - 1)) < width)
    for patch in np.flatnonzero(owner < 0):
        row, col = divmod(patch, config.grid)
        top, left = row * stride * PANEL_SCALE, col * stride * PANEL_SCALE
        panel[top : top + size, left : left + size][cross] = PRUNED_MARK
    return panel.clip(0, 255).astype(np.uint8)


def to_rgb_uint8(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo the input normalisation of a (C, H, W) tensor, as (H, W, 3) uint8."""
    pixels = (
        image.detach().cpu().float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    )
    pixels = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def visualize(
    model: ReducibleBackbone,
    image: torch.Tensor,
    out: Path,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    title: str | None = None,
) -> tuple[Path, Path, list[LayerTrace]]:
    """Write ``out`` (input + one panel per reducing layer) and ``<out>_importance.png``, each written
    whole or not at all; ``title`` (default: the method's name) heads both figures."""
    traces = trace(model, image)
    title = title or model.reduction.method.name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = groups_figure(model, to_rgb_uint8(image, mean, std), traces, title)
    importance = importance_figure(model, traces, title)
    importance_path = importance_path_of(out)
    for path, drawn in ((out, figure), (importance_path, importance)):
        with atomic_path(path) as temporary:
            drawn.savefig(temporary, dpi=110)
        _pyplot().close(drawn)
    return out, importance_path, traces


def importance_path_of(out: Path) -> Path:
    """Where ``visualize`` writes the importance figure beside ``out``: ``<out>_importance.png``."""
    return out.with_name(out.stem + "_importance.png")


def figure_formats() -> list[str]:
    """The file suffixes (without the dot) matplotlib can write a figure as."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def groups_figure(
    model: ReducibleBackbone, rgb: np.ndarray, traces: list[LayerTrace], title: str
) -> matplotlib.figure.Figure:
    """The input and, per reducing layer, a panel titled with the block and its counts; a legend."""
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.patches import Patch

    plt = _pyplot()
    figure, axes = plt.subplots(
        1, 1 + len(traces), figsize=(2.3 * (1 + len(traces)), 3.4), squeeze=False, layout="constrained"
    )
    panels = [np.repeat(np.repeat(rgb, PANEL_SCALE, 0), PANEL_SCALE, 1)]
    titles = ["input"]
    for trace_ in traces:
        panels.append(render_layer(model, rgb, trace_))
        counts = layer_counts(model, trace_)
        groups = f" in {counts['groups']} groups" if counts["merged"] else ""
        titles.append(
            f"after block {trace_.layer}:\n{counts['kept']} kept, {counts['merged']} merged{groups},\n"
            f"{counts['pruned']} pruned"
        )
    for axis, panel, text in zip(axes[0], panels, titles, strict=True):
        axis.imshow(panel, interpolation="nearest")
        axis.set_title(text, fontsize=8)
        axis.axis("off")
    handles = [
        Patch(facecolor="white", edgecolor="gray"),
        tuple(Patch(facecolor=color) for color in group_colors(3) / 255),  # a few groups' colours
        Patch(facecolor=np.array(PRUNED_COLOR) / 255, edgecolor=np.array(PRUNED_MARK) / 255, hatch="xx"),
    ]
    labels = ["kept: the image shows", "merged: one colour per group", "pruned"]
    figure.legend(
        handles, labels, handler_map={tuple: HandlerTuple(ndivide=None, pad=0)}, loc="outside lower center",
        ncol=3, fontsize=8, frameon=False,
    )  # fmt: skip
    figure.suptitle(title, fontsize=10)
    figure.get_layout_engine().set(h_pad=0.1)  # room between the title and the panels' three-line titles
    return figure


def importance_figure(
    model: ReducibleBackbone, traces: list[LayerTrace], title: str
) -> matplotlib.figure.Figure:
    """Per reducing layer, the score the method ranked tokens by, on the patch grid."""
    plt = _pyplot()
    config = model.config
    figure, axes = plt.subplots(
        1, len(traces), figsize=(2.6 * len(traces), 3.0), squeeze=False, layout="constrained"
    )
    for axis, trace_ in zip(axes[0], traces, strict=True):
        grid = np.full(config.seq_len, np.nan)
        if trace_.scores is not None:
            scores = trace_.scores.numpy().copy()
            scores[~np.isfinite(scores)] = np.nan
            grid[trace_.score_positions.numpy()] = scores
        if config.cls_index is not None:
            grid = np.delete(grid, config.cls_index)
        image = axis.imshow(grid.reshape(config.grid, config.grid), cmap="viridis")
        figure.colorbar(image, ax=axis, fraction=0.046)
        axis.set_title(
            f"after block {trace_.layer}" + ("" if trace_.scores is not None else " (no score)"), fontsize=8
        )
        axis.axis("off")
    figure.suptitle(f"{title}\nimportance used by {model.reduction.method.name}", fontsize=9)
    return figure

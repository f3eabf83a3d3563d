"""Which patches a reduction kept, merged together or pruned, drawn on the input image (as ToMe's vis).

One panel per reducing layer: each patch still standing alone shows the image, each merged group is
filled with one colour of its own, pruned patches are dark red. A second PNG plots, per reducing layer,
the importance score the method ranked tokens by, on the patch grid.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mambatr.models.backbone import ReducibleBackbone
from mambatr.reduction.api import intercept_reduction
from mambatr.reduction.state import TokenState

PANEL_SCALE = 8  # pixels per input pixel in the drawing
PRUNED_COLOR = (80, 0, 0)  # dark red: unlike black, it cannot be mistaken for image background


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


def render_layer(model: ReducibleBackbone, image: np.ndarray, trace_: LayerTrace) -> np.ndarray:
    """(H*s, W*s, 3) uint8 panel; ``image`` is (H, W, 3) uint8."""
    config = model.config
    owner = patch_assignment(trace_, config.seq_len)
    if config.cls_index is not None:
        owner = np.delete(owner, config.cls_index)  # patch tokens only, raster order
    sizes = np.bincount(owner[owner >= 0], minlength=trace_.sources.shape[0])
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
    return panel.clip(0, 255).astype(np.uint8)


def to_rgb_uint8(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo the input normalisation of a (C, H, W) tensor, as (H, W, 3) uint8."""
    pixels = (
        image.detach().cpu().float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    )
    pixels = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def visualize(
    model: ReducibleBackbone, image: torch.Tensor, out: Path, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Path, Path, list[LayerTrace]]:
    """Write ``out`` (original + one panel per reducing layer) and ``<out>_importance.png``."""
    traces = trace(model, image)
    rgb = to_rgb_uint8(image, mean, std)
    original = np.repeat(np.repeat(rgb, PANEL_SCALE, 0), PANEL_SCALE, 1)
    gap = np.full((original.shape[0], PANEL_SCALE, 3), 255, dtype=np.uint8)
    panels = [original]
    for trace_ in traces:
        panels += [gap, render_layer(model, rgb, trace_)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(out)
    importance_path = out.with_name(out.stem + "_importance.png")
    plot_importance(model, traces, importance_path)
    return out, importance_path, traces


def plot_importance(model: ReducibleBackbone, traces: list[LayerTrace], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = model.config
    figure, axes = plt.subplots(1, len(traces), figsize=(2.6 * len(traces), 2.8), squeeze=False)
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
    figure.suptitle(f"importance used by {model.reduction.method.name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

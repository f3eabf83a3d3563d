"""Loading official and mambatr checkpoints: safe unpickling, key cleanup, resampling, strict checks."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The only non-tensor classes an official training checkpoint pickles (Vim stores its argparse args).
SAFE_GLOBALS: list[type] = [argparse.Namespace]
STATE_DICT_KEYS = ("model", "state_dict", "module")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model, with the offending keys named."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a .pth/.pt training checkpoint or a .safetensors file, never fully unpickling.

    Every failure is a one-line error naming the file: a folder, a file that is not a checkpoint at
    all, a truncated one, or a pickle holding objects outside the allow-list (refused, never loaded).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a weights file (.pth or .safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    if not _is_torch_file(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive nor its legacy pickle)"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler met a global outside the allow-list
        found = re.search(r"GLOBAL (\S+)", str(error))
        allowed = ", ".join(cls.__module__ + "." + cls.__qualname__ for cls in SAFE_GLOBALS)
        raise CheckpointError(
            f"{path} holds code: pickled objects outside the allow-list (tensors, plain containers, "
            f"{allowed}){f', e.g. {found[1]}' if found else ''}; refused, as unpickling them could run it"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # a truncated or damaged file
        text = str(error).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else "it ends early"  # torch's first sentence
        raise CheckpointError(f"{path} is a damaged PyTorch checkpoint ({reason})") from None
    return extract_state_dict(obj, source=str(path))


def _is_torch_file(path: Path) -> bool:
    """True for what ``torch.save`` writes, even truncated: a zip archive, or (legacy format) a pickle
    that starts with its magic number (``PROTO n`` then ``LONG1`` of 10 bytes)."""
    with open(path, "rb") as file:
        head = file.read(4)
    return head == b"PK\x03\x04" or (len(head) == 4 and head[0] == 0x80 and head[2:] == b"\x8a\x0a")


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights inside a training dict (under 'model' / 'state_dict' / 'module') or a flat dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    for key in STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    if len(tensors) != len(obj):
        others = sorted(k for k in obj if k not in tensors)
        raise CheckpointError(f"{source}: non-tensor entries in the state dict: {others[:10]}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: int, cls_index_old: int | None, cls_index_new: int | None
) -> torch.Tensor:
    """Bicubic resampling of (1, M[+1], D) position embeddings to a new grid, as hustvl/Vim's main.py
    (``F.interpolate(mode="bicubic", align_corners=False)``, no antialiasing).

    The class-token row sits at ``cls_index_old`` (Vim: M // 2, not row 0) and moves to ``cls_index_new``.
    """
    rows = pos_embed[0]
    cls_row = None
    if cls_index_old is not None:
        cls_row = rows[cls_index_old : cls_index_old + 1]
        rows = torch.cat((rows[:cls_index_old], rows[cls_index_old + 1 :]))
    old_grid = int(round(rows.shape[0] ** 0.5))
    if old_grid * old_grid != rows.shape[0]:
        raise CheckpointError(f"pos_embed has {rows.shape[0]} patch rows, not a square grid")
    grid = rows.float().reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    rows = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(pos_embed.dtype)
    if cls_row is not None and cls_index_new is not None:
        rows = torch.cat((rows[:cls_index_new], cls_row, rows[cls_index_new:]))
    return rows[None]


def pi_resize_patch_embed(weight: torch.Tensor, size: int) -> torch.Tensor:
    """FlexiViT's PI-resize of a patch-embedding kernel (..., p, p) to (..., size, size).

    With B the bilinear resize (``align_corners=False``, no antialiasing, as big_vision's
    ``resample_patchemb``) of a p x p patch to size x size, the new kernel is w' = pinv(B^T) w: then
    <x, w> = <B x, w'> for every patch x when size >= p, and it is the least-squares solution otherwise
    (for p = 2 * size, the sum of each 2 x 2 block of w).
    """
    old = weight.shape[-1]
    if weight.shape[-2] != old:
        raise CheckpointError(f"PI-resize needs a square patch kernel, got {tuple(weight.shape)}")
    if size == old:
        return weight
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resize = F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False)
    resize = resize.reshape(old * old, size * size).T  # B: (size^2, old^2), column i = resize(e_i)
    flat = weight.reshape(-1, old * old).to(torch.float64)
    resized = flat @ torch.linalg.pinv(resize.T).T
    return resized.reshape(*weight.shape[:-2], size, size).to(weight.dtype)


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict``; raise CheckpointError naming every missing, extra or misshaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:
        parts = [
            f"{label} ({len(items)}): {items[:8]}{' ...' if len(items) > 8 else ''}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", misshaped),
            )
            if items
        ]
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)

"""Train a testbed model (Fashion-MNIST images or clips) on the CPU or a GPU, resumably and reproducibly.

The recipe (all hyper-parameters) is stored in every checkpoint and in the exported JSON, so the
shipped weights can be reproduced with ``mambatr train`` and the same arguments. The options of the
official Vim / DeiT recipe (random-resized crop, random erasing, mixup / cutmix, stochastic depth) and
``init_from`` default to off, so recipes stored before they existed mean the same run.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from mambatr.data.deit_augment import (
    mix_batch,
    random_erasing,
    random_resized_crop,
    soft_target_cross_entropy,
)
from mambatr.data.tasks import Testbed, testbed
from mambatr.evaluate import evaluate_tensors
from mambatr.models import create_model, model_entry
from mambatr.models.checkpoint import load_into, pi_resize_patch_embed, read_state_dict
from mambatr.outputs import atomic_path, check_writable_dir, write_text_atomic
from mambatr.runs import folder_lock


@dataclass
class Recipe:
    model: str = "vim_fmnist"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    augment: bool = True  # random 2-px shift (+ horizontal flip for images; clips are not flipped)
    seed: int = 0
    threads: int = 2
    train_split: str = "train"  # 55k images; "val" (5k) is held out for model selection
    device: str = "cpu"  # "cuda" trains on a GPU with the same recipe
    model_overrides: dict = field(default_factory=dict)  # architecture changes (create_model overrides)
    # the official Vim / DeiT regularisation (mambatr.data.deit_augment); 0 is off
    random_resized_crop: float = 0.0  # smallest crop scale (crop of scale..1, resized back), after shift/flip
    random_erasing: float = 0.0  # probability (timm "pixel" mode; official Vim 0.25)
    mixup: float = 0.0  # mixup alpha (official 0.8)
    cutmix: float = 0.0  # cutmix alpha (official 1.0)
    mixup_prob: float = 1.0  # probability of mixing a batch when mixup or cutmix is on
    mixup_switch_prob: float = 0.5  # probability of cutmix rather than mixup when both are on
    drop_path: float = 0.0  # stochastic depth rate of the last block (official 0.1); Vim / VideoMamba only
    init_from: str | None = None  # start from a model name's shipped weights or a checkpoint file

    def __post_init__(self) -> None:
        probabilities = ("random_erasing", "mixup_prob", "mixup_switch_prob")
        bad = [name for name in probabilities if not 0.0 <= getattr(self, name) <= 1.0]
        bad += [name for name in ("mixup", "cutmix") if getattr(self, name) < 0.0]
        bad += [] if 0.0 <= self.random_resized_crop <= 1.0 else ["random_resized_crop"]
        bad += [] if 0.0 <= self.drop_path < 1.0 else ["drop_path"]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)}" for name in bad)
            raise ValueError(
                f"invalid recipe: {values} (probabilities and crop scale in [0, 1], drop_path in [0, 1), "
                "alphas >= 0)"
            )

    @property
    def mixes(self) -> bool:
        return self.mixup > 0.0 or self.cutmix > 0.0


def lr_at(step: int, total: int, warmup: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``."""
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * progress))


def stored_recipe(recipe: dict) -> dict:
    """A checkpoint's recipe with the fields added since it was written at their defaults (off)."""
    return {**asdict(Recipe()), **recipe}


def init_from(model: nn.Module, source: str) -> None:
    """Load another model's weights into ``model``: a registered model's shipped weights or a file.

    Tensors of the same shape are copied; the absolute position embedding is resampled bicubically to
    the model's grid with the class-token row kept (the backbone's ``adapt_state_dict``, as for official
    checkpoints at another image size) and the patch embedding resized with FlexiViT's PI-resize
    (``pi_resize_patch_embed``): ``vim_fmnist`` (patch 4) starts ``vim_fmnist_p2`` (patch 2). Anything
    else that differs fails the strict load, naming the keys.
    """
    path = Path(source)
    if not path.is_file():
        try:
            weights = model_entry(source).weights
        except KeyError:
            raise ValueError(f"init_from {source!r}: neither a file nor a registered model") from None
        if weights is None:
            raise ValueError(f"init_from {source!r}: the model has no shipped weights")
        path = weights
    state_dict = model.adapt_state_dict(read_state_dict(path))
    expected = model.state_dict()
    for key, value in state_dict.items():
        target = expected.get(key)
        kernel = key.startswith("patch_embed.") and value.ndim >= 4 and target is not None
        if kernel and value.shape != target.shape and value.shape[:-2] == target.shape[:-2]:
            state_dict[key] = pi_resize_patch_embed(value, target.shape[-1])
    load_into(model, state_dict, source=str(source))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, embeddings, A_log and D (as the official Vim recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        skip = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "A_log", "A_b_log", ".D", ".D_b"))
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def augmented_batch(
    recipe: Recipe, data: Testbed, samples: torch.Tensor, labels: torch.Tensor, step: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(model input, labels, soft targets or None) of one training step; every random draw comes from
    one generator seeded with (seed, step), in a fixed order: shift / flip, crop, erasing, mixing."""
    generator = torch.Generator().manual_seed(recipe.seed * 7919 + step)
    if recipe.augment:
        samples = data.augment(samples, generator)
    inputs = data.to_input(samples)
    if recipe.random_resized_crop:
        inputs = random_resized_crop(inputs, generator, recipe.random_resized_crop)
    if recipe.random_erasing:
        inputs = random_erasing(inputs, generator, recipe.random_erasing)
    if not recipe.mixes:
        return inputs, labels, None
    inputs, soft = mix_batch(
        inputs, labels, generator, num_classes, recipe.mixup, recipe.cutmix, recipe.mixup_prob,
        recipe.mixup_switch_prob, recipe.label_smoothing,
    )  # fmt: skip
    return inputs, labels, soft


def train(
    recipe: Recipe,
    out_dir: Path,
    data_root: str | None = None,
    resume: bool = False,
    limit: int | None = None,
    save_every: int = 200,
    max_steps: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Run (or resume) training; writes ``last.pth`` checkpoints and the final safetensors + JSON.

    ``max_steps`` stops this invocation after that many optimizer steps (a checkpoint is saved), as a
    time-boxed job would; so does SIGINT (Ctrl-C) or SIGTERM, after the step in progress (the result
    then has ``interrupted``: the signal's name). ``resume=True`` continues exactly where the
    checkpoint left off, and refuses a recipe or ``limit`` other than the checkpoint's, naming the
    field; without it, an ``out_dir`` that holds a run is refused unless ``overwrite``. ``out_dir``
    is checked first and created only when training starts, so a run refused early leaves nothing;
    it is locked while training (two runs never write one folder) and every file is written whole
    or not at all.
    """
    check_writable_dir(out_dir, "out_dir")
    checkpoint_path = out_dir / "last.pth"
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
    existing = [p.name for p in (checkpoint_path, out_dir / f"{recipe.model}.safetensors") if p.exists()]
    if existing and not resume and not overwrite:
        raise ValueError(
            f"--out {out_dir} holds a training run ({', '.join(existing)}): --resume to continue it, "
            "or --overwrite to start again"
        )
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    device = torch.device(recipe.device)
    overrides = dict(recipe.model_overrides)
    if recipe.drop_path:
        overrides["drop_path_rate"] = recipe.drop_path
    try:
        model = create_model(recipe.model, **overrides)
    except TypeError as error:  # a field the architecture lacks, e.g. drop_path_rate on PlainMamba
        raise ValueError(f"{recipe.model}: {error}") from error
    if recipe.init_from is not None and not resume:
        init_from(model, recipe.init_from)
    model = model.to(device)
    data = testbed(model_entry(recipe.model).dataset)
    images, labels = data.load(recipe.train_split, data_root)
    val_images, val_labels = data.load("val", data_root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
        val_images, val_labels = val_images[:limit], val_labels[:limit]
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.999))
    step, history = 0, []
    if resume:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        check_same_run(state, recipe, limit)
        model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "recipe": asdict(recipe),
            "limit": limit,
        }
        with atomic_path(checkpoint_path) as temporary:
            torch.save(state, temporary)

    start = time.perf_counter()
    stop_at = total_steps if max_steps is None else min(total_steps, step + max_steps)
    model.train()
    with folder_lock(out_dir), StopOnSignal() as stop:
        while step < stop_at:
            epoch, offset = divmod(step, steps_per_epoch)
            # the epoch's order and augmentation depend only on (seed, epoch): resuming mid-epoch is exact
            generator = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)
            order = torch.randperm(len(images), generator=generator)
            last_batch = min(steps_per_epoch, offset + stop_at - step)
            bar = tqdm(range(offset, last_batch), desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False)
            seen = correct = loss_sum = 0
            for batch_index in bar:
                index = order[batch_index * recipe.batch_size : (batch_index + 1) * recipe.batch_size]
                inputs, target, soft_target = augmented_batch(
                    recipe, data, images[index], labels[index], step, model.config.num_classes
                )
                target = target.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, warmup, recipe)
                if (
                    recipe.drop_path
                ):  # drop path draws from the global RNG: a per-step seed keeps --resume exact
                    torch.manual_seed(recipe.seed * 7919 + step)
                logits = model(inputs.to(device))
                if soft_target is None:
                    loss = F.cross_entropy(logits, target, label_smoothing=recipe.label_smoothing)
                else:
                    loss = soft_target_cross_entropy(logits, soft_target.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                step += 1
                seen += len(target)
                correct += (logits.argmax(-1) == target).sum().item()
                loss_sum += loss.item() * len(target)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if step % save_every == 0:
                    save()
                if stop.signal is not None and step % steps_per_epoch:
                    break  # a signal mid-epoch: save below; at the epoch's last step, validate first
            if step % steps_per_epoch:  # stopped mid-epoch (max_steps or a signal): save and leave
                save()
                return {"finished": False, "step": step, "history": history, "interrupted": stop.signal}
            val = evaluate_tensors(  # evaluates in eval mode and puts the model back in train mode
                model, val_images, val_labels, batch_size=256, to_input=data.to_input, desc=f"val {epoch + 1}"
            )
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / max(seen, 1),
                    "train_top1": correct / max(seen, 1),
                    "val_top1": val["top1"],
                    "val_loss": val["loss"],
                    "elapsed_s": time.perf_counter() - start,
                }
            )
            tqdm.write(json.dumps(history[-1]))
            save()
            if stop.signal is not None:
                break
        if step < total_steps:  # stopped at an epoch boundary by max_steps or a signal
            return {"finished": False, "step": step, "history": history, "interrupted": stop.signal}
        model.eval()
        return {"finished": True, "step": step, **export(model.cpu(), recipe, history, out_dir)}


class StopOnSignal:
    """Inside the block, SIGINT (Ctrl-C) and SIGTERM only ask training to stop: ``signal`` becomes the
    signal's name and the loop saves a checkpoint after the step in progress. A second signal stops at
    once (KeyboardInterrupt), keeping only the last saved checkpoint. Outside the main thread, where
    Python cannot catch signals, nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt(f"{signal.Signals(number).name} again: stopped without saving")
        self.signal = signal.Signals(number).name
        tqdm.write(
            f"{self.signal}: saving a checkpoint after this step (again to stop at once)", file=sys.stderr
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def check_same_run(state: dict, recipe: Recipe, limit: int | None) -> None:
    """Refuse to resume a checkpoint with another recipe or ``limit``, naming the first field that
    differs (a longer or shorter run under the same name would not be the run it says it is)."""
    stored = {**stored_recipe(state["recipe"]), "limit": state.get("limit", limit)}
    for name, value in {**asdict(recipe), "limit": limit}.items():
        if stored.get(name) != value:
            raise ValueError(
                f"--resume: the recipe differs from the checkpoint's: {name}={stored.get(name)!r} there, "
                f"{value!r} here; resume with the same options, or --overwrite to start again"
            )


def export(model: torch.nn.Module, recipe: Recipe, history: list[dict], out_dir: Path) -> dict:
    """Write ``<model>.safetensors`` and ``<model>.json`` (architecture, recipe, training history)."""
    weights = out_dir / f"{recipe.model}.safetensors"
    with atomic_path(weights) as temporary:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temporary))
    config = asdict(model.config)
    info = {
        "model": recipe.model,
        "description": model_entry(recipe.model).description,
        "config": config,
        "recipe": asdict(recipe),
        "history": history,
        "torch": torch.__version__,
    }
    write_text_atomic(out_dir / f"{recipe.model}.json", json.dumps(info, indent=2) + "\n")
    return {"weights": str(weights), **info}

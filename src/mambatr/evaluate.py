"""Top-1 / loss / throughput of a classifier over batches of (inputs, labels)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mambatr.data import to_model_input
from mambatr.distributed import SINGLE, Context, ShardBatchSampler, all_reduce
from mambatr.finite import check_finite_logits
from mambatr.ops import prepare


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    total: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    context: Context = SINGLE,
) -> dict:
    """Accuracy and mean cross-entropy over all batches; images/s counts model time only.

    Under torchrun each rank passes its own shard of batches: correct / seen / loss are summed over
    ranks, and images/s is all images over the slowest rank's model time.
    """
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    prepare(parameter.device, getattr(model, "scan_impl", "auto"))  # no kernel build inside the timing
    correct = seen = 0
    loss_sum = model_seconds = 0.0
    disable = not (progress and context.is_main)
    # a context manager, so that an error (an unreadable file) clears the bar before it is reported
    with tqdm(total=total, desc=desc, unit="img", disable=disable, leave=False) as bar:
        for inputs, labels in batches:
            inputs, labels = inputs.to(parameter.device), labels.to(parameter.device)
            start = time.perf_counter()
            logits = model(inputs)
            model_seconds += time.perf_counter() - start
            check_finite_logits(logits, seen)  # NaN logits would still give a top-1 (argmax 0)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
            bar.update(len(labels))
    model.train(was_training)
    correct, seen, loss_sum = all_reduce([correct, seen, loss_sum], context)
    correct, seen = int(correct), int(seen)  # float64 sums of counts are exact
    (model_seconds,) = all_reduce([model_seconds], context, op="max")
    if seen == 0:
        raise ValueError("no images to evaluate")
    return {
        "top1": 100.0 * correct / seen,
        "loss": loss_sum / seen,
        "images": seen,
        "correct": correct,
        "images_per_s": seen / model_seconds,
    }


def tensor_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    context: Context = SINGLE,
    to_input: Callable[[torch.Tensor], torch.Tensor] = to_model_input,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of model inputs from in-memory uint8 samples (Fashion-MNIST images or clips); this rank's
    batches under torchrun."""
    for index in ShardBatchSampler(len(images), batch_size, context):
        window = slice(index[0], index[-1] + 1)
        yield to_input(images[window]), labels[window]


def evaluate_tensors(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    progress: bool = True,
    to_input: Callable[[torch.Tensor], torch.Tensor] = to_model_input,
    desc: str = "eval",
) -> dict:
    """``evaluate`` over in-memory samples; ``desc`` labels the progress bar (on stderr)."""
    batches = tensor_batches(images, labels, batch_size, to_input=to_input)
    return evaluate(model, batches, total=len(images), progress=progress, desc=desc)

"""Non-finite weights and logits refused, never turned into a top-1.

A NaN or inf weight (a diverged training run, a corrupt or hand-edited checkpoint) still gives
plausible numbers: ``argmax`` of NaN logits is class 0, so a model of NaNs scores 10 % on a balanced
10-class set, a sweep reports a drop of 0.0, and a calibration a NaN objective, all with exit status
0. So the commands check the weights once after loading (``check_finite_weights``) and the logits of
every batch they evaluate (``check_finite_logits``: one ``isfinite().all()`` per batch), and refuse
with a line naming the first bad tensor. Both raise ``NonFiniteError``, a ValueError: the CLI reports
it as bad input (exit status 2).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class NonFiniteError(ValueError):
    """A model's weights or logits hold NaN or inf; the message names the tensor."""


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse ``model`` (its weights from ``source``, e.g. the checkpoint's path) if any floating-point
    parameter or buffer holds NaN or inf, naming the first in the model's order."""
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise NonFiniteError(
                    f"{source}: weight {name} holds {bad:,} non-finite value(s) (NaN or inf) of "
                    f"{tensor.numel():,}; such a model gives no real result"
                )


def check_finite_logits(logits: torch.Tensor, first_image: int) -> None:
    """Refuse a batch whose logits hold NaN or inf (finite weights can still overflow); ``first_image``
    is the batch's first image in this process's evaluation order."""
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        rows = (~finite).any(dim=-1).nonzero().flatten()
        image = first_image + int(rows[0])
        raise NonFiniteError(
            f"the model's logits are not finite (NaN or inf) for {len(rows)} image(s) of the batch "
            f"from image {first_image}, first image {image}; no top-1 from such a model"
        )

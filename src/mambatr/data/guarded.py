"""Folder datasets through DataLoader workers with their errors intact, and unreadable images skippable.

An exception raised in a DataLoader worker reaches the main process re-raised with the worker's whole
traceback as its message. ``Guarded`` hands a ``DatasetError`` back as the item instead, ``collate``
sets such items apart, and ``checked_batches`` raises the error in the main process as it was (one
line, naming the file), or, when asked, leaves unreadable images out of their batch and lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import default_collate

from mambatr.data.errors import DatasetError, UnreadableImageError


class Guarded(torch.utils.data.Dataset):
    """The items of ``dataset``, with a ``DatasetError`` returned in place of an item instead of raised."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DatasetError as error:
            return error


def collate(items: list[Any]) -> tuple[Any, list[DatasetError]]:
    """DataLoader ``collate_fn`` for ``Guarded``: (the usable items collated, or None; the errors)."""
    errors = [item for item in items if isinstance(item, DatasetError)]
    usable = [item for item in items if not isinstance(item, DatasetError)]
    return (default_collate(usable) if usable else None), errors


def checked_batches(
    loader: Iterable[tuple[Any, list[DatasetError]]], skipped: list[str] | None = None
) -> Iterator[Any]:
    """The batches of a ``Guarded`` loader; an error is raised, except that when a ``skipped`` list is
    given an unreadable image is left out of its batch and its message appended to the list."""
    for batch, errors in loader:
        for error in errors:
            if skipped is None or not isinstance(error, UnreadableImageError):
                raise error
            skipped.append(str(error))
        if batch is not None:
            yield batch

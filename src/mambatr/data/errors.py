"""Dataset errors: subclasses of ValueError / FileNotFoundError so callers (the CLI) report them plainly."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file or folder is unusable: corrupt, truncated, wrong format or inconsistent."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file or folder does not exist."""


class UnreadableImageError(DatasetError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); the message names it."""

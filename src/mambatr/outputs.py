"""Result files: their location checked before any work starts, each file written whole or not at all.

A run that finds out only at the end that it cannot write its results has wasted the run, so commands
check ``--out`` first; and a crash or Ctrl-C while writing must not leave half a CSV, JSON, PNG or
checkpoint behind, so every file is written to a temporary name beside it and renamed over it
(``os.replace`` is atomic within a folder).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_writable_dir(path: str | Path, what: str) -> None:
    """Raise ValueError unless ``path`` is a folder, or could be created as one, that we can write in.

    Nothing is created: the nearest existing folder on the way is probed with a temporary file
    (permission bits do not tell, e.g. for root or on read-only file systems).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    _check_can_write_in(path, path, what)


def check_writable_file(path: str | Path, what: str) -> None:
    """Raise ValueError unless ``path`` names a file (not a folder) whose folder is, or could be, writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give a file name, e.g. {path / 'viz.png'}")
    _check_can_write_in(path.parent, path, what)


def _check_can_write_in(folder: Path, shown: Path, what: str) -> None:
    """``folder`` (which may not exist yet) could be created and written in; errors name ``shown``."""
    existing = next(parent for parent in (folder.absolute(), *folder.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {shown}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{what} {shown}: cannot write in {existing} ({error.strerror})") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same suffix, so writers that go by it still do) to write to;
    renamed onto ``path`` when the block succeeds, deleted when it fails."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)

"""Result files: their location checked before any work starts, each file written whole or not at all.

A run that finds out only at the end that it cannot write its results has wasted the run, so commands
check ``--out`` first; and a crash or Ctrl-C while writing must not leave half a CSV, JSON, PNG or
checkpoint behind, so every file is written to a temporary name beside it and renamed over it
(``os.replace`` is atomic within a folder).

Only a regular file is ever replaced: a device node (``--out /dev/null``), a FIFO, a socket or a folder
at the name is refused, so no run turns ``/dev/null`` into a JSON file. A symbolic link is followed,
as the shell's ``>`` follows it: the file it points to is replaced (written beside it, renamed over
it) and the link is kept; what it points to must itself be a regular file or not exist yet.
"""

from __future__ import annotations

import errno
import os
import stat
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
    """Raise ValueError unless ``path`` names a regular file, or none yet (not a folder, a device, a
    FIFO), whose folder is, or could be, writable; a symbolic link is checked as what it points to."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give a file name, e.g. {path / 'viz.png'}")
    target = replaceable_target(path, what)
    _check_can_write_in(target.parent, path, what)


def replaceable_target(path: str | Path, what: str = "output file") -> Path:
    """The file that writing ``path`` replaces: ``path`` itself, or for a symbolic link (followed, also
    through chains of links) the file it points to. ValueError when that is not a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (or a file on the way: its
        return target  # folder cannot be written in, which check_writable_file says)
    except OSError as error:  # a symbolic-link loop, no permission to look, ...
        raise ValueError(f"{what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        shown = path if target == path else f"{path} (a link to {target})"
        raise ValueError(f"{what} {shown} is {_kind(mode)}, not a regular file: refusing to replace it")
    return target


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


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


class OutputWriteError(OSError):
    """The system refused to write a result file (disk full, quota, read-only, I/O error); the message
    names the file. An ``OSError``, so callers that handle those keep doing so."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same suffix, so writers that go by it still do) to write to;
    renamed onto ``path`` when the block succeeds, deleted when it fails; its folder is created if
    need be. ``path`` must be a regular file or not exist (a symbolic link: what it points to, which
    is replaced; the link stays): checked before the block runs. An OSError while writing becomes an
    ``OutputWriteError`` naming ``path``."""
    path = Path(path)
    target = replaceable_target(path)
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # as check_writable_file found it could be
        yield temporary
        os.replace(temporary, target)
    except OutputWriteError:
        raise
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputWriteError(error.errno, f"cannot write {path}: {reason}") from error
    except RuntimeError as error:  # torch.save's C++ writer reports a full disk without its errno
        if not _disk_full(target.parent):
            raise
        raise OutputWriteError(errno.ENOSPC, f"cannot write {path}: {os.strerror(errno.ENOSPC)}") from error
    finally:
        temporary.unlink(missing_ok=True)


def _disk_full(folder: Path) -> bool:
    """No block left for us on ``folder``'s file system (checked while the failed write still holds its
    blocks)."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)

"""How a ``mambatr`` command ends when it cannot finish: always one line on stderr, never a traceback
for something that is not a bug, and an exit status that says which kind of end it was.

=========================================  ======  ==================================================
what happened                              status  why
=========================================  ======  ==================================================
bad input (``ValueError``, missing file)   2       the command line's convention (argparse's too)
Ctrl-C (``KeyboardInterrupt``)             130     128 + SIGINT, what a shell reports for Ctrl-C
stdout closed early (``... | head -1``)    141     128 + SIGPIPE, what the shell reports for a killed
                                                   writer; nothing more is written to the pipe
the system refused to write (``OSError``:  1       not the user's input and not a bug in mambatr:
disk full, quota, read-only, I/O error)            the disk, the permissions, the device
=========================================  ======  ==================================================

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

# Bad input from the user: the API's errors for it are ValueErrors (CheckpointError, DatasetError, an
# unknown model, ...) or a FileNotFoundError. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError)
BAD_INPUT, INTERRUPTED, BROKEN_PIPE, SYSTEM_REFUSED = 2, 130, 141, 1


@contextmanager
def one_line_errors(args: argparse.Namespace) -> Iterator[None]:
    """End as the table above says: one line ``mambatr COMMAND[ (rank R)]: ...``, its exit status.
    ``args.command`` and ``args.context`` name the command and the process, read when it ends (the
    rank is known only once the process group is joined)."""
    try:
        yield
    except (*USER_ERRORS, KeyboardInterrupt, OSError) as error:
        _close_progress_bars()
        status, message = _ending(error)
        context = args.context
        rank = f" (rank {context.rank})" if context.distributed else ""
        print(f"mambatr {args.command}{rank}: {message}", file=sys.stderr)
        sys.exit(status)


def _ending(error: BaseException) -> tuple[int, str]:
    """(exit status, the line after the command's name) for an error of the table above."""
    if isinstance(error, USER_ERRORS):
        return BAD_INPUT, f"error: {error}"
    if isinstance(error, KeyboardInterrupt):  # its message, if any, says what was kept (mambatr.runs)
        return INTERRUPTED, str(error) or "interrupted"
    if isinstance(error, BrokenPipeError):
        _silence_stdout()
        return BROKEN_PIPE, "output closed early (broken pipe); the rest was not written"
    return SYSTEM_REFUSED, f"error: {_os_message(error)}"


def _close_progress_bars() -> None:
    """Close the tqdm bars an error left open (a loop that was not a ``with`` block), so the line is
    not glued to the end of a bar on stderr."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _os_message(error: OSError) -> str:
    """``strerror: filename`` (the file the system refused), or the error's own text."""
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit cannot fail on the closed pipe
    again (it would print 'Exception ignored ... BrokenPipeError')."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured or replaced stdout: nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)

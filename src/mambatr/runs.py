"""Resumable runs: an output folder that keeps each finished cell of a long run, so an interrupted run
(Ctrl-C, SIGTERM, SIGKILL, a crash) continues where it stopped when the same command runs again.

A run folder holds

- ``run.json``: the manifest, the run's command and the arguments its results depend on (plus its
  provenance). A second run into the folder must pass the same arguments: otherwise it is refused with
  one line naming the first argument that differs (``--overwrite`` starts the folder again);
- ``cells/<key>.json``: one file per finished cell (a sweep's row, a probe's evaluation, a calibration's
  search step), written atomically, with a sha256 of its result: a damaged or hand-edited cell is
  reported and recomputed, never trusted;
- ``run.lock``: held (``flock``) while a run writes the folder, so two runs cannot write one folder at
  once; the kernel releases it when the process ends, however it ends, so no stale lock survives.

A non-empty folder without a manifest (another program's files, or a run of another command) is
refused unless ``overwrite``. Usage::

    with RunFolder(out, "sweep", {"--model": "vim_fmnist", "--methods": ["mtr"]}) as run:
        for key in cells:
            result = run.done(key)
            if result is None:
                result = compute(key)
                run.save(key, result)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from mambatr.outputs import check_writable_dir, write_text_atomic

RUN_FORMAT = "mambatr-run/1"
MANIFEST, CELLS, LOCK = "run.json", "cells", "run.lock"
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (another run's, in use, or of other arguments)."""


@contextlib.contextmanager
def folder_lock(path: str | Path, what: str = "--out") -> Iterator[None]:
    """Hold ``path/run.lock`` (created with the folder if needed) inside the block, or raise
    RunFolderError at once when another process holds it: two runs never write one folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = _lock(path, what)
    try:
        yield
    finally:
        handle.close()  # releases the lock


def _lock(path: Path, what: str) -> IO[str]:
    handle = (path / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(
            f"{what} {path} is in use by another run ({holder}); wait for it to end"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _canonical(value: object) -> object:
    """``value`` as it reads back from JSON (tuples as lists, mapping keys as strings)."""
    return json.loads(json.dumps(value))


def _digest(result: object) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


class RunFolder:
    """The folder of one resumable run: its manifest, its finished cells and its lock.

    ``args`` are the arguments the results depend on, keyed as the user knows them (the CLI passes
    flag names, e.g. ``{"--model": ..., "--limit": ...}``): a folder whose manifest has other values is
    refused naming the first key that differs, unless ``overwrite``, which removes the folder's
    manifest and cells (only those) and starts again. ``provenance`` is recorded in the manifest, not
    compared. ``writer=False`` (e.g. the other ranks of a torchrun job) reads the cells but takes no
    lock and writes nothing. Use it as a context manager, or call :meth:`close`, to release the lock.
    """

    def __init__(
        self,
        path: str | Path,
        command: str,
        args: Mapping[str, object],
        *,
        overwrite: bool = False,
        provenance: Mapping[str, object] | None = None,
        writer: bool = True,
        what: str = "--out",
    ) -> None:
        self.path, self.command, self.what, self.writer = Path(path), command, what, writer
        self.args = _canonical(dict(args))
        self.cells = self.path / CELLS
        check_writable_dir(self.path, what)
        self._created = not self.path.exists()
        self._overwrite, self._provenance, self._begun = overwrite, provenance, False
        self._lock: IO[str] | None = None
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.path, what)
        try:
            self._check(overwrite)
        except BaseException:
            self.close()
            raise

    def _begin(self) -> None:
        """Write the manifest (after removing the old cells with ``overwrite``) when the first cell is
        kept: a run refused or failing before that leaves the folder as it found it."""
        if self._overwrite:
            shutil.rmtree(self.cells, ignore_errors=True)
        self.cells.mkdir(exist_ok=True)
        manifest = {"format": RUN_FORMAT, "command": self.command, "args": self.args}
        manifest["provenance"] = _canonical(dict(self._provenance or {}))
        write_text_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        self._begun = True

    def _check(self, overwrite: bool) -> None:
        """Refuse (unless ``overwrite``) a folder of another run, or of this command with other args."""
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            entries = self.path.iterdir() if self.path.is_dir() else []
            foreign = sorted(p.name for p in entries if p.name not in (LOCK, CELLS) and not _temporary(p))
            if foreign and self.writer and not overwrite:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise RunFolderError(
                    f"{self.what} {self.path} is not empty ({shown}) and holds no {self.command} run: "
                    "choose another folder, or --overwrite to write into it"
                )
            return
        try:
            manifest = json.loads(manifest_path.read_text())
            stored_command, stored = manifest["command"], manifest["args"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            if overwrite:
                return
            raise RunFolderError(
                f"{self.what} {self.path}: {MANIFEST} is damaged ({error}); "
                "--overwrite to start the run again"
            ) from None
        if overwrite:
            return
        if stored_command != self.command:
            raise RunFolderError(
                f"{self.what} {self.path} holds a {stored_command} run, not a {self.command} run: "
                "choose another folder, or --overwrite to replace it"
            )
        for key in dict.fromkeys([*self.args, *stored]):
            ours, theirs = self.args.get(key), stored.get(key)
            if ours != theirs:
                raise RunFolderError(
                    f"{self.what} {self.path} holds a {self.command} run of other arguments: "
                    f"{_difference(key, theirs, ours)}; rerun with the same arguments to continue it, or "
                    "--overwrite to start again"
                )

    def _cell_path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise ValueError(f"cell key {key!r}: letters, digits, '.', '_' and '-' only")
        return self.cells / f"{key}.json"

    def done(self, key: str) -> object | None:
        """The result saved for ``key`` by this run or an earlier one with the same arguments, or None
        (not done yet, or its file is damaged: reported on stderr and recomputed)."""
        path = self._cell_path(key)
        if self._overwrite or not path.is_file():
            return None
        try:
            cell = json.loads(path.read_text())
            valid = cell["key"] == key and cell["sha256"] == _digest(cell["result"])
        except (OSError, ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            print(f"mambatr: {path} is damaged or was edited: computing {key} again", file=sys.stderr)
            return None
        return cell["result"]

    def save(self, key: str, result: object) -> object:
        """Keep ``result`` (anything JSON can hold) as ``key``'s cell, atomically; returns it as it reads
        back, so a computed result and a resumed one are the same value."""
        path = self._cell_path(key)
        result = _canonical(result)
        if self.writer:
            if not self._begun:
                self._begin()
            cell = {"key": key, "sha256": _digest(result), "result": result}
            write_text_atomic(path, json.dumps(cell, indent=2) + "\n")
        return result

    def saved(self) -> int:
        """How many cells the folder holds (finished by this run or the ones it continues)."""
        if not self.cells.is_dir():
            return 0
        return sum(not _temporary(path) for path in self.cells.glob("*.json"))

    def close(self) -> None:
        """Release the lock; a folder this run created and kept nothing in is removed again."""
        if self._lock is None:
            return
        if self._created and not self._begun:
            (self.path / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()
        self._lock.close()
        self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _temporary(path: Path) -> bool:
    """A half-written file an atomic write left when its process was killed (``.NAME.PID.tmp.SUFFIX``)."""
    return path.name.startswith(".") and ".tmp" in path.name


def _difference(key: str, theirs: object, ours: object) -> str:
    """``--limit 8 there, 12 here``; for mappings (e.g. files' hashes) the entries that differ."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        entries = sorted(k for k in {**theirs, **ours} if theirs.get(k) != ours.get(k))
        return f"{key} differ in {', '.join(entries)}"
    return f"{key} {_shown(theirs)} there, {_shown(ours)} here"


def _shown(value: object) -> str:
    if value is None:
        return "not given"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)

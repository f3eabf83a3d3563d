"""What a result file records of the run that made it: model, weights (path and sha256), data, split,
limit and the command line, so a number can always be traced back to the inputs that produced it.

A number in a file without its weights' hash cannot be told apart from one of another checkpoint saved
at the same path; the command line says which options ran (docs/outputs.md lists every file's keys).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shlex
from functools import cache
from pathlib import Path

from mambatr.models import hub, model_entry

CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (read once per path, size and modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def command_line(argv: list[str]) -> str:
    """``mambatr`` and its arguments, quoted so the line can be pasted back into a shell."""
    return shlex.join(["mambatr", *argv])


def weights_record(model: str, checkpoint: str | None) -> tuple[str | None, str | None]:
    """(where the weights come from, their sha256): ``checkpoint``, else the model's shipped weights,
    else its official ones on the Hugging Face Hub (``hub:REPO/FILE (revision R)``, the sha256 they
    are verified against when loaded); (None, None) for a model without any."""
    path = Path(checkpoint) if checkpoint is not None else model_entry(model).weights
    if path is not None:
        return (str(path.resolve()), sha256_of(path)) if path.is_file() else (str(path), None)
    official = hub.official_weights().get(model)
    return (f"hub:{official.where}", official.sha256) if official is not None else (None, None)


def provenance(
    model: str,
    checkpoint: str | None,
    *,
    data: str | None,
    split: str | None,
    limit: int | None,
    command: str,
) -> dict:
    """The keys every result file starts with.

    ``checkpoint`` is as given (None: the shipped weights); ``weights`` is the file actually loaded and
    ``weights_sha256`` its hash; ``dataset`` is the model's dataset and ``data`` the ``--data`` folder
    as an absolute path (None: the dataset's default location).
    """
    weights, sha256 = weights_record(model, checkpoint)
    return {
        "model": model,
        "checkpoint": checkpoint,
        "weights": weights,
        "weights_sha256": sha256,
        "dataset": model_entry(model).dataset,
        "data": str(Path(data).resolve()) if data is not None else None,
        "split": split,
        "limit": limit,
        "command": command,
        "mambatr": importlib.metadata.version("mambatr"),
    }

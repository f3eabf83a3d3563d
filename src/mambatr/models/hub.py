"""Official weights from the Hugging Face Hub for ``create_model(name, pretrained=True)``.

Each official model names its Hub repository, file and pinned revision in ``hub_weights.json``; the
file comes through ``huggingface_hub.hf_hub_download``, so its cache, ``HF_HOME``, ``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` work as everywhere else, and is then checked against a sha256 before it is
used: the one recorded in ``hub_weights.json`` where a public page stated it (a Hub LFS pointer),
else the one the Hub itself served for the file (its LFS etag, under which huggingface_hub stores
the blob). A file whose content does not match is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HUB_WEIGHTS = Path(__file__).with_name("hub_weights.json")
INSTALL_HINT = "pip install mambatr[hub]"
SHA256 = re.compile(r"[0-9a-f]{64}")


class HubWeightsError(ValueError):
    """Official weights that cannot be fetched or verified: one line naming the model, file and fix."""


@dataclass(frozen=True)
class HubWeights:
    """Where a model's official weights live on the Hub, and what their content must hash to."""

    repo_id: str
    filename: str
    revision: str
    sha256: str | None  # None: no public source stated it; checked against the Hub's etag instead
    top1: float  # as published by the authors (ImageNet, or Kinetics-400 for the video models)

    @property
    def where(self) -> str:
        return f"{self.repo_id}/{self.filename} (revision {self.revision})"


@cache
def _table() -> dict:
    return json.loads(HUB_WEIGHTS.read_text())


def official_weights() -> dict[str, HubWeights]:
    """Every model with official weights on the Hub: name -> where they are."""
    return {
        name: HubWeights(**{key: entry[key] for key in HubWeights.__dataclass_fields__})
        for name, entry in _table()["models"].items()
    }


def weights_elsewhere(name: str) -> str | None:
    """Where an official model's weights are when they are not on the Hub (PlainMamba), else None."""
    return _table()["elsewhere"].get(name)


def fetch(name: str, weights: HubWeights) -> Path:
    """The verified local file of ``weights``: from huggingface_hub's cache, downloaded if allowed."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise HubWeightsError(
            f"{name}: pretrained=True downloads {weights.where} from the Hugging Face Hub and needs "
            f"huggingface_hub: {INSTALL_HINT} (or pass checkpoint=PATH)"
        ) from None
    try:
        path = Path(hf_hub_download(weights.repo_id, weights.filename, revision=weights.revision))
    except LocalEntryNotFoundError:
        raise HubWeightsError(
            f"{name}: {weights.where} is not in the Hugging Face cache and cannot be downloaded now "
            "(HF_HUB_OFFLINE=1 or no connection); download it once online, or pass checkpoint=PATH"
        ) from None
    except (HfHubHTTPError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubWeightsError(f"{name}: cannot download {weights.where}: {reason}") from None
    verify(name, weights, path)
    return path


def verify(name: str, weights: HubWeights, path: Path) -> None:
    """Raise HubWeightsError unless ``path`` hashes to the recorded sha256, or to the Hub's etag."""
    expected, source = weights.sha256, "recorded in mambatr's hub_weights.json"
    if expected is None:
        expected, source = _served_sha256(path), "served by the Hub (its LFS etag)"
    if expected is None:
        raise HubWeightsError(
            f"{name}: cannot verify {path}: no sha256 is recorded for {weights.where} and the cache "
            "holds no content-addressed blob for it (a cache without symlinks); pass checkpoint=PATH"
        )
    actual = sha256_of(path)
    if actual != expected:
        raise HubWeightsError(
            f"{name}: {path} has sha256 {actual}, not {expected} ({source}); the file is damaged or "
            f"not the official one, and was not loaded: delete it and download {weights.where} again"
        )


def _served_sha256(path: Path) -> str | None:
    """The etag huggingface_hub stored the file under (snapshots/REV/FILE -> blobs/ETAG): for an LFS
    file, the sha256 of its content as the Hub reported it at download."""
    if not path.is_symlink():
        return None
    etag = path.resolve().name
    return etag if SHA256.fullmatch(etag) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""pretrained=True from the Hugging Face Hub, tested offline: each test builds a cache in huggingface_hub's
own layout (models--ORG--NAME/{blobs,snapshots,refs}) under a temporary HF_HOME, with offline mode on,
so nothing here reaches the network."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mambatr
from mambatr.models import hub, list_models
from mambatr.models.checkpoint import read_state_dict
from mambatr.models.hub import HubWeights, HubWeightsError, sha256_of

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants  # noqa: E402  (after the skip: an optional dependency)

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # for revision "main": refs/main points here


def official_checkpoint(name: str, path: Path) -> Path:
    """A random checkpoint of ``name`` in the layout of the released .pth files (training dict, args)."""
    torch.manual_seed(0)
    model = mambatr.create_model(name)
    torch.save({"model": model.state_dict(), "epoch": 299, "args": argparse.Namespace(model=name)}, path)
    return path


def put_in_cache(cache: Path, weights: HubWeights, source: Path, etag: str | None = None) -> Path:
    """Store ``source`` as huggingface_hub does after a download: blobs/ETAG (the LFS sha256),
    snapshots/COMMIT/FILE a relative symlink to it, refs/REVISION naming the commit."""
    repo = cache / f"models--{weights.repo_id.replace('/', '--')}"
    commit = weights.revision if re.fullmatch(r"[0-9a-f]{40}", weights.revision) else FAKE_COMMIT
    blob = repo / "blobs" / (etag or sha256_of(source))
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    if commit != weights.revision:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / weights.revision).write_text(commit)
    link = repo / "snapshots" / commit / weights.filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return blob


@pytest.fixture(scope="module")
def vim_tiny_file(tmp_path_factory) -> Path:
    return official_checkpoint("vim_tiny", tmp_path_factory.mktemp("hub") / "vim_t_midclstok_76p1acc.pth")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache under a temporary HF_HOME, offline. huggingface_hub reads its environment
    when imported, so its constants are set too (the subprocess test sets only the environment)."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def with_entry(monkeypatch, name: str, **changes) -> HubWeights:
    """The official entry of ``name`` with ``changes`` (e.g. the sha256 of the test's random file)."""
    table = hub.official_weights()
    table[name] = replace(table[name], **changes)
    monkeypatch.setattr(hub, "official_weights", lambda: table)
    return table[name]


def test_every_official_model_is_on_the_hub_or_says_where():
    table = hub.official_weights()
    official = [
        name
        for name in list_models()
        if name.startswith(("vim_", "videomamba_", "plainmamba_"))
        and not name.endswith(("_custom", "_fmnist", "_fmnist_deit", "_fmnist_p2", "_fmnist_clips"))
    ]
    for name in official:
        if name.startswith("plainmamba_"):
            assert name not in table and "ChenhongyiYang/PlainMamba" in hub.weights_elsewhere(name)
        else:
            assert name in table, name
    assert set(table) <= set(official)
    for name, weights in table.items():
        assert weights.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", weights.sha256), name
        assert weights.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", weights.revision), name
        assert weights.filename.endswith(".pth") and 70 < weights.top1 < 90, name
    raw = json.loads(hub.HUB_WEIGHTS.read_text())["models"]
    assert all({"filename", "sha256", "revision", "top1"} <= set(raw[n]["evidence"]) for n in raw)


def test_pretrained_loads_the_cached_file_with_the_recorded_sha256(offline_cache, vim_tiny_file, monkeypatch):
    weights = with_entry(monkeypatch, "vim_tiny", sha256=sha256_of(vim_tiny_file))
    put_in_cache(offline_cache, weights, vim_tiny_file)
    model = mambatr.create_model("vim_tiny", pretrained=True)
    expected = read_state_dict(vim_tiny_file)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_without_a_recorded_sha256_the_hubs_etag_is_checked(offline_cache, vim_tiny_file, monkeypatch):
    weights = with_entry(monkeypatch, "vim_tiny", sha256=None, revision="main")
    blob = put_in_cache(offline_cache, weights, vim_tiny_file)
    mambatr.create_model("vim_tiny", pretrained=True)  # blob named by its own sha256: accepted
    with blob.open("r+b") as handle:  # damaged after download: content no longer matches the etag
        handle.seek(-100, os.SEEK_END)
        handle.write(b"\0" * 100)
    with pytest.raises(HubWeightsError, match="served by the Hub .* was not loaded"):
        mambatr.create_model("vim_tiny", pretrained=True)


def test_a_file_that_does_not_match_the_recorded_sha256_is_refused(offline_cache, vim_tiny_file):
    weights = hub.official_weights()["vim_tiny"]  # the real file's sha256, not our random file's
    put_in_cache(offline_cache, weights, vim_tiny_file)
    with pytest.raises(HubWeightsError) as error:
        mambatr.create_model("vim_tiny", pretrained=True)
    message = str(error.value)
    assert f"not {weights.sha256}" in message and "was not loaded" in message and "\n" not in message


def test_a_missing_file_offline_is_one_clear_line(offline_cache):
    with torch.device("meta"), pytest.raises(HubWeightsError) as error:
        mambatr.create_model("vim_small", pretrained=True)
    message = str(error.value)
    assert "hustvl/Vim-small-midclstok/vim_s_midclstok_80p5acc.pth" in message
    assert "not in the Hugging Face cache" in message and "checkpoint=PATH" in message and "\n" not in message


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with torch.device("meta"), pytest.raises(HubWeightsError, match=r"pip install mambatr\[hub\]"):
        mambatr.create_model("vim_base", pretrained=True)


def test_plainmamba_says_where_its_weights_are():
    with torch.device("meta"), pytest.raises(ValueError, match="ChenhongyiYang/PlainMamba .*checkpoint=PATH"):
        mambatr.create_model("plainmamba_l1", pretrained=True)


def test_environment_variables_alone_select_the_cache(tmp_path):
    """A fresh interpreter with only HF_HOME and HF_HUB_OFFLINE set: the path users take."""
    hf_home = tmp_path / "hf_home"
    weights = hub.official_weights()["videomamba_tiny"]  # no recorded sha256: the etag is checked
    put_in_cache(hf_home / "hub", weights, official_checkpoint("videomamba_tiny", tmp_path / "v.pth"))
    script = (
        "import mambatr\n"
        "mambatr.create_model('videomamba_tiny', pretrained=True)\n"
        "print('loaded')\n"
        "try:\n"
        "    mambatr.create_model('vim_base', pretrained=True)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "loaded"
    assert "vim_base: hustvl/Vim-base-midclstok/vim_b_midclstok_81p9acc.pth" in lines[1]
    assert "not in the Hugging Face cache" in lines[1]

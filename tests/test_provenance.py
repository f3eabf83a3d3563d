"""Every result file says where its numbers come from: model, weights and their sha256, data, split,
limit and the command; an export is refused under another model's name, even of the same architecture."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
from test_fault_injection import probe_argv, sweep_argv, tiny_inputs

from mambatr.cli import main
from mambatr.models import CheckpointError, create_model, model_entry


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_inputs(tmp_path_factory.mktemp("inputs"))


def expected(inputs, command: list[str]) -> dict:
    root, weights = inputs
    return {
        "model": "vim_custom",
        "checkpoint": str(weights),
        "weights": str(weights.resolve()),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "dataset": "fashion_mnist",
        "data": str(root.resolve()),
        "command": "mambatr " + " ".join(command),
    }


def test_eval_sweep_and_probe_files_record_their_inputs(inputs, tmp_path, capsys):
    root, weights = inputs
    argv = ["eval", "--model", "vim_custom", "--checkpoint", str(weights), "--data", str(root), "--json"]
    argv += ["--limit", "8", "--method", "mtr", "--flops-reduction", "0.3", "--threads", "1"]
    main(argv)
    result = json.loads(capsys.readouterr().out)
    assert expected(inputs, argv).items() <= result.items()
    assert (result["split"], result["limit"], result["method"]) == ("test", 8, "mtr")
    assert isinstance(result["options"], dict) and result["schedule"] is None

    argv = sweep_argv(inputs, tmp_path / "sweep", "--limit", "8")
    main(argv)
    document = json.loads(capsys.readouterr().out)
    assert expected(inputs, argv).items() <= document.items() and document["limit"] == 8
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == document
    with (tmp_path / "sweep" / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["weights_sha256"] for row in rows} == {document["weights_sha256"]} and len(rows) == 5
    assert rows[0]["command"] == document["command"] and rows[0]["limit"] == "8"
    assert all("options" in row for row in document["rows"])

    argv = probe_argv(inputs, tmp_path / "probe")
    main(argv)
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert expected(inputs, argv).items() <= probe.items() and probe["seeds"] == 2
    capsys.readouterr()


def test_an_export_of_another_model_name_is_refused_even_of_the_same_architecture(tmp_path):
    """A sidecar naming vim_fmnist_deit with exactly vim_fmnist's architecture: loading it as vim_fmnist
    would report another model's numbers under vim_fmnist's name."""
    shipped = model_entry("vim_fmnist").weights
    export = tmp_path / "other.safetensors"
    export.write_bytes(shipped.read_bytes())
    info = json.loads(shipped.with_suffix(".json").read_text())
    export.with_suffix(".json").write_text(json.dumps({**info, "model": "vim_fmnist_deit"}))
    with pytest.raises(CheckpointError, match="holds a vim_fmnist_deit .*, not a vim_fmnist: pass --model"):
        create_model("vim_fmnist", checkpoint=export)
    assert create_model("vim_fmnist", checkpoint=shipped) is not None

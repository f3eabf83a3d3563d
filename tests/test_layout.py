"""The src layout: `import mambatr` works from the folder that holds the clone (named mambatr), where a
flat layout would import the clone folder as an empty namespace package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_from_the_folder_holding_the_clone(tmp_path):
    (tmp_path / "mambatr").symlink_to(ROOT, target_is_directory=True)
    code = "import mambatr; print(mambatr.create_model.__module__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mambatr.models"

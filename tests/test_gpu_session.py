"""benchmarks/gpu_session.sh --smoke: the prepared GPU session end to end on the CPU, in Triton's
interpreter at toy sizes (about 25 s on 2 cores), so the script is known to run before a GPU is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from benchmark_scripts import BENCHMARKS, load_benchmark  # noqa: E402

SECTIONS = ("check", "kernels", "ViM-S dense", "batch 1", "reduced", "vim_fmnist_p2 training")


def test_the_session_runs_end_to_end_in_the_interpreter(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script sets it for --smoke itself
    child = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_session.sh"), "--smoke"], env=env, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_session.json").read_text())
    assert result["smoke"] and result["triton"] and result["backends"]["selective_scan"] == "cpu"
    titles = list(result["sections"])
    assert [next(t for t in titles if t.startswith(s)) for s in SECTIONS] == titles
    assert all(section["rows"] for section in result["sections"].values())
    checks = result["sections"][titles[0]]["rows"]
    assert all(row["ok"] for row in checks), checks
    scans = {
        (row["dtype"], row["case"].split(" gap=")[1]) for row in checks if row["case"].startswith("scan")
    }
    assert len(scans) == 12  # float32 / bfloat16 x gap or not x both directions, and gap x 4 chunks
    dense = result["sections"][titles[2]]["rows"]
    assert {(r["precision"], r["impl"]) for r in dense} == {
        (p, i) for p in ("float32", "bfloat16 autocast") for i in ("triton", "torch")
    }
    assert "done in" in (tmp_path / "gpu_session.log").read_text()


def test_no_section_starts_past_the_budget(tmp_path):
    session = load_benchmark("triton_gpu")
    out = tmp_path / "session.json"
    status = session.main(["--device", "cpu", "--smoke", "--budget", "0", "--json", str(out)])
    sections = json.loads(out.read_text())["sections"]
    assert status == 0 and len(sections) == len(session.SECTIONS)
    assert all(s == {"skipped": "past the 0 s budget"} for s in sections.values())

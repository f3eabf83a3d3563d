"""Data-parallel eval / sweep under torchrun (gloo, 2 CPU processes) equal the single-process run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import write_fashion_mnist

from mambatr.distributed import Context, ShardBatchSampler

LAUNCH_TIMEOUT_S = 240
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("size, batch_size, world", [(301, 32, 2), (301, 32, 3), (10, 4, 5), (64, 64, 2)])
def test_shards_partition_the_single_process_batches(size, batch_size, world):
    single = list(ShardBatchSampler(size, batch_size))
    shards = [list(ShardBatchSampler(size, batch_size, Context(rank, world))) for rank in range(world)]
    assert sorted(batch for shard in shards for batch in shard) == single  # same batches, none padded
    assert sum(ShardBatchSampler(size, batch_size, Context(r, world)).images() for r in range(world)) == size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """Run a command in its own process group; kill the whole group if it outlives the bound."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{command} did not finish in {LAUNCH_TIMEOUT_S} s (a rank hung)")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _torchrun(args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), train=20, test=301)  # 301: odd on purpose


def test_eval_and_sweep_under_torchrun_equal_single_process(data, tmp_path):
    common = ["--model", "vim_fmnist", "--data", str(data), "--batch-size", "32", "--json"]
    evaluation = ["eval", *common, "--method", "mtr", "--flops-reduction", "0.3"]
    single = _run([sys.executable, "-m", "mambatr", *evaluation])
    assert single.returncode == 0, single.stderr
    launched = _run(_torchrun(["-m", "mambatr", *evaluation]))
    assert launched.returncode == 0, launched.stderr
    one, two = json.loads(single.stdout), json.loads(launched.stdout)  # only rank 0 printed
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["images"] == one["images"] == 301
    assert (two["correct"], two["top1"], two["gflops"]) == (one["correct"], one["top1"], one["gflops"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-9)

    sweep = ["sweep", *common, "--methods", "hsa,tome", "--reductions", "0.3"]
    single = _run([sys.executable, "-m", "mambatr", *sweep, "--out", str(tmp_path / "one")])
    launched = _run(_torchrun(["-m", "mambatr", *sweep, "--out", str(tmp_path / "two")]))
    assert single.returncode == 0 and launched.returncode == 0, launched.stderr
    keys = ("method", "target", "flops_reduction", "gflops", "top1", "removals")
    rows_one, rows_two = json.loads(single.stdout)["rows"], json.loads(launched.stdout)["rows"]
    assert [{k: r[k] for k in keys} for r in rows_two] == [{k: r[k] for k in keys} for r in rows_one]
    kept = ["cells", "run.json", "run.lock", "sweep.csv", "sweep.json", "sweep.png"]  # mambatr.runs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == kept


def test_skipped_images_of_every_rank_are_reported(image_folder_with_bad_files):
    """Batches of 2: the text file (image 2) is rank 1's, the truncated JPEG (image 4) rank 0's."""
    argv, val = image_folder_with_bad_files
    launched = _run(_torchrun(["-m", "mambatr", *argv, "--batch-size", "2", "--skip-bad-images", "--json"]))
    assert launched.returncode == 0, launched.stderr
    result = json.loads(launched.stdout)
    assert result["images"] == 4 and result["skipped"] == 2
    skipped = sorted(line.split(": ")[0] for line in result["skipped_images"])
    assert skipped == [str(val / "a" / "2.jpg"), str(val / "b" / "1.jpg")]


def test_a_failing_rank_fails_the_run_instead_of_hanging(data):
    launched = _run(_torchrun([str(HERE / "distributed_worker.py"), "--fail-rank", "1", "--data", str(data)]))
    assert launched.returncode != 0
    assert "rank 1 failed on purpose" in launched.stderr


def test_other_commands_refuse_torchrun(monkeypatch, capsys):
    from mambatr.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        main(["flops", "--model", "vim_fmnist"])
    assert "only eval and sweep run under torchrun" in capsys.readouterr().err

"""Bad input, faults and interruptions at the command line and in the API (issue #28): one line, the right
exit status, nothing replaced that is not a regular file, no result from a model that cannot give one."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_fashion_mnist
from PIL import Image
from safetensors.torch import save_file

import mambatr
from mambatr.cli import main
from mambatr.data import DatasetError, ImageFolder, UnreadableImageError, load_rgb
from mambatr.evaluate import evaluate
from mambatr.finite import NonFiniteError
from mambatr.outputs import OutputWriteError, check_writable_file, write_text_atomic
from mambatr.reduction.recipe import Recipe
from mambatr.reduction.schedule import Schedule, ScheduleError, architecture_of

SMALL = dict(
    img_size=28, patch_size=7, stride=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, d_state=4
)
REPO = Path(__file__).resolve().parents[1]


def _export(folder: Path, name: str = "vim_custom", poison: str | None = None, **overrides) -> Path:
    """A random vim_custom as a ``mambatr train`` export (safetensors + JSON); ``poison``: a weight
    set to NaN in its middle element."""
    config = {**SMALL, **overrides}
    torch.manual_seed(0)
    state = mambatr.create_model("vim_custom", **config).state_dict()
    if poison is not None:
        state[poison].view(-1)[state[poison].numel() // 2] = float("nan")
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(weights))
    (folder / f"{name}.json").write_text(json.dumps({"model": "vim_custom", "config": config}))
    return weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(fake Fashion-MNIST folder, a random vim_custom export, the eval argv prefix for them)."""
    root = write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), train=5_100, test=24)
    weights = _export(tmp_path_factory.mktemp("export"))
    argv = ["--model", "vim_custom", "--checkpoint", str(weights), "--data", str(root), "--threads", "1"]
    return root, weights, argv


def _one_line(capsys, argv: list[str], status: int = 2) -> str:
    """Run the CLI expecting it to end with ``status``: nothing on stdout, one line on stderr (besides
    progress bars), which is returned."""
    with pytest.raises(SystemExit) as end:
        main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if "%|" not in line]  # tqdm draws "NN%|###|"
    assert end.value.code == status and captured.out == "", captured
    assert len(lines) == 1 and lines[0].startswith("mambatr "), captured.err
    return lines[0]


# ------------------------------------------------------------------------------------- output files


def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO .* not a regular file"):
        write_text_atomic(fifo, "{}")
    assert fifo.is_fifo()
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        write_text_atomic(tmp_path / "folder.json", "{}")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "socket.json"))
        with pytest.raises(ValueError, match="is a socket"):
            write_text_atomic(tmp_path / "socket.json", "{}")
    # a device node is only checked here, never written to: a broken check must not replace /dev/null
    with pytest.raises(ValueError, match="/dev/null is a character device, not a regular file"):
        check_writable_file("/dev/null", "--out")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_a_symlink_is_followed_and_kept(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "created.json")
    write_text_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "created.json").read_text() == "made"
    to_device = tmp_path / "null.json"
    to_device.symlink_to("/dev/null")
    with pytest.raises(ValueError, match=r"null.json \(a link to /dev/null\) is a character device"):
        check_writable_file(to_device, "--out")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match="loop.json: Too many levels of symbolic links"):
        write_text_atomic(loop, "x")


def test_the_folder_of_a_result_file_is_created(tmp_path):
    """check_writable_file accepts a file in a folder that could be created; the write creates it."""
    out = tmp_path / "new" / "deeper" / "s.json"
    check_writable_file(out, "--out")
    write_text_atomic(out, "{}")
    assert out.read_text() == "{}"


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    out.write_text("old")

    def disk_full(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OutputWriteError, match=f"cannot write {out}: No space left on device"):
        write_text_atomic(out, "new")
    monkeypatch.undo()
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_torch_saves_full_disk_is_named_but_a_bug_stays_a_bug(tmp_path, monkeypatch):
    """torch.save's C++ writer raises a RuntimeError without the errno on a full disk."""
    from mambatr.outputs import atomic_path

    class Full:
        f_bavail = 0

    with pytest.raises(RuntimeError, match="a bug"):  # space left: not the disk's fault
        with atomic_path(tmp_path / "a.pth"):
            raise RuntimeError("a bug")
    monkeypatch.setattr(os, "statvfs", lambda folder: Full())
    with pytest.raises(OutputWriteError, match="cannot write .*a.pth: No space left on device"):
        with atomic_path(tmp_path / "a.pth"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_cli_out_that_is_a_fifo_is_refused_before_work(tiny, capsys, tmp_path):
    fifo = tmp_path / "s.json"
    os.mkfifo(fifo)
    argv = ["calibrate", *tiny[2], "--method", "mtr", "--flops-reduction", "0.2", "--out", str(fifo)]
    assert f"--out {fifo} is a FIFO (named pipe), not a regular file" in _one_line(capsys, argv)


def test_cli_full_disk_is_one_line_exit_1(tiny, capsys, tmp_path, monkeypatch):
    def disk_full(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", disk_full)
    out = tmp_path / "s.json"
    argv = ["calibrate", *tiny[2], "--method", "mtr", "--flops-reduction", "0.1", "--step", "1"]
    argv += ["--images", "8"]
    line = _one_line(capsys, [*argv, "--out", str(out)], status=1)
    # the first file written: s.json, or the search's state in its run folder beside it (s.calibrate/)
    assert line.startswith(f"mambatr calibrate: error: cannot write {tmp_path}/s.")
    assert line.endswith(".json: No space left on device") and not out.exists()


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    import mambatr.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_flops", interrupted)
    assert _one_line(capsys, ["flops"], status=130) == "mambatr flops: interrupted"


def test_ctrl_c_keeps_the_message_of_what_was_kept(monkeypatch, capsys):
    import mambatr.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt("interrupted: 3 finished cell(s) kept in runs/x")

    monkeypatch.setattr(cli, "cmd_flops", interrupted)
    line = _one_line(capsys, ["flops"], status=130)
    assert line == "mambatr flops: interrupted: 3 finished cell(s) kept in runs/x"


def test_a_closed_pipe_is_one_line_exit_141():
    """`mambatr flops ... | head -0`: the reader is gone before the table is printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mambatr", "flops", "--model", "vim_small"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    process.stdout.close()  # the reader went away
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert stderr.splitlines() == [
        "mambatr flops: output closed early (broken pipe); the rest was not written"
    ]


# ----------------------------------------------------------------------------------- command line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_a_cuda_device_is_refused(capsys, device):
    line = _one_line(capsys, ["bench", "--model", "vim_custom", "--device", device])
    assert f"argument --device: {device}: " in line
    assert "no CUDA support" in line or "no CUDA device is visible" in line


@pytest.mark.parametrize("device", ["gpu", "meta", "cuda:x", "CPU", ""])
def test_unknown_device_is_refused(capsys, device):
    line = _one_line(capsys, ["eval", "--model", "vim_custom", "--device", device])
    assert f"argument --device: expected cpu, cuda or cuda:N, got {device!r}" in line


@pytest.mark.parametrize(
    "argv, named",
    [
        (["sweep", "--methods", "mtr,hsa,mtr"], "--methods: mtr is given twice"),
        (["sweep", "--reductions", "0.2,0.3,0.20"], "--reductions: 0.2 is given twice"),
        (["probe", "--after", "1,1"], "--after: 1 is given twice"),
        (["probe", "--remove", "3,4,3"], "--remove: 3 is given twice"),
    ],
)
def test_duplicates_in_list_flags_are_refused(capsys, tmp_path, argv, named):
    line = _one_line(capsys, [*argv, "--out", str(tmp_path / "out")])
    assert named in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "out, named",
    [
        ("viz.txt", "--out {dir}/viz.txt: name a figure file ending in one of"),
        ("viz", "--out {dir}/viz: name a figure file ending in one of"),
        ("fig.png", "--out's importance figure {dir}/fig_importance.png is a folder"),
    ],
)
def test_viz_out_is_checked_before_the_work(tiny, capsys, tmp_path, out, named):
    (tmp_path / "fig_importance.png").mkdir()
    model = ["--model", "vim_custom", "--checkpoint", str(tiny[1]), "--data", str(tiny[0])]  # no --threads
    argv = ["viz", *model, "--method", "mtr", "--ratio", "0.2", "--out", str(tmp_path / out)]
    assert named.format(dir=tmp_path) in _one_line(capsys, argv)


# -------------------------------------------------------------------------------------- schedules


@pytest.fixture
def schedule_file(tmp_path):
    """A valid schedule file for the ``tiny`` export's architecture, as a dict and its path."""
    torch.manual_seed(0)
    model = mambatr.create_model("vim_custom", **SMALL)
    schedule = Schedule(
        model="vim_custom", architecture=architecture_of(model.config), method="mtr", options={"seed": 0},
        removals={0: 2, 1: 2}, flops_reduction_target=0.2, flops_reduction_achieved=0.2, objective=0.01,
    )  # fmt: skip
    path = tmp_path / "s.json"
    schedule.save(path)
    return json.loads(path.read_text()), path


DELETE = object()  # as a value below: remove the key
COUNT = "expected a token count (an integer >= 0), got"


@pytest.mark.parametrize(
    "keys, value, named",
    [
        (("removals", "1"), -2, f"removals['1']: {COUNT} -2"),
        (("removals", "1"), 2.7, f"removals['1']: {COUNT} 2.7"),
        (("removals", "1"), True, f"removals['1']: {COUNT} true"),
        (("removals", "01"), 1, "removals['01']: expected a block index"),
        (("removals", "2"), 1, "removals['2']: block 2 out of range; a depth-3 model"),
        (("removals", "0"), 8, "removals['0']: mtr cannot remove 8 of the 17 tokens left after block 0"),
        (("removals",), [2, 2], "removals: expected a mapping (a JSON object), got [2, 2]"),
        (("removals",), DELETE, "removals: missing key"),
        (("architecture",), DELETE, "architecture: missing key"),
        (("architecture", "depth"), DELETE, "architecture['depth']: missing key"),
        (("architecture", "depth"), 3.0, "architecture['depth']: expected a positive integer, got 3.0"),
        (("architecture", "has_cls"), 1, "architecture['has_cls']: expected true or false, got 1"),
        (("removal",), {}, "removal: unknown key"),
        (("method",), "mrt", "method: unknown method 'mrt'"),
        (("model",), "", "model: expected a non-empty string"),
        (("options", "seed"), True, "options['seed']: expected an integer, got true"),
        (("options", "indicator"), "delta2", "options['indicator']: expected one of"),
        (("options", "size"), 1, "options['size']: mtr has no such option"),
        (("objective",), float("nan"), "objective: expected a finite number, got NaN"),
        (("flops_reduction_target",), "0.2", "flops_reduction_target: expected a finite number"),
        (("flops_reduction_target",), 0.95, "flops_reduction_target: expected a FLOPs target in (0, 0.9)"),
    ],
)
def test_a_bad_schedule_field_is_named_with_its_file(schedule_file, keys, value, named):
    data, path = schedule_file
    *outer, last = keys
    for key in outer:
        data = data[key]
    if value is DELETE:
        del data[last]
    else:
        data[last] = value
    path.write_text(json.dumps(schedule_file[0]))
    with pytest.raises(ScheduleError) as error:
        Schedule.load(path)
    assert str(error.value).startswith(f"{path}: ") and named in str(error.value), error.value


def test_a_key_given_twice_is_refused(schedule_file):
    _, path = schedule_file
    text = path.read_text()
    path.write_text(text.replace('"1": 2', '"1": 2, "1": 3'))
    with pytest.raises(ScheduleError, match="key '1' given twice"):
        Schedule.load(path)


def test_every_schedule_and_recipe_in_the_repository_loads():
    documents = {path: json.loads(path.read_text()) for path in (REPO / "docs").rglob("*.json")}
    files = [path for path, data in documents.items() if _format(data) == "mambatr-schedule/1"]
    files += sorted((REPO / "src" / "mambatr" / "schedules").glob("*.json"))
    assert len(files) >= 3
    for path in files:
        assert Schedule.load(path).to_dict() == json.loads(path.read_text()), path
    recipes = [path for path, data in documents.items() if _format(data) == "mambatr-recipe/1"]
    for path in recipes:  # a recipe's schedule is checked as a schedule file is
        assert Recipe.load(path).to_dict() == documents[path], path


def _format(data: object) -> object:
    return data.get("format") if isinstance(data, dict) else None


def test_a_schedule_of_another_model_is_refused_before_work(tiny, capsys, schedule_file):
    data, path = schedule_file
    data["model"] = "vim_fmnist"  # the same architecture would fit, the counts were tuned elsewhere
    path.write_text(json.dumps(data))
    argv = ["eval", *tiny[2], "--method", "mtr", "--schedule", str(path)]
    line = _one_line(capsys, argv)
    assert f"--schedule {path}: this schedule was made for vim_fmnist, not for --model vim_custom" in line
    line = _one_line(capsys, ["eval", *tiny[2], "--method", "hsa", "--schedule", str(path)])
    assert "this schedule is for mtr, not --method hsa" in line
    line = _one_line(capsys, [*argv, "--ratio", "0.2"])
    assert "--schedule fixes the layers, counts and options; do not also give --ratio" in line
    schedule = Schedule.load(path)
    with pytest.raises(ScheduleError, match="schedule was made for vim_fmnist, not for vim_custom"):
        schedule.check_fits(mambatr.create_model("vim_custom", **SMALL).config, "vim_custom")


def test_a_hand_built_schedule_is_checked_when_applied(schedule_file):
    schedule = Schedule.load(schedule_file[1])
    schedule.removals = {0: -3}
    with pytest.raises(ScheduleError, match=r"s.json: removals\['0'\]: expected an integer >= 0, got -3"):
        mambatr.apply(mambatr.create_model("vim_custom", **SMALL), "mtr", schedule=schedule)


# ---------------------------------------------------------------------------------- non-finite models


@pytest.mark.parametrize(
    "command",
    [
        ["eval"],
        ["sweep", "--methods", "mtr", "--reductions", "0.2"],
        ["calibrate", "--method", "mtr", "--flops-reduction", "0.2"],
        ["bench", "--runs", "1", "--warmup", "0"],
    ],
)
def test_a_model_with_nan_weights_is_refused(tiny, capsys, tmp_path, command):
    root = tiny[0]
    weights = _export(tmp_path / "nan", poison="layers.1.mixer.in_proj.weight")
    argv = [command[0], "--model", "vim_custom", "--checkpoint", str(weights), "--threads", "1", *command[1:]]
    if command[0] != "bench":
        argv += ["--data", str(root)]
    if command[0] in ("sweep", "calibrate"):
        argv += ["--out", str(tmp_path / ("out" if command[0] == "sweep" else "s.json"))]
    line = _one_line(capsys, argv)
    assert f"{weights}: weight layers.1.mixer.in_proj.weight holds 1 non-finite value(s)" in line


def test_non_finite_logits_stop_the_evaluation():
    class Overflowing(torch.nn.Module):
        """Finite weights, logits that overflow for the 6th image."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = x.flatten(1)[:, :3] * self.scale
            return torch.where(x.flatten(1)[:, :1] > 4.5, torch.inf, logits)

    images = torch.arange(8.0)[:, None].expand(8, 3).clone()
    batches = [(images[i : i + 4], torch.zeros(4, dtype=torch.long)) for i in (0, 4)]
    with pytest.raises(NonFiniteError, match="for 3 image.s. of the batch from image 4, first image 5"):
        evaluate(Overflowing(), batches, progress=False)


# ---------------------------------------------------------------------------------- image folders


def _jpegs(folder: Path, count: int, seed: int = 0, size: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.jpg")


def test_hidden_entries_are_skipped(tmp_path):
    _jpegs(tmp_path / "a", 2)
    _jpegs(tmp_path / "b", 1)
    _jpegs(tmp_path / ".cache", 1)  # would be class 0 and shift a, b to 1, 2
    _jpegs(tmp_path / "a" / ".ipynb_checkpoints", 1)
    (tmp_path / "b" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["a", "b"] and folder.targets == [0, 0, 1]
    assert [Path(path).relative_to(tmp_path).as_posix() for path, _ in folder.samples] == [
        "a/0.jpg",
        "a/1.jpg",
        "b/0.jpg",
    ]


def test_symlink_loops_and_files_reached_twice_are_refused(tmp_path):
    _jpegs(tmp_path / "a", 2)
    _jpegs(tmp_path / "b", 1)
    (tmp_path / "a" / "again").symlink_to(tmp_path / "a")
    with pytest.raises(DatasetError, match=r"a/again: symbolic link loop"):
        ImageFolder(tmp_path)
    (tmp_path / "a" / "again").unlink()
    (tmp_path / "b" / "also.jpg").symlink_to(tmp_path / "a" / "0.jpg")  # one file, two labels
    with pytest.raises(DatasetError, match=r"b/also.jpg and \S+a/0.jpg are the same file"):
        ImageFolder(tmp_path)
    (tmp_path / "b" / "also.jpg").unlink()
    os.link(tmp_path / "b" / "0.jpg", tmp_path / "b" / "hard.jpg")
    with pytest.raises(DatasetError, match=r"b/hard.jpg and \S+b/0.jpg are the same file"):
        ImageFolder(tmp_path)
    (tmp_path / "b" / "hard.jpg").unlink()
    (tmp_path / "b" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DatasetError, match=r"b/gone.jpg: No such file or directory \(a broken symbolic link"):
        ImageFolder(tmp_path)


def test_a_linked_folder_outside_is_followed_once(tmp_path):
    _jpegs(tmp_path / "elsewhere", 3)
    _jpegs(tmp_path / "data" / "a", 1)
    (tmp_path / "data" / "b").symlink_to(tmp_path / "elsewhere")
    folder = ImageFolder(tmp_path / "data")
    assert folder.targets == [0, 1, 1, 1]


def test_sixteen_bit_images_are_scaled_by_their_range(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # PIL reads it as 16-bit
    rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 1, 128, 255]  # not saturated at 255


def test_float_and_32_bit_images_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UnreadableImageError, match=r"float.tif: floating-point pixels \(PIL mode F\)"):
        load_rgb(tmp_path / "float.tif")
    Image.fromarray(np.full((4, 4), 70_000, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(UnreadableImageError, match=r"wide.tif: 32-bit integer pixels \(PIL mode I\)"):
        load_rgb(tmp_path / "wide.tif")


def _bomb_png(path: Path) -> None:
    """A PNG header claiming 100,000 x 100,000 pixels (no pixel data): PIL refuses it on open."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_named_and_skippable(image_folder_with_bad_files, capsys):
    argv, val = image_folder_with_bad_files
    bomb = val / "a" / "3.png"
    _bomb_png(bomb)
    with pytest.raises(
        UnreadableImageError, match=f"{bomb}: cannot read the image .over the decompression-bomb"
    ):
        load_rgb(bomb)
    line = _one_line(capsys, argv)  # the first bad file in order stops the run, named
    assert "cannot read the image" in line
    main([*argv, "--skip-bad-images", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == 3 and any(line.startswith(f"{bomb}: ") for line in result["skipped_images"])


def test_viz_image_errors_name_the_flag(image_folder_with_bad_files, capsys, tmp_path):
    argv, val = image_folder_with_bad_files
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    model = argv[argv.index("--model") : argv.index("--checkpoint") + 2]
    viz = ["viz", *model, "--method", "mtr", "--ratio", "0.2", "--out", str(tmp_path / "v.png")]
    line = _one_line(capsys, [*viz, "--image", str(bomb)])
    assert f"--image {bomb}: cannot read the image (over the decompression-bomb limit" in line


def test_class_count_is_checked_against_the_head_before_any_work(image_folder_with_bad_files, capsys):
    argv, val = image_folder_with_bad_files
    _jpegs(val / "c", 1)  # a third class for a 2-class head
    line = _one_line(capsys, argv)
    assert f"--data {val} has 3 classes but the model's head has 2 outputs" in line


def test_testbed_labels_beyond_the_head_are_refused(tiny, capsys, tmp_path):
    root = tiny[0]
    weights = _export(tmp_path / "five", num_classes=5)
    argv = ["eval", "--model", "vim_custom", "--checkpoint", str(weights), "--data", str(root)]
    line = _one_line(capsys, argv)
    assert "the fashion_mnist test split has" in line and "classes but the model's head has 5 outputs" in line

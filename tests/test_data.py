from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mambatr
from mambatr.data import (
    DEFAULT_ROOT,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    DatasetError,
    DatasetNotFoundError,
    ImageFolder,
    augment_batch,
    build_eval_transform,
    iterate_batches,
    load_fashion_mnist,
    read_idx,
    to_model_input,
    train_val_indices,
)
from mambatr.data.transforms import center_crop, resize_short_side
from mambatr.evaluate import evaluate

IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: 00 00, dtype code, ndim, big-endian dims, big-endian data."""
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", ["u1", "i2", "i4", "f4"])
def test_read_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 5) * 7 - 20).astype(dtype).reshape(2, 3, 5)
    result = read_idx(write_idx(tmp_path / name, array))
    assert result.shape == (2, 3, 5) and result.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result, array)
    result[0, 0, 0] = 1  # writable copy, not a view of the file bytes


def test_read_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((4, 3, 3), np.uint8))
    (tmp_path / "cut").write_bytes(data[:-5])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "header").write_bytes(data[:9])
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(tmp_path / "header")


def test_read_idx_wrong_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    data[0] = 0x1F
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    data[0], data[2] = 0, 0x42  # unknown dtype code
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


# ---------------------------------------------------------------- Fashion-MNIST


def encoded_images(count: int) -> np.ndarray:
    """(count, 2, 2) uint8 images whose 4 pixels are the image's own index, big-endian."""
    return np.arange(count, dtype=">u4").view(np.uint8).reshape(count, 2, 2)


def decode(images: torch.Tensor) -> np.ndarray:
    return images.numpy().reshape(len(images), 4).copy().view(">u4").ravel().astype(np.int64)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder of tiny 2x2 images: 60,000 raw training files, 10 gzipped test files."""
    root = tmp_path_factory.mktemp("fmnist")
    write_idx(root / "train-images-idx3-ubyte", encoded_images(60_000))
    write_idx(root / "train-labels-idx1-ubyte", (np.arange(60_000) % 10).astype(np.uint8))
    write_idx(root / "t10k-images-idx3-ubyte.gz", encoded_images(10))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8)[::-1].copy())
    return root


def test_splits_partition_the_training_set(fake_root):
    train_images, train_labels = load_fashion_mnist("train", root=fake_root)
    val_images, val_labels = load_fashion_mnist("val", root=fake_root)
    full_images, _ = load_fashion_mnist("train_full", root=fake_root)
    train, val = decode(train_images), decode(val_images)
    assert (len(train), len(val), len(full_images)) == (55_000, 5_000, 60_000)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(60_000))
    np.testing.assert_array_equal(val, train_val_indices()[1])
    assert train_labels.dtype == torch.int64 and torch.equal(val_labels, torch.from_numpy(val % 10))
    assert train_images.shape == (55_000, 2, 2) and train_images.dtype == torch.uint8


def test_val_split_is_fixed():
    """The documented split: changing it would silently change every reported val number."""
    train, val = train_val_indices()
    assert val[:8].tolist() == [17, 28, 50, 66, 72, 89, 101, 125] and int(val.sum()) == 150_520_325
    again_train, again_val = train_val_indices()
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    small_train, small_val = train_val_indices(total=100, val_size=10, seed=3)
    assert len(small_val) == 10 and np.array_equal(np.union1d(small_train, small_val), np.arange(100))


def test_test_split_and_cache_isolation(fake_root):
    images, labels = load_fashion_mnist("test", root=fake_root)
    assert decode(images).tolist() == list(range(10)) and labels.tolist() == list(range(10))[::-1]
    images[:] = 0  # callers own their tensors: the cached arrays stay intact
    assert decode(load_fashion_mnist("test", root=fake_root)[0]).tolist() == list(range(10))
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("validation", root=fake_root)


def test_missing_data_messages(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as error:
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    assert isinstance(error.value, FileNotFoundError) and "--data" in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found"):
        load_fashion_mnist("val", root=tmp_path)


def test_count_mismatch_and_bad_labels(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", encoded_images(5))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match="5 images but t10k-labels-idx1-ubyte has 4 labels"):
        load_fashion_mnist("test", root=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 12], np.uint8))  # .gz preferred
    with pytest.raises(DatasetError, match="label 12"):
        load_fashion_mnist("test", root=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason=f"no Fashion-MNIST in {DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    sizes = {"train": 55_000, "val": 5_000, "test": 10_000, "train_full": 60_000}
    for split, size in sizes.items():
        images, labels = load_fashion_mnist(split)
        assert images.shape == (size, 28, 28) and labels.shape == (size,)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [6_000] * 10  # train_full is balanced
    assert torch.bincount(load_fashion_mnist("test")[1]).tolist() == [1_000] * 10
    pixels = load_fashion_mnist("train")[0].double() / 255
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STD, abs=1e-4)


# ---------------------------------------------------------------- batches


def test_to_model_input():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    inputs = to_model_input(images)
    assert inputs.shape == (1, 1, 2, 2) and inputs.dtype == torch.float32
    expected = (torch.tensor([[0, 1], [0.2, 0.4]]) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    torch.testing.assert_close(inputs[0, 0], expected)
    assert torch.equal(to_model_input(images[:, None]), inputs)
    with pytest.raises(TypeError):
        to_model_input(images.float())


def test_augment_batch_is_a_seeded_shift_and_flip():
    images = torch.randint(1, 256, (64, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment_batch(images, torch.Generator().manual_seed(7))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment_batch(images, torch.Generator().manual_seed(7)))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for image, result in zip(padded, out, strict=True):
        candidates = [image[top : top + 6, left : left + 5] for top in range(5) for left in range(5)]
        flipped = any(torch.equal(result, crop.flip(-1)) for crop in candidates)
        assert flipped or any(torch.equal(result, crop) for crop in candidates)
        flips += flipped
    assert 10 < flips < 54
    channels = augment_batch(images[:, None], torch.Generator().manual_seed(7))
    assert torch.equal(channels[:, 0], out)  # (N, C, H, W) gets the same per-image draw


def test_iterate_batches():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 4, 4).contiguous()
    labels = torch.arange(10)
    batches = list(iterate_batches(images, labels, 4, shuffle=True, seed=3))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    order = torch.cat([y for _, y in batches])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    again = [y for _, y in iterate_batches(images, labels, 4, shuffle=True, seed=3)]
    assert torch.equal(order, torch.cat(again))
    inputs, targets = batches[0]
    assert inputs.shape == (4, 1, 4, 4)
    expected = (targets.float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    torch.testing.assert_close(inputs[:, 0, 0, 0], expected)
    assert [len(y) for _, y in iterate_batches(images, labels, 4, augment=True, drop_last=True)] == [4, 4]


# ---------------------------------------------------------------- ImageNet-style folder and transform


def normalized(pixels: np.ndarray) -> np.ndarray:
    """Hand-computed ToTensor + Normalize of an (H, W, 3) uint8 array, as (3, H, W) float64."""
    mean, std = np.array(IMAGENET_DEFAULT_MEAN), np.array(IMAGENET_DEFAULT_STD)
    return ((pixels / 255.0 - mean) / std).transpose(2, 0, 1)


def test_eval_transform_matches_hand_computation():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))  # width 40, height 30
    transform = build_eval_transform(input_size=56)
    assert transform.resize_size == 64  # int(56 / 0.875)
    resized = resize_short_side(image, 64)
    assert resized.size == (85, 64)  # long side int(64 * 40 / 30)
    # torchvision CenterCrop: left = int(round((85 - 56) / 2)) = round(14.5) = 14, top = 4
    expected = np.asarray(image.resize((85, 64), Image.Resampling.BICUBIC))[4:60, 14:70]
    result = transform(image)
    assert result.shape == (3, 56, 56) and result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), normalized(expected), atol=1e-5)
    assert resize_short_side(Image.new("RGB", (500, 375)), 256).size == (341, 256)
    assert build_eval_transform().resize_size == 256


def test_eval_transform_edge_cases():
    grey = Image.new("L", (20, 20), color=128)
    small = build_eval_transform(input_size=20)(grey)  # input_size <= 32: Vim skips resize and crop
    assert small.shape == (3, 20, 20)
    np.testing.assert_allclose(small.numpy(), normalized(np.full((20, 20, 3), 128)), atol=1e-6)
    padded = np.asarray(center_crop(Image.new("RGB", (3, 2), color=(9, 9, 9)), 5))
    assert padded.shape == (5, 5, 3) and padded.sum() == 9 * 6 * 3  # zero padding around the image
    assert (padded[1:3, 1:4] == 9).all()
    with pytest.raises(ValueError, match="interpolation"):
        build_eval_transform(interpolation="cubic")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """2 classes x 3 images of different sizes and modes (RGB / grayscale JPEG, RGBA PNG)."""
    rng = np.random.default_rng(0)
    for name, sizes in (
        ("n02_zebra", [(300, 200), (120, 160), (224, 224)]),
        ("n01_ant", [(256, 300), (90, 70), (400, 260)]),
    ):
        (tmp_path / name).mkdir()
        for index, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if index == 1:
                image.convert("L").save(tmp_path / name / f"img{index}.JPEG")
            elif index == 2:
                image.convert("RGBA").save(tmp_path / name / f"img{index}.png")
            else:
                image.save(tmp_path / name / f"img{index}.jpg")
    (tmp_path / "n01_ant" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_end_to_end(image_folder):
    dataset = ImageFolder(image_folder, transform=build_eval_transform())
    assert dataset.classes == ["n01_ant", "n02_zebra"] and len(dataset) == 6
    assert dataset.targets == [0, 0, 0, 1, 1, 1]
    assert [Path(path).name for path, _ in dataset.samples[:3]] == ["img0.jpg", "img1.JPEG", "img2.png"]
    for index in range(len(dataset)):
        tensor, label = dataset[index]
        assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32 and label == index // 3
    inputs, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert inputs.shape == (4, 3, 224, 224) and labels.tolist() == [0, 0, 0, 1]
    raw, _ = ImageFolder(image_folder)[1]  # no transform: the grayscale JPEG comes back as RGB
    assert raw.mode == "RGB" and raw.size == (90, 70)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class subfolders"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images .* cat"):
        ImageFolder(tmp_path)


def test_image_folder_eval_end_to_end(tmp_path, tiny_vim):
    """An ImageNet-style folder of JPEGs, Vim's eval transform, a random small model, dense and reduced."""
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i, size in enumerate(((60, 50), (64, 80), (100, 70))):
            Image.new("RGB", size, color=(40 * i, 100, 200)).save(tmp_path / label / f"{i}.jpg")
    dataset = ImageFolder(tmp_path, transform=build_eval_transform(input_size=48))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    model = tiny_vim(img_size=48, patch_size=16, stride=16, num_classes=2)
    dense = evaluate(model, loader, total=len(dataset), progress=False)
    assert dense["images"] == 6 and 0 <= dense["top1"] <= 100
    mambatr.apply(model, "mtr", ratio=0.3, layers=[0])
    reduced = evaluate(model, loader, total=len(dataset), progress=False)
    assert reduced["images"] == 6

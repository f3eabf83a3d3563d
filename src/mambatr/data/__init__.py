"""Datasets: Fashion-MNIST images and clips (in memory), ImageNet folders, Kinetics-style frame folders."""

from mambatr.data.batches import augment_batch, iterate_batches, to_model_input
from mambatr.data.errors import DatasetError, DatasetNotFoundError, UnreadableImageError
from mambatr.data.fashion_mnist import (
    DEFAULT_ROOT,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SPLITS,
    VAL_SEED,
    VAL_SIZE,
    load_fashion_mnist,
    train_val_indices,
)
from mambatr.data.fmnist_clips import (
    CLIP_CLASSES,
    ORBIT_CLIP_CLASSES,
    clips_to_model_input,
    iterate_clip_batches,
    load_fmnist_clips,
    make_clips,
)
from mambatr.data.idx import parse_idx, read_idx
from mambatr.data.imagefolder import IMG_EXTENSIONS, ImageFolder, load_rgb
from mambatr.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    EvalTransform,
    build_eval_transform,
)
from mambatr.data.video_folder import VideoFrameFolder, average_views, sample_frame_indices

__all__ = [
    "CLIP_CLASSES",
    "ORBIT_CLIP_CLASSES",
    "VideoFrameFolder",
    "average_views",
    "clips_to_model_input",
    "iterate_clip_batches",
    "load_fmnist_clips",
    "make_clips",
    "sample_frame_indices",
    "DEFAULT_ROOT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMG_EXTENSIONS",
    "SPLITS",
    "VAL_SEED",
    "VAL_SIZE",
    "DatasetError",
    "DatasetNotFoundError",
    "UnreadableImageError",
    "EvalTransform",
    "ImageFolder",
    "augment_batch",
    "build_eval_transform",
    "iterate_batches",
    "load_fashion_mnist",
    "load_rgb",
    "parse_idx",
    "read_idx",
    "to_model_input",
    "train_val_indices",
]

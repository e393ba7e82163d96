"""Fashion-MNIST as a `folder:` dataset of RGB PNGs at a deployment size, written from its four IDX files.

What a person with their own photos has, made from data every machine here has: the layout
`stkd_keras.image_folder` reads with a fixed validation split,

    OUTPUT/train/<k>_<class>/<index>.png    from the IDX training split
    OUTPUT/val/<k>_<class>/<index>.png      from the IDX test split

with the ten class folders named `0_T-shirt_top`, `1_Trouser`, ... `9_Ankle_boot`: the folder reader numbers
classes in the sorted order of their folder names, so the digit keeps Fashion-MNIST's own label numbers (and a
folder name cannot hold the `/` of "T-shirt/top"). `<index>` is the image's index in its IDX file.

Each 28x28 gray image is resized to SIZE x SIZE with Pillow's bilinear filter, then its gray repeated to three
channels (an RGB PNG, as photos are).

Which images: the first N of a fixed, class-balanced order of each split. The order is the seed-0 shuffle
`np.random.default_rng(0).permutation(n)` (the one `stkd_keras.data` subsets with), stably regrouped by each
image's rank within its class: first every class's first image in the shuffle, then every class's second, and so
on. Any N holds N // 10 or N // 10 + 1 images of each class, and a smaller N is a prefix of a larger one. The
defaults (10,000 training and 2,000 validation images) keep the benchmark within reach of a 2-core CPU; pass
--train-images 60000 --test-images 10000 for the whole dataset.

The folder is written under a temporary name beside OUTPUT and renamed at the end, so OUTPUT is either absent,
the previous folder, or complete.

Usage:
    python benchmarks/fashion_mnist_folder.py --output data/fashion_mnist_96
    stkd-keras distill --dataset folder:data/fashion_mnist_96 --image-size 96 ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from stkd_keras import idx

SPLIT_FOLDERS = {"train": "train", "test": "val"}
DEFAULT_SIZE = 96
DEFAULT_IMAGES = {"train": 10000, "test": 2000}


def class_folder_names() -> list[str]:
    """`0_T-shirt_top` ... `9_Ankle_boot`: sorted, they keep Fashion-MNIST's label numbers."""
    return [
        f"{label}_{name.replace('/', '_').replace(' ', '_')}" for label, name in enumerate(idx.FASHION_MNIST_CLASSES)
    ]


def balanced_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of `labels` in the seed's shuffle, stably regrouped by rank within class (see the module docstring)."""
    shuffle = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = shuffle[labels[shuffle] == label]
        rank[members] = np.arange(len(members))
    # lexsort sorts by its last key first: by rank, ties kept in shuffle order.
    return shuffle[np.lexsort((np.arange(len(shuffle)), rank[shuffle]))]


def resized_rgb(image: np.ndarray, size: int):
    """A (28, 28) or (28, 28, 1) uint8 gray image as a SIZE x SIZE RGB PIL image (Pillow bilinear, then gray x3)."""
    from PIL import Image

    gray = Image.fromarray(np.ascontiguousarray(image, np.uint8).reshape(image.shape[:2]))  # 2-D uint8: mode L
    return gray.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def write_split(directory: Path, split: str, count: int, size: int, destination: Path) -> int:
    """Writes the first `count` images of the split's balanced order as PNGs under `destination`; returns the count."""
    images, labels = idx.read_fashion_mnist_idx(directory, split)
    if count > len(labels):
        raise SystemExit(f"Fashion-MNIST's {split} split has {len(labels):,} images; asked for {count:,}.")
    names = class_folder_names()
    for name in names:
        (destination / name).mkdir(parents=True)
    for index in balanced_order(labels)[:count]:
        resized_rgb(images[index], size).save(destination / names[labels[index]] / f"{index:05d}.png")
    return count


def check_output(output: Path, overwrite: bool) -> None:
    """Refuses an output that is a file, or a non-empty folder without `overwrite`, in one sentence."""
    if output.exists() and not output.is_dir():
        raise SystemExit(f"{output} is a file, not a folder; choose another --output.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise SystemExit(f"{output} already exists and is not empty; pass --overwrite to replace it.")


def write_folder(
    output: Path, size: int = DEFAULT_SIZE, train_images: int = 10000, test_images: int = 2000, data_dir=None
) -> dict:
    """Writes the dataset into `output` (replacing what is there: check first with `check_output`); returns counts.

    The folder is written beside `output` under a temporary name and renamed onto it only when complete.
    """
    directory = idx.find_fashion_mnist_idx(data_dir)
    if directory is None:
        raise SystemExit(
            f"Fashion-MNIST's four IDX files are not in {data_dir or idx.DEBIAN_FASHION_MNIST_DIR}: install Debian's "
            "dataset-fashion-mnist or pass --data-dir."
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    counts = {}
    try:
        for split, count in (("train", train_images), ("test", test_images)):
            counts[SPLIT_FOLDERS[split]] = write_split(directory, split, count, size, partial / SPLIT_FOLDERS[split])
        replace_folder(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return counts


def replace_folder(new: Path, output: Path) -> None:
    """Renames `new` onto `output`; a previous `output` is moved aside first and removed after."""
    previous = output.with_name(f".{output.name}.previous-{os.getpid()}")
    if output.exists():
        os.replace(output, previous)
    os.replace(new, output)
    shutil.rmtree(previous, ignore_errors=True)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="Folder to write (the folder: dataset's PATH).")
    parser.add_argument("--size", type=positive, default=DEFAULT_SIZE, help="Image height and width in pixels.")
    parser.add_argument("--train-images", type=positive, default=DEFAULT_IMAGES["train"], help="Of 60,000.")
    parser.add_argument("--test-images", type=positive, default=DEFAULT_IMAGES["test"], help="Of 10,000 (val/).")
    parser.add_argument(
        "--data-dir", default=None, help=f"The IDX files' folder (default {idx.DEBIAN_FASHION_MNIST_DIR})."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty output folder.")
    args = parser.parse_args(argv)
    check_output(args.output, args.overwrite)
    started = time.perf_counter()
    counts = write_folder(args.output, args.size, args.train_images, args.test_images, args.data_dir)
    print(
        f"Wrote {counts['train']:,} training and {counts['val']:,} validation images ({args.size}x{args.size} RGB PNG, "
        f"10 classes) to {args.output} in {time.perf_counter() - started:.1f} s; use it as --dataset "
        f"folder:{args.output} --image-size {args.size}.",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()

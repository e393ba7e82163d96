"""Is the input pipeline ever the bottleneck? Images/s it delivers next to what training consumes.

For Fashion-MNIST (IDX files, 28x28x1) and a generated folder of 64x64 JPEGs
(`folder:`), measures the images/s that `stkd_keras.data.load` delivers for
training (decode, augmentation, normalisation, shuffle, batch 128), and the
images/s a ResNet-8 STKD train step (ResNet-14 teacher) consumes at the same
input size. Target: the pipeline delivers at least 3x what training consumes.

Usage: python benchmarks/input_pipeline.py [--batches 40] [--folder-images 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from stkd_keras import Distiller, data, get_model


def make_folder(root: Path, images: int, classes: int = 10, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    for index in range(images):
        path = root / f"class{index % classes}" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path.write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())


def pipeline_images_per_second(dataset: tf.data.Dataset, batches: int) -> float:
    iterator = iter(dataset.repeat())
    for _ in range(3):
        next(iterator)
    started = time.perf_counter()
    count = sum(int(next(iterator)[1].shape[0]) for _ in range(batches))
    return count / (time.perf_counter() - started)


def train_images_per_second(input_shape, num_classes: int, batch: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, batch)
    distiller = Distiller(
        get_model("resnet8", num_classes, input_shape),
        get_model("resnet14", num_classes, input_shape),
        method="stkd",
        seed=0,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    for _ in range(3):
        distiller.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        distiller.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--folder-images", type=int, default=3000)
    args = parser.parse_args()
    batch = 128
    rows = []
    fashion, info = data.load("fashion_mnist", "train", batch)
    rows.append(
        (
            "fashion_mnist (IDX, 28x28x1)",
            pipeline_images_per_second(fashion, args.batches),
            info.input_shape,
            info.num_classes,
        )
    )
    with tempfile.TemporaryDirectory() as folder:
        make_folder(Path(folder), args.folder_images)
        images, info = data.load(f"folder:{folder}", "train", batch, image_size=(64, 64))
        rows.append(
            (
                f"folder: {args.folder_images} JPEGs, 64x64x3",
                pipeline_images_per_second(images, args.batches),
                info.input_shape,
                info.num_classes,
            )
        )
    print(f"{os.cpu_count()} CPU cores, batch {batch}, TF {tf.__version__}")
    print("| data | pipeline images/s | STKD step images/s (resnet14 -> resnet8) | ratio | target >= 3 |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, delivered, shape, classes in rows:
        consumed = train_images_per_second(shape, classes, batch, args.steps)
        ratio = delivered / consumed
        print(
            f"| {name} | {delivered:,.0f} | {consumed:,.0f} | {ratio:.1f} | {'met' if ratio >= 3 else 'MISSED'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

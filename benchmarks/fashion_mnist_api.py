"""A short, real Fashion-MNIST distillation through the Python API alone: numpy in, no TensorFlow needed.

Reads the four IDX files with numpy (`stkd_keras.idx`), trains a teacher with
the Distiller's `ce` method, then a student with `ce` (the baseline) and with
`stkd`, all with `model.fit` on numpy arrays, and prints the final-epoch test
accuracy and the training throughput of each (images/s over the epochs after
the first, which holds the compilation). Runs on any Keras backend; on the
GPU check (benchmarks/gpu_check.sh) it runs on JAX with TensorFlow absent.
Augmentation: a random horizontal flip per epoch, drawn with numpy (the
TensorFlow-free pad-crop-flip pipeline of the CLI is a later issue's).

Usage: KERAS_BACKEND=jax python benchmarks/fashion_mnist_api.py [--train-subset 60000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Folder of the four IDX files (default: Debian's /usr/share/datasets/fashion-mnist).",
    )
    parser.add_argument("--teacher", default="resnet14")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--train-subset", type=int, default=None, help="First N training images (default: all 60,000).")
    parser.add_argument("--test-subset", type=int, default=None, help="First N test images (default: all 10,000).")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--policy", default="float32", help="Keras dtype policy, e.g. mixed_bfloat16.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import numpy as np

    from stkd_keras import Distiller, get_model, idx

    directory = idx.find_fashion_mnist_idx(args.data_dir)
    if directory is None:
        raise SystemExit(
            f"The four Fashion-MNIST IDX files are not in {args.data_dir or idx.DEBIAN_FASHION_MNIST_DIR}."
        )
    keras.mixed_precision.set_global_policy(args.policy)

    def split(name, count):
        images, labels = idx.read_fashion_mnist_idx(directory, name)
        images, labels = images[:count], labels[:count]
        return (images.astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0], labels.astype(
            "int32"
        )

    (x, y), (x_test, y_test) = split("train", args.train_subset), split("test", args.test_subset)
    rng = np.random.default_rng(args.seed)

    class FlippedEpochs(keras.utils.PyDataset):
        """Shuffled batches, each image flipped left-right with probability 1/2, new draws every epoch."""

        def __init__(self):
            super().__init__()
            self.on_epoch_end()

        def __len__(self):
            return len(x) // args.batch_size

        def on_epoch_end(self):
            self.order = rng.permutation(len(x))
            self.flip = rng.random(len(x)) < 0.5

        def __getitem__(self, index):
            part = self.order[index * args.batch_size : (index + 1) * args.batch_size]
            images = np.where(self.flip[part, None, None, None], x[part, :, ::-1], x[part])
            return images, y[part]

    class Throughput(keras.callbacks.Callback):
        """Training images/s over the epochs after the first, each from its start to its validation (a device sync)."""

        def __init__(self):
            super().__init__()
            self.seconds, self.epoch = 0.0, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.started = epoch, time.perf_counter()

        def on_test_begin(self, logs=None):
            if self.epoch >= 1:
                keras.ops.convert_to_numpy(self.model.trainable_weights[0])  # waits for the epoch's last update
                self.seconds += time.perf_counter() - self.started

        @property
        def images_per_second(self):
            return (
                (args.epochs - 1) * (len(x) // args.batch_size) * args.batch_size / self.seconds
                if self.seconds
                else float("nan")
            )

    def train(model, teacher=None, method="ce"):
        distiller = Distiller(model, teacher, method=method, seed=args.seed)
        schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=args.epochs * (len(x) // args.batch_size))
        distiller.compile(
            optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4), metrics=["accuracy"]
        )
        throughput = Throughput()
        started = time.perf_counter()
        history = distiller.fit(
            FlippedEpochs(), epochs=args.epochs, validation_data=(x_test, y_test), verbose=0, callbacks=[throughput]
        )
        return {
            "model": model.name,
            "method": method,
            "parameters": int(model.count_params()),
            "final_val_accuracy": round(float(history.history["val_accuracy"][-1]), 4),
            "images_per_second": round(throughput.images_per_second) if args.epochs > 1 else None,
            "seconds": round(time.perf_counter() - started, 1),
        }

    keras.utils.set_random_seed(args.seed)
    teacher = get_model(args.teacher, 10, (28, 28, 1))
    rows = [train(teacher)]
    for method in ("ce", "stkd"):
        keras.utils.set_random_seed(args.seed + 1)
        rows.append(train(get_model(args.student, 10, (28, 28, 1)), teacher if method == "stkd" else None, method))

    print(
        f"Fashion-MNIST, {len(x)} training / {len(x_test)} test images, {args.epochs} epochs, batch {args.batch_size}, "
        f"{args.policy}, "
        f"Keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPU(s)"
    )
    print("| model | method | parameters | final-epoch test top-1 | train images/s (epochs 2+) | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        speed = "-" if row["images_per_second"] is None else f"{row['images_per_second']:,}"
        print(
            f"| {row['model']} | {row['method']} | {row['parameters']:,} | {row['final_val_accuracy']:.4f} | {speed} | "
            f"{row['seconds']} |"
        )
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()

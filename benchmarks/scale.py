"""STKD step throughput by batch size, and the cost of MirroredStrategy on two logical CPU devices.

Part 1: images/s of the STKD train step for resnet8x4 distilled from resnet32x4
(32x32x3, 100 classes) at batch 64, 128 and 256 (median of repeated steps after
warm-up). Part 2: the same step (resnet8 from resnet20, batch 128) under
MirroredStrategy over two logical CPU devices against one device: the overhead
of the multi-device path where no second accelerator exists. With a GPU
(`--jit-compile`, `--mixed-precision`) part 1 measures those switches too.

Usage: python benchmarks/scale.py [--steps 5] [--jit-compile] [--mixed-precision]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

# Two logical CPU devices must be declared before TensorFlow initialises its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402
import numpy as np  # noqa: E402

from stkd_keras import Distiller, get_model  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Wall time between consecutive training batches (no per-call fit overhead)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def images_per_second(teacher_name, student_name, batch, steps, strategy, jit_compile=False) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, batch)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    with strategy.scope():
        distiller = Distiller(get_model(student_name, 100, (32, 32, 3)), get_model(teacher_name, 100, (32, 32, 3)), method="stkd", seed=0)
        distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit_compile)
        timer = StepTimer()
        # Two warm-up steps (tracing), then `steps` timed ones, all in one fit.
        distiller.fit(data, steps_per_epoch=steps + 2, epochs=1, verbose=0, callbacks=[timer])
    return batch / statistics.median(np.diff(timer.times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    print(f"{os.cpu_count()} CPU cores, GPUs: {len(tf.config.list_physical_devices('GPU'))}, jit_compile={args.jit_compile}, "
          f"policy={keras.mixed_precision.global_policy().name}; median of {args.steps} steps")
    print("| step | batch | images/s |")
    print("| --- | ---: | ---: |")
    for batch in (64, 128, 256):
        rate = images_per_second("resnet32x4", "resnet8x4", batch, args.steps, one, args.jit_compile)
        print(f"| STKD resnet32x4 -> resnet8x4 | {batch} | {rate:,.0f} |", flush=True)
    single = images_per_second("resnet20", "resnet8", 128, args.steps, one, args.jit_compile)
    mirrored = images_per_second("resnet20", "resnet8", 128, args.steps, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), args.jit_compile)
    print(f"| STKD resnet20 -> resnet8, one device | 128 | {single:,.0f} |")
    print(f"| STKD resnet20 -> resnet8, MirroredStrategy on 2 logical CPUs | 128 | {mirrored:,.0f} |")
    print(f"MirroredStrategy / one device = {mirrored / single:.2f} (two logical devices share the same two cores: this measures overhead, not scaling)")


if __name__ == "__main__":
    main()

"""The model zoo at a glance: parameters, MACs and CPU inference speed in Keras and LiteRT.

For each model at 32x32x3 (100 classes): trainable parameters, MACs per image,
and images/s at batch 1 and batch 128 (median of repeated calls after warm-up)
for the Keras model (`model.predict_on_batch`) and for its float32 TFLite file
in the LiteRT interpreter (`ai_edge_litert`, the threads given). Prints a
markdown table (the README's zoo table).

Usage: python benchmarks/zoo.py [--models resnet8,resnet8x4] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from stkd_keras.models import count_macs, count_trainable_parameters, get_model, list_models


def median_seconds(function, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tflite_runner(path: str, batch: int, threads: int, images: np.ndarray):
    interpreter = Interpreter(path, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], (batch, *images.shape[1:]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], images[:batch])
    return interpreter.invoke


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(n for n in list_models() if not n.startswith("cnn")))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    images = np.random.default_rng(0).normal(size=(128, 32, 32, 3)).astype("float32")
    print(
        f"CPU inference, 32x32x3, 100 classes; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"LiteRT threads={args.threads}, Keras {keras.__version__}; images/s, median of {args.repeats}"
    )
    print("| model | parameters | MACs | Keras b1 | Keras b128 | LiteRT b1 | LiteRT b128 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            model = get_model(name, 100, (32, 32, 3))
            row = [name, f"{count_trainable_parameters(model):,}", f"{count_macs(model) / 1e6:,.1f}M"]
            for batch in (1, 128):
                seconds = median_seconds(lambda: model.predict_on_batch(images[:batch]), args.repeats)
                row.append(f"{batch / seconds:,.0f}")
            path = os.path.join(folder, f"{name}.tflite")
            model.export(path, format="litert", verbose=False)
            for batch in (1, 128):
                seconds = median_seconds(tflite_runner(path, batch, args.threads, images), args.repeats)
                row.append(f"{batch / seconds:,.0f}")
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

"""What shipping costs: size, latency and accuracy of every export format of a distilled student.

Distils (or reuses) a student on Fashion-MNIST, exports it to TFLite float32 /
float16 / dynamic-range / int8, int8 after quantization-aware training, pruned
(50%) + int8, and ONNX float32 / int8, then measures on the full test split:
file size, single-image CPU latency (median, 1 thread, LiteRT interpreter or
onnxruntime) and top-1. Prints a markdown table (the README's export table).

Targets: int8 at least 3.5x smaller than float32; int8 top-1 within 0.5 points
of Keras (with QAT if post-training quantization misses it); int8 latency below
float32 latency.

Usage: python benchmarks/export.py [--run DIR] [--student resnet8] [--epochs 5] [--train-subset 20000] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from stkd_keras import export as export_lib
from stkd_keras import training


def median_ms(call, repeats: int = 200, warmup: int = 20) -> float:
    """Median wall time of `call()` in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="A finished distill run folder to export (default: distil one).")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher-model", default="resnet14")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stkd-export-bench-"))
    run_dir = args.run
    if run_dir is None:
        run_dir = work / "run"
        subprocess.run(
            [sys.executable, "-m", "stkd_keras.cli.main", "distill", "--dataset", "fashion_mnist", "--student", args.student,
             "--teacher-model", args.teacher_model, "--epochs", str(args.epochs), "--train-subset", str(args.train_subset),
             "--quiet", "--output", str(run_dir)],
            check=True,
        )
    output = args.output or work / "exported"
    common = [sys.executable, "-m", "stkd_keras.cli.main", "export", "--model", str(run_dir / "student.keras"), "--output", str(output),
              "--verify-images", "10000", "--overwrite"]
    # One call writes every mode of every format (--quantize all) and the QAT and pruned int8 files.
    subprocess.run(
        common + ["--format", "all", "--quantize", "all", "--qat", str(args.qat_epochs), "--prune", str(args.sparsity),
                  "--finetune-subset", str(args.train_subset)],
        check=True, stdout=subprocess.DEVNULL,
    )

    preprocessing = training.read_preprocessing(run_dir)
    data = export_lib.load_export_data("fashion_mnist", preprocessing, 10000, 1)
    model = keras.saving.load_model(run_dir / "student.keras")
    keras_logits = model.predict(data.images, batch_size=256, verbose=0)
    image = data.images[:1]
    rows = [("Keras float32 (student.keras)", (run_dir / "student.keras").stat().st_size, median_ms(lambda: model(image, training=False)),
             float(np.mean(keras_logits.argmax(-1) == data.labels)))]
    names = ["student_float32.tflite", "student_float16.tflite", "student_dynamic.tflite", "student_int8.tflite",
             "student_qat_int8.tflite", "student_pruned_int8.tflite", "student_float32.onnx", "student_int8.onnx"]
    for name in names:
        path = output / name
        runner = export_lib.runner_for(path, num_threads=1)
        accuracy = float(np.mean(runner.predict(data.images).argmax(-1) == data.labels))
        rows.append((name, path.stat().st_size, median_ms(lambda: runner.predict(image)), accuracy))

    sizes = {name: size for name, size, _, _ in rows}
    latencies = {name: ms for name, _, ms, _ in rows}
    accuracy = {name: acc for name, _, _, acc in rows}
    print(f"Student {model.name} ({model.count_params():,} parameters) from {run_dir}; Fashion-MNIST test split (10,000 images); "
          f"latency: 1 image, 1 thread, median of 200, {os.cpu_count()}-core CPU")
    print("| file | size (KiB) | latency (ms) | top-1 |")
    print("| --- | ---: | ---: | ---: |")
    for name, size, ms, acc in rows:
        print(f"| {name} | {size / 1024:,.1f} | {ms:.3f} | {100 * acc:.2f} |")
    ratio = sizes["student_float32.tflite"] / sizes["student_int8.tflite"]
    best_int8 = max(accuracy["student_int8.tflite"], accuracy["student_qat_int8.tflite"])
    keras_top1 = rows[0][3]
    print(f"int8 size ratio {ratio:.2f}x (target >= 3.5): {'met' if ratio >= 3.5 else 'MISSED'}")
    print(f"int8 top-1 {100 * accuracy['student_int8.tflite']:.2f} (QAT {100 * accuracy['student_qat_int8.tflite']:.2f}) vs Keras "
          f"{100 * keras_top1:.2f} (target within 0.5 points): {'met' if keras_top1 - best_int8 <= 0.005 else 'MISSED'}")
    print(f"int8 latency {latencies['student_int8.tflite']:.3f} ms vs float32 {latencies['student_float32.tflite']:.3f} ms "
          f"(target: below): {'met' if latencies['student_int8.tflite'] < latencies['student_float32.tflite'] else 'MISSED'}")
    print(json.dumps({"run": str(run_dir), "output": str(output)}))


if __name__ == "__main__":
    main()

"""STKD throughput through the real training loop against the bare step, on each Keras backend.

For resnet32x4 -> resnet8x4 (the CIFAR pair of the KD literature) on
Fashion-MNIST (28x28x1, 10 classes: the data every machine here has), STKD,
one batch size, each backend in a process of its own:

- bare step: the Distiller's STKD step inside `fit`, fed one fixed batch
  from memory (a `keras.utils.PyDataset` that returns it again): the step and
  Keras's loop, nothing else;
- real loop: `stkd_keras.training.train`, what `stkd-keras distill` runs: the
  data pipeline (tf.data where TensorFlow is installed, else the numpy
  pipeline; augmentation, shuffling), the run's callbacks (CSV log,
  TensorBoard, learning-rate log, divergence guard, per-epoch checkpoint).

Both are timed between consecutive batches after warm-up steps; the figure is
images per second over all timed steps (mean, so pipeline stalls count) and
`loop / bare`. The target (issue 12): the loop costs at most 10% over the
bare step, i.e. loop / bare >= 0.90. The epoch's end (validation on a few
images, checkpoint) is reported apart, in seconds.

Usage: python benchmarks/scale.py --backend tensorflow,jax,torch [--batch-size 64] [--steps 12] [--warmup 3]
       [--pipeline auto|numpy] [--jit-compile] [--teacher resnet32x4] [--student resnet8x4] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(args) -> dict:
    import keras
    import numpy as np

    from stkd_keras import Distiller, data, training
    from stkd_keras.config import RunConfig
    from stkd_keras.models import get_model

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []
            self.epoch_end = None

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_end = time.perf_counter()

    def rate(timer) -> tuple[float, float]:
        timed = np.diff(timer.times[args.warmup - 1 :])
        return args.batch_size * len(timed) / timed.sum(), args.batch_size / float(np.median(timed))

    class OneBatch(keras.utils.PyDataset):
        def __init__(self, batch):
            super().__init__()
            self.batch = batch

        @property
        def num_batches(self):
            return None

        def __getitem__(self, index):
            return self.batch

    keras.utils.set_random_seed(0)
    shape, classes = (28, 28, 1), 10
    teacher = get_model(args.teacher, classes, shape)
    steps = args.warmup + args.steps
    results = {"backend": keras.backend.backend(), "pipeline": data.resolve_pipeline(args.pipeline)}

    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(args.batch_size, *shape)).astype("float32"), rng.integers(0, classes, args.batch_size))
    distiller = Distiller(get_model(args.student, classes, shape), teacher, method="stkd", seed=0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=args.jit_compile)
    timer = StepTimer()
    distiller.fit(OneBatch(batch), steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
    results["bare_mean"], results["bare_median"] = rate(timer)

    with tempfile.TemporaryDirectory() as folder:
        teacher_path = Path(folder) / "teacher.keras"
        teacher.save(teacher_path)
        (Path(folder) / "run").mkdir()
        config = RunConfig(
            dataset="fashion_mnist",
            model=args.student,
            method="stkd",
            teacher=str(teacher_path),
            epochs=1,
            batch_size=args.batch_size,
            steps_per_epoch=steps,
            train_subset=max(steps * args.batch_size, 4096),
            val_subset=128,
            seed=0,
            jit_compile=args.jit_compile,
            data_dir=args.data_dir,
        )
        timer = StepTimer()
        if args.pipeline != "auto":
            original = data.load
            data.load = lambda *a, **k: original(*a, **{**k, "pipeline": args.pipeline})
        training.train(config, Path(folder) / "run", verbose=0, log=lambda *_: None, callbacks=[timer])
        results["loop_mean"], results["loop_median"] = rate(timer)
        results["epoch_end_seconds"] = timer.epoch_end - timer.times[-1]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="tensorflow,jax,torch", help="Comma-separated Keras backends.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="Timed steps (after the warm-up ones).")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--pipeline",
        default="auto",
        choices=["auto", "numpy"],
        help="numpy: the numpy pipeline even where TensorFlow is installed.",
    )
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--data-dir", default=None, help="Folder with the Fashion-MNIST IDX files (default: Debian's).")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT" + json.dumps(_worker(args)), flush=True)
        return

    print(
        f"STKD {args.teacher} -> {args.student}, Fashion-MNIST 28x28x1, batch {args.batch_size}, {args.warmup} warm-up "
        f"+ {args.steps} "
        f"timed steps, jit_compile={args.jit_compile}, {os.cpu_count()} CPU cores"
    )
    print(
        "| backend | pipeline | bare step img/s | real loop img/s | loop / bare | medians (bare, loop) | epoch end s |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for backend in args.backend.split(","):
        command = [sys.executable, __file__, "--worker", *sys.argv[1:]]
        environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
        if "RESULT" not in result.stdout:
            print(
                f"| {backend} | failed: "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode} | | | | | |"
            )
            continue
        r = json.loads(result.stdout.split("RESULT", 1)[1])
        print(
            f"| {r['backend']} | {r['pipeline']} | {r['bare_mean']:,.0f} | {r['loop_mean']:,.0f} | "
            f"{r['loop_mean'] / r['bare_mean']:.2f} | "
            f"{r['bare_median']:,.0f}, {r['loop_median']:,.0f} | {r['epoch_end_seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Time the Distiller's STKD step against its parts and against keras.distillation, on each Keras backend.

For one teacher/student pair and one batch shape, the images per second of
  (a) the student's plain cross-entropy train step (`student.fit`),
  (b) the teacher's inference (`teacher.predict`),
  (c) the STKD distillation step (`stkd_keras.Distiller.fit`),
  (d) `keras.distillation.Distiller` with `LogitsDistillation` (`fit`),
each measured over `--steps` steps inside one `fit` (or `predict`) call after
`--warmup` steps (compilation included there, not in the figure), so the
figures include what Keras's own loop costs per step. Rounds repeat the four
measurements, interleaved, and the median of the rounds is reported. The ratio
c / (a + b) says what mixup, the loss and the Distiller cost beyond the two
networks (target <= 1.05), and c / d whether the STKD step is slower than
Keras's own distiller (target: no slower).

Every backend runs in a process of its own (the Keras backend is fixed when
Keras is imported); the figures are printed side by side.

Usage:
  python benchmarks/step_speed.py --backend tensorflow,jax,torch
  python benchmarks/step_speed.py --backend jax --teacher resnet32x4 --student resnet8x4 --batch-size 64,256 \\
      --policy float32,mixed_bfloat16        # the GPU check (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STEPS = ("a_student_ce_train", "b_teacher_inference", "c_stkd_distill", "d_keras_logits_distiller")


class _Timer:
    """Starts at batch `warmup`; `stop()` is called once the device has finished (JAX dispatches asynchronously)."""

    def __init__(self, warmup: int):
        self.warmup, self.started = warmup, None

    def begin(self, batch):
        if batch == self.warmup:
            self.started = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self.started


def _worker(args) -> dict:
    """Runs in a process whose KERAS_BACKEND is set: times the four steps for each (batch size, policy)."""
    import keras
    import numpy as np

    from stkd_keras import Distiller, get_model

    shape = tuple(int(d) for d in args.input_shape.split(","))
    results = {}
    for policy in args.policy.split(","):
        keras.mixed_precision.set_global_policy(policy)
        for batch_size in (int(b) for b in args.batch_size.split(",")):
            steps = args.warmup + args.steps
            rng = np.random.default_rng(0)
            x = rng.normal(size=(batch_size, *shape)).astype("float32")
            y = rng.integers(0, args.num_classes, batch_size)

            class Batches(keras.utils.PyDataset):
                """The same batch `steps` times: the figure is the step, not the input pipeline."""

                def __len__(self):
                    return steps

                def __getitem__(self, index):
                    return (x, y)

            class Images(Batches):
                def __getitem__(self, index):
                    return x

            keras.utils.set_random_seed(0)
            teacher = get_model(args.teacher, args.num_classes, shape)

            def student():
                keras.utils.set_random_seed(1)
                return get_model(args.student, args.num_classes, shape)

            jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
            ce_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            plain = student()
            plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=ce_loss, jit_compile=jit)
            teacher.compile(jit_compile=jit)
            stkd = Distiller(student(), teacher, method="stkd", seed=0)
            stkd.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit)
            keras_kd = keras.distillation.Distiller(
                teacher=teacher,
                student=student(),
                distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0),
                student_loss_weight=0.1,
            )
            keras_kd.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=ce_loss, jit_compile=jit)

            def fit_seconds(model):
                timer = _Timer(args.warmup)
                callback = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: timer.begin(batch))
                model.fit(Batches(), epochs=1, verbose=0, callbacks=[callback])
                keras.ops.convert_to_numpy(model.trainable_weights[0])  # waits for the last update
                return timer.stop()

            def predict_seconds(model):
                timer = _Timer(args.warmup)
                callback = keras.callbacks.LambdaCallback(on_predict_batch_begin=lambda batch, logs: timer.begin(batch))
                model.predict(Images(), verbose=0, callbacks=[callback])  # returns numpy: the device has finished
                return timer.stop()

            measure = {
                "a_student_ce_train": lambda: fit_seconds(plain),
                "b_teacher_inference": lambda: predict_seconds(teacher),
                "c_stkd_distill": lambda: fit_seconds(stkd),
                "d_keras_logits_distiller": lambda: fit_seconds(keras_kd),
            }
            rounds = {key: [] for key in STEPS}
            for _ in range(args.rounds):
                for key in STEPS:
                    rounds[key].append(measure[key]() / args.steps)
            # Ratios paired by round: the four measurements of a round share the machine's state at that time.
            results[f"{policy} b{batch_size}"] = {
                "seconds_per_step": {key: statistics.median(values) for key, values in rounds.items()},
                "c_over_ab_by_round": [
                    c / (a + b)
                    for a, b, c in zip(
                        rounds["a_student_ce_train"], rounds["b_teacher_inference"], rounds["c_stkd_distill"]
                    )
                ],
                "c_over_d_by_round": [
                    c / d for c, d in zip(rounds["c_stkd_distill"], rounds["d_keras_logits_distiller"])
                ],
                "batch_size": batch_size,
            }
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "devices": _devices(keras.backend.backend()),
        "results": results,
    }


def _devices(backend: str) -> str:
    if backend == "jax":
        import jax

        return ", ".join(str(device) for device in jax.devices())
    if backend == "torch":
        import torch

        return (
            f"cuda: {torch.cuda.get_device_name()}"
            if torch.cuda.is_available()
            else f"cpu ({torch.get_num_threads()} threads)"
        )
    import tensorflow as tf

    return ", ".join(device.name for device in tf.config.list_physical_devices()) or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backend",
        default="tensorflow,jax,torch",
        help="Comma-separated Keras backends, each timed in its own process.",
    )
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--input-shape", default="32,32,3")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch-size", default="128", help="Comma-separated batch sizes.")
    parser.add_argument(
        "--policy", default="float32", help="Comma-separated dtype policies (float32, mixed_bfloat16, mixed_float16)."
    )
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto: Keras's choice (XLA on JAX; off for TensorFlow on CPU and for torch).",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="Steps per measurement before the clock starts (compilation happens there).",
    )
    parser.add_argument("--steps", type=int, default=10, help="Steps timed per measurement.")
    parser.add_argument("--rounds", type=int, default=3, help="Measurements per step kind; the median is reported.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args)), flush=True)
        return

    reports = []
    for backend in args.backend.split(","):
        command = [sys.executable, os.path.abspath(__file__), "--worker", *sys.argv[1:]]
        result = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
        line = next((line for line in result.stdout.splitlines() if line.startswith("RESULT ")), None)
        if result.returncode != 0 or line is None:
            error = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{backend}: failed ({error})")
            continue
        reports.append(json.loads(line[len("RESULT ") :]))
    if not reports:
        raise SystemExit(1)

    print(
        f"teacher {args.teacher} -> student {args.student}, input {args.input_shape}, {args.num_classes} classes, "
        f"jit_compile={args.jit_compile}, "
        f"{os.cpu_count()} CPU(s); images/s, median of {args.rounds} rounds of {args.steps} steps inside fit/predict"
    )
    for report in reports:
        print(f"- {report['backend']}: keras {report['keras']}, devices: {report['devices']}")
    columns = [(report["backend"], setting) for report in reports for setting in report["results"]]
    print("| step | " + " | ".join(f"{backend} {setting}" for backend, setting in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    by_backend = {report["backend"]: report["results"] for report in reports}
    for key in STEPS:
        cells = []
        for backend, setting in columns:
            entry = by_backend[backend][setting]
            cells.append(f"{entry['batch_size'] / entry['seconds_per_step'][key]:,.0f}")
        print(f"| {key} | " + " | ".join(cells) + " |")
    ratio_cells, versus_cells, verdicts = [], [], []
    for backend, setting in columns:
        entry = by_backend[backend][setting]
        # Median over rounds of the ratios paired by round, with their range: met when the median meets the target,
        # "within noise" when the median misses but some round meets it.
        verdict_parts = []
        for key, target, cells, label in (
            ("c_over_ab_by_round", 1.05, ratio_cells, "c / (a + b)"),
            ("c_over_d_by_round", 1.0, versus_cells, "c / d"),
        ):
            values = entry[key]
            median = statistics.median(values)
            verdict = "met" if median <= target else "equal within noise" if min(values) <= target else "MISSED"
            cells.append(f"{median:.3f} [{min(values):.2f}, {max(values):.2f}]")
            verdict_parts.append(
                f"{label} = {median:.3f}, rounds {min(values):.2f}-{max(values):.2f} ({verdict}, target <= {target})"
            )
        verdicts.append(f"{backend} {setting}: " + "; ".join(verdict_parts))
    print("| c / (a + b), median [range] of rounds | " + " | ".join(ratio_cells) + " |")
    print("| c / d, median [range] of rounds | " + " | ".join(versus_cells) + " |")
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()

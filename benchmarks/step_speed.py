"""Time one STKD train step against its parts and against keras.distillation.

In one process, on the same teacher/student pair and the same batch, the
median time of repeated steps after warm-up for:
  (a) the student's plain cross-entropy train step,
  (b) the teacher's inference step,
  (c) the STKD distillation step (stkd_keras.Distiller),
  (d) keras.distillation.Distiller with LogitsDistillation.
Rounds interleave (a), (b), (c), (d) so that machine load drifts affect all
four alike. Prints images/s for each and the ratio c / (a + b): mixup and
the loss should cost next to nothing beyond the two networks (target <= 1.10),
and (c) should be no slower than (d).

Usage: python benchmarks/step_speed.py [--batch-size 128] [--rounds 15] [--jit-compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from stkd_keras import Distiller, get_model


def timed(function, rounds_store, key):
    started = time.perf_counter()
    function()
    rounds_store.setdefault(key, []).append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--input-shape", default="32,32,3")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args()

    shape = tuple(int(d) for d in args.input_shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size, *shape)).astype("float32")
    y = rng.integers(0, args.num_classes, args.batch_size)
    keras.utils.set_random_seed(0)
    teacher = get_model(args.teacher, args.num_classes, shape)
    teacher.compile(jit_compile=args.jit_compile)

    def student():
        keras.utils.set_random_seed(1)
        return get_model(args.student, args.num_classes, shape)

    ce_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain = student()
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=ce_loss, jit_compile=args.jit_compile)
    stkd = Distiller(student(), teacher, method="stkd", seed=0)
    stkd.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=args.jit_compile)
    keras_kd = keras.distillation.Distiller(
        teacher=teacher,
        student=student(),
        distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.1,
    )
    keras_kd.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=ce_loss, jit_compile=args.jit_compile)

    steps = {
        "a_student_ce_train": lambda: plain.train_on_batch(x, y),
        "b_teacher_inference": lambda: teacher.predict_on_batch(x),
        "c_stkd_distill": lambda: stkd.train_on_batch(x, y),
        "d_keras_logits_distiller": lambda: keras_kd.train_on_batch(x, y),
    }
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for key, step in steps.items():
            timed(step, times, key)
    median = {key: statistics.median(values) for key, values in times.items()}

    print(
        f"teacher {args.teacher}, student {args.student}, input {shape}, {args.num_classes} classes, batch {args.batch_size}, "
        f"jit_compile={args.jit_compile}, keras {keras.__version__}, {os.cpu_count()} CPU(s); median of {args.rounds} rounds"
    )
    print("| step | median ms | images/s |")
    print("| --- | ---: | ---: |")
    for key, seconds in median.items():
        print(f"| {key} | {seconds * 1e3:.1f} | {args.batch_size / seconds:.0f} |")
    ratio = median["c_stkd_distill"] / (median["a_student_ce_train"] + median["b_teacher_inference"])
    print(f"ratio c / (a + b) = {ratio:.3f} (target <= 1.10): {'met' if ratio <= 1.10 else 'MISSED'}")
    # c against d, paired by round; the interquartile range of the per-round ratios shows the noise.
    paired = sorted(c / d for c, d in zip(times["c_stkd_distill"], times["d_keras_logits_distiller"]))
    q1, q2, q3 = statistics.quantiles(paired, n=4)
    verdict = "met" if q2 <= 1.0 else ("equal within noise" if q1 <= 1.0 else "MISSED")
    print(f"ratio c / d per round: median {q2:.3f}, IQR [{q1:.3f}, {q3:.3f}] (target: c no slower than d): {verdict}")

if __name__ == "__main__":
    main()

"""Phone-sized students, distilled and shipped: what deploying each one costs, in one table.

Fashion-MNIST is written as a `folder:` dataset of RGB PNGs (benchmarks/fashion_mnist_folder.py, at --folder-size,
default 96x96), a teacher is trained on it (a zoo network at --teacher-image-size, default 32x32, to spare the CPU;
the distillation step resizes the teacher's input when the student's is larger) or given (--teacher), and every
student of --students is distilled with every method of --methods, then exported to int8 TFLite and int8 ONNX with
`stkd-keras export` (each file verified in its runtime on the whole validation split). Every step is the command
line's own, run as a subprocess with this Python; the commands are recorded in deploy.json.

Per student and method, the table gives: parameters (every weight the file holds), MACs of one image
(`stkd_keras.models.count_macs`), top-1 on the validation split of the Keras model (final epoch) and of the two int8
files (export_report.json: the same images, in LiteRT and onnxruntime), the int8 files' sizes, and the latency of one
image with 1 and 2 runtime threads, timed on the runtime's own call alone (LiteRT `Interpreter.invoke`, onnxruntime
`InferenceSession.run`, the input already in place; `stkd_keras.export.measure_latency`, as benchmarks/export.py
measures), median of --repeats calls after 20 warm-up calls, on a fixed random normalised image (the time does not
depend on the pixel values).

Students are NAME or NAME:SIZE; without a size, a zoo network (`stkd-keras models`) is trained at 32x32 and any
other architecture at --image-size. The run folders, exports and dataset stay in --out (git keeps only the figures:
deploy.json, deploy.md, and each run's metrics.json and history.csv).

The defaults (3 students x 2 methods, 3 epochs on 4,000 training images, 2,000 validation images, a resnet20
teacher of 5 epochs at 32x32) are sized from train-step times measured on 2 shared CPU cores (batch 64: resnet8 at
32x32 0.17 s, MobileNetV3Small at 96x96 0.54 s, EfficientNetB0 at 96x96 2.7 s, plus 0.2 s of the teacher's forward
pass): about 0.4, 1 and 3.7 minutes per epoch with validation, so about 40 minutes in all with the teacher, the
exports and the latencies, EfficientNetB0 three quarters of it. One seed shows what deploying costs, not which
method or student is more accurate; accuracy claims need --seeds 0,1,2,3,4 and longer training.

Usage:
    python benchmarks/deploy.py                                   # everything, with the defaults above
    python benchmarks/deploy.py --teacher runs/teacher --students MobileNetV3Small:128 --methods stkd
    python benchmarks/deploy.py --skip-existing                   # resume: finished runs and exports are reused
    python benchmarks/deploy.py --table-only                      # rewrite deploy.md from deploy.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "deploy"
DEFAULT_STUDENTS = "MobileNetV3Small:96,EfficientNetB0:96,resnet8:32"
INT8_FILES = {"tflite": "student_int8.tflite", "onnx": "student_int8.onnx"}
THREADS = (1, 2)


class Student(NamedTuple):
    """A student architecture (a `--student` name) and the square image size it is distilled at."""

    name: str
    image_size: int

    @property
    def label(self) -> str:
        return f"{self.name}_{self.image_size}"


def parse_students(text: str, default_size: int) -> list[Student]:
    """Students from "MobileNetV3Small:96,resnet8": a zoo name without a size is 32x32, any other `default_size`."""
    from stkd_keras.models import list_models

    students = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, separator, size = entry.partition(":")
        if separator and not size.isdigit():
            raise SystemExit(f"--students: expected NAME or NAME:SIZE, got {entry!r}.")
        students.append(Student(name, int(size) if separator else 32 if name in list_models() else default_size))
    if not students:
        raise SystemExit("--students names no student.")
    return students


def cli_command(*arguments: str) -> list[str]:
    """The command line of `stkd-keras ARGUMENTS` with this Python (the project as installed for it)."""
    return [sys.executable, "-m", "stkd_keras.cli.main", *map(str, arguments)]


def run(command: list[str], log: list[dict]) -> None:
    """Runs a command (its output shown), recording it and its time in `log`; stops the benchmark if it fails."""
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command)
    log.append({"command": shlex.join(command), "seconds": round(time.perf_counter() - started, 1)})
    if completed.returncode != 0:
        raise SystemExit(f"Command failed with exit status {completed.returncode}: {shlex.join(command)}")


def finished(args, folder: Path, marker: str, log: list[dict]) -> bool:
    """Whether --skip-existing reuses `folder`, finished when it holds `marker` (recorded in `log` when reused)."""
    reused = args.skip_existing and (folder / marker).is_file()
    if reused:
        print(f"Reusing {folder}", flush=True)
        log.append({"reused": str(folder)})
    return reused


def dataset_folder(args, log: list[dict]) -> Path:
    """The folder dataset, written by benchmarks/fashion_mnist_folder.py when it is not there yet."""
    name = f"fashion_mnist_{args.folder_size}px_{args.train_images}_{args.test_images}"
    folder = args.data or args.out / "data" / name
    if not (folder / "train").is_dir():
        options = ["--output", folder, "--size", args.folder_size]
        options += ["--train-images", args.train_images, "--test-images", args.test_images]
        run([sys.executable, str(ROOT / "benchmarks" / "fashion_mnist_folder.py"), *map(str, options)], log)
    return folder


def training_command(args, folder: Path, output: Path, *arguments) -> list[str]:
    """A train-teacher or distill command: a fresh run (replacing an old one), or --resume of an unfinished one."""
    from stkd_keras.runs import staging_folders

    if args.skip_existing and staging_folders(output):
        return cli_command(arguments[0], "--resume", output, "--quiet")
    return cli_command(*arguments, "--dataset", f"folder:{folder}", "--quiet", "--overwrite", "--output", output)


def teacher_folder(args, folder: Path, log: list[dict]) -> Path:
    """The given --teacher, or one trained with cross-entropy into OUT/teacher (reused with --skip-existing)."""
    if args.teacher is not None:
        if not args.teacher.exists():
            raise SystemExit(f"--teacher {args.teacher} does not exist.")
        return args.teacher
    output = args.out / "teacher"
    if not finished(args, output, "teacher.keras", log):
        options = ["--model", args.teacher_model, "--image-size", args.teacher_image_size]
        options += ["--epochs", args.teacher_epochs]
        run(training_command(args, folder, output, "train-teacher", *options), log)
    return output


def distill(args, folder: Path, teacher: Path, student: Student, method: str, seed: int, log: list[dict]) -> Path:
    """One distilled student in OUT/runs/<student>_<size>/<method>/seed<k> (reused with --skip-existing)."""
    output = args.out / "runs" / student.label / method / f"seed{seed}"
    if not finished(args, output, "metrics.json", log):
        from stkd_keras import methods

        options = ["--student", student.name, "--image-size", student.image_size, "--method", method]
        options += ["--teacher", teacher] if methods.get_method(method).needs_teacher else []
        options += ["--epochs", args.epochs, "--seed", seed]
        run(training_command(args, folder, output, "distill", *options), log)
    return output


def export(args, run_folder: Path, log: list[dict]) -> Path:
    """The run's student as int8 TFLite and int8 ONNX in RUN/export, verified on the whole validation split."""
    output = run_folder / "export"
    if not finished(args, output, "export_report.json", log):
        options = ["--format", "all", "--quantize", "int8", "--verify-images", "all", "--overwrite"]
        run(cli_command("export", "--model", run_folder / "student.keras", *options, "--output", output), log)
    return output


def uncounted_layers(model) -> list[str]:
    """Layers with multiply-accumulates that `count_macs` leaves out, so the table can mark its MACs as a lower bound.

    Asked of `count_macs` itself: a convolution or dense layer type is missed when a model of a copy of that layer
    alone counts no MACs, a nested model when a model holding a one-layer Dense model counts none.
    """
    import keras

    from stkd_keras.models import count_macs

    missed = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inputs = keras.Input((2,))
            probe = keras.Model(inputs, keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])(inputs))
            name = f"nested models ({layer.name})"
        elif "Conv" in type(layer).__name__ or "Dense" in type(layer).__name__:
            inputs = keras.Input(layer.input.shape[1:])
            probe = keras.Model(inputs, type(layer).from_config(layer.get_config())(inputs))
            name = type(layer).__name__
        else:
            continue
        if count_macs(probe) == 0:
            missed.add(name)
    return sorted(missed)


def latencies(path: Path, image, repeats: int) -> dict:
    """{"runtime_ms_1t": ..., "runtime_ms_2t": ...}: the runtime's own call on one image, per thread count."""
    from stkd_keras import export as export_lib

    figures = {}
    for threads in THREADS:
        measured = export_lib.measure_latency(export_lib.runner_for(path, num_threads=threads), image, repeats)
        figures[f"runtime_ms_{threads}t"] = round(measured["runtime_ms"], 4)
    return figures


def measure(run_folder: Path, export_folder: Path, repeats: int) -> dict:
    """Parameters, MACs, top-1 (Keras and the int8 files), file sizes and latencies of one distilled student."""
    import numpy as np

    from stkd_keras.evaluation import load_model
    from stkd_keras.models import count_macs, count_trainable_parameters

    model = load_model(run_folder / "student.keras")
    metrics = json.loads((run_folder / "metrics.json").read_text())
    report = json.loads((export_folder / "export_report.json").read_text())
    rows = {row["file"]: row for row in report["files"]}
    image = np.random.default_rng(0).standard_normal((1, *model.input_shape[1:])).astype(np.float32)
    files = {}
    for runtime, name in INT8_FILES.items():
        row = rows[name]
        files[runtime] = {
            "file": str(export_folder / name),
            "size_bytes": row["size_bytes"],
            "top1": row["top1_accuracy"],
            "top1_agreement_with_keras": row["top1_agreement"],
            **latencies(export_folder / name, image, repeats),
        }
        print(f"  {name}: {json.dumps(files[runtime])}", flush=True)
    return {
        "parameters": int(model.count_params()),
        "trainable_parameters": count_trainable_parameters(model),
        "macs": count_macs(model),
        "macs_uncounted_layers": uncounted_layers(model),
        "keras_top1": report["keras_top1_accuracy"],
        "final_val_accuracy": metrics.get("final_val_accuracy"),
        "validation_images": report["verification_images"],
        "train_seconds": metrics.get("train_seconds"),
        "files": files,
        "run_metrics": metrics,
    }


def teacher_record(teacher: Path) -> dict:
    """The teacher's path, architecture, input size and final top-1, from its run's metrics.json when it has one."""
    metrics_path = (teacher if teacher.is_dir() else teacher.parent) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    config = metrics.get("config") or {}
    return {
        "path": str(teacher),
        "model": metrics.get("model"),
        "image_size": config.get("image_size"),
        "final_val_accuracy": metrics.get("final_val_accuracy"),
        "train_seconds": metrics.get("train_seconds"),
    }


def environment() -> dict:
    """benchmarks/export.py's machine record (CPU, cores, runtimes' versions), with Keras, Python and the commit."""
    import keras

    spec = importlib.util.spec_from_file_location("export_benchmark", ROOT / "benchmarks" / "export.py")
    export_benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_benchmark)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    return {
        **export_benchmark.environment(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "commit": (commit + (" (with uncommitted changes)" if changed.strip() else "")) or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def top1_cell(values: list[float]) -> str:
    """The mean top-1 over seeds, with the range when there are several."""
    mean = sum(values) / len(values)
    return percent(mean) if len(values) == 1 else f"{percent(mean)} ({percent(min(values))}-{percent(max(values))})"


def table_row(runs: list[dict]) -> list[str]:
    """One row of the table: a student and method over its seeds (sizes and latencies of the first seed's files)."""
    first = runs[0]
    tflite, onnx = first["files"]["tflite"], first["files"]["onnx"]
    macs = f"{first['macs'] / 1e6:,.1f}M" + (" (at least)" if first["macs_uncounted_layers"] else "")
    return [
        first["student"],
        first["method"],
        f"{first['image_size']}x{first['image_size']}",
        f"{first['parameters']:,}",
        macs,
        top1_cell([run["keras_top1"] for run in runs]),
        top1_cell([run["files"]["tflite"]["top1"] for run in runs]),
        top1_cell([run["files"]["onnx"]["top1"] for run in runs]),
        f"{tflite['size_bytes'] / 1024:,.0f}",
        f"{onnx['size_bytes'] / 1024:,.0f}",
        f"{tflite['runtime_ms_1t']:.2f} / {tflite['runtime_ms_2t']:.2f}",
        f"{onnx['runtime_ms_1t']:.2f} / {onnx['runtime_ms_2t']:.2f}",
    ]


def caption(results: dict) -> str:
    """What the table shows and does not: one seed (or several), the data, the teacher, the machine."""
    settings, teacher, machine = results["settings"], results["teacher"], results["environment"]
    seeds = settings["seeds"]
    seed_words = (
        f"One seed ({seeds[0]}): the table shows what deploying each student costs, not a ranking of methods or "
        "students (accuracy claims need several seeds and longer training)"
        if len(seeds) == 1
        else f"Seeds {', '.join(map(str, seeds))}: top-1 is their mean (range); size, latency: seed {seeds[0]}'s files"
    )
    size = teacher["image_size"]
    teacher_words = f"{teacher['model'] or teacher['path']}" + (f" at {size}x{size}" if size else "")
    if teacher["final_val_accuracy"] is not None:
        teacher_words += f", top-1 {percent(teacher['final_val_accuracy'])}"
    dataset = results["dataset"]
    return (
        f"{seed_words}. Fashion-MNIST as a folder of {settings['folder_size']}x{settings['folder_size']} RGB PNGs, "
        f"{settings['epochs']} epoch(s) on {dataset['train_images']:,} training images; top-1 on the "
        f"{dataset['validation_images']:,} validation images (Keras: final epoch; int8: the exported files in LiteRT "
        f"and onnxruntime). Teacher: {teacher_words}. Latency: one image, the runtime's own call alone, median of "
        f"{settings['repeats']} calls, ms with 1 / 2 threads; {machine['cpu']} ({machine['cores']} cores), "
        f"ai-edge-litert {machine['ai_edge_litert']}, onnxruntime {machine['onnxruntime']}, {machine['date']}. "
        "Parameters: every weight the file holds; MACs: one image, convolutions and dense layers."
    )


def table(results: dict) -> list[str]:
    """deploy.md's lines: a caption, then one row per student and method."""
    from stkd_keras.markdown import markdown_row

    groups: dict[tuple, list[dict]] = {}
    for entry in results["runs"]:
        groups.setdefault((entry["student"], entry["image_size"], entry["method"]), []).append(entry)
    header = [
        "student",
        "method",
        "image size",
        "parameters",
        "MACs",
        "top-1 Keras",
        "top-1 int8 TFLite",
        "top-1 int8 ONNX",
        "int8 TFLite KiB",
        "int8 ONNX KiB",
        "int8 TFLite ms (1 / 2 threads)",
        "int8 ONNX ms (1 / 2 threads)",
    ]
    lines = [caption(results), "", markdown_row(header), markdown_row(["---"] * 3 + ["---:"] * 9)]
    lines += [markdown_row(table_row(runs)) for runs in groups.values()]
    missed = sorted({layer for entry in results["runs"] for layer in entry["macs_uncounted_layers"]})
    if missed:
        lines += ["", f"MACs marked *at least* leave out layers `count_macs` does not count: {', '.join(missed)}."]
    return lines


def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "deploy.md").write_text(
        "\n".join(["# Deployment: distilled students as int8 files", "", *table(results), ""])
    )


def run_all(args) -> dict:
    """Every step, in order; returns what deploy.json holds."""
    from stkd_keras import methods

    students = parse_students(args.students, args.image_size)
    for method in args.methods:
        methods.get_method(method)  # a misspelt method stops here, before the teacher trains
    log: list[dict] = []
    folder = dataset_folder(args, log)
    teacher = teacher_folder(args, folder, log)
    entries = []
    for seed in args.seeds:
        for student in students:
            for method in args.methods:
                first_command = len(log)
                run_folder = distill(args, folder, teacher, student, method, seed, log)
                export_folder = export(args, run_folder, log)
                print(f"Measuring {run_folder}", flush=True)
                entry = {"student": student.name, "image_size": student.image_size, "method": method, "seed": seed}
                figures = measure(run_folder, export_folder, args.repeats)
                entries.append({**entry, "run": str(run_folder), **figures, "commands": log[first_command:]})
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return {
        "settings": settings,
        "dataset": {
            "path": str(folder),
            "train_images": sum(1 for _ in (folder / "train").rglob("*.png")),
            "validation_images": sum(1 for _ in (folder / "val").rglob("*.png")),
        },
        "teacher": teacher_record(teacher),
        "commands": log,
        "runs": entries,
        "environment": environment(),
    }


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--students", default=DEFAULT_STUDENTS, help="NAME or NAME:SIZE, comma-separated.")
    parse.add_argument(
        "--methods", default="kd,stkd", type=lambda text: [m for m in text.split(",") if m], help="Comma-separated."
    )
    parse.add_argument(
        "--seeds", default="0", type=lambda text: [int(s) for s in text.split(",") if s], help="Comma-separated."
    )
    parse.add_argument("--epochs", type=positive, default=3, help="Epochs of every distillation.")
    parse.add_argument("--image-size", type=positive, default=96, help="Size of a non-zoo student without :SIZE.")
    parse.add_argument("--train-images", type=positive, default=4000, help="Training images written (of 60,000).")
    parse.add_argument("--test-images", type=positive, default=2000, help="Validation images written (of 10,000).")
    parse.add_argument("--folder-size", type=positive, default=96, help="Size of the PNGs written.")
    parse.add_argument("--data", type=Path, default=None, help="The folder dataset (default: in --out, by its sizes).")
    parse.add_argument("--teacher", type=Path, default=None, help="A teacher .keras file or run folder to use.")
    parse.add_argument("--teacher-model", default="resnet20", help="Zoo architecture of the teacher trained.")
    parse.add_argument("--teacher-image-size", type=positive, default=32, help="Image size of the teacher trained.")
    parse.add_argument("--teacher-epochs", type=positive, default=5, help="Epochs of the teacher trained.")
    parse.add_argument("--repeats", type=positive, default=200, help="Timed calls per latency figure.")
    parse.add_argument("--out", type=Path, default=RESULTS, help="Folder for runs, deploy.json and deploy.md.")
    parse.add_argument("--skip-existing", action="store_true", help="Reuse finished runs and exports; resume others.")
    parse.add_argument("--table-only", action="store_true", help="Rewrite deploy.md from deploy.json; run nothing.")
    return parse


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.table_only:
        results = json.loads((args.out / "deploy.json").read_text())
    else:
        started = time.perf_counter()
        results = run_all(args)
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(results, args.out)
    print("\n".join(table(results)))
    print(f"Wrote {args.out / 'deploy.json'} and {args.out / 'deploy.md'}.")


if __name__ == "__main__":
    main()

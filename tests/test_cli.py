import csv
import hashlib
import json
import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from click.testing import CliRunner

from stkd_keras.cli.main import cli
from stkd_keras.architectures import application_names

import markdown_tables

TINY = ["--epochs", "1", "--train-subset", "256", "--val-subset", "256", "--batch-size", "64", "--quiet"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train-teacher"],
        ["distill"],
        ["evaluate"],
        ["export"],
        ["report"],
        ["compare"],
        ["datasets"],
        ["models"],
        ["methods"],
    ],
)
def test_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output and "--help" in result.output


def test_methods_lists_the_registry_with_defaults():
    from stkd_keras import methods

    result = run("methods")
    assert result.exit_code == 0
    rows = {line.split("|")[1].strip(): line for line in result.output.splitlines()[2:]}
    assert set(rows) == set(methods.list_methods())
    assert (
        "| stkd | mixed images | mixup samples | temperature=4.0, logit_standardization=False, ce_weight=0.1, "
        "kd_weight=0.9, "
        "mixup_alpha=0.2, lambda_per_sample=False, clean_kd_weight=0.0" in rows["stkd"]
    )
    assert (
        "| kd+ls | clean images | clean images | temperature=2.0, logit_standardization=True, ce_weight=0.1, "
        "kd_weight=9.0 |" in rows["kd+ls"]
    )
    assert "tckd_weight=9.0, nckd_weight=72.0, warmup_epochs=20 |" in rows["dkd+ls"]
    assert "| ce | no teacher | clean images | - |" in rows["ce"]
    assert "clean_kd_weight=0.5" in rows["stkd_clean_kd"]
    assert "mix_fraction=1.0, soft_target=teacher_on_mix |" in rows["stkd"]
    assert_renders_whole(result.output, "method", methods.list_methods())


def assert_renders_whole(output: str, first_header: str, names) -> None:
    """A listing's table as a GFM renderer reads it: every row has the header's cells, the names under the first."""
    (table,) = markdown_tables.tables(output)
    assert table.header[0] == first_header
    assert table.source_cells == [len(table.header)] * len(table.rows), table.source_cells
    assert table.column(first_header) == list(names)


def test_methods_table_says_what_the_teacher_sees_with_the_defaults(monkeypatch):
    """A preset whose defaults run the teacher on clean images (`stkd`'s mixed_teacher target) is listed with them."""
    from stkd_keras import methods

    preset = methods.get_method("stkd_clean_kd")
    monkeypatch.setattr(preset, "default_overrides", {**preset.default_overrides, "soft_target": "mixed_teacher"})
    rows = {line.split("|")[1].strip(): line for line in run("methods").output.splitlines()[2:]}
    assert rows["stkd_clean_kd"].startswith("| stkd_clean_kd | clean images | mixup samples |")
    assert rows["stkd"].startswith("| stkd | mixed images | mixup samples |")


def test_distill_options_come_from_the_registry(tmp_path):
    help_text = run("distill", "--help").output
    for name in ("ce", "kd", "mixup", "kd_mixup_naive", "stkd", "stkd_clean_kd"):
        assert name in help_text
    assert "--lambda-per-sample / --lambda-per-batch" in help_text and "stkd_clean_kd: default 0.5" in help_text
    # A hyperparameter the chosen method does not have is refused before anything is written.
    result = run("distill", "--method", "ce", "--temperature", "2", "--output", tmp_path / "run", *TINY)
    assert (
        result.exit_code == 2 and "method 'ce' has no hyperparameter temperature (its options: none)" in result.output
    )
    result = run("distill", "--method", "mixup", "--kd-weight", "1", "--output", tmp_path / "run", *TINY)
    assert result.exit_code == 2 and "(its options: --mixup-alpha, --lambda-per-sample)" in result.output
    assert not (tmp_path / "run").exists()


def test_stkd_variants_from_the_command_line(teacher_run, tmp_path):
    help_text = run("distill", "--help").output
    assert "--mix-fraction FLOAT" in help_text and "--soft-target [teacher_on_mix|mixed_teacher]" in help_text
    result = run("distill", "--method", "stkd", "--soft-target", "bad", "--output", tmp_path / "bad", *TINY)
    assert (
        result.exit_code == 2
        and "Invalid value for '--soft-target': 'bad' is not one of 'teacher_on_mix', 'mixed_teacher'." in result.output
    )
    result = run("distill", "--method", "stkd", "--mix-fraction", "0", "--output", tmp_path / "bad", *TINY)
    assert (
        result.exit_code == 1
        and "Error: Expected `mix_fraction` to be a number in (0, 1]. Received: mix_fraction=0.0" in result.output
    )
    assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
    output = tmp_path / "run"
    result = run(
        "distill",
        "--teacher",
        teacher_run,
        "--student",
        "cnn8",
        "--method",
        "stkd",
        "--soft-target",
        "mixed_teacher",
        "--mix-fraction",
        "0.5",
        "--output",
        output,
        *TINY,
    )
    assert result.exit_code == 0, result.output
    config = json.loads((output / "metrics.json").read_text())["config"]
    assert config["soft_target"] == "mixed_teacher" and config["mix_fraction"] == 0.5


def test_a_recipe_for_another_method_keeps_only_what_applies(tmp_path):
    recipe = tmp_path / "stkd.yaml"
    recipe.write_text("method: stkd\nstudent: cnn8\ntemperature: 2.0\nmixup_alpha: 0.4\nlambda_per_sample: true\n")
    output = tmp_path / "run"
    result = run("distill", "--recipe", recipe, "--method", "mixup", "--output", output, *TINY)
    assert result.exit_code == 0, result.output
    assert "Note: the recipe's temperature does not apply to method 'mixup'; ignored." in result.output
    config = json.loads((output / "metrics.json").read_text())["config"]
    assert config["method"] == "mixup" and config["mixup_alpha"] == 0.4 and config["lambda_per_sample"] is True
    assert "temperature" not in config and "kd_weight" not in config


def test_a_preset_named_with_a_plus_and_the_logit_standardization_flags(teacher_run, tmp_path):
    result = run("distill", "--method", "ce", "--logit-standardization", "--output", tmp_path / "ce", *TINY)
    assert result.exit_code == 2 and "method 'ce' has no hyperparameter logit_standardization" in result.output
    output = tmp_path / "dkd+ls"
    result = run(
        "distill",
        "--teacher",
        teacher_run,
        "--student",
        "cnn8",
        "--method",
        "dkd+ls",
        "--no-logit-standardization",
        "--warmup-epochs",
        "2",
        "--output",
        output,
        *TINY,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    config = metrics["config"]
    assert metrics["method"] == config["method"] == "dkd+ls"
    assert (config["logit_standardization"], config["warmup_epochs"], config["temperature"], config["nckd_weight"]) == (
        False,
        2,
        2.0,
        72.0,
    )
    # A warm-up of 2 epochs in a 1-epoch run: the distillation terms end at half their weight, and the run says so.
    assert (
        "Warning: dkd+ls's warm-up lasts 2 epochs, longer than this run's 1: its distillation terms never reach full "
        "weight "
        "(they end at 1/2 of it). mdistiller warms up over 1/12 of its run; for this one, warmup_epochs=1 "
        "(--warmup-epochs 1)."
    ) in result.output
    with open(output / "history.csv") as f:
        assert {"ce_loss", "tckd_loss", "nckd_loss"} <= set(next(csv.DictReader(f)))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "teacher"
    result = run("train-teacher", "--model", "cnn8", "--output", output, *TINY)
    assert result.exit_code == 0, result.output
    return output


def test_train_distill_evaluate(teacher_run, tmp_path):
    assert {"teacher.keras", "history.csv", "metrics.json"} <= {p.name for p in teacher_run.iterdir()}
    teacher_metrics = json.loads((teacher_run / "metrics.json").read_text())
    assert teacher_metrics["role"] == "teacher" and teacher_metrics["method"] == "ce"

    student_dir = tmp_path / "student"
    result = run(
        "distill", "--teacher", teacher_run, "--student", "cnn8", "--method", "stkd", "--output", student_dir, *TINY
    )
    assert result.exit_code == 0, result.output
    assert "Student cnn8: final-epoch val top-1" in result.output
    metrics = json.loads((student_dir / "metrics.json").read_text())
    assert metrics["method"] == "stkd" and metrics["seed"] == 0
    assert metrics["config"]["temperature"] == 4.0 and metrics["config"]["mixup_alpha"] == 0.2
    assert metrics["final_epoch"]["epoch"] == 1 and metrics["best_epoch"]["epoch"] == 1
    assert metrics["teacher"]["path"] == str(teacher_run)
    assert metrics["dataset"]["train"]["num_examples"] == 256
    with open(student_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and {"ce_loss", "kd_loss", "val_accuracy"} <= set(rows[0])
    assert float(rows[0]["val_accuracy"]) == pytest.approx(metrics["final_val_accuracy"])
    assert isinstance(keras.saving.load_model(student_dir / "student.keras"), keras.Model)

    # evaluate measures the saved (final-epoch) model on the same 256 images the run validated on.
    result = run("evaluate", "--model", student_dir / "student.keras", "--dataset", "fashion_mnist", "--subset", 256)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((student_dir / "evaluation_fashion_mnist_test.json").read_text())
    assert evaluation["num_examples"] == 256
    assert evaluation["accuracy"] == pytest.approx(metrics["final_val_accuracy"], abs=1e-6)
    assert f"top-1 {evaluation['accuracy']:.4f}" in result.output

    # A second evaluate would overwrite those results: refused.
    again = run("evaluate", "--model", student_dir / "student.keras", "--subset", 256)
    assert again.exit_code == 1 and "already exists" in again.output


# Slow (13 s): tests/test_progress.py checks the rule (a slow pass says how long; validation inside fit on every
# backend) in the default run.
@pytest.mark.slow
def test_the_commands_show_progress_of_long_passes_unless_quiet(teacher_run, tmp_path, monkeypatch):
    """Long passes over a split say how far they have got; --quiet keeps them silent.

    They once ran tens of seconds without a word (validation in a JAX or PyTorch fit, evaluate, the teacher's
    measurement). tests/test_progress.py tests the rule.
    """
    from stkd_keras import progress

    monkeypatch.setattr(progress, "DELAY_SECONDS", 0)  # every pass counts as long
    common = [
        "--teacher",
        teacher_run,
        "--student",
        "cnn8",
        "--method",
        "kd",
        "--epochs",
        1,
        "--train-subset",
        256,
        "--val-subset",
        600,
        "--batch-size",
        64,
    ]
    result = run("distill", *common, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    # 600 validation images in batches of 256: 3 batches; the line comes after the first.
    assert "Measuring the teacher on 600 test images: 1 of 3 batches in " in result.output
    assert "Validating on 600 test images: 1 of 3 batches in" in result.output
    quiet = run("distill", *common, "--quiet", "--output", tmp_path / "quiet")
    assert quiet.exit_code == 0 and "batches in" not in quiet.output
    model = tmp_path / "run" / "student.keras"
    result = run("evaluate", "--model", model, "--subset", 600, "--json", tmp_path / "e.json")
    assert result.exit_code == 0 and "Evaluating on 600 test images: 1 of 3 batches in" in result.output, result.output
    result = run("evaluate", "--model", model, "--subset", 600, "--json", tmp_path / "q.json", "--quiet")
    assert result.exit_code == 0 and "batches in" not in result.output


def test_refuses_to_overwrite_a_run(teacher_run):
    before = digest(teacher_run)
    result = run("train-teacher", "--model", "cnn8", "--output", teacher_run, *TINY)
    assert result.exit_code == 1
    assert "already holds a run; pass --overwrite" in result.output
    assert digest(teacher_run) == before


def test_overwrite_replaces_a_run(tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "run.json").write_text(
        '{"command": "train-teacher"}'
    )  # an earlier run's marker: --overwrite replaces only runs
    (output / "old.txt").write_text("old")
    result = run("train-teacher", "--model", "cnn8", "--output", output, "--overwrite", *TINY)
    assert result.exit_code == 0, result.output
    assert not (output / "old.txt").exists() and (output / "teacher.keras").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_distill_trains_a_teacher_when_none_is_given(tmp_path):
    output = tmp_path / "run"
    result = run("distill", "--student", "cnn8", "--teacher-model", "cnn8", "--method", "kd", "--output", output, *TINY)
    assert result.exit_code == 0, result.output
    assert "No trained teacher given: training a cnn8 teacher first" in result.output
    assert (output / "teacher" / "teacher.keras").is_file() and (output / "student.keras").is_file()
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["teacher"]["path"] == str(output / "teacher")


def test_missing_dataset_message(tmp_path):
    result = run(
        "distill",
        "--dataset",
        "cifar10",
        "--no-download",
        "--data-dir",
        tmp_path,
        "--method",
        "ce",
        "--output",
        tmp_path / "run",
        *TINY,
    )
    assert result.exit_code == 1
    assert "Error: Dataset 'cifar10' is not on this machine" in result.output and "tfds build cifar10" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.partial-*"))
    # Without --teacher the run would train one first: the data is checked before, and no teacher is announced.
    result = run(
        "distill", "--dataset", "cifar10", "--no-download", "--data-dir", tmp_path, "--output", tmp_path / "run", *TINY
    )
    assert result.exit_code == 1 and "Error: Dataset 'cifar10' is not on this machine" in result.output
    assert "No trained teacher given" not in result.output
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.partial-*"))


def test_a_model_from_another_dataset_is_named(tmp_path):
    """A CIFAR-10 model asked to read Fashion-MNIST: which dataset each is, not an internal normalisation error."""
    folder = tmp_path / "cifar_run"
    folder.mkdir()
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)], name="cifar_student"
    )
    model.save(folder / "student.keras")
    preprocessing = {
        "dataset": "cifar10",
        "input_shape": [32, 32, 3],
        "mean": [0.49, 0.48, 0.45],
        "std": [0.25, 0.24, 0.26],
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    expected = (
        f"Error: {folder} was trained on cifar10 (32x32x3 images) and cannot read fashion_mnist (28x28x1 images); "
        "use --dataset cifar10"
    )
    result = run("evaluate", "--model", folder, "--dataset", "fashion_mnist")
    assert result.exit_code == 1 and expected in result.output
    result = run("export", "--model", folder, "--dataset", "fashion_mnist", "--output", tmp_path / "exported")
    assert result.exit_code == 1
    assert (
        f"Error: {folder / 'student.keras'} was trained on cifar10 (32x32x3 images) and cannot read fashion_mnist"
        in result.output
    )
    assert "Expected one mean" not in result.output and not (tmp_path / "exported").exists()


def test_mistakes_are_answered_before_tensorflow_loads(tmp_path):
    """Usage errors and missing or wrong files: one sentence, and TensorFlow (about 4 s to import) is never imported."""
    text = tmp_path / "teacher.keras"
    text.write_text("text")
    script = f"""
import sys
from click.testing import CliRunner
from stkd_keras.cli.main import cli
cases = [
    ["distill", "--student", "resnet9", "--output", "{tmp_path}/a"],
    ["distill", "--student", "resnet8", "--epochs", "-1", "--output", "{tmp_path}/a"],
    ["distill", "--dataset", "nope", "--output", "{tmp_path}/a"],
    ["distill", "--teacher", "{text}", "--output", "{tmp_path}/a"],
    ["distill", "--temperature", "-1", "--output", "{tmp_path}/a"],
    ["evaluate", "--model", "{tmp_path}/missing.keras"],
    ["export", "--model", "{tmp_path}/missing.keras", "--output", "{tmp_path}/e"],
    ["export", "--model", "{text}", "--quantize", "int4", "--output", "{tmp_path}/e"],
]
for args in cases:
    result = CliRunner().invoke(cli, args)
    print(result.exit_code, result.output.strip().splitlines()[-1])
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = completed.stdout.strip().splitlines()
    assert lines[-1] == "False False", completed.stdout + completed.stderr
    assert lines[:-1] == [
        "2 Error: Invalid value for '--student': Unknown model 'resnet9': expected a zoo model (resnet8, resnet14, "
        "resnet20, ...), a keras.applications model (" + ", ".join(application_names()) + "), a .keras file, or "
        "module:function (`stkd-keras models` lists the names).",
        "2 Error: Invalid value for '--epochs': -1 is not in the range x>=1.",
        "2 Error: Invalid value for '--dataset': 'nope' is not one of: fashion_mnist, mnist, cifar10, cifar100, "
        "cinic10, tiny_imagenet, folder:PATH.",
        f"1 Error: {text} is not a Keras model file: a .keras file is a zip archive, and this one is not.",
        "1 Error: Expected `temperature` to be a finite number > 0. Received: temperature=-1.0",
        f"1 Error: Model file {tmp_path}/missing.keras does not exist.",
        f"1 Error: Model file {tmp_path}/missing.keras does not exist.",
        "2 Error: Invalid value for --quantize: Expected --quantize values among float32, float16, dynamic, int8, none "
        "and all. Received: 'int4'",
    ]
    assert not (tmp_path / "a").exists() and not (tmp_path / "e").exists()


# Slow (14 s): tests/test_native_stderr.py checks the filter in the default run.
@pytest.mark.slow
def test_tensorflow_start_up_noise_is_filtered(teacher_run):
    """A real command prints no TensorFlow start-up lines; an error line that is not known noise is still shown."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "stkd_keras.cli.main",
            "evaluate",
            "--model",
            str(teacher_run),
            "--subset",
            "64",
            "--json",
            str(teacher_run / "e.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    for noise in (
        "absl::InitializeLog",
        "I0000",
        "cudart_stub",
        "cpu_feature_guard",
        "failed call to cuInit",
        "XNNPACK",
    ):
        assert noise not in completed.stderr
    assert "top-1" in completed.stdout
    # `datasets` printed the start-up lines twice and tfds's "WARNING:absl:Variant folder ... has no dataset_info.json".
    listing = subprocess.run(
        [sys.executable, "-m", "stkd_keras.cli.main", "datasets"], capture_output=True, text=True, timeout=300
    )
    assert listing.returncode == 0 and listing.stdout.startswith("| dataset |"), listing.stderr
    assert listing.stderr == "", listing.stderr


def test_bad_teacher_inputs(tmp_path):
    result = run("distill", "--teacher", tmp_path / "nope.keras", "--output", tmp_path / "a", *TINY)
    assert result.exit_code == 1 and "Model file" in result.output and "does not exist" in result.output
    text = tmp_path / "teacher.keras"
    text.write_text("not a model")  # the file exists: the message must not say "File not found"
    result = run("distill", "--teacher", text, "--output", tmp_path / "b", *TINY)
    assert result.exit_code == 1
    assert (
        f"Error: {text} is not a Keras model file: a .keras file is a zip archive, and this one is not."
        in result.output
    )
    # A teacher of another size and channel count reads the student's images resized (tests/test_architectures.py);
    # one of another class count cannot teach.
    wrong = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(7)], name="cifar_teacher"
    )
    wrong.save(tmp_path / "wrong.keras")
    result = run("distill", "--teacher", tmp_path / "wrong.keras", "--output", tmp_path / "c", *TINY)
    assert result.exit_code == 1
    assert "teacher 'cifar_teacher' takes inputs (28, 28, 1) and predicts 7 classes" in result.output
    assert "has inputs (28, 28, 1) and 10 classes" in result.output
    result = run("distill", "--teacher", tmp_path / "wrong.keras", "--method", "ce", "--output", tmp_path / "d", *TINY)
    assert result.exit_code == 2 and "uses no teacher" in result.output
    result = run("distill", "--temperature", "-1", "--output", tmp_path / "e", *TINY)
    assert (
        result.exit_code == 1
        and "Error: Expected `temperature` to be a finite number > 0. Received: temperature=-1.0" in result.output
    )
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_unknown_names_are_listed(tmp_path):
    result = run("distill", "--student", "resnet9", "--output", tmp_path / "x")
    assert result.exit_code == 2 and "Unknown model 'resnet9'" in result.output and "MobileNetV3Small" in result.output


# Slow (25 s: it builds every model of the zoo); the default run checks the counts in tests/test_zoo.py.
@pytest.mark.slow
def test_models_lists_the_zoo_with_counts():
    result = run("models", "--input-size", 32, "--num-classes", 100)
    assert result.exit_code == 0, result.output
    # Reference counts (RepDistiller, 100 classes); resnet8 MACs worked out in tests/test_zoo.py at 10 classes
    # + 64 * 90.
    assert "| resnet8x4 | zoo | 1,233,540 |" in result.output and "| ShuffleV2 | zoo | 1,355,528 |" in result.output
    assert "| resnet8 | zoo | 83,892 | 12.5M |" in result.output
    # keras.applications after the zoo: ResNet-50's 23,587,712 trainable backbone weights (its published
    # 25,636,712 less the 2,049,000 of the 1,000-class head and 53,120 BatchNorm statistics) and a 2048 x 100 head.
    assert f"| keras:ResNet50 | keras.applications | {23_534_592 + 2048 * 100 + 100:,} |" in result.output
    small = run("models", "--input-size", 8)
    assert "| MobileNetV2 | zoo | - | MobileNetV2 downsamples its input 16x" in small.output
    assert "| MobileNetV3Small | keras.applications | - | MobileNetV3Small needs inputs of at least 32x32" in (
        small.output
    )
    from stkd_keras import architectures, models

    for output in (result.output, small.output):
        assert_renders_whole(output, "model", [*models.list_models(), *architectures.application_names()])


def test_datasets_lists_sources_and_availability():
    result = run("datasets")
    assert result.exit_code == 0, result.output
    assert "| fashion_mnist | 10 | 28x28x1 | yes | IDX files in /usr/share/datasets/fashion-mnist |" in result.output
    # No network here: CIFAR-10 is neither prepared nor downloadable, and the table says so.
    assert "| cifar10 | 10 | 32x32x3 | no |" in result.output
    assert "| tiny_imagenet | 200 | 64x64x3 |" in result.output and "folder:PATH" in result.output
    # The folder row's "*.jpg|png" split its last cell in two under a GFM renderer.
    from stkd_keras import data

    assert_renders_whole(result.output, "dataset", data.list_datasets())


def test_folder_dataset_run_stores_and_reuses_its_normalisation(tmp_path):
    images = tmp_path / "images"
    for label, value in enumerate((30, 220)):
        for index in range(6):
            path = images / f"class{label}" / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(tf.fill((20, 20, 3), tf.constant(value, tf.uint8))).numpy())
    output = tmp_path / "run"
    result = run(
        "train-teacher",
        "--dataset",
        f"folder:{images}",
        "--image-size",
        12,
        "--model",
        "cnn8",
        "--epochs",
        1,
        "--quiet",
        "--output",
        output,
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((output / "preprocessing.json").read_text())
    # Mean of equal numbers of shade-30 and shade-220 images, measured on the training split.
    assert stored["mean"] == pytest.approx([(30 + 220) / 2 / 255] * 3, abs=1e-5)
    assert stored["class_names"] == ["class0", "class1"] and stored["input_shape"] == [12, 12, 3]
    result = run("evaluate", "--model", output / "teacher.keras", "--dataset", f"folder:{images}")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((output / "evaluation_folder-images_test.json").read_text())
    assert evaluation["normalization"]["from"] == "preprocessing.json" and evaluation["num_examples"] == 2


def test_output_piped_into_a_reader_that_leaves_ends_quietly():
    """`stkd-keras report benchmarks/results | head -1` said "Broken pipe: check the path and run the command again":
    the reader leaving is no error of the user's, and click ends such a command quietly when it is let through."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "stkd_keras.cli.main", "report", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader leaves before the first line: the listing's write fails with EPIPE
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert "Broken pipe" not in stderr and "Error" not in stderr and "Traceback" not in stderr, stderr

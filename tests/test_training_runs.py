"""Runs that survive real use: resume after SIGKILL, reproducibility, recipes, guards, reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from stkd_keras import checkpoints, idx, methods, reporting, runs, training
from stkd_keras.config import RunConfig
from stkd_keras.cli.main import cli
from stkd_keras.recipes import RecipeError, load_recipe

SMALL = [
    "--student",
    "cnn8",
    "--teacher-model",
    "cnn8",
    "--method",
    "stkd",
    "--train-subset",
    "512",
    "--val-subset",
    "256",
    "--batch-size",
    "64",
    "--seed",
    "3",
    "--quiet",
]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def student_weights(folder):
    return keras.saving.load_model(folder / "student.keras").get_weights()


# JAX on these CPUs compiles and steps slowest (about 70 s here): its resume runs with `pytest -m slow`.
# TensorFlow by default; JAX and PyTorch (about 70 s and 50 s) under `pytest -m slow`, which .ci/run also runs.
@pytest.mark.parametrize(
    "backend",
    ["tensorflow", pytest.param("jax", marks=pytest.mark.slow), pytest.param("torch", marks=pytest.mark.slow)],
)
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, backend):
    """Kill a run with SIGKILL after its first student epoch, resume it, compare with a run never interrupted.

    On JAX and PyTorch the reference and the resumed run start in child
    processes (the CLI's own switch of backend), and `--resume` finds the
    backend in the run's run.json.
    """
    reference = tmp_path / "reference"
    result = run("distill", *SMALL, "--backend", backend, "--epochs", 3, "--deterministic", "--output", reference)
    assert result.exit_code == 0, result.output

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "stkd_keras.cli.main",
        "distill",
        *SMALL,
        "--backend",
        backend,
        "--epochs",
        "3",
        "--deterministic",
        "--output",
        str(killed),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        partial = list(tmp_path.glob(".killed.partial-*"))
        state = checkpoints.read_state(partial[0]) if partial else None
        if state and state["epoch"] >= 1:
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert state and state["epoch"] >= 1, "the student never completed an epoch"
    assert not killed.exists()

    result = run("distill", "--resume", killed, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_at_epoch"] == state["epoch"] and metrics["backend"] == backend
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["final_val_accuracy"] == pytest.approx(expected["final_val_accuracy"], abs=1e-6)
    for a, b in zip(student_weights(killed), student_weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with open(killed / "history.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 3  # header + one row per epoch, across the interruption
    # Epochs from 1, as the log and metrics.json count; STKD's training accuracy is on mixed labels and named so.
    resumed, uninterrupted = (reporting.read_history(folder / "history.csv") for folder in (killed, reference))
    assert resumed["epoch"] == uninterrupted["epoch"] == [1, 2, 3]
    assert {"mixed_accuracy", "mixed_top5_accuracy", "val_accuracy", "val_top5_accuracy"} <= set(resumed)
    assert not {"accuracy", "top5_accuracy", "val_mixed_accuracy"} & set(resumed) and set(resumed) == set(uninterrupted)
    assert resumed["val_accuracy"][-1] == pytest.approx(metrics["final_val_accuracy"], abs=1e-6)
    np.testing.assert_allclose(resumed["mixed_accuracy"], uninterrupted["mixed_accuracy"], atol=1e-6)
    assert not list(tmp_path.glob(".killed.partial-*"))


def test_same_seed_gives_identical_weights(tmp_path):
    for name in ("a", "b"):
        result = run(
            "train-teacher",
            "--model",
            "cnn8",
            "--epochs",
            1,
            "--train-subset",
            256,
            "--val-subset",
            128,
            "--seed",
            7,
            "--deterministic",
            "--quiet",
            "--output",
            tmp_path / name,
        )
        assert result.exit_code == 0, result.output
    weights_a = keras.saving.load_model(tmp_path / "a" / "teacher.keras").get_weights()
    weights_b = keras.saving.load_model(tmp_path / "b" / "teacher.keras").get_weights()
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    # The runs gave the process its own setting back: TensorFlow's op determinism, left on, would make Keras
    # silently compile every later model without XLA (jit_compile=True turns into False).
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert model.jit_compile is (keras.backend.backend() != "torch")


def test_recipe_fields_and_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "dataset: fashion_mnist\nteacher_model: cnn8\nstudent: cnn8\nmethod: kd\nepochs: 2\nbatch_size: 64\n"
        "learning_rate: 0.02\nlr_schedule: step\nlr_decay_epochs: [1]\ntemperature: 2\ntrain_subset: 256\nval_subset: "
        "128\n"
    )
    output = tmp_path / "run"
    result = run("distill", "--recipe", recipe, "--temperature", 3.0, "--quiet", "--output", output)
    assert result.exit_code == 0, result.output
    config = json.loads((output / "metrics.json").read_text())["config"]
    assert config["method"] == "kd" and config["epochs"] == 2 and config["learning_rate"] == 0.02
    assert config["temperature"] == 3.0  # the command line overrides the recipe
    assert config["lr_decay_epochs"] == [1] and config["model"] == "cnn8"
    with open(output / "history.csv") as f:
        rates = [
            float(row.split(",")[header.index("learning_rate")])
            for header in [f.readline().strip().split(",")]
            for row in f
        ]
    # Step schedule: 0.02 for epoch 1, then x0.1 from the start of epoch 2.
    assert rates == pytest.approx([0.02, 0.002])


@pytest.mark.parametrize(
    "text, message",
    [
        ("dataset: fashion_mnist\nlearning_rat: 0.1\n", "unknown field `learning_rat`. Valid fields: .*learning_rate"),
        ("epochs: ten\n", "field `epochs` must be int. Received: 'ten'"),
        ("lr_decay_epochs: 150\n", "field `lr_decay_epochs` must be a list of integers"),
        ("- a list\n", "a recipe is a mapping"),
    ],
)
def test_recipe_validation(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)
    result = run("distill", "--recipe", recipe, "--output", tmp_path / "run")
    assert result.exit_code == 1 and "bad.yaml" in result.output and not (tmp_path / "run").exists()


def test_every_shipped_recipe_is_valid():
    root = Path(__file__).resolve().parents[1] / "recipes"
    recipes = sorted(root.rglob("*.yaml"))
    assert len(recipes) >= 8
    for path in recipes:
        fields = load_recipe(path)
        config = RunConfig.from_dict(
            {k: v for k, v in fields.items() if k not in ("student", "teacher_model", "teacher_epochs")}
        )
        config.validate()
        # A recipe's hyperparameters are its method's, all of them kept.
        assert set(fields) & set(methods.hyperparameter_fields()) <= set(config.method_options)


def test_divergence_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    output = tmp_path / "run"
    result = run(
        "train-teacher",
        "--model",
        "cnn8",
        "--epochs",
        3,
        "--train-subset",
        256,
        "--val-subset",
        64,
        "--optimizer",
        "sgd",
        "--learning-rate",
        1e12,
        "--lr-schedule",
        "constant",
        "--quiet",
        "--output",
        output,
    )
    assert result.exit_code == 1
    assert "Training diverged: the loss became" in result.output and "at epoch 1, step" in result.output
    assert not output.exists()


def test_validation_holdout_validates_on_training_images_never_trained_on(tmp_path):
    output = tmp_path / "run"
    result = run(
        "train-teacher",
        "--model",
        "cnn8",
        "--epochs",
        1,
        "--train-subset",
        256,
        "--validation-holdout",
        300,
        "--quiet",
        "--output",
        output,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["validation_holdout"] == 300
    assert (
        metrics["dataset"]["validation"]["split"] == "validation"
        and metrics["dataset"]["validation"]["num_examples"] == 300
    )
    assert metrics["dataset"]["train"]["num_examples"] == 256
    assert metrics["note"].startswith("Validation is 300 training images held out from training.")
    # The recorded accuracy is the saved model's on the last 300 of the training split's fixed shuffle, worked out here.
    images, labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "train")
    held_out = np.random.default_rng(0).permutation(len(labels))[-300:]
    normalised = (images[held_out].astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
    model = keras.saving.load_model(output / "teacher.keras")
    logits = model.predict(normalised, verbose=0).astype("float64")
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels[held_out]))
    assert metrics["final_val_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # Its calibration on the same images: NLL and the 15-bin ECE, written out here from the logits.
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    nll = -np.mean(np.log(probabilities[np.arange(300), labels[held_out]]))
    confidence, correct = probabilities.max(-1), np.argmax(logits, -1) == labels[held_out]
    bins = np.minimum((np.ceil(confidence * 15) - 1).astype(int), 14)
    ece = (
        sum(abs(correct[bins == k].mean() - confidence[bins == k].mean()) * np.sum(bins == k) for k in set(bins)) / 300
    )
    calibration = metrics["final_val_calibration"]
    assert calibration["nll"] == pytest.approx(nll, rel=1e-4) and calibration["ece"] == pytest.approx(ece, abs=1e-5)
    assert sum(row["count"] for row in calibration["bins"]) == 300
    # Validated on held-out images, the run also reports the saved model on the whole test split.
    test_images, test_labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "test")
    test_normalised = (test_images.astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
    test_logits = model.predict(test_normalised, verbose=0)
    assert metrics["test"]["num_examples"] == 10000
    assert metrics["test"]["accuracy"] == pytest.approx(np.mean(np.argmax(test_logits, -1) == test_labels), abs=1e-6)


def test_near_chance_teacher_is_warned_about(tmp_path):
    teacher = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, kernel_initializer="zeros")],
        name="blank",
    )
    teacher.save(tmp_path / "blank.keras")
    result = run(
        "distill",
        "--teacher",
        tmp_path / "blank.keras",
        *SMALL[:2],
        "--epochs",
        1,
        "--train-subset",
        128,
        "--val-subset",
        128,
        "--quiet",
        "--output",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    assert "Warning: the teacher is near chance" in result.output


def test_report_prints_summary_and_draws_curves(tmp_path):
    output = tmp_path / "run"
    assert (
        run(
            "train-teacher",
            "--model",
            "cnn8",
            "--epochs",
            2,
            "--train-subset",
            256,
            "--val-subset",
            128,
            "--quiet",
            "--output",
            output,
        ).exit_code
        == 0
    )
    result = run("report", output)
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert f"Final-epoch val top-1: {metrics['final_val_accuracy']:.4f} (the saved model)." in result.output
    assert f"Best-epoch val top-1:  {metrics['best_val_accuracy']:.4f}" in result.output
    png = (output / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (output / "tensorboard").is_dir() and any((output / "tensorboard").rglob("events.out.tfevents.*"))
    lines = (output / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"learning_rate", "val_accuracy", "ce_loss"} <= set(header)
    # A teacher trains on real labels: its training accuracy keeps Keras's name. Epochs count from 1 here, in
    # metrics.json and in TensorBoard alike.
    assert "accuracy" in header and "mixed_accuracy" not in header
    assert [line.split(",")[0] for line in lines] == ["epoch", "1", "2"]
    assert metrics["final_epoch"]["epoch"] == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard" / "validation"))
    events.Reload()
    recorded = (
        events.Scalars("epoch_accuracy")
        if "epoch_accuracy" in events.Tags()["scalars"]
        else events.Tensors("epoch_accuracy")
    )
    assert [event.step for event in recorded] == [1, 2]
    listed = run("report", tmp_path)  # the folder above the run: a listing of the runs in it
    assert listed.exit_code == 0 and listed.output.splitlines() == [
        "1 finished run(s):",
        f"  {output}: teacher cnn8, method ce, tensorflow, epoch 2 of 2, final val top-1 "
        f"{metrics['final_val_accuracy']:.4f}",
    ]
    # Whole epochs on every x axis (a 2-epoch run once drew 1.0, 1.2, ... 2.0), and every y axis says what it shows.
    from stkd_keras.reporting import curves_figure

    figure = curves_figure(output)
    for axis in figure.axes:
        visible = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
        assert visible and all(float(tick).is_integer() for tick in visible), visible
        assert axis.get_xlabel() == "epoch"
    assert [axis.get_ylabel() for axis in figure.axes] == ["loss", "top-1 accuracy", "learning rate"]


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, fashion_arrays):
    from stkd_keras import Distiller
    from stkd_keras.models import get_model

    (x, y), _ = fashion_arrays

    def distiller():
        keras.utils.set_random_seed(0)
        model = Distiller(get_model("cnn8", 10, (28, 28, 1)), method="mixup", seed=1)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        return model

    trained = distiller()
    trained.fit(x[:128], y[:128], batch_size=64, epochs=2, verbose=0, callbacks=[checkpoints.RunCheckpoint(tmp_path)])
    state = checkpoints.read_state(tmp_path)
    assert (state["epoch"], state["previous_epoch"]) == (2, 1)
    latest = tmp_path / "checkpoints" / "epoch-2.weights.h5"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated mid-write, as a crash would leave it
    messages = []
    restored = distiller()
    epoch, history = checkpoints.restore(restored, tmp_path, log=messages.append)
    assert epoch == 1 and len(history["loss"]) == 1
    assert any("epoch-2.weights.h5 cannot be loaded" in m for m in messages) and any(
        "Resuming after epoch 1" in m for m in messages
    )
    assert int(restored.optimizer.iterations.numpy()) == 2  # 128 images / 64 per step, one epoch


@pytest.mark.parametrize(
    "text, problem",
    [
        (None, "it is not JSON"),  # truncated: the first 100 bytes of the real file
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"epoch": 1}', "the field 'history' is missing"),
        ('{"epoch": "2", "history": {}}', "the epoch is '2', not a whole number >= 1"),
        ('{"epoch": 2, "history": {"loss": 1.0}}', "the history is not a mapping of lists"),
    ],
)
def test_a_damaged_checkpoint_state_is_refused_naming_the_file(tmp_path, text, problem):
    """A truncated state.json restarted the run from epoch 0 over its checkpoints; other shapes gave a traceback."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    state = folder / "state.json"
    good = json.dumps({"epoch": 2, "previous_epoch": 1, "seed_state": None, "history": {"loss": [2.0, 1.5] * 30}})
    state.write_text(good[:100] if text is None else text)
    with pytest.raises(
        runs.RunError, match=rf"The checkpoint state {state} is damaged \({problem}.*its checkpoints are kept"
    ):
        checkpoints.read_state(tmp_path)


def test_resume_refuses_a_truncated_state_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    original = checkpoints.RunCheckpoint.on_epoch_end

    def commit_then_fail(self, epoch, logs=None):
        original(self, epoch, logs)
        raise RuntimeError("stopped after epoch 1")

    monkeypatch.setattr(checkpoints.RunCheckpoint, "on_epoch_end", commit_then_fail)
    output = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train-teacher",
            "--model",
            "cnn8",
            "--epochs",
            "2",
            "--train-subset",
            "128",
            "--val-subset",
            "64",
            "--quiet",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 1 and "continue it with --resume" in result.output, result.output
    monkeypatch.undo()
    [staging] = [run["staging"] for run in runs.unfinished_runs(tmp_path)]
    state = staging / "checkpoints" / "state.json"
    state.write_bytes(state.read_bytes()[:100])
    before = {p.name: p.read_bytes() for p in (staging / "checkpoints").iterdir()}
    result = run("train-teacher", "--resume", output, "--quiet")
    assert result.exit_code == 1 and f"The checkpoint state {state} is damaged" in result.output
    assert "Resuming" not in result.output and "Training" not in result.output
    assert {p.name: p.read_bytes() for p in (staging / "checkpoints").iterdir()} == before


def test_both_checkpoints_damaged_is_one_sentence(tmp_path, fashion_arrays):
    from stkd_keras import Distiller
    from stkd_keras.models import get_model

    (x, y), _ = fashion_arrays
    model = Distiller(get_model("cnn8", 10, (28, 28, 1)), method="ce")
    model.compile(optimizer="sgd")
    model.fit(x[:128], y[:128], batch_size=64, epochs=2, verbose=0, callbacks=[checkpoints.RunCheckpoint(tmp_path)])
    for path in (tmp_path / "checkpoints").glob("epoch-*.weights.h5"):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(
        runs.RunError, match="No checkpoint in .* can be loaded \\(both are damaged\\); the run cannot be resumed"
    ):
        checkpoints.restore(model, tmp_path, log=lambda *_: None)


def test_an_exploding_run_with_a_finite_loss_stops_and_its_model_is_refused(tmp_path):
    """--learning-rate 1000 made BatchNorm's moving variance inf while the loss stayed finite: the run "succeeded"."""
    output = tmp_path / "run"
    result = run(
        "train-teacher",
        "--model",
        "cnn8",
        "--epochs",
        3,
        "--train-subset",
        512,
        "--val-subset",
        64,
        "--optimizer",
        "sgd",
        "--learning-rate",
        1000,
        "--lr-schedule",
        "constant",
        "--quiet",
        "--output",
        output,
    )
    assert result.exit_code == 1, result.output
    assert (
        "Training diverged: stage2_bn/moving_variance holds NaN or inf after epoch 1 (the loss stayed finite)"
        in result.output
    )
    assert "Start over with a lower --learning-rate and --overwrite" in result.output and not output.exists()

    from stkd_keras.models import small_cnn

    broken = small_cnn(8, (28, 28, 1), 10, name="broken")
    variance = next(v for v in broken.weights if "moving_variance" in v.path)
    variance.assign(np.full(variance.shape, np.inf, "float32"))
    broken.save(tmp_path / "broken.keras")
    result = run_user("evaluate", "--model", tmp_path / "broken.keras", "--subset", 64)
    assert (
        result.exit_code == 1
        and f"Model {tmp_path / 'broken.keras'} holds non-finite values (in {variance.path})" in result.output
    )


def test_a_loss_non_finite_before_any_update_is_not_blamed_on_the_learning_rate(tmp_path):
    result = run_user(
        "distill",
        "--student",
        "cnn8",
        "--teacher-model",
        "cnn8",
        "--teacher-epochs",
        1,
        "--epochs",
        1,
        "--temperature",
        1e30,
        "--train-subset",
        128,
        "--val-subset",
        64,
        "--quiet",
        "--output",
        tmp_path / "run",
    )
    assert result.exit_code == 1
    assert "at epoch 1, step 1" in result.output and "not the learning rate" in result.output
    assert "lower --learning-rate" not in result.output


def run_user(*args):
    """A command as a user runs it: errors end the command with their one sentence (no exception reaches the test)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize(
    "method, epochs, options, expected",
    [
        (
            "dkd",
            1,
            {},
            "dkd's warm-up lasts 20 epochs, longer than this run's 1: its distillation terms never reach full weight "
            "(they end at 1/20 of it). mdistiller warms up over 1/12 of its run; for this one, warmup_epochs=1",
        ),
        # 30 epochs: 1/12 of them is 2.5, rounded to 2.
        (
            "dkd",
            30,
            {"warmup_epochs": 40},
            "(they end at 30/40 of it). mdistiller warms up over 1/12 of its run; for this one, warmup_epochs=2",
        ),
        ("dkd", 20, {}, None),  # the warm-up ends with the run's last epoch: full weight there
        ("kd", 1, {}, None),  # no warm-up at all
    ],
)
def test_a_warm_up_longer_than_the_run_is_warned_about(method, epochs, options, expected):
    warning = training.warmup_warning(RunConfig(model="cnn8", method=method, epochs=epochs, method_options=options))
    assert warning is None if expected is None else expected in warning

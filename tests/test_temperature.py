"""Temperature scaling of a finished run (`stkd_keras.temperature`, `stkd-keras calibrate`, `--calibrated`).

The run here is made by hand, so its logits are known in numpy: a linear classifier (Flatten, Dense) trained a few
steps on the first 1,000 Fashion-MNIST training images left by a 500-image holdout, then made overconfident by
multiplying its Dense layer by 8. Every figure is checked against numpy's own computation from its weights.
"""

import json
import shutil

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from stkd_keras import data as data_lib
from stkd_keras import evaluation, idx, temperature
from stkd_keras.cli.main import cli
from stkd_keras.config import RunConfig
from stkd_keras.run_steps import preprocessing_record
from stkd_keras.runs import RunError, write_json

HOLDOUT, TRAINED, SHARPEN = 500, 1000, 8.0


def _write_run(folder, model, info, **config) -> None:
    """A finished run folder as `finish_run` leaves one: the model, metrics.json and preprocessing.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "student.keras")
    fields = {"dataset": "fashion_mnist", "model": "cnn8", "train_subset": TRAINED, "validation_holdout": HOLDOUT}
    metrics = {
        "role": "student",
        "model": model.name,
        "method": "ce",
        "config": RunConfig(**{**fields, **config}).to_dict(),
        "dataset": {"train": info.to_dict()},
    }
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "preprocessing.json", preprocessing_record(info))


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory):
    """The run folder of an overconfident linear classifier, its Dense weights and the training split's arrays."""
    keras.utils.set_random_seed(0)
    train, info = data_lib.load("fashion_mnist", "train", 64, subset=TRAINED, holdout=HOLDOUT)
    assert info.num_examples == TRAINED
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, name="logits")], name="linear"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(train, epochs=1, verbose=0, shuffle=False)  # the pipeline shuffles
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * SHARPEN, bias * SHARPEN])
    folder = tmp_path_factory.mktemp("overconfident") / "run"
    _write_run(folder, model, info)
    return folder, [w.astype(np.float64) for w in model.get_layer("logits").get_weights()]


def numpy_logits(weights, split: str, indices) -> tuple[np.ndarray, np.ndarray]:
    """The linear model's logits on Fashion-MNIST `split`'s images `indices`, computed in numpy, and their labels."""
    images, labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), split)
    pixels = (images[indices].astype(np.float64) / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
    kernel, bias = weights
    return pixels.reshape(len(indices), -1) @ kernel + bias, labels[indices].astype(np.int64)


def numpy_nll(logits, labels, temperature=1.0) -> float:
    scaled = logits / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def grid_temperature(logits, labels) -> float:
    """The NLL's minimiser by brute force: a log grid over [0.01, 100], then a finer one around its best point."""
    grid = np.exp(np.linspace(np.log(0.01), np.log(100.0), 2001))
    best = grid[np.argmin([numpy_nll(logits, labels, t) for t in grid])]
    fine = np.linspace(best * 0.99, best * 1.01, 2001)
    return float(fine[np.argmin([numpy_nll(logits, labels, t) for t in fine])])


@pytest.fixture(scope="module")
def calibrated(overconfident, tmp_path_factory):
    """A copy of the run, calibrated by `calibrate_run` with the test split measured; and its result."""
    folder = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(overconfident[0], folder)
    return folder, temperature.calibrate_run(folder)


def test_scaling_lowers_the_nll_of_an_overconfident_model_and_keeps_top1(overconfident, calibrated):
    _, weights = overconfident
    folder, result = calibrated
    # The held-out images: the last 500 of the training split's fixed shuffle, none of the 1,000 trained on.
    order = np.random.default_rng(0).permutation(60000)
    assert not set(order[-HOLDOUT:]) & set(order[:TRAINED])
    logits, labels = numpy_logits(weights, "train", order[-HOLDOUT:])
    expected = grid_temperature(logits, labels)
    assert expected > 2  # the model is deliberately overconfident: its best temperature is well above 1
    assert result["temperature"] == pytest.approx(expected, rel=2e-4)
    fit = result["fit"]
    assert fit["examples"] == HOLDOUT and fit["holdout"] == HOLDOUT and fit["at_bound"] is False
    assert fit["nll_before"] == pytest.approx(numpy_nll(logits, labels), rel=1e-4)
    assert fit["nll_after"] == pytest.approx(numpy_nll(logits, labels, expected), rel=1e-4)
    assert fit["nll_after"] < fit["nll_before"] - 0.1
    held_out = result["held_out"]
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    assert held_out["num_examples"] == HOLDOUT
    assert held_out["before"]["accuracy"] == held_out["after"]["accuracy"] == pytest.approx(accuracy)
    assert held_out["before"]["nll"] == pytest.approx(fit["nll_before"])
    assert held_out["after"]["confidence"] < held_out["before"]["confidence"]
    # The test split, measured from the same logits before and after: top-1 unchanged, its NLL lower too.
    test_logits, test_labels = numpy_logits(weights, "test", np.arange(10000))
    split = result["split"]
    assert split["name"] == "test" and split["num_examples"] == 10000
    assert split["before"]["accuracy"] == split["after"]["accuracy"]
    assert split["before"]["accuracy"] == pytest.approx(np.mean(test_logits.argmax(axis=1) == test_labels), abs=2e-4)
    assert split["before"]["nll"] == pytest.approx(numpy_nll(test_logits, test_labels), rel=1e-4)
    assert split["after"]["nll"] == pytest.approx(numpy_nll(test_logits, test_labels, result["temperature"]), rel=1e-4)
    assert split["after"]["temperature"] == result["temperature"] and split["before"]["temperature"] == 1.0
    # The reliability bins `report` draws after scaling: softmax(logits / T)'s top-label confidence, binned
    # (k/15, (k+1)/15], counted in numpy (the model's float32 logits may move a confidence on an edge: 2 images).
    scaled = test_logits / result["temperature"]
    confidence = np.exp(scaled - scaled.max(1, keepdims=True))
    confidence = (confidence / confidence.sum(1, keepdims=True)).max(1)
    counts = np.bincount(np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14), minlength=15)
    assert [row["count"] for row in split["after"]["bins"]] == pytest.approx(counts, abs=2)
    assert sum(row["count"] for row in split["before"]["bins"]) == 10000


def test_the_temperature_is_stored_with_the_preprocessing(overconfident, calibrated):
    folder, result = calibrated
    before = json.loads((overconfident[0] / "preprocessing.json").read_text())
    stored = json.loads((folder / "preprocessing.json").read_text())
    assert {key: stored[key] for key in before} == before  # the record is extended, nothing else changed
    assert stored["temperature"] == result["temperature"]
    assert stored["temperature_fit"] == {
        "holdout": HOLDOUT,
        "examples": HOLDOUT,
        "nll_before": result["fit"]["nll_before"],
        "nll_after": result["fit"]["nll_after"],
        "at_bound": False,
    }
    written = json.loads((folder / "calibration.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written) == {
        "run",
        "model",
        "method",
        "dataset",
        "temperature",
        "fit",
        "held_out",
        "split",
        "notes",
        "environment",
    }
    assert set(written["held_out"]["after"]) == {
        "accuracy",
        "ece",
        "nll",
        "brier",
        "confidence",
        "temperature",
        "ece_bins",
        "bins",
    }
    assert written["notes"] == [] and "keras" in written["environment"]


def test_evaluate_calibrated_divides_by_the_stored_temperature(overconfident, calibrated):
    _, weights = overconfident
    folder, result = calibrated
    # evaluate --subset 300 reads the first 300 of the test split's fixed shuffle.
    logits, labels = numpy_logits(weights, "test", np.random.default_rng(0).permutation(10000)[:300])
    plain = evaluation.evaluate(folder, "fashion_mnist", subset=300)
    scaled = evaluation.evaluate(folder, "fashion_mnist", subset=300, calibrated=True)
    assert plain["temperature"] is None and plain["loss"] == pytest.approx(numpy_nll(logits, labels), rel=1e-4)
    assert scaled["temperature"] == {
        "value": result["temperature"],
        "applied": "by evaluate",
        "from": "preprocessing.json",
    }
    assert scaled["loss"] == pytest.approx(numpy_nll(logits, labels, result["temperature"]), rel=1e-4)
    assert scaled["accuracy"] == plain["accuracy"] and scaled["calibration"]["temperature"] == result["temperature"]
    # Without a stored temperature: one sentence saying what to run.
    with pytest.raises(RunError, match=r"No temperature is stored for .*; run `stkd-keras calibrate RUN` first\."):
        evaluation.evaluate(overconfident[0], "fashion_mnist", subset=10, calibrated=True)


@pytest.mark.parametrize("stored", ["abc", -1.0, 0, float("nan"), float("inf"), True, [2.0]])
def test_an_edited_stored_temperature_is_one_sentence_and_nothing_is_written(calibrated, tmp_path, stored):
    folder = tmp_path / "run"
    shutil.copytree(calibrated[0], folder)
    path = folder / "preprocessing.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": stored}))
    with pytest.raises(RunError, match=r"records the temperature .*, not a finite number > 0"):
        evaluation.evaluate(folder, "fashion_mnist", subset=10, calibrated=True)
    result = CliRunner().invoke(cli, ["export", "--model", str(folder), "--output", str(tmp_path / "export")])
    assert result.exit_code == 1 and "not a finite number > 0" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "export").exists()
    assert temperature.stored_temperature(1.5, "x") == 1.5


def test_runs_that_could_have_trained_on_the_held_out_images_are_refused(overconfident, tmp_path):
    folder, _ = overconfident
    metrics = json.loads((folder / "metrics.json").read_text())

    def check(holdout, **config):
        changed = {**metrics, "config": {**metrics["config"], **config}}
        return temperature.checked_holdout(folder, changed, holdout)

    assert check(None) == HOLDOUT and check(HOLDOUT - 1) == HOLDOUT - 1
    # Trained on the first 1,000 of 60,000: the last 59,000 are apart from them, one more would not be.
    assert check(59000) == 59000
    with pytest.raises(
        RunError, match="at most the last 59000 are images it never saw; pass --validation-holdout 59000"
    ):
        check(59001)
    # Trained on every image but the 500 held out: no more than those.
    with pytest.raises(RunError, match="would fit on 1 images it trained on; pass at most 500"):
        check(HOLDOUT + 1, train_subset=None)
    # Trained on the whole split: nothing is left, and the test split is never fitted on.
    for holdout in (None, 100):
        with pytest.raises(
            RunError, match="trained on the whole training split .* train it with --validation-holdout N"
        ):
            check(holdout, train_subset=None, validation_holdout=None)
    # A training subset without a holdout: images are left, but how many to fit on must be said.
    with pytest.raises(RunError, match="first 1000 training images without --validation-holdout, .* pass --validation"):
        check(None, validation_holdout=None)
    assert check(59000, validation_holdout=None) == 59000
    with pytest.raises(ValueError, match="Expected `holdout` to be an int >= 1. Received: holdout=0"):
        check(0)


def test_unfinished_runs_and_exported_files_are_refused(overconfident, tmp_path):
    staging = tmp_path / ".run.partial-123" / "checkpoints"
    staging.mkdir(parents=True)
    (staging / "state.json").write_text(json.dumps({"epoch": 2}))
    with pytest.raises(RunError, match=r"The run .*run is not finished \(epoch 2\); continue it with --resume"):
        temperature.calibrate_run(tmp_path / "run")
    (tmp_path / "half").mkdir()
    with pytest.raises(RunError, match="holds no metrics.json: it is not a finished stkd-keras run"):
        temperature.calibrate_run(tmp_path / "half")
    with pytest.raises(RunError, match="is an exported file; calibrate the run folder it was exported from"):
        temperature.calibrate_run(tmp_path / "student_int8.tflite")
    with pytest.raises(ValueError, match="Expected `split` in"):
        temperature.calibrate_run(overconfident[0], split="validation")
    # Nothing was written by any refusal.
    assert not (overconfident[0] / "calibration.json").exists()
    assert "temperature" not in json.loads((overconfident[0] / "preprocessing.json").read_text())


def test_a_failed_write_leaves_both_files_as_they_were(overconfident, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    shutil.copytree(overconfident[0], folder)
    before = {name: (folder / name).read_bytes() for name in ("preprocessing.json", "metrics.json")}
    original = temperature.write_json

    def failing(path, payload):
        if path.name == "preprocessing.json":
            raise OSError(28, "No space left on device", str(path))
        original(path, payload)

    monkeypatch.setattr(temperature, "write_json", failing)
    with pytest.raises(OSError):
        temperature.calibrate_run(folder, split=None)
    assert not (folder / "calibration.json").exists()
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_calibrate_command(overconfident, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(overconfident[0], folder)
    runner = CliRunner()
    assert runner.invoke(cli, ["calibrate", "--help"]).exit_code == 0
    result = runner.invoke(cli, ["calibrate", str(folder), "--split", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    stored = json.loads((folder / "preprocessing.json").read_text())["temperature"]
    written = json.loads((folder / "calibration.json").read_text())
    assert f"Temperature {stored:.4f}, fitted on 500 held-out training images" in result.output
    lines = result.output.splitlines()
    assert "| images | scaling | ECE % | NLL | Brier | confidence % | top-1 % |" in lines
    after = written["held_out"]["after"]
    assert (
        f"| held-out (500) | after | {100 * after['ece']:.2f} | {after['nll']:.4f} | {after['brier']:.4f} | "
        f"{100 * after['confidence']:.2f} | {100 * after['accuracy']:.2f} |" in lines
    )
    assert written["split"] is None and not any(line.startswith("| test") for line in lines)
    # evaluate prints the calibration figures, and the temperature it applied.
    result = runner.invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(folder),
            "--subset",
            "100",
            "--quiet",
            "--calibrated",
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"(temperature {stored:.4f}, applied by evaluate, from preprocessing.json)." in result.output
    assert "Calibration: ECE " in result.output and "% (15 equal-width bins), NLL " in result.output
    # Mistakes: one sentence, exit code 1 (2 for a malformed option), nothing written.
    for args, code, message in (
        ([str(folder / "student.tflite")], 1, "is an exported file"),
        ([str(tmp_path / "missing")], 1, "does not exist"),
        ([str(folder), "--validation-holdout", "59001"], 1, "pass --validation-holdout 59000 or fewer."),
        ([str(folder), "--validation-holdout", "0"], 2, "Invalid value for '--validation-holdout'"),
    ):
        result = runner.invoke(cli, ["calibrate", *args])
        assert result.exit_code == code and message in result.output and "Traceback" not in result.output
    result = runner.invoke(
        cli, ["evaluate", "--model", str(overconfident[0]), "--calibrated", "--json", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 1 and "run `stkd-keras calibrate RUN` first." in result.output
    # export --calibrated says what it did with the temperature; without one stored it is refused, naming the option.
    export = ["export", "--format", "tflite", "--quantize", "float32", "--verify-images", "50", "--calibrated"]
    result = runner.invoke(cli, [*export, "--model", str(folder), "--output", str(tmp_path / "exported")])
    assert result.exit_code == 0, result.output
    assert f"Temperature {stored:.4f} (stkd-keras calibrate): every file divides its logits by it." in result.output
    result = runner.invoke(cli, [*export, "--model", str(overconfident[0]), "--output", str(tmp_path / "none")])
    assert result.exit_code == 2 and "Invalid value for --calibrated: No temperature is stored" in result.output
    assert not (tmp_path / "none").exists()


def test_the_export_wrapper_divides_the_logits_by_the_temperature():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="tiny")
    images = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    scaled = temperature.temperature_scaled(model, 2.5)
    assert scaled.name == "tiny" and scaled.input_shape == model.input_shape
    np.testing.assert_allclose(scaled.predict(images, verbose=0), model.predict(images, verbose=0) / 2.5, rtol=1e-6)


def test_export_calibrated_builds_the_temperature_into_the_files(overconfident, calibrated, tmp_path):
    """The exported logits are Keras's divided by T; evaluate reads the figures back and never divides twice."""
    from stkd_keras import export as export_lib

    folder, result = calibrated
    value = result["temperature"]
    options = export_lib.ExportOptions(
        formats=("tflite",), quantize="float32,int8", verify_images=200, representative_images=50, calibrated=True
    )
    report = export_lib.export_run(folder, tmp_path / "scaled", options, log=lambda *_: None)
    scaled_file, int8_file = tmp_path / "scaled" / "student_float32.tflite", tmp_path / "scaled" / "student_int8.tflite"
    stored = json.loads((folder / "preprocessing.json").read_text())
    for path in (scaled_file, int8_file):
        assert export_lib.read_metadata(path)["temperature"] == {
            "value": value,
            "applied_in_graph": True,
            "fit": stored["temperature_fit"],
        }
    # The first 200 test images of the fixed shuffle: the verification images, and evaluate --subset 200's.
    logits, labels = numpy_logits(overconfident[1], "test", np.random.default_rng(0).permutation(10000)[:200])
    images = export_lib.load_export_data("fashion_mnist", stored, 200, 50).images
    exported = export_lib.runner_for(scaled_file).predict(images)
    np.testing.assert_allclose(exported, logits / value, atol=1e-4 * max(1.0, np.abs(logits / value).max()))
    float_row = next(row for row in report["files"] if row["file"] == scaled_file.name)
    assert float_row["within_bound"] and float_row["max_abs_logit"] == pytest.approx(np.abs(logits / value).max())
    for calibrated_flag in (False, True):  # --calibrated on a file that has it in its graph: nothing more
        measured = evaluation.evaluate(scaled_file, "fashion_mnist", subset=200, calibrated=calibrated_flag)
        assert measured["temperature"] == {
            "value": value,
            "applied": "in the file's graph",
            "from": "embedded metadata",
        }
        assert measured["loss"] == pytest.approx(numpy_nll(logits, labels, value), rel=1e-4)
        assert measured["calibration"]["temperature"] == 1.0
    # Does int8 change calibration? evaluate reports the int8 file's own figures, here from its own logits in numpy.
    int8_logits = export_lib.runner_for(int8_file).predict(images).astype(np.float64)
    int8 = evaluation.evaluate(int8_file, "fashion_mnist", subset=200)
    assert int8["loss"] == pytest.approx(numpy_nll(int8_logits, labels), rel=1e-5)
    assert int8["calibration"]["confidence"] == pytest.approx(
        np.mean(np.exp(int8_logits.max(axis=1)) / np.exp(int8_logits).sum(axis=1)), rel=1e-5
    )
    assert 0 <= int8["calibration"]["ece"] <= 1 and int8["calibration"]["brier"] > 0


def test_a_plain_export_records_the_temperature_for_evaluate_to_apply(overconfident, calibrated, tmp_path):
    from stkd_keras import export as export_lib
    from stkd_keras.export.runtime import embed_metadata

    folder, result = calibrated
    value = result["temperature"]
    options = export_lib.ExportOptions(formats=("tflite",), quantize="float32", verify_images=100)
    export_lib.export_run(folder, tmp_path / "plain", options, log=lambda *_: None)
    path = tmp_path / "plain" / "student_float32.tflite"
    metadata = export_lib.read_metadata(path)
    assert metadata["temperature"]["value"] == value and metadata["temperature"]["applied_in_graph"] is False
    logits, labels = numpy_logits(overconfident[1], "test", np.random.default_rng(0).permutation(10000)[:100])
    plain = evaluation.evaluate(path, "fashion_mnist", subset=100)
    assert plain["temperature"] is None and plain["loss"] == pytest.approx(numpy_nll(logits, labels), rel=1e-4)
    scaled = evaluation.evaluate(path, "fashion_mnist", subset=100, calibrated=True)
    assert scaled["temperature"] == {"value": value, "applied": "by evaluate", "from": "embedded metadata"}
    assert scaled["loss"] == pytest.approx(numpy_nll(logits, labels, value), rel=1e-4)
    # A file without any temperature: --calibrated is refused in one sentence.
    bare = tmp_path / "bare.tflite"
    shutil.copyfile(path, bare)
    embed_metadata(bare, {key: entry for key, entry in metadata.items() if key != "temperature"})
    with pytest.raises(RunError, match="bare.tflite carries no temperature; run `stkd-keras calibrate RUN` first"):
        evaluation.evaluate(bare, "fashion_mnist", subset=10, calibrated=True)
    # export --calibrated needs a stored temperature, and does not reach the QAT/pruning files.
    with pytest.raises(export_lib.ExportOptionError, match="run `stkd-keras calibrate RUN` first") as refused:
        export_lib.prepare_export(overconfident[0], export_lib.ExportOptions(calibrated=True))
    assert refused.value.option == "--calibrated"
    with pytest.raises(export_lib.ExportOptionError, match="QAT/pruning files are written from the unscaled student"):
        export_lib.prepare_export(folder, export_lib.ExportOptions(calibrated=True, qat_epochs=1, finetune_method="ce"))


# Slow (25 s: a real training run): the default run calibrates a run made by hand in test_calibrate_command.
@pytest.mark.slow
def test_calibrate_a_trained_run_on_the_images_it_validated_on(tmp_path):
    """A run validated on held-out images is calibrated on exactly those: the same top-1 as its final epoch's."""
    runner = CliRunner()
    output = tmp_path / "run"
    args = ["--model", "cnn8", "--epochs", "1", "--train-subset", "256", "--validation-holdout", "300", "--quiet"]
    result = runner.invoke(cli, ["train-teacher", *args, "--output", str(output)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["calibrate", str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    written = json.loads((output / "calibration.json").read_text())
    assert written["fit"]["examples"] == 300
    assert written["held_out"]["before"]["accuracy"] == pytest.approx(metrics["final_val_accuracy"], abs=1e-6)
    assert written["held_out"]["before"]["nll"] == pytest.approx(metrics["final_val_calibration"]["nll"], rel=1e-5)
    # The run measured the test split at its end too: the same figures before scaling.
    assert written["split"]["before"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert written["split"]["before"]["ece"] == pytest.approx(metrics["test"]["calibration"]["ece"], abs=1e-6)


def test_a_run_started_from_outside_weights_is_calibrated_with_a_note(overconfident, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(overconfident[0], folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    write_json(folder / "metrics.json", {**metrics, "config": {**metrics["config"], "weights": "start.weights.h5"}})
    logged = []
    result = temperature.calibrate_run(folder, split=None, log=logged.append)
    note = "Note: the run started from weights trained outside it; the images those learnt from are not known here."
    assert result["notes"] == [note] and note in logged and result["split"] is None

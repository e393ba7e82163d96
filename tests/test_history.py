"""history.csv: epochs from 1, training accuracy on mixed labels named `mixed_accuracy`; older files read the same."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stkd_keras import compare, reporting
from stkd_keras.run_logs import HistoryLogger

ROOT = Path(__file__).resolve().parents[1]
# Written before this convention: epochs from 0, `accuracy` for the training accuracy (of a method that mixes: on
# mixed labels).
TEACHER = ROOT / "benchmarks" / "results" / "fashion_mnist_methods" / "teacher"
STKD = ROOT / "benchmarks" / "results" / "fashion_mnist_methods" / "runs" / "epochs-3" / "stkd" / "seed0"


def test_an_old_teacher_history_reads_with_epochs_from_one():
    metrics, history = reporting.read_run(TEACHER)
    # The file's first and last rows: "0,0.6813401579856873,...,0.7573999762535095,..." and "7,0.9093549847602844,...".
    assert history["epoch"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert history["accuracy"][0] == 0.6813401579856873 and history["accuracy"][-1] == 0.9093549847602844
    assert history["val_accuracy"][0] == 0.7573999762535095
    assert "mixed_accuracy" not in history  # `ce` trains on real labels
    # metrics.json counted from 1 all along: its best epoch is the epoch of the best row here.
    best = int(np.argmax(history["val_accuracy"]))
    assert history["epoch"][best] == metrics["best_epoch"]["epoch"] == 7
    assert history["val_accuracy"][best] == metrics["best_epoch"]["val_accuracy"]


def test_an_old_stkd_history_names_its_training_accuracy_mixed():
    _, history = reporting.read_run(STKD)
    # First row of the file:
    # "0,0.37159454822540283,...,0.8587740659713745 (top5_accuracy),0.5023999810218811 (val_accuracy),..."
    assert history["epoch"] == [1, 2, 3]
    assert (
        history["mixed_accuracy"][0] == 0.37159454822540283 and history["mixed_top5_accuracy"][0] == 0.8587740659713745
    )
    assert history["val_accuracy"][0] == 0.5023999810218811
    assert "accuracy" not in history and "top5_accuracy" not in history


def test_new_history_is_read_as_written(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,mixed_accuracy,val_accuracy\n1,2.0,0.25,0.5\n2,1.5,0.5,0.75\n")
    assert reporting.read_history(path, "stkd") == {
        "epoch": [1, 2],
        "loss": [2.0, 1.5],
        "mixed_accuracy": [0.25, 0.5],
        "val_accuracy": [0.5, 0.75],
    }
    # A method this process does not know leaves the names as they are.
    assert "accuracy" in reporting.read_history(TEACHER / "history.csv", "not_registered_here")


def test_curves_and_compare_plot_draw_epochs_from_one_for_old_and_new_files(tmp_path, monkeypatch):
    figure = reporting.curves_figure(STKD)  # selects matplotlib's Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    lines = {line.get_label(): line for line in figure.axes[1].get_lines()}
    assert set(lines) == {"mixed_accuracy", "val_accuracy"}
    assert list(lines["mixed_accuracy"].get_xdata()) == [1, 2, 3]

    # A run written today beside the old one: the old run's metrics under another method, a history counted from 1.
    new = tmp_path / "new"
    shutil.copytree(STKD, new)
    metrics = json.loads((new / "metrics.json").read_text())
    metrics["method"] = "kd"
    (new / "metrics.json").write_text(json.dumps(metrics))
    (new / "history.csv").write_text("epoch,val_accuracy\n1,0.5\n2,0.6\n3,0.7\n")
    drawn = []
    monkeypatch.setattr(compare, "save_figure", lambda figure, path, dpi: drawn.append(figure) or Path(path))
    compare.plot(compare.compare(compare.load_runs([STKD, new]), baseline="kd"), tmp_path / "plot.png")
    curves = {line.get_label(): line for line in drawn[0].axes[1].get_lines()}
    assert list(curves["stkd"].get_xdata()) == list(curves["kd"].get_xdata()) == [1, 2, 3]
    assert list(curves["kd"].get_ydata()) == pytest.approx([50, 60, 70])
    plt.close(figure)
    plt.close(drawn[0])


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def log_epochs(logger, epochs, logs):
    logger.on_train_begin()
    for epoch in epochs:
        logger.on_epoch_end(epoch, dict(logs))
    logger.on_train_end()


def test_history_logger_counts_epochs_from_one_and_a_resumed_run_goes_on(tmp_path):
    path = tmp_path / "history.csv"
    logs = {"loss": 1.0, "mixed_accuracy": 0.25, "val_accuracy": 0.5}
    log_epochs(HistoryLogger(path), [0, 1], logs)
    log_epochs(HistoryLogger(path, append=True), [2], logs)  # resumed after Keras's epoch index 1
    assert path.read_text().splitlines()[0] == "epoch,loss,mixed_accuracy,val_accuracy"
    assert [row["epoch"] for row in rows(path)] == ["1", "2", "3"]


def test_a_run_resumed_into_an_old_history_keeps_its_columns_and_numbering(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss,val_accuracy\n0,0.25,2.0,0.5\n")
    log_epochs(HistoryLogger(path, append=True), [1], {"loss": 1.5, "mixed_accuracy": 0.375, "val_accuracy": 0.625})
    assert rows(path) == [
        {"epoch": "0", "accuracy": "0.25", "loss": "2.0", "val_accuracy": "0.5"},
        {"epoch": "1", "accuracy": "0.375", "loss": "1.5", "val_accuracy": "0.625"},
    ]
    assert reporting.read_history(path, "stkd")["epoch"] == [1, 2]


def test_tensorboard_without_tensorflow_counts_epochs_from_one(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stkd_keras.run_logs import TensorBoardScalars

    writer = TensorBoardScalars(tmp_path)
    for epoch in (0, 1):
        writer.on_epoch_end(epoch, {"mixed_accuracy": 0.25 * (epoch + 1), "val_accuracy": 0.5})
    writer.on_train_end()

    def steps(split, tag):
        events = EventAccumulator(str(tmp_path / split))
        events.Reload()
        return [
            event.step for event in (events.Scalars(tag) if tag in events.Tags()["scalars"] else events.Tensors(tag))
        ]

    assert steps("train", "epoch_mixed_accuracy") == steps("validation", "epoch_accuracy") == [1, 2]


def test_a_resumed_run_drops_the_row_of_an_epoch_its_checkpoint_lacks(tmp_path):
    """Killed after epoch 2's row was written but before its checkpoint: the run resumes after epoch 1, and
    epoch 2 must not appear twice (it did: rows 1, 2, 2, 3)."""
    path = tmp_path / "history.csv"
    logs = {"loss": 1.0, "val_accuracy": 0.5}
    log_epochs(HistoryLogger(path), [0, 1], logs)
    log_epochs(HistoryLogger(path, append=True, committed_epochs=1), [1, 2], {"loss": 0.5, "val_accuracy": 0.75})
    assert [(row["epoch"], row["loss"]) for row in rows(path)] == [("1", "1.0"), ("2", "0.5"), ("3", "0.5")]
    # An old file (epochs from 0) is trimmed in its own numbering.
    old = tmp_path / "old.csv"
    old.write_text("epoch,accuracy,loss,val_accuracy\r\n0,0.25,2.0,0.5\r\n1,0.3,1.8,0.55\r\n")
    log_epochs(
        HistoryLogger(old, append=True, committed_epochs=1),
        [1],
        {"loss": 1.5, "mixed_accuracy": 0.375, "val_accuracy": 0.625},
    )
    assert [(row["epoch"], row["loss"]) for row in rows(old)] == [("0", "2.0"), ("1", "1.5")]

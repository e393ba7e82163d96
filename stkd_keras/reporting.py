"""Summaries and training curves of finished runs (`stkd-keras report`)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from stkd_keras.files import atomic_write
from stkd_keras.methods import get_method


def read_run(run_dir: str | os.PathLike) -> tuple[dict, dict[str, list[float]]]:
    """A run folder's metrics.json and history.csv (columns as float lists).

    Raises:
        ValueError: When either file is missing or malformed (naming it).
    """
    run_dir = Path(run_dir)
    metrics_path, history_path = run_dir / "metrics.json", run_dir / "history.csv"
    for path in (metrics_path, history_path):
        if not path.is_file():
            raise ValueError(f"{path} is missing: is {run_dir} a finished stkd-keras run?")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{metrics_path} is not valid JSON: {error}") from None
    return metrics, read_history(history_path, metrics.get("method"))


def read_history(path: str | os.PathLike, method: str | None = None) -> dict[str, list[float]]:
    """A history.csv as float columns, in today's convention whichever version of stkd-keras wrote it.

    Today's files number epochs from 1 and name the training accuracy of a
    method that mixes `mixed_accuracy` (`mixed_top5_accuracy`). Files
    written before (those committed under benchmarks/results/ among them)
    number epochs from 0, which their first row shows, and call it
    `accuracy`: their epochs are counted from 1 here, and their training
    accuracy is renamed when `method` is a registered method that mixes.

    Raises:
        ValueError: When the file is malformed (naming it).
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        history = {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is malformed: {error}") from None
    if history.get("epoch", [1])[0] == 0:
        history["epoch"] = [epoch + 1 for epoch in history["epoch"]]
    if "accuracy" in history and _mixes(method):
        for name in ("accuracy", "top5_accuracy"):
            if name in history:
                history[f"mixed_{name}"] = history.pop(name)
    return history


def _mixes(method: str | None) -> bool:
    try:
        return method is not None and get_method(method).mixes
    except ValueError:  # a method registered in code this process has not imported
        return False


def summary(run_dir: str | os.PathLike) -> str:
    """A few lines describing the run: what was trained, how, and its final and best accuracy."""
    metrics, history = read_run(run_dir)
    config = metrics.get("config", {})
    teacher = metrics.get("teacher") or {}
    lines = [
        f"Run {run_dir}: {metrics['role']} {metrics['model']} ({metrics['parameters']:,} parameters), method {metrics['method']!r}, "
        f"dataset {config.get('dataset')}, {len(history.get('epoch', []))} epochs, seed {metrics.get('seed')}, "
        f"{metrics.get('train_seconds', 0):.0f} s of training.",
        f"Final-epoch val top-1: {metrics['final_val_accuracy']:.4f} (the saved model).",
        f"Best-epoch val top-1:  {metrics['best_val_accuracy']:.4f} at epoch {metrics['best_epoch']['epoch']} (for reference only).",
    ]
    if teacher:
        lines.append(f"Teacher {teacher.get('name')}: val top-1 {teacher.get('accuracy', float('nan')):.4f} ({teacher.get('path')}).")
    if metrics.get("resumed_at_epoch"):
        lines.append(f"Resumed after epoch {metrics['resumed_at_epoch']}.")
    return "\n".join(lines)


def plot_curves(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Draws loss parts, accuracy and learning rate per epoch into a PNG; returns its path."""
    return save_figure(curves_figure(run_dir), path, dpi=100)


def curves_figure(run_dir: str | os.PathLike):
    """The matplotlib figure `plot_curves` writes: three panels over whole epochs (counted from 1), each axis labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics, history = read_run(run_dir)
    epochs = history.get("epoch") or list(range(1, len(history.get("loss", [])) + 1))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "ce_loss", "kd_loss", "val_loss", "val_ce_loss", "val_kd_loss"):
        if key in history:
            axes[0].plot(epochs, history[key], label=key, linestyle="--" if key.startswith("val_") else "-")
    axes[0].set_title("loss terms")
    axes[0].set_ylabel("loss")
    for key in ("accuracy", "mixed_accuracy", "val_accuracy"):  # mixed_accuracy: on mixup's mixed labels, so lower
        if key in history:
            axes[1].plot(epochs, history[key], label=key)
    axes[1].set_title(f"top-1 (final {metrics['final_val_accuracy']:.4f}, best {metrics['best_val_accuracy']:.4f})")
    axes[1].set_ylabel("top-1 accuracy")
    if "learning_rate" in history:
        axes[2].plot(epochs, history["learning_rate"], label="learning_rate")
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_ylabel("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=8)
    figure.suptitle(f"{metrics['model']} ({metrics['method']}) on {metrics.get('config', {}).get('dataset')}")
    return figure


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Writes a matplotlib figure as PNG atomically (temporary file, then rename) and closes it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=dpi))
    finally:
        plt.close(figure)

"""Summaries and training curves of finished runs, and the listing of a folder of runs (`stkd-keras report`)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from stkd_keras import compare_calibration
from stkd_keras.calibration import CALIBRATION_FIELDS as FIELDS
from stkd_keras.files import atomic_write, restored_on_failure
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
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{metrics_path} is damaged (it holds no run's metrics), so the run cannot be reported; rerun it."
        )
    return metrics, read_history(history_path, metrics.get("method"))


def _number(value) -> bool:
    """A JSON number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value) -> bool:
    """A JSON whole number >= 0 (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _epoch_row(value) -> bool:
    return isinstance(value, dict) and _whole(value.get("epoch"))


# The type of each field of a finished run's metrics.json that `report` reads, where the field is there.
_FIELD_CHECKS = {
    "role": lambda value: isinstance(value, str),
    "model": lambda value: isinstance(value, str),
    "method": lambda value: isinstance(value, str),
    "parameters": _whole,
    "final_val_accuracy": _number,
    "best_val_accuracy": _number,
    "final_epoch": _epoch_row,
    "best_epoch": _epoch_row,
    "config": lambda value: isinstance(value, dict),
    "teacher": lambda value: value is None or isinstance(value, dict),
    "test": lambda value: isinstance(value, dict),
    "train_seconds": lambda value: value is None or _number(value),
}
# The fields a run's summary needs, those its curves and its reliability diagram need, and those a listing of runs
# shows (`find_runs`).
_SUMMARY_FIELDS = (
    "role",
    "model",
    "method",
    "parameters",
    "final_val_accuracy",
    "best_val_accuracy",
    "final_epoch",
    "best_epoch",
)
_FIGURE_FIELDS = ("model", "method", "final_val_accuracy", "best_val_accuracy")
_LISTED_FIELDS = ("role", "model", "method", "final_val_accuracy", "final_epoch")


def metrics_problem(metrics, required: tuple[str, ...] = _SUMMARY_FIELDS) -> str | None:
    """What makes a parsed metrics.json unreadable as a finished run's (a `required` field missing, or a field of
    another type, as an edited or foreign file has), or None."""
    if not isinstance(metrics, dict):
        return "it does not hold a run's metrics"
    missing = [name for name in required if name not in metrics]
    if missing:
        return f"its field {missing[0]!r} is missing"
    for name, check in _FIELD_CHECKS.items():
        if name in metrics and not check(metrics[name]):
            return f"its field {name!r} is {metrics[name]!r}"
    return None


@dataclass
class RunFiles:
    """One finished run's files as `report` reads them, each once: metrics.json and history.csv (`read_run`), and
    calibration.json (`compare_calibration.read_scaling`: None without one) when first asked for, so that a summary,
    its curves and its reliability diagram are drawn from the same reading."""

    folder: Path
    metrics: dict
    history: dict[str, list[float]]

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunFiles:
        """Reads metrics.json and history.csv now; ValueError naming either when missing or malformed."""
        return cls(Path(run_dir), *read_run(run_dir))

    @cached_property
    def scaling(self) -> dict | None:
        return compare_calibration.read_scaling(self.folder)

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.json"

    def check(self, required: tuple[str, ...]) -> RunFiles:
        """Itself; ValueError naming metrics.json when a `required` field is missing or a field is of another type."""
        problem = metrics_problem(self.metrics, required)
        if problem:
            raise ValueError(f"{self.metrics_path} is damaged ({problem}), so the run cannot be reported; rerun it.")
        return self


def _read(run: str | os.PathLike | RunFiles) -> RunFiles:
    return run if isinstance(run, RunFiles) else RunFiles.read(run)


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


def untimed_epochs(metrics: dict) -> int:
    """How many of a finished run's epochs its `train_seconds` leaves out: those trained before its last resume, for
    a run resumed from a checkpoint that did not time its epochs (written before 2026-12-07); 0 for any other."""
    timed, row = metrics.get("timed_epochs"), metrics.get("final_epoch")
    if "timed_epochs" in metrics:
        final = row["epoch"] if _epoch_row(row) else None
        return final - timed if _whole(timed) and final is not None and final >= timed else 0  # edited: unknown
    resumed = metrics.get("resumed_at_epoch")
    return resumed if _whole(resumed) else 0


def summary(run: str | os.PathLike | RunFiles) -> str:
    """A few lines describing the run (a folder, or its files already read): what was trained, how, and its final
    and best accuracy."""
    run = _read(run).check(_SUMMARY_FIELDS)
    metrics, history = run.metrics, run.history
    config = metrics.get("config", {})
    teacher = metrics.get("teacher") or {}
    untimed = untimed_epochs(metrics)
    lines = [
        f"Run {run.folder}: {metrics['role']} {metrics['model']} ({metrics['parameters']:,} parameters), method "
        f"{metrics['method']!r}, "
        f"dataset {config.get('dataset')}, {len(history.get('epoch', []))} epochs, seed {metrics.get('seed')}, "
        f"{metrics.get('train_seconds', 0):.0f} s of training"
        + (f" (the {untimed} epochs before its resume were not timed)." if untimed else "."),
        f"Final-epoch val top-1: {metrics['final_val_accuracy']:.4f} (the saved model).",
        f"Best-epoch val top-1:  {metrics['best_val_accuracy']:.4f} at epoch {metrics['best_epoch']['epoch']} (for "
        "reference only).",
    ]
    if teacher:
        lines.append(
            f"Teacher {teacher.get('name')}: val top-1 {teacher.get('accuracy', float('nan')):.4f} "
            f"({teacher.get('path')})."
        )
    if metrics.get("resumed_at_epoch"):
        lines.append(f"Resumed after epoch {metrics['resumed_at_epoch']}.")
    lines += calibration_lines(metrics)
    source = reliability_source(metrics, run.metrics_path)
    scaled = scaled_reliability(run, source[0]) if source else None
    if scaled is not None:
        temperature, after, fitted_here = scaled
        where = "the images it was fitted on" if fitted_here else f"the {source[0]} split"
        lines.append(
            f"After temperature scaling (T = {temperature:.4g}, fitted on held-out training images), on {where}: ECE "
            f"{100 * after['ece']:.2f}%, NLL {after['nll']:.4f}, Brier {after['brier']:.4f}, mean confidence "
            f"{after['confidence']:.4f}."
        )
    return "\n".join(lines)


def calibration_lines(metrics: dict) -> list[str]:
    """The final model's test-split top-1 and its calibration on each split, where the run recorded them."""
    lines = []
    test = metrics.get("test")
    if isinstance(test, dict) and "accuracy" in test:
        holdout = (metrics.get("config") or {}).get("validation_holdout")
        lines.append(
            f"Final-epoch test top-1: {test['accuracy']:.4f} on the test split ({test.get('num_examples', 0):,} "
            f"images); the val figures above are on {holdout or 'the'} held-out training images."
        )
    for split, figures, accuracy in (
        ("val", metrics.get("final_val_calibration"), metrics["final_val_accuracy"]),
        ("test", (test or {}).get("calibration") if isinstance(test, dict) else None, (test or {}).get("accuracy")),
    ):
        if isinstance(figures, dict) and "ece" in figures:
            lines.append(
                f"Final-epoch {split} calibration: ECE {100 * figures['ece']:.2f}% ({figures.get('ece_bins', 15)} "
                f"equal-width bins), NLL {figures['nll']:.4f}, Brier {figures['brier']:.4f}, mean confidence "
                f"{figures['confidence']:.4f} against top-1 {accuracy:.4f}."
            )
    return lines


def reliability_source(metrics: dict, where: str | os.PathLike) -> tuple[str, dict, float] | None:
    """What the reliability diagram draws: (split, calibration, top-1) of the test split when the run has it, else
    of the validation split; None for a run written before calibration was recorded. ValueError naming `where` (the
    file `metrics` was read from) when its bins are malformed."""
    test = metrics.get("test")
    if isinstance(test, dict) and _has_bins(test.get("calibration"), where):
        return "test", test["calibration"], test["accuracy"]
    if _has_bins(metrics.get("final_val_calibration"), where):
        return "validation", metrics["final_val_calibration"], metrics["final_val_accuracy"]
    return None


def _has_bins(figures, where: str | os.PathLike) -> bool:
    """Whether `figures` hold reliability bins to draw; ValueError naming `where` for bins that cannot be drawn."""
    if not isinstance(figures, dict) or figures.get("bins") in (None, []):
        return False
    bins = figures["bins"]

    def well_formed(row) -> bool:
        if not isinstance(row, dict) or not all(_number(row.get(edge)) for edge in ("lower", "upper")):
            return False
        count = row.get("count")
        if not _whole(count):
            return False
        return count == 0 or (_number(row.get("accuracy")) and _number(row.get("confidence")))

    if not isinstance(bins, list) or not all(well_formed(row) for row in bins) or not any(r["count"] for r in bins):
        raise ValueError(
            f"{where} holds malformed reliability bins (each bin needs its lower and upper edge, a count, and an "
            "accuracy and confidence where the count is not 0); measure the run again to draw them."
        )
    return True


def _finished_run(run_dir: Path) -> dict:
    """The facts a listing shows of a finished run; ValueError naming what is damaged."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    problem = metrics_problem(metrics, _LISTED_FIELDS)
    if problem:
        raise ValueError(problem)
    config = metrics.get("config") or {}
    return {
        "run_dir": run_dir,
        "role": metrics["role"],
        "model": metrics["model"],
        "method": metrics["method"],
        "backend": metrics.get("backend")
        or "tensorflow",  # runs written before the backend was recorded ran on TensorFlow
        "epoch": metrics["final_epoch"]["epoch"],
        "epochs": config.get("epochs", metrics["final_epoch"]["epoch"]),
        "final_val_accuracy": float(metrics["final_val_accuracy"]),
    }


def find_runs(folder: str | os.PathLike) -> tuple[list[dict], list[tuple[Path, str]]]:
    """The finished runs at any depth below `folder` (`folder` itself included), and the damaged ones.

    A finished run is a folder holding metrics.json; a damaged one holds a
    metrics.json that cannot be read, or a run's record (run.json) without
    metrics.json outside a staging folder. Hidden folders (the staging folders
    of unfinished runs, which `stkd_keras.runs.unfinished_runs` lists) and
    symbolic links are not entered.

    Returns:
        (finished, damaged): dicts with run_dir, role, model, method, backend,
        epoch, epochs and final_val_accuracy; (path, reason) pairs. Both sorted by path.
    """
    finished, damaged = [], []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        root = Path(root)
        if "metrics.json" in files:
            try:
                finished.append(_finished_run(root))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                reason = (
                    f"not valid JSON ({error})"
                    if isinstance(error, json.JSONDecodeError)
                    else f"{type(error).__name__}: {error}"
                )
                damaged.append((root, f"its metrics.json cannot be read: {reason}"))
        elif "run.json" in files:
            damaged.append(
                (root, "it holds run.json but no metrics.json (a finished run whose metrics.json was removed?)")
            )
    return sorted(finished, key=lambda run: str(run["run_dir"])), sorted(damaged)


def unfinished_lines(unfinished: list[dict]) -> list[str]:
    """Lines naming each unfinished run (`runs.unfinished_runs`), how far it got and the command that continues it."""
    if not unfinished:
        return []
    lines = [f"{len(unfinished)} unfinished run(s):"]
    for run in unfinished:
        action = (
            f"continue it with stkd-keras {run['command']} --resume {run['output']}"
            if run["resumable"]
            else "start it over with --overwrite"
        )
        lines.append(f"  {run['output']}: {run['progress']}; {action}")
    return lines


def listing(folder: str | os.PathLike) -> list[str]:
    """The lines `stkd-keras report FOLDER` prints for a folder of runs: finished, unfinished and damaged runs.

    Raises:
        ValueError: When the folder holds no run of any kind.
    """
    from stkd_keras import runs

    folder = Path(folder)
    finished, damaged = find_runs(folder) if folder.is_dir() else ([], [])
    unfinished = runs.unfinished_runs(folder)
    if not (finished or damaged or unfinished):
        raise ValueError(
            f"No stkd-keras run in {folder}: no metrics.json (a finished run) at any depth and no unfinished run to "
            "resume."
        )
    lines = []
    if finished:
        lines.append(f"{len(finished)} finished run(s):")
        for run in finished:
            lines.append(
                f"  {run['run_dir']}: {run['role']} {run['model']}, method {run['method']}, {run['backend']}, "
                f"epoch {run['epoch']} of {run['epochs']}, final val top-1 {run['final_val_accuracy']:.4f}"
            )
    lines += unfinished_lines(unfinished)
    if damaged:
        lines.append(f"{len(damaged)} damaged run(s), skipped:")
        lines += [f"  {path}: {reason}" for path, reason in damaged]
    return lines


def report(
    folder: str | os.PathLike,
    plot_path: str | os.PathLike | None = None,
    log=print,
    reliability_path: str | os.PathLike | None = None,
) -> None:
    """What `stkd-keras report FOLDER` shows, to `log`: a run's summary and curves, or the runs in a folder.

    On a run folder (one holding metrics.json): its summary, its training curves drawn to `plot_path` (default:
    curves.png in it), its reliability diagram (`reliability_figure`) drawn to `reliability_path` (default:
    reliability.png in it, for a run that recorded calibration), and the unfinished runs inside it. On any other
    folder: the `listing` of the runs below it.

    Raises:
        ValueError: When the folder holds no run of any kind, or `reliability_path` is given for a run that
            recorded no calibration.
    """
    from stkd_keras import runs

    folder = Path(folder)
    if not (folder / runs.METRICS_FILE).is_file():
        log("\n".join(listing(folder)))
        return
    run = RunFiles.read(folder)
    text = summary(run)
    calibrated = reliability_source(run.metrics, run.metrics_path) is not None
    if reliability_path is not None and not calibrated:
        raise ValueError(
            f"{folder / runs.METRICS_FILE} holds no calibration bins (the run was written before calibration was "
            "recorded), so there is no reliability diagram to draw."
        )
    # Drawn before anything is written: a calibration.json whose bins cannot be drawn leaves no file behind.
    reliability = reliability_figure(run) if calibrated else None
    log(text)
    curves_path = Path(plot_path) if plot_path else folder / "curves.png"
    with restored_on_failure(curves_path):  # both PNGs or neither: a bad --reliability path takes curves.png back
        written = [plot_curves(run, curves_path)]
        if reliability is not None:
            written.append(save_figure(reliability, Path(reliability_path or folder / "reliability.png"), dpi=100))
    log("\n".join(f"Wrote {path}." for path in written))
    unfinished = runs.unfinished_runs(folder)
    if unfinished:
        log("\n".join(unfinished_lines(unfinished)))


def plot_curves(run: str | os.PathLike | RunFiles, path: str | os.PathLike) -> Path:
    """Draws loss parts, accuracy and learning rate per epoch into a PNG; returns its path."""
    return save_figure(curves_figure(run), path, dpi=100)


# Up to this many epochs a curve also marks each epoch with a dot, so a short run's one or two points show.
MARKED_EPOCHS = 12


def epoch_axis(axis, epochs) -> None:
    """Whole epochs on `axis`'s x axis: every epoch ticked for a short run, else integer ticks.

    A short run's axis has half an epoch of room either side.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = sorted({int(epoch) for epoch in epochs})
    axis.set_xlabel("epoch")
    if epochs and len(epochs) <= MARKED_EPOCHS:
        axis.set_xticks(epochs)
        axis.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def curve_style(epochs) -> dict:
    """Line options for a curve over `epochs`: a dot on every epoch of a short run."""
    return {"marker": "o", "markersize": 4} if len(epochs) <= MARKED_EPOCHS else {}


def loss_terms(history: dict) -> list[str]:
    """The loss columns a run reported, whatever its method: the total first, training before validation.

    The method's own terms are among them (dkd's tckd_loss and nckd_loss too).
    """
    names = [key for key in history if key == "loss" or key.endswith("_loss")]
    return sorted(
        names, key=lambda key: (key.startswith("val_"), key.removeprefix("val_") != "loss", key.removeprefix("val_"))
    )


def curves_figure(run: str | os.PathLike | RunFiles):
    """The matplotlib figure `plot_curves` writes: three panels over whole epochs (from 1), each axis labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = _read(run).check(_FIGURE_FIELDS)
    metrics, history = run.metrics, run.history
    epochs = history.get("epoch") or list(range(1, len(history.get("loss", [])) + 1))
    style = curve_style(epochs)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {}
    for key in loss_terms(history):
        term = key.removeprefix("val_")
        validation = key.startswith("val_")
        marks = {**style, "markerfacecolor": "none"} if validation and style else style  # hollow dots: validation
        (line,) = axes[0].plot(
            epochs, history[key], label=key, linestyle="--" if validation else "-", color=colors.get(term), **marks
        )
        colors[term] = line.get_color()  # a term and its validation twin share a colour
    axes[0].set_title("loss terms (dashed, hollow: validation)" if style else "loss terms (dashed: validation)")
    axes[0].set_ylabel("loss")
    for key in ("accuracy", "mixed_accuracy", "val_accuracy"):  # mixed_accuracy: on mixup's mixed labels, so lower
        if key in history:
            axes[1].plot(epochs, history[key], label=key, **style)
    axes[1].set_title(f"top-1 (final {metrics['final_val_accuracy']:.4f}, best {metrics['best_val_accuracy']:.4f})")
    axes[1].set_ylabel("top-1 accuracy")
    if "learning_rate" in history:
        axes[2].plot(epochs, history["learning_rate"], label="learning_rate", **style)
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_ylabel("learning rate")
    for axis in axes:
        epoch_axis(axis, epochs)
        axis.legend(fontsize=8)
    figure.suptitle(f"{metrics['model']} ({metrics['method']}) on {metrics.get('config', {}).get('dataset')}")
    return figure


def reliability_figure(run: str | os.PathLike | RunFiles):
    """The final model's reliability diagram, from metrics.json's bins (`reliability_source` picks the split).

    Above: each confidence bin's accuracy as a bar beside the diagonal of perfect calibration, and the gap from the
    bin's accuracy to its mean confidence; a bar under the diagonal is overconfidence. Below: the share of examples
    in each bin, so a reader sees which bins carry the ECE (the mean gap weighted by these shares). Where
    `stkd-keras calibrate` measured the same split (calibration.json), a second column draws it after temperature
    scaling.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = _read(run).check(_FIGURE_FIELDS)
    metrics = run.metrics
    split, figures, accuracy = reliability_source(metrics, run.metrics_path)
    scaled = scaled_reliability(run, split)
    columns = [(figures, f"{split} split, final epoch")]
    if scaled is not None and _has_bins(scaled[1], run.folder / compare_calibration.SCALING_FILE):
        temperature, after, fitted_here = scaled
        where = " (T fitted on these images)" if fitted_here else ""
        columns.append((after, f"{split} split, after temperature scaling, T = {temperature:.3g}{where}"))
    figure, axes = plt.subplots(
        2,
        len(columns),
        figsize=(6 * len(columns), 7),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    for column, (drawn, title) in enumerate(columns):
        _reliability_panels(axes[0][column], axes[1][column], drawn)
        axes[0][column].set_title(
            f"{metrics['model']} ({metrics['method']}), {title}\n"
            f"ECE {100 * drawn['ece']:.2f}% ({len(drawn['bins'])} equal-width bins), top-1 {100 * accuracy:.2f}%, "
            f"mean confidence {100 * drawn['confidence']:.2f}%",
            fontsize=10,
        )
    return figure


def scaled_reliability(run: RunFiles, split: str) -> tuple[float, dict, bool] | None:
    """(temperature, figures after scaling, whether the temperature was fitted on these very images) on `split` from
    the run's calibration.json, or None where calibrate has not measured the split. The figures hold reliability
    bins where calibrate wrote them (since 2026-12-07)."""
    scaling = run.scaling
    if scaling is None:
        return None
    measured = {"config": run.metrics.get("config") or {}, "temperature_scaling": scaling}
    after = (compare_calibration.scaled_measurement(measured, split) or {}).get("after")
    temperature = scaling.get("temperature")
    figures_there = isinstance(after, dict) and all(isinstance(after.get(name), (int, float)) for name in FIELDS)
    if not figures_there or not isinstance(temperature, (int, float)):
        return None
    return float(temperature), after, compare_calibration.scaled_part(measured, split) == "held_out"


def _reliability_panels(top, bottom, figures: dict) -> None:
    """One reliability diagram: the bins' accuracy and gap above, their share of the examples below."""
    bins = [row for row in figures["bins"] if row["count"]]  # an empty bin has no accuracy to draw
    total = sum(row["count"] for row in figures["bins"])
    lefts, widths = [row["lower"] for row in bins], [row["upper"] - row["lower"] for row in bins]
    top.bar(
        lefts,
        [row["accuracy"] for row in bins],
        widths,
        align="edge",
        color="tab:blue",
        alpha=0.6,
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        lefts,
        [row["confidence"] - row["accuracy"] for row in bins],
        widths,
        bottom=[row["accuracy"] for row in bins],
        align="edge",
        facecolor="none",  # hatched only: a gap below the bar's top (underconfidence) shows on the bar too
        edgecolor="tab:red",
        hatch="//",
        label="gap to the bin's mean confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="black", zorder=3, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in the bin")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(lefts, [100 * row["count"] / total for row in bins], widths, align="edge", edgecolor="black")
    bottom.set_xlabel("top-label confidence")
    bottom.set_ylabel("examples (%)")


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Writes a matplotlib figure as PNG atomically (temporary file, then rename) and closes it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=dpi))
    finally:
        plt.close(figure)

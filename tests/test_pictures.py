"""What a person sees in the PNGs: every loss term the method reported, whole-epoch ticks, dots for short runs,
a legend for every kind of mark, and method labels that do not overlap. Each test failed on the code before."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from stkd_keras import compare, reporting

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "results" / "fashion_mnist_study"


def dkd_run(folder: Path, epochs: int) -> Path:
    """The metrics.json and history.csv of a finished `distill --method dkd` run (columns from a real run)."""
    folder.mkdir()
    columns = [
        "epoch",
        "ce_loss",
        "loss",
        "mixed_accuracy",
        "nckd_loss",
        "tckd_loss",
        "learning_rate",
        "val_accuracy",
        "val_ce_loss",
        "val_loss",
        "val_nckd_loss",
        "val_tckd_loss",
    ]
    rows = [
        [epoch, 1.0 / epoch, 2.0 / epoch, 0.5, 0.3 / epoch, 0.2 / epoch, 0.01, 0.6, 0.9, 1.9, 0.3, 0.2]
        for epoch in range(1, epochs + 1)
    ]
    (folder / "history.csv").write_text("\n".join(",".join(map(str, row)) for row in [columns, *rows]) + "\n")
    metrics = {
        "role": "student",
        "model": "resnet8",
        "method": "dkd",
        "final_val_accuracy": 0.6,
        "best_val_accuracy": 0.6,
        "best_epoch": {"epoch": epochs},
        "final_epoch": {"epoch": epochs},
        "config": {"dataset": "fashion_mnist", "epochs": epochs},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def visible_ticks(axis) -> list[float]:
    low, high = axis.get_xlim()
    return [float(tick) for tick in axis.get_xticks() if low <= tick <= high]


def test_curves_show_the_terms_the_method_reports(tmp_path):
    figure = reporting.curves_figure(dkd_run(tmp_path / "dkd", epochs=20))
    plotted = {line.get_label() for line in figure.axes[0].get_lines()}
    # The loss panel once drew a fixed list (loss, ce_loss, kd_loss): DKD's own terms never appeared.
    assert plotted == {
        "loss",
        "ce_loss",
        "tckd_loss",
        "nckd_loss",
        "val_loss",
        "val_ce_loss",
        "val_tckd_loss",
        "val_nckd_loss",
    }
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert (
        lines["tckd_loss"].get_color() == lines["val_tckd_loss"].get_color()
        and lines["val_tckd_loss"].get_linestyle() == "--"
    )
    for axis in figure.axes:  # a long run: integer ticks, no dots
        assert all(tick.is_integer() for tick in visible_ticks(axis))
        assert all(line.get_marker() in (None, "None", "") for line in axis.get_lines())


def test_a_one_epoch_run_shows_its_points_on_whole_epoch_ticks(tmp_path):
    figure = reporting.curves_figure(dkd_run(tmp_path / "dkd", epochs=1))
    for axis in figure.axes:
        # Once: ticks 0.945 ... 1.050 and lines of one point, which draw nothing.
        assert visible_ticks(axis) == [1.0]
        assert axis.get_lines() and all(line.get_marker() == "o" for line in axis.get_lines())


def _overlaps(boxes) -> bool:
    return any(a.overlaps(b) for index, a in enumerate(boxes) for b in boxes[index + 1 :])


def test_the_study_figure_labels_do_not_overlap_and_its_marks_are_explained():
    runs = compare.load_runs([path.parent for path in sorted((STUDY / "runs").rglob("metrics.json"))])
    figure = compare.plot_figure(compare.compare(runs, baseline="kd"))
    figure.tight_layout()
    renderer = figure.canvas.get_renderer()
    left, right = figure.axes[:2]
    labels = [label for label in left.get_xticklabels() if label.get_text()]
    assert len(labels) == 8  # the study's eight methods; their labels overlapped
    assert not _overlaps([label.get_window_extent(renderer) for label in labels])
    assert {text.get_text() for text in left.get_legend().get_texts()} == {"one seed", "mean ± std over seeds"}
    assert all(tick.is_integer() for tick in visible_ticks(right))

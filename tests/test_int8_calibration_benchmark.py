"""benchmarks/int8_calibration.py's table: each exported file's figures and its change in ECE from the float model."""

import importlib.util
from pathlib import Path

from markdown_tables import tables

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("int8_calibration", ROOT / "benchmarks" / "int8_calibration.py")
int8_calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(int8_calibration)


def row(run, file, accuracy, ece):
    return {"run": run, "file": file, "accuracy": accuracy, "ece": ece, "nll": 0.5, "brier": 0.25, "confidence": 0.8}


def test_the_table_renders_each_figure_under_its_header_with_the_change_from_float():
    rows = [
        row("out/runs/m|x/kd/seed0", "float .keras", 0.755, 0.0296),
        row("out/runs/m|x/kd/seed0", "student_int8.tflite", 0.7535, 0.0457),
        row("out/runs/b/kd/seed0", "float .keras", 0.5, 0.1),
        row("out/runs/b/kd/seed0", "student_int8.onnx", 0.5, 0.09),
    ]
    (table,) = tables(int8_calibration.markdown(rows))
    assert table.column("top-1 %") == ["75.50", "75.35", "50.00", "50.00"]
    assert table.column("ECE % (15 bins)") == ["2.96", "4.57", "10.00", "9.00"]
    # 4.57 - 2.96 and 9.00 - 10.00 points, each against its own run's float model.
    assert table.column("change in ECE (points)") == ["", "+1.61", "", "-1.00"]
    assert set(table.source_cells) == {len(table.header)}

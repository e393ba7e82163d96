"""Does int8 change calibration? Each run's float Keras model and its exported files, on the same images.

For every run folder given (a finished run with an `export/` folder from `stkd-keras export`), this evaluates the
run's `.keras` model and each exported `.tflite` / `.onnx` file on the run's own dataset and split with
`stkd_keras.evaluation.evaluate` (the exported files in their own runtimes, LiteRT and onnxruntime), and prints
top-1, ECE (15 equal-width bins), NLL, Brier score and mean confidence side by side, with each file's change
from the float model. It writes OUTPUT.json (every figure and the environment) and OUTPUT.md.

Usage: python benchmarks/int8_calibration.py benchmarks/results/deploy/runs/*/*/seed0 \\
           --output benchmarks/results/deploy/int8_calibration
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stkd_keras import evaluation
from stkd_keras.runs import write_json

COLUMNS = ("accuracy", "ece", "nll", "brier", "confidence")


def measure(run: Path, split: str, log=print) -> list[dict]:
    """The float model's and each exported file's figures on the run's dataset; the float model first."""
    config = json.loads((run / "metrics.json").read_text())["config"]
    files = [run, *sorted(path for path in (run / "export").glob("*") if path.suffix in (".tflite", ".onnx"))]
    rows = []
    for path in files:
        result = evaluation.evaluate(path, config["dataset"], split=split, data_dir=config.get("data_dir"))
        figures = {"accuracy": result["accuracy"], **calibration_figures(result)}
        rows.append({"run": str(run), "file": "float .keras" if path == run else path.name, **figures})
        log(f"{run} {rows[-1]['file']}: " + ", ".join(f"{name} {rows[-1][name]:.4f}" for name in COLUMNS))
    return rows


def calibration_figures(result: dict) -> dict:
    return {name: result["calibration"][name] for name in COLUMNS if name != "accuracy"}


def markdown(rows: list[dict]) -> str:
    """One table: each file's figures and, for exported files, the change from its run's float model."""
    lines = [
        "| run | file | top-1 % | ECE % (15 bins) | NLL | Brier | mean confidence % | change in ECE (points) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floats = {row["run"]: row for row in rows if row["file"] == "float .keras"}
    for row in rows:
        base = floats[row["run"]]
        change = "" if row is base else f"{100 * (row['ece'] - base['ece']):+.2f}"
        # A pipe in a name would split its cell and move every later figure from under its header.
        name, file = ("/".join(Path(row["run"]).parts[-3:]).replace("|", "\\|"), row["file"].replace("|", "\\|"))
        lines.append(
            f"| {name} | {file} | {100 * row['accuracy']:.2f} | {100 * row['ece']:.2f} | {row['nll']:.4f} | "
            f"{row['brier']:.4f} | {100 * row['confidence']:.2f} | {change} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="Finished run folders, each with an export/ folder.")
    parser.add_argument("--split", default="test", help="The split to evaluate on (default: test).")
    parser.add_argument("--output", type=Path, required=True, help="OUTPUT.json and OUTPUT.md are written.")
    args = parser.parse_args()
    missing = [str(run) for run in args.runs if not (run / "metrics.json").is_file() or not (run / "export").is_dir()]
    if missing:
        raise SystemExit(f"Not a finished, exported run folder: {missing[0]}.")
    rows = [row for run in args.runs for row in measure(run, args.split)]
    write_json(args.output.with_suffix(".json"), {"split": args.split, "rows": rows, **_environment()})
    args.output.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


def _environment() -> dict:
    return {"environment": evaluation.environment()}


if __name__ == "__main__":
    main()

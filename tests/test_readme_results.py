"""The README's accuracy section is generated from benchmarks/results/ and must match it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_results  # noqa: E402

import markdown_tables  # noqa: E402

from stkd_keras import compare  # noqa: E402


def row(setting, method, finals, versus=None, baseline=False):
    values = {"mean": sum(finals) / len(finals), "std": 0.01, "n": len(finals)}
    result = {"setting": setting, "method": method, "final": values, "is_baseline": baseline}
    if versus:
        result["versus_baseline"] = dict(zip(("difference", "low", "high"), versus))
    return result


def test_readme_section_matches_the_committed_results():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme_results.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks" / "results").rglob("*.md"))]
)
def test_every_table_renders_with_its_figures_under_their_headers(path):
    """Setting cells once held ` | `: 10 to 12 cells under 7 headers, and GitHub dropped the accuracy columns."""
    text = (ROOT / path).read_text()
    for table in markdown_tables.tables(text):
        assert table.source_cells == [len(table.header)] * len(table.rows), (
            f"{path}, the table at line {table.line}: {table.source_cells}"
        )
        if "final top-1 mean ± std" in table.header:
            for mean in table.column("final top-1 mean ± std"):
                assert re.fullmatch(r"\d+\.\d\d ± (\d+\.\d\d|nan)", mean), (path, mean)


def test_verdict_needs_an_interval_that_excludes_zero():
    assert readme_results.verdict({"difference": 0.004, "low": 0.001, "high": 0.007}) == "better"
    assert readme_results.verdict({"difference": -0.004, "low": -0.007, "high": -0.001}) == "worse"
    assert readme_results.verdict({"difference": 0.004, "low": -0.001, "high": 0.009}) == "no clear difference"
    # One seed has no interval: said so, never printed as "[95% CI +nan, +nan]".
    alone = {"difference": 0.01, "low": float("nan"), "high": float("nan")}
    assert readme_results.verdict(alone) == "no clear difference"
    assert readme_results._percent(alone) == "+1.00 points (one seed: no interval yet)"
    assert readme_results._figure(alone, "nll") == "+0.010, one seed: no interval yet"


def test_methods_sentences_rank_each_regime_and_name_the_interval():
    short, long = (
        "fm | cnn16 <- resnet14 | 3 epochs | 5000 train images",
        "fm | cnn16 <- resnet14 | 12 epochs | 5000 train images",
    )
    rows = [
        row(long, "kd", [0.85], baseline=True),
        row(long, "stkd", [0.87], versus=(0.02, 0.01, 0.03)),
        row(short, "kd", [0.80], baseline=True),
        row(short, "stkd", [0.79], versus=(-0.01, -0.03, 0.01)),
    ]
    sentences = readme_results.methods_sentences(rows, "kd")
    # The 3-epoch regime first (sorted by epochs, not by text), each ranked by mean.
    assert sentences[0] == (
        "- 3 epochs: final-epoch top-1 by mean: kd 80.00, stkd 79.00. "
        "Against kd: stkd no clear difference (-1.00 points [95% CI -3.00, +1.00])."
    )
    assert sentences[1].startswith(
        "- 12 epochs: final-epoch top-1 by mean: stkd 87.00, kd 85.00. Against kd: stkd better (+2.00 points"
    )


def test_ablation_sentences_sort_changes_by_their_effect(tmp_path):
    import json

    folders = []
    for name, alpha, finals in (("d", 0.2, [0.80, 0.81]), ("a", 1.0, [0.83, 0.84]), ("b", 0.4, [0.79, 0.81])):
        for seed, final in enumerate(finals):
            folder = tmp_path / f"{name}{seed}"
            folder.mkdir()
            config = {"dataset": "fm", "epochs": 12, "train_subset": 5000, "mixup_alpha": alpha}
            metrics = {
                "model": "cnn16",
                "method": "stkd",
                "seed": seed,
                "final_val_accuracy": final,
                "best_val_accuracy": final,
                "config": config,
            }
            (folder / "metrics.json").write_text(json.dumps(metrics))
            folders.append(folder)
    rows = compare.compare(compare.load_runs(folders), "stkd", {"mixup_alpha": 0.2})
    sentences = readme_results.ablation_sentences(rows)
    assert sentences[0] == "- 12 epochs | defaults: 80.50 ± 0.71 (the reference)."
    # Paired differences: alpha 1.0: +0.03, +0.03 (no spread: CI [3, 3], better); alpha 0.4: -0.01, 0.00.
    assert (
        sentences[1]
        == "- 12 epochs | mixup_alpha=1.0: better, +3.00 points [95% CI +3.00, +3.00] against the defaults."
    )
    assert sentences[2].startswith("- 12 epochs | mixup_alpha=0.4: no clear difference, -0.50 points")


def test_missing_markers_are_one_clear_error():
    with pytest.raises(SystemExit, match="lacks the markers"):
        readme_results.updated_readme("# a README without the markers\n")


def test_study_sentences_give_the_gap_the_best_student_and_any_stkd_win():
    setting = "fm | cnn16 <- resnet14 | 20 epochs | 5000 train images"
    rows = [
        row(setting, "ce", [0.84, 0.86]),
        row(setting, "kd", [0.86], baseline=True),
        row(setting, "dkd", [0.875], versus=(0.015, 0.005, 0.025)),
        row(setting, "stkd", [0.85], versus=(-0.01, -0.02, 0.0)),
        row(setting, "stkd mix_fraction=0.1", [0.87], versus=(0.01, 0.002, 0.018)),
    ]
    runs = [{"teacher": {"accuracy": 0.9033}}, {"teacher": None}]
    # Teacher 90.33 against ce's mean 85.00: 5.33 points.
    assert readme_results.gap_sentences(rows, runs) == [
        "- 20 epochs: the teacher reaches 90.33, the student trained alone (ce) 85.00: a gap of 5.33 points for "
        "distillation to close."
    ]
    assert readme_results.best_sentences(rows, "kd") == [
        "- 20 epochs: the best student is dkd (87.50), +1.50 points [95% CI +0.50, +2.50] against kd; "
        "STKD settings that beat kd: stkd mix_fraction=0.1."
    ]
    rows[-1]["versus_baseline"]["low"] = -0.001
    assert readme_results.best_sentences(rows, "kd")[0].endswith("no STKD setting beats kd.")


def test_short_labels_leave_out_the_validation_split_that_the_grid_header_names():
    setting = (
        "fashion_mnist | cnn16 <- resnet14 | 8 epochs | 5000 train images | "
        "validated on 5000 held-out train images | mix_fraction=0.1"
    )
    assert readme_results._short(setting) == "8 epochs | mix_fraction=0.1"
    assert readme_results._short("fashion_mnist | cnn16 <- resnet14 | 20 epochs | 5000 train images") == "20 epochs"


def _export_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_benchmark", ROOT / "benchmarks" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_export_section_matches_its_measurements():
    """The export tables and conclusions come from benchmarks/results/export/export.json, none typed by hand."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "export.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_onnx_int8_default_is_the_fastest_configuration_that_holds():
    bench = _export_benchmark()

    def config(quant_format, activations, per_channel, reduce_range, ms, top1):
        return {
            "config": {
                "quant_format": quant_format,
                "activations": activations,
                "per_channel": per_channel,
                "reduce_range": reduce_range,
            },
            "name": f"{quant_format} {activations} {per_channel} {reduce_range}",
            "runtime_ms_1t": ms,
            "top1": top1,
        }

    rows = [
        config("QDQ", "int8", True, False, 0.341, 0.7746),
        config(
            "QDQ", "uint8", True, False, 0.150, 0.7704
        ),  # fastest, but 0.53 points below Keras's 0.7757: does not hold
        config("QDQ", "uint8", True, True, 0.188, 0.7742),  # within 5% of the fastest that holds (0.184 * 1.05 = 0.193)
        config("QOperator", "uint8", False, True, 0.184, 0.7763),
        config("QDQ", "uint8", False, True, 0.200, 0.7790),  # 8.7% slower: not tied, whatever its top-1
    ]
    # Among the tied pair, QDQ (every execution provider reads it) comes before QOperator.
    assert bench.choose_onnx_config(rows, keras_top1=0.7757) is rows[2]
    assert bench.choose_onnx_config(rows[:2], keras_top1=0.79) is None  # nothing holds
    # The library's default is the configuration the committed measurement chose.
    from stkd_keras.export.plan import OnnxInt8Config

    results = json.loads((ROOT / "benchmarks" / "results" / "export" / "export.json").read_text())
    assert results["onnx_int8"]["fastest_holding"] == OnnxInt8Config().name


def test_calibration_sentences_rank_by_ece_and_judge_lower_as_better_before_and_after_scaling():
    setting = "fm | cnn16 <- resnet14 | 60 epochs | 5000 train images"

    def calibrated(method, ece, versus=None, scaled=None, scaled_versus=None):
        result = row(setting, method, [0.86])
        result["calibration"] = {"ece": {"mean": ece}}
        if versus:
            result["calibration_versus_baseline"] = {
                name: dict(zip(("difference", "low", "high"), values)) for name, values in versus.items()
            }
        if scaled is not None:
            result["scaled"] = {"ece": {"mean": scaled}}
        if scaled_versus:
            result["scaled_versus_baseline"] = {
                name: dict(zip(("difference", "low", "high"), values)) for name, values in scaled_versus.items()
            }
        return result

    rows = [
        calibrated("kd", 0.04, scaled=0.01),
        # ECE 1.5 points lower than kd with an interval below zero: better; NLL's interval spans zero.
        calibrated(
            "stkd",
            0.025,
            {"ece": (-0.015, -0.02, -0.01), "nll": (0.01, -0.02, 0.04)},
            scaled=0.012,
            scaled_versus={"ece": (0.002, 0.001, 0.003), "nll": (0.001, -0.001, 0.003)},
        ),
    ]
    assert readme_results.calibration_sentences(rows, "kd") == [
        "- 60 epochs, calibration: ECE % by mean (lowest first): stkd 2.50, kd 4.00. Against kd: stkd ECE better "
        "(-1.50 points [95% CI -2.00, -1.00]), NLL no clear difference (+0.010 [95% CI -0.020, +0.040]).",
        "- 60 epochs, after temperature scaling: ECE % by mean (lowest first): kd 1.00, stkd 1.20. Against kd (also "
        "scaled): stkd ECE worse (+0.20 points [95% CI +0.10, +0.30]), NLL no clear difference (+0.001 [95% CI "
        "-0.001, +0.003]).",
    ]


def test_patience_sentences_pair_each_method_and_its_gap_to_the_baseline_by_seed():
    short, long = "fm | s | 20 epochs | 5000 train images", "fm | s | 60 epochs | 5000 train images"

    def arm(setting, method, finals):
        result = row(setting, method, finals)
        result["final_by_seed"] = list(enumerate(finals))
        return result

    rows = [
        arm(short, "kd", [0.80, 0.82]),
        arm(short, "stkd", [0.78, 0.81]),
        arm(short, "dkd warmup_epochs=2", [0.81, 0.83]),
        arm(long, "kd", [0.84, 0.85]),
        arm(long, "stkd", [0.85, 0.85]),
        arm(long, "dkd warmup_epochs=5", [0.85, 0.87]),
    ]
    (sentence,) = readme_results.patience_sentences(rows, "kd")
    # kd gains +4 and +3 points: mean +3.50, sd 0.707, t(1) = 12.706: half-width 12.706 * 0.5 = 6.35.
    assert "kd 81.00 -> 84.50 (+3.50 points [95% CI -2.85, +9.85])" in sentence
    # stkd gains +7 and +4: mean +5.50, sd 2.121, half-width 12.706 * 2.121 / 1.414 = 19.06.
    assert "stkd 79.50 -> 85.00 (+5.50 points [95% CI -13.56, +24.56]), its difference to kd changing by " in sentence
    # stkd - kd: -2, -1 at 20 epochs; +1, 0 at 60: changes +3, +1 -> mean +2.00, sd 1.414, half-width 12.706.
    assert "+2.00 points [95% CI -10.71, +14.71]" in sentence
    # DKD's warm-up scales with the schedule: its two rows are one arm.
    assert sentence.startswith("- From 20 to 60 epochs (final top-1, paired by seed over seeds 0, 1, the ones both")
    assert "dkd 82.00 -> 86.00" in sentence
    assert readme_results.patience_sentences(rows[:3], "kd") == []
    # A third seed for the long schedule only (the patient grid's 60-epoch arms): the sentence keeps to seeds 0 and
    # 1, its means too, so "a -> b" and the change beside it are the same seeds' (kd 84.50 over 0-1, not 84.67).
    for result in rows[3:]:
        result["final_by_seed"].append((2, 0.85))
    assert readme_results.patience_sentences(rows, "kd") == [sentence]

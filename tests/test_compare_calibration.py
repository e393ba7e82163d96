"""Calibration in `compare` (tables, --split, after temperature scaling, the ECE panel) and `report`'s reliability
diagram, on hand-made metrics.json files whose figures are worked out here by hand or in numpy."""

import json
import math
from pathlib import Path

import matplotlib
import matplotlib.collections
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

matplotlib.use("Agg")

import markdown_tables

from stkd_keras import compare, reporting
from stkd_keras.calibration import calibration_metrics
from stkd_keras.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "results" / "fashion_mnist_study"
T_975_2 = 4.303  # t_{0.975} with 2 degrees of freedom, from a printed table

# Per method, seeds 0, 1, 2: final top-1 on each split and calibration on each split.
FIGURES = {
    "kd": {
        "val": [0.80, 0.82, 0.81],
        "test": [0.78, 0.79, 0.80],
        "ece": [0.05, 0.06, 0.04],
        "nll": [0.40, 0.42, 0.44],
        "brier": [0.20, 0.22, 0.21],
        "confidence": [0.90, 0.92, 0.91],
        "test_ece": [0.10, 0.12, 0.11],
        "temperature": [1.5, 1.6, 1.7],
        "scaled_ece": [0.015, 0.012, 0.018],
        "scaled_nll": [0.30, 0.31, 0.32],
    },
    "stkd": {
        "val": [0.83, 0.82, 0.85],
        "test": [0.81, 0.80, 0.82],
        "ece": [0.02, 0.04, 0.01],
        "nll": [0.38, 0.43, 0.41],
        "brier": [0.19, 0.19, 0.22],
        "confidence": [0.85, 0.86, 0.87],
        "test_ece": [0.07, 0.06, 0.08],
        "temperature": [1.1, 1.2, 1.3],
        "scaled_ece": [0.010, 0.014, 0.009],
        "scaled_nll": [0.29, 0.30, 0.33],
    },
}


def calibration(ece, nll, brier, confidence):
    bins = [
        {"lower": k / 15, "upper": (k + 1) / 15, "count": 0, "confidence": None, "accuracy": None} for k in range(15)
    ]
    return {
        "ece": ece,
        "nll": nll,
        "brier": brier,
        "confidence": confidence,
        "temperature": 1.0,
        "ece_bins": 15,
        "bins": bins,
    }


def write_run(root, method, seed, holdout=True, scaled=True, calibrated=True, fitted_on=500):
    figures = {name: values[seed] for name, values in FIGURES[method].items()}
    folder = root / f"{method}{seed}"
    folder.mkdir()
    metrics = {
        "model": "cnn16",
        "method": method,
        "seed": seed,
        "final_val_accuracy": figures["val"],
        "best_val_accuracy": figures["val"] + 0.01,
        "teacher": {"name": "resnet14"},
        "config": {"dataset": "fashion_mnist", "epochs": 5, "train_subset": 1000, "validation_holdout": 500},
    }
    if calibrated:
        metrics["final_val_calibration"] = calibration(*(figures[k] for k in ("ece", "nll", "brier", "confidence")))
        if holdout:
            metrics["test"] = {
                "num_examples": 10000,
                "accuracy": figures["test"],
                "top5_accuracy": 0.99,
                "loss": 2 * figures["nll"],
                "calibration": calibration(figures["test_ece"], 2 * figures["nll"], 0.3, 0.95),
            }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("epoch,val_accuracy\n1,0.5\n2,%s\n" % figures["val"])
    if scaled and holdout:
        after = {"ece": figures["scaled_ece"], "nll": figures["scaled_nll"], "brier": 0.1, "confidence": 0.8}
        # As calibrate writes it: the test split's figures under `split`, named; seed 2 under `test`, as first agreed.
        measured = {"name": "test", "before": {"accuracy": figures["test"], "ece": figures["test_ece"]}, "after": after}
        scaling = {
            "temperature": figures["temperature"],
            "fit": {"examples": fitted_on, "holdout": fitted_on},
            "held_out": {"before": {}, "after": {"ece": 0.001, "nll": 0.2}},
            **({"test": measured, "split": None} if seed == 2 else {"split": measured}),
        }
        (folder / "calibration.json").write_text(json.dumps(scaling))
    return folder


@pytest.fixture
def runs(tmp_path):
    return [write_run(tmp_path, method, seed) for method in ("kd", "stkd") for seed in range(3)]


def paired_numpy(method, baseline):
    """Mean difference and 95% paired t interval of three seeds, in numpy with the printed t quantile."""
    differences = np.array(method) - np.array(baseline)
    half = T_975_2 * differences.std(ddof=1) / math.sqrt(len(differences))
    return differences.mean(), differences.mean() - half, differences.mean() + half


def test_the_calibration_table_by_hand_survives_rendering(runs, tmp_path):
    rows = {row["method"]: row for row in compare.compare(compare.load_runs(runs), "kd")}
    stkd = rows["stkd"]
    # By hand: ECE 0.02, 0.04, 0.01: mean 0.023333, sd sqrt((0.000011 + 0.000278 + 0.000178) / 2) = 0.015275.
    assert stkd["calibration"]["ece"]["mean"] == pytest.approx(0.0233333, abs=1e-6)
    assert stkd["calibration"]["ece"]["std"] == pytest.approx(0.0152753, abs=1e-6)
    # Paired ECE differences -0.03, -0.02, -0.03: mean -0.026667, sd 0.0057735, half 4.303 * 0.0057735 / sqrt 3.
    versus = stkd["calibration_versus_baseline"]["ece"]
    assert versus["difference"] == pytest.approx(-0.0266667, abs=1e-6)
    assert versus["high"] - versus["difference"] == pytest.approx(4.303 * 0.0057735 / math.sqrt(3), abs=1e-6)
    assert versus["kind"] == "paired over 3 seeds"
    for field in ("ece", "nll"):
        difference, low, high = paired_numpy(FIGURES["stkd"][field], FIGURES["kd"][field])
        got = stkd["calibration_versus_baseline"][field]
        assert (got["difference"], got["low"], got["high"]) == pytest.approx((difference, low, high), abs=1e-4)
    assert "calibration_versus_baseline" not in rows["kd"]

    result = CliRunner().invoke(cli, ["compare", *map(str, runs), "--markdown", str(tmp_path / "t.md")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "t.md").read_text()
    assert result.output.startswith(text)
    top1, table, after = markdown_tables.tables(text)
    assert top1.column("final top-1 mean ± std") == ["81.00 ± 1.00", "83.33 ± 1.53"]  # validation, as before
    assert "15 equal-width bins" in text and "**Calibration** on the validation split, final epoch" in text
    assert table.source_cells == [9, 9]
    assert table.header == [
        "setting",
        "method",
        "n",
        "ECE % mean ± std",
        "ECE - kd [95% CI]",
        "NLL mean ± std",
        "NLL - kd [95% CI]",
        "Brier mean ± std",
        "confidence % mean ± std",
    ]
    assert table.column("setting") == top1.column("setting") and table.column("method") == ["kd", "stkd"]
    assert table.column("n") == ["3", "3"]
    # kd ECE 5, 6, 4 % (mean 5.00, sd 1.00); stkd 2, 4, 1 % (2.33, 1.53); ECE - kd: -2.67 [-4.10, -1.23].
    assert table.column("ECE % mean ± std") == ["5.00 ± 1.00", "2.33 ± 1.53"]
    assert table.column("ECE - kd [95% CI]") == ["baseline", "-2.67 [-4.10, -1.23] (paired over 3 seeds)"]
    # NLL kd 0.40, 0.42, 0.44 (0.420 ± 0.020); stkd 0.38, 0.43, 0.41 (0.407 ± 0.025); differences -0.02, 0.01, -0.03:
    # mean -0.0133, sd 0.020817, half 0.051716: [-0.065, +0.038].
    assert table.column("NLL mean ± std") == ["0.420 ± 0.020", "0.407 ± 0.025"]
    assert table.column("NLL - kd [95% CI]") == ["baseline", "-0.013 [-0.065, +0.038] (paired over 3 seeds)"]
    # Brier kd 0.20, 0.22, 0.21 (0.210 ± 0.010); stkd 0.19, 0.19, 0.22 (0.200, sd sqrt(0.0003) = 0.017).
    assert table.column("Brier mean ± std") == ["0.210 ± 0.010", "0.200 ± 0.017"]
    assert table.column("confidence % mean ± std") == ["91.00 ± 1.00", "86.00 ± 1.00"]
    # On the validation split the temperature was fitted on those same images: said so, figures from held_out.
    assert "where a run validated on held-out images, the images the temperature was fitted on, so optimistic" in text
    assert (
        after.column("ECE % mean ± std") == ["0.10 ± 0.00"] * 2
        and after.column("NLL mean ± std") == ["0.200 ± 0.000"] * 2
    )


def test_the_test_split_reports_test_top1_calibration_and_scaling_and_labels_them(runs):
    rows = compare.compare(compare.load_runs(runs), "kd", split="test")
    text = compare.markdown(rows, "kd")
    top1, before, after = markdown_tables.tables(text)
    # Test top-1: kd 78, 79, 80 (79.00 ± 1.00); stkd 81, 80, 82 (81.00 ± 1.00); paired differences 3, 1, 2.
    assert top1.column("final test top-1 mean ± std") == ["79.00 ± 1.00", "81.00 ± 1.00"]
    assert top1.column("final test - kd [95% CI]")[1] == "+2.00 [-0.48, +4.48] (paired over 3 seeds)"
    assert top1.column("best-epoch validation top-1 mean ± std") == ["82.00 ± 1.00", "84.33 ± 1.53"]
    assert "Final-epoch figures on the test split" in text and "**Calibration** on the test split" in text
    assert before.column("ECE % mean ± std") == ["11.00 ± 1.00", "7.00 ± 1.00"]
    # After scaling: T kd 1.5, 1.6, 1.7; ECE kd 1.5, 1.2, 1.8 % (1.50 ± 0.30), stkd 1.0, 1.4, 0.9 % (1.10 ± 0.26);
    # paired ECE differences -0.5, +0.2, -0.9 points: mean -0.40, sd 0.5568, half 4.303 * 0.5568 / sqrt 3 = 1.383.
    assert after.source_cells == [8, 8]
    assert after.header[3:] == [
        "T mean ± std",
        "ECE % mean ± std",
        "ECE - kd [95% CI]",
        "NLL mean ± std",
        "NLL - kd [95% CI]",
    ]
    assert after.column("T mean ± std") == ["1.60 ± 0.10", "1.20 ± 0.10"]
    assert after.column("ECE % mean ± std") == ["1.50 ± 0.30", "1.10 ± 0.26"]
    assert after.column("ECE - kd [95% CI]") == ["baseline", "-0.40 [-1.78, +0.98] (paired over 3 seeds)"]
    difference, low, high = paired_numpy(FIGURES["stkd"]["scaled_nll"], FIGURES["kd"]["scaled_nll"])
    assert after.column("NLL - kd [95% CI]")[1] == f"{difference:+.3f} [{low:+.3f}, {high:+.3f}] (paired over 3 seeds)"
    assert "**After temperature scaling**" in text and "on the test split; compared with kd after scaling" in text


def test_an_arm_not_scaled_in_every_run_is_left_out_of_the_after_scaling_table(tmp_path):
    folders = [write_run(tmp_path, "kd", seed, scaled=seed != 1) for seed in range(3)]
    folders += [write_run(tmp_path, "stkd", seed) for seed in range(3)]
    rows = compare.compare(compare.load_runs(folders), "kd", split="test")
    *_, after = markdown_tables.tables(compare.markdown(rows, "kd"))
    assert after.column("method") == ["stkd"]
    assert after.column("ECE - kd [95% CI]") == ["- (no kd figures to compare with)"]


def test_on_the_validation_split_a_temperature_fitted_on_other_images_is_not_shown(tmp_path):
    """Fitted on 400 held-out images, not the run's 500 validation images: calibration.json has no figures for them."""
    folders = [write_run(tmp_path, method, seed, fitted_on=400) for method in ("kd", "stkd") for seed in range(3)]
    rows = compare.compare(compare.load_runs(folders), "kd")
    assert not any("scaled" in row for row in rows) and "After temperature scaling" not in compare.markdown(rows, "kd")
    # On the test split they are the figures after scaling.
    assert all("scaled" in row for row in compare.compare(compare.load_runs(folders), "kd", split="test"))


def test_split_test_is_refused_for_runs_without_test_figures(tmp_path):
    folders = [write_run(tmp_path, "kd", seed, holdout=False) for seed in range(2)]
    result = CliRunner().invoke(cli, ["compare", *map(str, folders), "--split", "test"])
    assert result.exit_code == 2 and "Invalid value for --split" in result.output
    assert "kd0 has no test-split figures" in result.output and "Traceback" not in result.output
    with pytest.raises(ValueError, match="Expected a split in"):
        compare.compare(compare.load_runs(folders), "kd", split="train")


def test_runs_without_calibration_compare_exactly_as_the_committed_study():
    """The study's runs predate calibration: its results.md is what `compare` writes today, byte for byte."""
    runs = compare.load_runs(sorted(path.parent for path in (STUDY / "runs").rglob("metrics.json")))
    assert (STUDY / "results.md").read_text() == compare.markdown(compare.compare(runs, "kd"), "kd")


def test_an_arm_with_runs_missing_calibration_says_so(tmp_path):
    folders = [write_run(tmp_path, "kd", seed) for seed in range(3)]
    folders += [write_run(tmp_path, "stkd", seed, calibrated=seed != 2, scaled=False) for seed in range(3)]
    _, table, *_ = markdown_tables.tables(compare.markdown(compare.compare(compare.load_runs(folders), "kd"), "kd"))
    assert table.column("ECE % mean ± std") == ["5.00 ± 1.00", "- (not recorded for every run)"]
    assert table.column("ECE - kd [95% CI]") == ["baseline", "-"]


def test_the_plot_has_an_ece_panel_with_every_seed(runs, tmp_path):
    figure = compare.plot_figure(compare.compare(compare.load_runs(runs), "kd", split="test"))
    top1, ece, curves = figure.axes
    assert top1.get_ylabel() == "final-epoch test top-1 (%)" and "ECE" in ece.get_ylabel()
    # The first scatter of each arm is its seeds' ECE before scaling, in %: kd's test ECE 10, 12, 11.
    seeds = [
        collection.get_offsets()[:, 1].tolist()
        for collection in ece.collections
        if isinstance(collection, matplotlib.collections.PathCollection)
    ]
    assert seeds[0] == pytest.approx([10, 12, 11]) and [1.5, 1.2, 1.8] == pytest.approx(seeds[1])
    labels = {text.get_text() for text in ece.get_legend().get_texts()}
    assert labels == {
        "one seed",
        "mean ± std over seeds",
        "one seed after scaling",
        "mean ± std over seeds after scaling",
    }
    figure.savefig(tmp_path / "plot.png")
    # Runs without calibration keep today's two panels.
    old = compare.load_runs(sorted((STUDY / "runs" / "epochs-20" / "kd").glob("seed*")))
    assert len(compare.plot_figure(compare.compare(old, "kd")).axes) == 2


def test_report_draws_the_reliability_diagram_from_the_bins(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 600)
    logits = 3 * rng.normal(size=(600, 10))
    logits[np.arange(600), labels] += 4  # about 85% right, and sharper than that: overconfident
    test = calibration_metrics(logits, labels)
    validation = calibration_metrics(logits[:100], labels[:100])
    folder = write_run(tmp_path, "kd", 0, scaled=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(role="student", parameters=1, best_epoch={"epoch": 2}, final_epoch={"epoch": 2})
    metrics["final_val_calibration"] = {k: v for k, v in validation.items() if k != "accuracy"}
    metrics["test"]["calibration"] = {k: v for k, v in test.items() if k != "accuracy"}
    metrics["test"]["accuracy"] = test["accuracy"]
    (folder / "metrics.json").write_text(json.dumps(metrics))

    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {folder / 'reliability.png'}." in result.output
    assert f"Final-epoch test calibration: ECE {100 * test['ece']:.2f}% (15 equal-width bins)" in result.output
    assert (folder / "reliability.png").read_bytes()[:4] == b"\x89PNG"

    figure = reporting.reliability_figure(folder)
    top, bottom = figure.axes
    # The test split's bins (the run has one), drawn from numpy: each non-empty bin's accuracy and share.
    confidence = np.exp(logits - logits.max(1, keepdims=True))
    confidence = (confidence / confidence.sum(1, keepdims=True)).max(1)
    correct = logits.argmax(1) == labels
    index = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    filled = [k for k in range(15) if (index == k).any()]
    accuracy_bars = top.patches[: len(filled)]
    assert [bar.get_x() for bar in accuracy_bars] == pytest.approx([k / 15 for k in filled])
    assert [bar.get_height() for bar in accuracy_bars] == pytest.approx([correct[index == k].mean() for k in filled])
    gaps = top.patches[len(filled) : 2 * len(filled)]
    assert [gap.get_y() + gap.get_height() for gap in gaps] == pytest.approx(
        [confidence[index == k].mean() for k in filled]
    )
    assert [bar.get_height() for bar in bottom.patches] == pytest.approx([100 * (index == k).mean() for k in filled])
    assert f"ECE {100 * test['ece']:.2f}% (15 equal-width bins)" in top.get_title()
    assert "test split" in top.get_title()


def test_report_draws_the_test_split_after_temperature_scaling_beside_it(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 800)
    logits = 3 * rng.normal(size=(800, 10))
    logits[np.arange(800), labels] += 4
    temperature = 1.7
    test = calibration_metrics(logits, labels)
    folder = write_run(tmp_path, "kd", 0, scaled=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(role="student", parameters=1, best_epoch={"epoch": 2}, final_epoch={"epoch": 2})
    metrics["test"]["calibration"] = {k: v for k, v in test.items() if k != "accuracy"}
    metrics["test"]["accuracy"] = test["accuracy"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    # calibration.json as `calibrate` writes it: the test split's figures before and after, bins included.
    scaled = calibration_metrics(logits, labels, temperature)
    measured = {"name": "test", "num_examples": 800, "before": test, "after": scaled}
    (folder / "calibration.json").write_text(
        json.dumps({"temperature": temperature, "fit": {"holdout": 500}, "split": measured})
    )

    result = CliRunner().invoke(cli, ["report", str(folder), "--plot", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    assert (
        f"After temperature scaling (T = 1.7, fitted on held-out training images), on the test split: ECE "
        f"{100 * scaled['ece']:.2f}%, NLL {scaled['nll']:.4f}" in result.output
    )
    figure = reporting.reliability_figure(folder)
    assert len(figure.axes) == 4  # before | after, each with its share of examples below
    before, after, _, after_share = figure.axes
    assert "final epoch" in before.get_title() and f"ECE {100 * test['ece']:.2f}%" in before.get_title()
    assert "after temperature scaling, T = 1.7" in after.get_title()
    assert "T fitted on these images" not in after.get_title()  # the test split: T was fitted elsewhere
    # The right-hand bins, from numpy: softmax(logits / T)'s top-label confidence, binned (k/15, (k+1)/15].
    probabilities = np.exp(logits / temperature - (logits / temperature).max(1, keepdims=True))
    confidence = (probabilities / probabilities.sum(1, keepdims=True)).max(1)
    correct = logits.argmax(1) == labels
    index = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    filled = [k for k in range(15) if (index == k).any()]
    assert [bar.get_height() for bar in after.patches[: len(filled)]] == pytest.approx(
        [correct[index == k].mean() for k in filled]
    )
    assert [bar.get_height() for bar in after_share.patches] == pytest.approx(
        [100 * (index == k).mean() for k in filled]
    )
    assert f"ECE {100 * scaled['ece']:.2f}%" in after.get_title()
    assert scaled["ece"] < test["ece"]  # this model is overconfident and T = 1.7 cools it: the right panel is better
    # A calibration.json written before it held bins: the figures are printed, the diagram keeps one column.
    for part in ("before", "after"):
        del measured[part]["bins"]
    (folder / "calibration.json").write_text(
        json.dumps({"temperature": temperature, "fit": {"holdout": 500}, "split": measured})
    )
    assert len(reporting.reliability_figure(folder).axes) == 2
    assert "After temperature scaling (T = 1.7" in reporting.summary(folder)
    # A --reliability path that cannot be written: one sentence, and the curves written first are taken back.
    result = CliRunner().invoke(
        cli,
        ["report", str(folder), "--plot", str(tmp_path / "c1.png"), "--reliability", str(tmp_path / "no" / "r.png")],
    )
    assert result.exit_code == 1 and "No such file or directory" in result.output
    assert not (tmp_path / "c1.png").exists() and "Wrote" not in result.output
    # Damaged files: one sentence naming the file, and no PNG written.
    (folder / "calibration.json").write_text("{")
    result = CliRunner().invoke(cli, ["report", str(folder), "--plot", str(tmp_path / "curves2.png")])
    assert result.exit_code == 1 and "calibration.json is malformed" in result.output
    assert not (tmp_path / "curves2.png").exists()
    (folder / "reliability.png").unlink()
    measured["after"]["bins"] = [{"lower": 0.0, "upper": 1.0, "count": 3, "accuracy": None, "confidence": 0.9}]
    (folder / "calibration.json").write_text(json.dumps({"temperature": temperature, "split": measured}))
    result = CliRunner().invoke(cli, ["report", str(folder), "--plot", str(tmp_path / "curves3.png")])
    assert result.exit_code == 1 and f"{folder / 'calibration.json'} holds malformed reliability bins" in result.output
    assert not (tmp_path / "curves3.png").exists() and not (folder / "reliability.png").exists()
    metrics["test"]["calibration"]["bins"] = [1, 2]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(cli, ["report", str(folder), "--plot", str(tmp_path / "curves4.png")])
    assert result.exit_code == 1 and f"{folder / 'metrics.json'} holds malformed reliability bins" in result.output
    assert not (tmp_path / "curves4.png").exists()


def test_report_of_an_old_run_draws_no_reliability_diagram_and_refuses_one_asked_for(tmp_path):
    old = STUDY / "runs" / "epochs-20" / "kd" / "seed0"
    result = CliRunner().invoke(cli, ["report", str(old), "--plot", str(tmp_path / "curves.png")])
    assert result.exit_code == 0 and "reliability" not in result.output and "calibration" not in result.output
    assert not (old / "reliability.png").exists()
    result = CliRunner().invoke(
        cli,
        ["report", str(old), "--plot", str(tmp_path / "c2.png"), "--reliability", str(tmp_path / "r.png")],
    )
    assert result.exit_code == 1 and "holds no calibration bins" in result.output
    assert not (tmp_path / "c2.png").exists() and not (tmp_path / "r.png").exists()


def test_report_reads_each_of_a_runs_files_once(tmp_path, monkeypatch):
    # Its summary, curves and both reliability columns come from one reading of each file, so a file rewritten
    # while report runs cannot give a summary and a diagram that disagree.
    committed = ROOT / "benchmarks" / "results" / "fashion_mnist_patient" / "runs" / "epochs-60_warmup_epochs-5"
    folder = tmp_path / "kd"
    folder.mkdir()
    for name in ("metrics.json", "history.csv", "calibration.json"):
        (folder / name).write_bytes((committed / "kd" / "seed1" / name).read_bytes())
    reads = []
    read_text, open_ = Path.read_text, open

    def counted_read_text(path, *args, **kwargs):
        reads.append(Path(path).name)
        return read_text(path, *args, **kwargs)

    def counted_open(path, *args, **kwargs):
        if str(path).endswith(".csv"):
            reads.append(Path(path).name)
        return open_(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted_read_text)
    monkeypatch.setattr("builtins.open", counted_open)
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert "After temperature scaling" in result.output and (folder / "reliability.png").is_file()
    assert sorted(name for name in reads if name in ("metrics.json", "history.csv", "calibration.json")) == [
        "calibration.json",
        "history.csv",
        "metrics.json",
    ]


# A real run, validated on held-out images and calibrated (calibration.json with bins): the patient grid's kd seed 1.
PATIENT_KD = ROOT / "benchmarks" / "results" / "fashion_mnist_patient" / "runs" / "epochs-60_warmup_epochs-5" / "kd"
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = sorted(json.loads((PATIENT_KD / "seed1" / "metrics.json").read_text()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS), st.none() | _JSON), min_size=1, max_size=3))
def test_report_of_an_edited_metrics_json_writes_a_report_or_one_sentence(tmp_path, edits):
    """Any field of a real run's metrics.json deleted (None) or replaced by any JSON value: `report` either reports
    the run or says in one sentence what is wrong; never a traceback. Before, a KeyError for a missing 'role'."""
    folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for name in ("history.csv", "calibration.json"):
        (folder / name).write_bytes((PATIENT_KD / "seed1" / name).read_bytes())
    metrics = json.loads((PATIENT_KD / "seed1" / "metrics.json").read_text())
    for field, value in edits:
        if value is None:
            metrics.pop(field, None)
        else:
            metrics[field] = value
    (folder / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code in (0, 1) and not isinstance(result.exception, (KeyError, TypeError, AttributeError)), (
        edits,
        result.output,
    )
    if result.exit_code == 1:
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output

import json
import math
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from stkd_keras import compare
from stkd_keras.cli.main import cli

import markdown_tables


def write_run(root, name, method, seed, final, best, epochs=5, **config):
    folder = root / name
    folder.mkdir()
    metrics = {
        "model": "resnet8",
        "method": method,
        "seed": seed,
        "final_val_accuracy": final,
        "best_val_accuracy": best,
        "teacher": {"name": "resnet14"} if method != "ce" else None,
        "config": {"dataset": "fashion_mnist", "epochs": epochs, "train_subset": 1000, **config},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("epoch,val_accuracy\n0,0.5\n1,%s\n" % final)
    return folder


@pytest.fixture
def runs(tmp_path):
    kd = [0.80, 0.82, 0.81]
    stkd = [0.83, 0.82, 0.85]
    folders = [write_run(tmp_path, f"kd{s}", "kd", s, v, v + 0.01) for s, v in enumerate(kd)]
    folders += [write_run(tmp_path, f"stkd{s}", "stkd", s, v, v + 0.02) for s, v in enumerate(stkd)]
    return folders, kd, stkd


def test_statistics_and_paired_interval_by_hand(runs):
    folders, kd, stkd = runs
    rows = {row["method"]: row for row in compare.compare(compare.load_runs(folders), baseline="kd")}
    assert rows["stkd"]["final"]["mean"] == pytest.approx(0.8333333, abs=1e-6)
    # Sample standard deviation of 0.83, 0.82, 0.85: sqrt(((-0.00333)^2 + (-0.01333)^2 + 0.01667^2) / 2) = 0.015275.
    assert rows["stkd"]["final"]["std"] == pytest.approx(0.0152753, abs=1e-6)
    assert (rows["stkd"]["final"]["min"], rows["stkd"]["final"]["max"]) == (0.82, 0.85)
    assert rows["stkd"]["best"]["mean"] == pytest.approx(0.8533333, abs=1e-6)
    # Paired differences 0.03, 0.00, 0.04: mean 0.023333, sd 0.020817; t(0.975, 2) = 4.303.
    versus = rows["stkd"]["versus_baseline"]
    half = 4.303 * 0.0208167 / math.sqrt(3)
    assert versus["difference"] == pytest.approx(0.0233333, abs=1e-6)
    assert (versus["low"], versus["high"]) == (
        pytest.approx(0.0233333 - half, abs=1e-5),
        pytest.approx(0.0233333 + half, abs=1e-5),
    )
    assert versus["kind"] == "paired over 3 seeds"
    assert "versus_baseline" not in rows["kd"]


def test_welch_interval_without_matching_seeds():
    a = [(10, 0.80), (11, 0.84), (12, 0.82)]
    b = [(0, 0.78), (1, 0.79), (2, 0.77), (3, 0.80)]
    result = compare.difference_ci(a, b)
    va = statistics.variance([0.80, 0.84, 0.82]) / 3  # 0.0004 / 3
    vb = statistics.variance([0.78, 0.79, 0.77, 0.80]) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert result["difference"] == pytest.approx(0.82 - 0.785)
    assert result["high"] - result["difference"] == pytest.approx(compare.t_quantile_975(df) * math.sqrt(va + vb))
    assert result["kind"].startswith("Welch")


def test_ablation_rows_are_compared_with_the_baseline_setting(tmp_path):
    # Defaults (alpha 0.2, T 4) against one changed field each; every row is compared with the defaults, paired by seed.
    defaults = [0.80, 0.81, 0.79]
    alpha = [0.82, 0.82, 0.80]
    temperature = [0.78, 0.80, 0.79]
    folders = [
        write_run(tmp_path, f"d{s}", "stkd", s, v, v, mixup_alpha=0.2, temperature=4.0) for s, v in enumerate(defaults)
    ]
    folders += [
        write_run(tmp_path, f"a{s}", "stkd", s, v, v, mixup_alpha=1.0, temperature=4.0) for s, v in enumerate(alpha)
    ]
    folders += [
        write_run(tmp_path, f"t{s}", "stkd", s, v, v, mixup_alpha=0.2, temperature=8.0)
        for s, v in enumerate(temperature)
    ]
    runs = compare.load_runs(folders)
    rows = compare.compare(runs, baseline="stkd", baseline_setting={"mixup_alpha": 0.2, "temperature": 4})
    # Labels name only what differs from the defaults.
    by_setting = {(row["setting"].split("| ")[-1]): row for row in rows}
    assert sorted(by_setting) == ["defaults", "mixup_alpha=1.0", "temperature=8.0"]
    assert by_setting["defaults"]["is_baseline"]
    # Paired differences: alpha 1.0: 0.02, 0.01, 0.01 (mean 0.013333); T 8: -0.02, -0.01, 0.00 (mean -0.01).
    assert by_setting["mixup_alpha=1.0"]["versus_baseline"]["difference"] == pytest.approx(0.0133333, abs=1e-6)
    low_t = by_setting["temperature=8.0"]["versus_baseline"]
    assert low_t["difference"] == pytest.approx(-0.01) and low_t["kind"] == "paired over 3 seeds"
    assert low_t["high"] - low_t["difference"] == pytest.approx(4.303 * 0.01 / math.sqrt(3), abs=1e-6)
    table = compare.markdown(rows, "stkd")
    assert table.count("| baseline |") == 1
    with pytest.raises(ValueError, match="matches 2 settings"):
        compare.compare(runs, baseline="stkd", baseline_setting={"mixup_alpha": 0.2})
    result = CliRunner().invoke(
        cli, ["compare", *map(str, folders), "--baseline", "stkd", "--baseline-setting", "temperature=9"]
    )
    assert result.exit_code == 1 and "matches no setting" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            *map(str, folders),
            "--baseline",
            "stkd",
            "--baseline-setting",
            "temperature=8",
            "--baseline-setting",
            "mixup_alpha=0.2",
        ],
    )
    assert result.exit_code == 0 and "-1.00 [" not in result.output and "+1.00 [" in result.output


def test_the_markdown_table_keeps_every_figure_under_its_header_when_rendered(runs, tmp_path):
    """The setting label's ` | ` split its cell under a GFM renderer: 10 cells under 7 headers, the figures dropped."""
    folders, kd, stkd = runs
    rows = compare.compare(compare.load_runs(folders), baseline="kd")
    assert " | " in rows[0]["setting"]  # "fashion_mnist | resnet8 <- resnet14 | 5 epochs | 1000 train images"
    result = CliRunner().invoke(cli, ["compare", *map(str, folders), "--markdown", str(tmp_path / "t.md")])
    assert result.exit_code == 0, result.output
    for text in (compare.markdown(rows, "kd"), (tmp_path / "t.md").read_text()):
        (table,) = markdown_tables.tables(text)
        assert table.source_cells == [7, 7]
        assert table.column("setting") == ["fashion_mnist | resnet8 <- resnet14 | 5 epochs | 1000 train images"] * 2
        assert table.column("method") == ["kd", "stkd"] and table.column("n") == ["3", "3"]
        # By hand: kd 0.80, 0.82, 0.81 (mean 81.00, sd 1.00); stkd 0.83, 0.82, 0.85 (mean 83.33, sd 1.53);
        # best = final + 1 / 2 points.
        assert table.column("final top-1 mean ± std") == ["81.00 ± 1.00", "83.33 ± 1.53"]
        assert table.column("final min / max") == ["80.00 / 82.00", "82.00 / 85.00"]
        assert table.column("best-epoch top-1 mean ± std") == ["82.00 ± 1.00", "85.33 ± 1.53"]
        assert table.column("final - kd [95% CI]")[0] == "baseline"
        assert table.column("final - kd [95% CI]")[1].startswith("+2.33 [")


def test_runs_on_two_backends_are_two_settings_and_one_run_rows_say_why_they_have_no_spread(tmp_path):
    """JAX and PyTorch runs, both seed 0, were "paired over 2 seeds"; one-run rows showed `± nan` and `[+nan, +nan]`."""
    folders = []
    for backend, method, final in (
        ("jax", "kd", 0.80),
        ("jax", "stkd", 0.83),
        ("torch", "kd", 0.70),
        ("torch", "stkd", 0.75),
    ):
        folder = write_run(tmp_path, f"{backend}_{method}", method, 0, final, final)
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "backend": backend}))
        folders.append(folder)
    rows = compare.compare(compare.load_runs(folders), baseline="kd")
    assert [(row["setting"].rsplit(" | ", 1)[-1], row["method"], row["final"]["n"]) for row in rows] == [
        ("backend=jax", "kd", 1),
        ("backend=jax", "stkd", 1),
        ("backend=torch", "kd", 1),
        ("backend=torch", "stkd", 1),
    ]
    # One run against one run: the difference stands, its interval cannot.
    assert rows[1]["versus_baseline"]["difference"] == pytest.approx(0.03) and rows[3]["versus_baseline"][
        "difference"
    ] == pytest.approx(0.05)
    (table,) = markdown_tables.tables(compare.markdown(rows, "kd"))
    assert "nan" not in compare.markdown(rows, "kd")
    assert table.column("final top-1 mean ± std") == [
        "80.00 ± - (one run)",
        "83.00 ± - (one run)",
        "70.00 ± - (one run)",
        "75.00 ± - (one run)",
    ]
    assert table.column("final - kd [95% CI]") == [
        "baseline",
        "+3.00 (too few runs for an interval)",
        "baseline",
        "+5.00 (too few runs for an interval)",
    ]
    # Without its baseline method a row says so, instead of a bare "-".
    (table,) = markdown_tables.tables(
        compare.markdown(compare.compare(compare.load_runs(folders[1:2]), baseline="kd"), "kd")
    )
    assert table.column("final - kd [95% CI]") == ["- (no kd run in this setting)"]
    # A metrics.json from before the backend was recorded reads as TensorFlow's, beside a new TensorFlow run.
    old, new = write_run(tmp_path, "old", "kd", 1, 0.8, 0.8), write_run(tmp_path, "new", "kd", 2, 0.8, 0.8)
    (new / "metrics.json").write_text(
        json.dumps({**json.loads((new / "metrics.json").read_text()), "backend": "tensorflow"})
    )
    (row,) = compare.compare(compare.load_runs([old, new]), baseline="kd")
    assert row["final"]["n"] == 2 and "backend" not in row["setting"]


def test_t_quantiles():
    assert compare.t_quantile_975(1) == 12.706 and compare.t_quantile_975(4) == 2.776
    assert compare.t_quantile_975(1000) == pytest.approx(1.96)


def test_cli_compare_writes_table_and_plot(runs, tmp_path):
    folders, _, _ = runs
    result = CliRunner().invoke(
        cli, ["compare", *map(str, folders), "--markdown", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.output
    table = (tmp_path / "t.md").read_text()
    assert "| stkd | 3 | 83.33 ± 1.53 | 82.00 / 85.00 | 85.33 ± 1.53 | +2.33 [" in table
    png = (tmp_path / "p.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5000


def test_missing_and_malformed_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "empty/metrics.json is missing" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "bad/metrics.json is malformed" in result.output


# About 55 s (two real runs, then the grid again): `pytest -m slow`, which .ci/run also runs.
@pytest.mark.slow
def test_two_run_grid_completes_and_skips_finished_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "dataset: fashion_mnist\nteacher: {model: cnn8, epochs: 1}\nstudent: cnn8\nmethods: [ce, stkd]\nseeds: [0]\n"
        "common: {train_subset: 256, val_subset: 128, epochs: 1, batch_size: 64}\nbaseline: ce\n"
    )
    command = [
        sys.executable,
        str(root / "benchmarks" / "accuracy.py"),
        "--grid",
        str(grid),
        "--output",
        str(tmp_path / "out"),
    ]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (
        "[1/2] runs/default/ce/seed0: running" in first.stdout
        and "[2/2] runs/default/stkd/seed0: running" in first.stdout
    )
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| ce | 1 |" in table and "| stkd | 1 |" in table
    assert json.loads((tmp_path / "out" / "environment.json").read_text())["runs"] == 2
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "[1/2] runs/default/ce/seed0: finished, skipped" in second.stdout
    assert (
        "[2/2] runs/default/stkd/seed0: finished, skipped" in second.stdout
        and "Training the teacher" not in second.stdout
    )


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "grids").glob("*.yaml")), ids=lambda p: p.stem
)
def test_shipped_grids_are_valid(path):
    """Every field a grid passes is a run option, and an ablation's baseline setting singles out one setting."""
    import dataclasses
    import sys

    from stkd_keras.config import RunConfig

    sys.path.insert(0, str(path.parents[1]))
    import accuracy

    from stkd_keras import methods

    grid = accuracy.load_grid(path)
    fields = {field.name for field in dataclasses.fields(RunConfig)} | set(methods.hyperparameter_fields())
    settings = grid.get("settings") or [{}]
    for options in [grid.get("common") or {}, grid.get("teacher") or {}, *map(accuracy.setting_options, settings)]:
        assert set(options) <= fields, set(options) - fields
    assert grid.get("baseline", "kd") in grid["methods"]
    # An entry may carry options ("stkd mix_fraction=0.1"); load_grid has checked them against the method.
    assert {accuracy.method_entry(entry)[0] for entry in grid["methods"]} <= set(methods.list_methods())
    if grid.get("baseline_setting"):
        baseline = methods.get_method(grid["baseline"])
        configs = [
            RunConfig.from_dict({**grid["common"], **setting, "method": baseline.name}).to_dict()
            for setting in settings
        ]
        matches = [c for c in configs if all(c[k] == v for k, v in grid["baseline_setting"].items())]
        assert len(matches) == 1, matches


def test_a_variant_is_named_by_its_own_options_and_compared_in_the_baselines_setting(tmp_path):
    """stkd with clean_kd_weight=0.5 (an option kd lacks) is the row "stkd clean_kd_weight=0.5" beside kd;
    a temperature (kd has one) still makes a setting of its own."""
    folders = [write_run(tmp_path, f"kd{s}", "kd", s, v, v) for s, v in enumerate([0.80, 0.82])]
    folders += [write_run(tmp_path, f"stkd{s}", "stkd", s, v, v) for s, v in enumerate([0.81, 0.80])]
    folders += [
        write_run(tmp_path, f"clean{s}", "stkd", s, v, v, clean_kd_weight=0.5) for s, v in enumerate([0.83, 0.85])
    ]
    folders += [write_run(tmp_path, f"hot{s}", "stkd", s, v, v, temperature=2.0) for s, v in enumerate([0.79, 0.78])]
    rows = compare.compare(compare.load_runs(folders), baseline="kd")
    by_method = {(row["setting"].endswith("temperature=2.0"), row["method"]): row for row in rows}
    assert set(by_method) == {(False, "kd"), (False, "stkd"), (False, "stkd clean_kd_weight=0.5"), (True, "stkd")}
    variant = by_method[(False, "stkd clean_kd_weight=0.5")]["versus_baseline"]
    assert variant["difference"] == pytest.approx(((0.83 - 0.80) + (0.85 - 0.82)) / 2)  # paired with kd's seeds 0, 1
    assert "versus_baseline" not in by_method[(True, "stkd")]  # no kd at temperature 2: nothing to compare with
    # Within an ablation of stkd itself, its options stay settings, as before.
    ablation = compare.compare(compare.load_runs(folders[2:6]), baseline="stkd")
    assert {row["method"] for row in ablation} == {"stkd"} and len(ablation) == 2


def test_runs_validated_on_a_holdout_are_a_setting_of_their_own(tmp_path):
    """A config written before `validation_holdout` existed (no field) and one with it unset (None) share a setting;
    runs validated on held-out training images are compared only with each other, and the label says so."""
    folders = [
        write_run(tmp_path, "kd0", "kd", 0, 0.80, 0.80),
        write_run(tmp_path, "kd1", "kd", 1, 0.82, 0.82, validation_holdout=None),
    ]
    folders += [write_run(tmp_path, f"stkd{s}", "stkd", s, v, v) for s, v in enumerate([0.81, 0.85])]
    folders += [
        write_run(tmp_path, f"held{s}", "kd", s, v, v, validation_holdout=500) for s, v in enumerate([0.70, 0.72])
    ]
    rows = compare.compare(compare.load_runs(folders), baseline="kd")
    assert len(rows) == 3
    stkd = next(row for row in rows if row["method"] == "stkd")
    assert stkd["versus_baseline"]["difference"] == pytest.approx(((0.81 - 0.80) + (0.85 - 0.82)) / 2)
    held = next(row for row in rows if "held-out" in row["setting"])
    assert held["method"] == "kd" and held["setting"].endswith("| validated on 500 held-out train images")
    assert held["final"]["n"] == 2 and held["final"]["mean"] == pytest.approx(0.71)


def test_a_grid_method_entry_carries_its_options(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import accuracy

    assert accuracy.method_entry("stkd mix_fraction=0.1 soft_target=mixed_teacher") == (
        "stkd",
        {"mix_fraction": 0.1, "soft_target": "mixed_teacher"},
    )
    assert (
        accuracy.method_folder("stkd mix_fraction=0.1") == "stkd_mix_fraction-0.1"
        and accuracy.method_folder("kd+ls") == "kd+ls"
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text("dataset: fashion_mnist\nstudent: cnn8\nmethods: [kd, stkd mix_fraction=2]\nseeds: [0]\n")
    with pytest.raises(
        SystemExit, match=r"method 'stkd mix_fraction=2': Expected `mix_fraction` to be a number in \(0, 1\]"
    ):
        accuracy.load_grid(grid)


def test_a_setting_with_its_own_seeds_adds_runs_to_that_setting_only(tmp_path):
    """Seeds 3 and 4 for the 60-epoch schedule only: its runs come after seeds 0-2, in its own folder, and a seed is
    whole when every run it belongs to has finished."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import accuracy

    path = tmp_path / "grid.yaml"
    path.write_text(
        "dataset: fashion_mnist\nstudent: cnn8\nmethods: [kd, stkd]\nseeds: [0, 1, 2]\n"
        "settings:\n  - {epochs: 20}\n  - {epochs: 60, seeds: [0, 1, 2, 3, 4]}\n"
    )
    grid = accuracy.load_grid(path)
    runs = [(accuracy.setting_label(setting), method, seed) for setting, method, seed in accuracy.grid_runs(grid)]
    expected = [
        (label, method, seed) for seed in (0, 1, 2) for label in ("epochs-20", "epochs-60") for method in ("kd", "stkd")
    ]
    expected += [("epochs-60", method, seed) for seed in (3, 4) for method in ("kd", "stkd")]
    assert runs == expected
    assert accuracy.setting_options({"epochs": 60, "seeds": [3]}) == {"epochs": 60}
    # Seeds 0-2 need 4 runs each, seeds 3-4 two. Finished: seed 0 whole, seed 1 one short, seed 3 whole, seed 4 half.
    finished = [0, 0, 0, 0, 1, 1, 1, 3, 3, 4]
    assert accuracy.whole_seeds(grid, finished) == [0, 3]
    assert accuracy.whole_seeds({"seeds": [0, 1], "methods": ["kd"]}, [1]) == [1]  # no settings: one arm each
    for bad in ("[3, x]", "[]", "3", "[true]"):
        path.write_text(
            "dataset: fashion_mnist\nstudent: cnn8\nmethods: [kd]\nseeds: [0]\n"
            f"settings:\n  - {{epochs: 60, seeds: {bad}}}\n"
        )
        with pytest.raises(SystemExit, match="a setting is a mapping whose `seeds`, if any, lists ints"):
            accuracy.load_grid(path)


def test_a_grid_calibrates_each_finished_run_once_and_only_when_asked(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import accuracy

    calls, lines = [], []
    monkeypatch.setattr(accuracy, "cli", lambda *arguments: calls.append(arguments))
    run = tmp_path / "seed0"
    run.mkdir()
    accuracy.calibrate({}, run, lines.append)  # not asked
    accuracy.calibrate({"calibrate": True}, run, lines.append)  # asked, but the model is gone
    assert calls == [] and "no student.keras left to calibrate" in lines[0]
    (run / "student.keras").write_bytes(b"")
    accuracy.calibrate({"calibrate": True}, run, lines.append)
    assert calls == [("calibrate", str(run), "--quiet")]
    (run / "calibration.json").write_text("{}")
    accuracy.calibrate({"calibrate": True}, run, lines.append)  # calibrated before: left as it is
    assert len(calls) == 1


def test_a_grids_training_time_names_the_epochs_it_leaves_out(tmp_path):
    """A run resumed from a checkpoint that did not time its epochs counts only its last process: the README says how
    many epochs its total leaves out."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import accuracy

    cases = {
        "whole": ({"train_seconds": 600.0, "timed_epochs": 60, "final_epoch": {"epoch": 60}}, (600.0, 0)),
        "old_resumed": ({"train_seconds": 480.0, "resumed_at_epoch": 12, "final_epoch": {"epoch": 60}}, (480.0, 12)),
        "old_whole": ({"train_seconds": 600.0, "resumed_at_epoch": None, "final_epoch": {"epoch": 60}}, (600.0, 0)),
        # Resumed by today's code from a checkpoint of before: epochs 13-60 timed.
        "mixed": (
            {"train_seconds": 480.0, "timed_epochs": 48, "resumed_at_epoch": 12, "final_epoch": {"epoch": 60}},
            (480.0, 12),
        ),
    }
    for name, (metrics, expected) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        assert accuracy.training_time(tmp_path / name) == expected, name
    assert accuracy.training_time(tmp_path / "absent") == (0.0, 0)
    # `report` says so too, on a committed run resumed after epoch 12 from a checkpoint that did not time its epochs.
    from stkd_keras import reporting

    patient = (
        Path(__file__).resolve().parents[1] / "benchmarks/results/fashion_mnist_patient/runs/epochs-60_warmup_epochs-5"
    )
    assert "s of training (the 12 epochs before its resume were not timed)." in reporting.summary(patient / "kd/seed3")
    assert "s of training.\n" in reporting.summary(patient / "kd/seed1")

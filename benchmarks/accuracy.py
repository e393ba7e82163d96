"""Run a grid of distillation runs through the CLI's own code path, resumably, then compare them.

A grid (YAML, see benchmarks/grids/) names a dataset, one teacher trained once
and shared, a student, the methods, the seeds and a list of settings (each a
set of option overrides, e.g. {epochs: 3} and {epochs: 12}); `common` options
apply to every run. Each run is `stkd-keras distill ...` in a subprocess,
written to OUTPUT/runs/<setting>/<method>/seed<k>. Finished runs (metrics.json)
are skipped; an interrupted one is resumed with --resume. `teacher_run` names
an already trained teacher folder to share instead (e.g. another grid's), and
`baseline_setting` the config values of the setting every row is compared
with (an ablation's defaults). A setting may list its own `seeds`, replacing the
grid's for it (more seeds for one schedule only). `calibrate: true` fits each finished run's
temperature on its held-out images (`stkd-keras calibrate`, calibration.json),
and `split: test` reports the test split of runs validated on held-out images.
At the end every finished run is compared (`stkd-keras compare`) into
OUTPUT/results.md and OUTPUT/results.png, with OUTPUT/environment.json beside them.

Usage: python benchmarks/accuracy.py --grid benchmarks/grids/fashion_mnist_methods.yaml \
           --output benchmarks/results/fashion_mnist_methods
       python benchmarks/accuracy.py ... --compare-only   # the table of the runs finished so far; runs nothing
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from stkd_keras import methods

GRID_FIELDS = {
    "name",
    "dataset",
    "teacher",
    "teacher_run",
    "student",
    "methods",
    "seeds",
    "settings",
    "common",
    "baseline",
    "baseline_setting",
    "expected_minutes",
    "calibrate",
    "split",
}


def option_list(options: dict) -> list[str]:
    """{"train_subset": 5000, "lambda_per_sample": False} -> ["--train-subset", "5000", "--lambda-per-batch"]."""
    hyperparameters = methods.hyperparameter_fields()
    arguments = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            off_flag = hyperparameters[name].metadata.get("off_flag") if name in hyperparameters else None
            arguments.append(flag if value else off_flag or "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            arguments += [flag, ",".join(str(v) for v in value)]
        else:
            arguments += [flag, str(value)]
    return arguments


def method_entry(entry: str) -> tuple[str, dict]:
    """A grid's method: a registered name, optionally with options (read as YAML), e.g. "stkd mix_fraction=0.1"."""
    name, *options = str(entry).split()
    values = {}
    for option in options:
        field, separator, value = option.partition("=")
        if not separator:
            raise SystemExit(f"Method entry {entry!r}: expected NAME FIELD=VALUE ..., got {option!r}.")
        values[field] = yaml.safe_load(value)
    return name, values


def method_folder(entry: str) -> str:
    """The run folder of a method entry: "stkd mix_fraction=0.1" -> "stkd_mix_fraction-0.1"."""
    name, values = method_entry(entry)
    return "_".join([name, *(f"{field}-{value}" for field, value in values.items())])


def setting_label(setting: dict) -> str:
    return "_".join(f"{key}-{value}" for key, value in setting_options(setting).items()) or "default"


def setting_options(setting: dict) -> dict:
    """A setting's run options: all its fields but `seeds`."""
    return {key: value for key, value in setting.items() if key != "seeds"}


def setting_seeds(grid: dict, setting: dict) -> list[int]:
    """A setting's seeds: its own `seeds` where it has them (more seeds for one schedule only), else the grid's."""
    return list(setting.get("seeds", grid["seeds"]))


def grid_runs(grid: dict) -> list[tuple[dict, str, int]]:
    """Every (setting, method, seed) of the grid, seed by seed: a grid stopped part-way is a whole grid with fewer
    seeds, not one with settings missing. Seeds only some settings have come after the grid's own."""
    settings = grid.get("settings") or [{}]
    seeds = dict.fromkeys([*grid["seeds"], *(seed for setting in settings for seed in setting_seeds(grid, setting))])
    return [
        (setting, method, seed)
        for seed in seeds
        for setting in settings
        if seed in setting_seeds(grid, setting)
        for method in grid["methods"]
    ]


def whole_seeds(grid: dict, finished_seeds: list[int]) -> list[int]:
    """The seeds whose every run has finished, given the seed of each finished run: a seed is compared only whole,
    in every setting it belongs to, so no arm is compared over seeds another arm lacks."""
    wanted = Counter(seed for _, _, seed in grid_runs(grid))
    done = Counter(finished_seeds)
    return [seed for seed, count in wanted.items() if done[seed] == count]


def load_grid(path: Path) -> dict:
    grid = yaml.safe_load(path.read_text())
    if not isinstance(grid, dict):
        raise SystemExit(f"{path}: a grid is a mapping.")
    unknown = sorted(set(grid) - GRID_FIELDS)
    if unknown:
        raise SystemExit(f"{path}: unknown field `{unknown[0]}`. Valid fields: {', '.join(sorted(GRID_FIELDS))}.")
    for field in ("dataset", "student", "methods", "seeds"):
        if field not in grid:
            raise SystemExit(f"{path}: missing field `{field}`.")
    for setting in grid.get("settings") or []:
        seeds = setting.get("seeds", grid["seeds"]) if isinstance(setting, dict) else None
        if not isinstance(seeds, list) or not seeds or not all(type(seed) is int for seed in seeds):
            raise SystemExit(f"{path}: setting {setting!r}: a setting is a mapping whose `seeds`, if any, lists ints.")
    for entry in grid["methods"]:
        name, values = method_entry(entry)
        try:
            methods.get_method(name).make_hyperparameters(**values)
        except ValueError as error:
            raise SystemExit(f"{path}: method {entry!r}: {error}") from None
    return grid


def cli(*arguments: str) -> None:
    subprocess.run([sys.executable, "-m", "stkd_keras.cli.main", *arguments], check=True)


def run_grid(grid: dict, output: Path, log=print, compare_only: bool = False) -> tuple[list[Path], Path]:
    """Runs (or skips, or resumes) every run of the grid; returns the finished run folders and the teacher folder.

    With `compare_only`, runs nothing: the finished runs of the grid are returned (a grid stopped part-way, seed
    by seed, still compares).
    """
    output.mkdir(parents=True, exist_ok=True)
    common = dict(grid.get("common") or {})
    teacher_dir = output / "teacher"
    teacher = grid.get("teacher")
    if grid.get("teacher_run"):
        teacher_dir = Path(grid["teacher_run"])
        if not (teacher_dir / "teacher.keras").is_file():
            raise SystemExit(f"teacher_run {teacher_dir} has no teacher.keras: run the grid that trains it first.")
    elif teacher and not (teacher_dir / "teacher.keras").is_file() and not compare_only:
        # The teacher trains with cross-entropy: the methods' hyperparameters in `common` are not its options.
        teacher_options = {
            name: value for name, value in {**common, **teacher}.items() if name not in methods.hyperparameter_fields()
        }
        if list(output.glob(".teacher.partial-*")):
            log(f"Resuming the teacher in {teacher_dir}")
            cli("train-teacher", "--resume", str(teacher_dir), "--quiet")
        else:
            log(f"Training the teacher into {teacher_dir}")
            cli(
                "train-teacher",
                "--dataset",
                grid["dataset"],
                *option_list(teacher_options),
                "--quiet",
                "--output",
                str(teacher_dir),
            )
    finished = []
    runs = grid_runs(grid)
    for index, (setting, method, seed) in enumerate(runs, start=1):
        folder = output / "runs" / setting_label(setting) / method_folder(method) / f"seed{seed}"
        if (folder / "metrics.json").is_file():
            log(f"[{index}/{len(runs)}] {folder.relative_to(output)}: finished, skipped")
            if not compare_only:
                calibrate(grid, folder, log)
            finished.append(folder)
            continue
        if compare_only:
            log(f"[{index}/{len(runs)}] {folder.relative_to(output)}: not run yet, left out")
            continue
        started = time.perf_counter()
        if list(folder.parent.glob(f".{folder.name}.partial-*")):
            log(f"[{index}/{len(runs)}] {folder.relative_to(output)}: resuming")
            cli("distill", "--resume", str(folder), "--quiet")
        else:
            log(f"[{index}/{len(runs)}] {folder.relative_to(output)}: running")
            # A setting's hyperparameters go to the methods that have them (a temperature means nothing to ce).
            name, own = method_entry(method)
            unit = methods.get_method(name)
            options = {
                field: value
                for field, value in {**common, **setting_options(setting), **own, "seed": seed}.items()
                if field not in methods.hyperparameter_fields() or field in unit.hyperparameter_names()
            }
            teacher_option = ["--teacher", str(teacher_dir)] if unit.needs_teacher else []
            cli(
                "distill",
                "--dataset",
                grid["dataset"],
                "--student",
                grid["student"],
                "--method",
                name,
                *teacher_option,
                *option_list(options),
                "--quiet",
                "--output",
                str(folder),
            )
        log(f"    done in {time.perf_counter() - started:.0f} s")
        calibrate(grid, folder, log)
        finished.append(folder)
    if compare_only:
        # Only whole seeds: a seed some arm has not finished would compare arms over different seeds.
        whole = whole_seeds(grid, [int(folder.name[len("seed") :]) for folder in finished])
        left_out = sorted({seed for _, _, seed in runs} - set(whole))
        if left_out:
            log(f"Seeds {left_out} are not finished in every arm: left out of the comparison.")
        finished = [folder for folder in finished if int(folder.name[len("seed") :]) in whole]
    return finished, teacher_dir


def calibrate(grid: dict, folder: Path, log=print) -> None:
    """With `calibrate: true`, fits the finished run's temperature on its held-out images (calibration.json).

    A run calibrated before is left as it is; one whose model is gone (a later session's fresh clone keeps only
    metrics.json and history.csv) cannot be, and is said so.
    """
    if not grid.get("calibrate") or (folder / "calibration.json").is_file():
        return
    if not (folder / "student.keras").is_file():
        log(f"    {folder}: no student.keras left to calibrate; its arm is compared without temperature scaling")
        return
    cli("calibrate", str(folder), "--quiet")


def training_time(folder: Path) -> tuple[float, int]:
    """A finished run's seconds of training and the epochs they leave out (`reporting.untimed_epochs`); (0, 0) for a
    folder without metrics.json."""
    from stkd_keras.reporting import untimed_epochs

    path = folder / "metrics.json"
    if not path.is_file():
        return 0.0, 0
    metrics = json.loads(path.read_text())
    return metrics.get("train_seconds") or 0.0, untimed_epochs(metrics)


def _cpu_name() -> str:
    import os
    import platform

    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores visible"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--compare-only", action="store_true", help="Compare the runs finished so far; run nothing.")
    args = parser.parse_args()
    grid = load_grid(args.grid)
    finished, teacher_dir = run_grid(grid, args.output, compare_only=args.compare_only)
    if not finished:
        raise SystemExit(f"No finished runs of {args.grid} in {args.output} to compare.")
    baseline = grid.get("baseline", "kd")
    fields = [
        f"--baseline-setting={name}={json.dumps(value)}" for name, value in (grid.get("baseline_setting") or {}).items()
    ]
    # `split: test`: runs validated on held-out training images report the test split, where a choice made on the
    # held-out images is judged (a grid made to choose without reading the test split leaves it out).
    split = grid.get("split", "validation")
    cli(
        "compare",
        *map(str, finished),
        "--baseline",
        baseline,
        *fields,
        "--split",
        split,
        "--markdown",
        str(args.output / "results.md"),
        "--plot",
        str(args.output / "results.png"),
    )
    import platform

    import keras
    import tensorflow as tf

    environment = {
        "grid": str(args.grid),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "runs": len(finished),
        # Training time (Keras fit, all epochs) summed over the runs and the teacher this grid trained (not a shared
        # one), whichever invocation ran them (but the epochs before the last resume of a run resumed from a
        # checkpoint that did not time them: readme_results says how many); wall time adds process start, data
        # loading and the teacher's evaluation.
        "train_seconds_total": round(
            sum(training_time(run)[0] for run in [*finished, *([] if grid.get("teacher_run") else [teacher_dir])]), 1
        ),
    }
    (args.output / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")


if __name__ == "__main__":
    main()

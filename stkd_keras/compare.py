"""Compare finished runs: accuracy per method and setting over seeds, with honest uncertainty.

Runs are grouped by setting (dataset, student, teacher, epochs, training
subset, ... and the method's hyperparameters where they differ from the
method's defaults, so that methods with different hyperparameters share a
setting) and method. For each group: n, mean, sample standard deviation, min
and max of the final-epoch and (named apart) best-epoch validation top-1. For
each method, the difference of its final-epoch mean to a baseline method in
the same setting (or, for an ablation, in one reference setting), with a 95%
confidence interval: a paired t interval over the seeds both ran, or Welch's
interval when they share fewer than two seeds.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from stkd_keras import compare_calibration
from stkd_keras import methods as methods_lib
from stkd_keras.intervals import describe, interval_text, mean_std_text
from stkd_keras.intervals import difference_ci as difference_ci  # re-exported: the interval of every comparison
from stkd_keras.intervals import t_quantile_975 as t_quantile_975
from stkd_keras.markdown import markdown_row
from stkd_keras.reporting import curve_style, epoch_axis, read_history, save_figure


def load_runs(run_dirs) -> list[dict]:
    """The metrics.json of each run folder, with its path and its calibration.json (`temperature_scaling`) if any.

    Raises:
        ValueError: Naming a missing or malformed file.
    """
    runs = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: {run_dir} is not a finished run.")
        try:
            metrics = json.loads(path.read_text())
            metrics["final_val_accuracy"], metrics["best_val_accuracy"], metrics["config"]  # noqa: B018
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is malformed ({type(error).__name__}: {error}).") from None
        metrics["run_dir"] = str(run_dir)
        scaling = compare_calibration.read_scaling(run_dir)
        if scaling is not None:
            metrics["temperature_scaling"] = scaling
        runs.append(metrics)
    if not runs:
        raise ValueError("No runs to compare.")
    return runs


# Config fields that do not define a setting: the seed varies within one, the method is the other axis,
# the rest say where things were read from or how fast they ran.
_NOT_SETTING = {"seed", "method", "teacher", "data_dir", "download", "deterministic", "jit_compile", "mixed_precision"}


def _non_default_hyperparameters(run: dict) -> dict:
    """The run's hyperparameters that differ from its method's defaults (all of them for a method not registered here).

    Configs hold the run's method's hyperparameters (those written before
    methods were units held every method's, also for methods without them).
    """
    config = run["config"]
    names = methods_lib.hyperparameter_fields()
    hyperparameters = {k: v for k, v in config.items() if k in names}
    try:
        return methods_lib.non_default(config.get("method", run.get("method")), hyperparameters)
    except ValueError:
        return hyperparameters


def method_options(run: dict, baseline: str | None = None) -> dict:
    """The options that make a run a variant of its method.

    They are the run's non-default hyperparameters that the `baseline`
    method does not have. E.g. `mix_fraction=0.5` of an `stkd` run compared
    with `kd`: kd has no such option, so the row is the method
    "stkd mix_fraction=0.5" in the same setting as kd. Options the baseline
    also has (a temperature) stay part of the setting, as they would be for
    the baseline.
    """
    if baseline is None:
        return {}
    try:
        theirs = set(methods_lib.get_method(baseline).hyperparameter_names())
    except ValueError:
        return {}
    return {name: value for name, value in _non_default_hyperparameters(run).items() if name not in theirs}


def method_label(run: dict, baseline: str | None = None) -> str:
    """The method as the tables name it: `stkd`, a preset (`kd+ls`), `stkd mix_fraction=0.5` (see `method_options`)."""
    options = method_options(run, baseline)
    return " ".join([run["method"], *(f"{name}={value}" for name, value in sorted(options.items()))])


def _setting_fields(run: dict, baseline: str | None = None) -> dict:
    """The config fields that define a run's setting.

    All fields but _NOT_SETTING and the method's own options (`method_options`); hyperparameters only where not the
    method's defaults. A field set to None is left out, so that a run written before the field existed
    (`validation_holdout`) shares the setting of a newer run that leaves it unset.
    """
    config = run["config"]
    names = methods_lib.hyperparameter_fields()
    fields = {k: v for k, v in config.items() if k not in _NOT_SETTING and k not in names and v is not None}
    own = method_options(run, baseline)
    fields.update({k: v for k, v in _non_default_hyperparameters(run).items() if k not in own})
    # Runs on two backends are two settings, never seeds of one: their seeds draw different numbers. A metrics.json
    # written before the backend was recorded comes from TensorFlow, the only backend runs had then.
    fields["backend"] = run.get("backend") or "tensorflow"
    return fields


def _setting_key(run: dict, baseline: str | None = None) -> tuple:
    return tuple(sorted((k, json.dumps(v)) for k, v in _setting_fields(run, baseline).items()))


def _resolved_setting(key: tuple, run: dict) -> dict:
    """A setting key's fields as values, plus the default hyperparameters of the run's method that the key omits."""
    fields = {name: json.loads(value) for name, value in key}
    try:
        defaults = methods_lib.get_method(run["config"].get("method", run.get("method"))).defaults()
    except ValueError:
        defaults = {}
    return {**defaults, **fields}


def setting_labels(runs: list[dict], reference: tuple | None = None, baseline: str | None = None) -> dict:
    """A readable label per setting key: dataset, student, teacher, epochs, subset, and whatever else varies.

    With `reference` (a setting key, e.g. an ablation's defaults), each label
    names only the fields that differ from the reference, and the reference
    itself is labelled "defaults".
    """
    keys = {_setting_key(run, baseline): run for run in runs}
    resolved = {key: _resolved_setting(key, run) for key, run in keys.items()}
    names = {name for fields in resolved.values() for name in fields}
    varying = sorted(
        {name for name in names if len({json.dumps(fields.get(name)) for fields in resolved.values()}) > 1}
        - {"dataset", "model", "epochs", "train_subset", "validation_holdout"}
    )
    teachers = defaultdict(set)
    for run in runs:
        if run.get("teacher"):
            teachers[_setting_key(run, baseline)].add(run["teacher"].get("name"))
    labels = {}
    for key, run in keys.items():
        config, fields = run["config"], resolved[key]
        base = resolved.get(reference, {}) if reference is not None else None
        teacher = ",".join(sorted(teachers[key])) or "-"
        label = (
            f"{config['dataset']} | {run['model']} <- {teacher} | {config['epochs']} epochs | "
            f"{config.get('train_subset') or 'all'} train images"
        )
        if config.get("validation_holdout"):
            label += f" | validated on {config['validation_holdout']} held-out train images"
        shown = [name for name in varying if name in fields and (base is None or fields[name] != base.get(name))]
        extra = ", ".join(f"{name}={fields[name]}" for name in shown)
        if reference is not None and not extra:
            extra = "defaults"
        labels[key] = label + (f" | {extra}" if extra else "")
    return labels


_MISSING = object()


def find_setting(runs: list[dict], fields: dict, baseline: str | None = None) -> tuple:
    """The key of the one setting whose config has all of `fields` (e.g. the defaults of an ablation)."""
    matches = {
        _setting_key(run, baseline)
        for run in runs
        if all(run["config"].get(k, _MISSING) == v for k, v in fields.items())
    }
    if len(matches) != 1:
        found = "no setting" if not matches else f"{len(matches)} settings"
        labels = sorted(set(setting_labels(runs, baseline=baseline).values()))
        raise ValueError(
            f"The baseline setting {fields} matches {found}; give the fields that single out one of: {labels}."
        )
    return matches.pop()


def compare(
    runs: list[dict], baseline: str = "kd", baseline_setting: dict | None = None, split: str = "validation"
) -> list[dict]:
    """One row per (setting, method), sorted by setting then method.

    Each method is compared with the `baseline` method in its own setting or,
    when `baseline_setting` (config fields, e.g. {"mixup_alpha": 0.2}) is given,
    with the baseline method in that one setting: the reference of an ablation.
    A method is named with the options that make it a variant (`method_label`).
    Final-epoch figures are on `split` ("validation" or "test", for runs
    validated on held-out training images); best-epoch ones exist only on the
    validation split. Where the runs carry calibration figures, a row also has
    them (`compare_calibration.arm_columns`).

    Raises:
        ValueError: For an unknown split, `test` for runs without test-split figures, or a baseline setting that
            does not single out one setting.
    """
    compare_calibration.check_split(runs, split)
    reference_key = find_setting(runs, baseline_setting, baseline) if baseline_setting else None
    labels = setting_labels(runs, reference_key, baseline)
    reference_setting = labels[reference_key] if reference_key else None
    groups: dict = defaultdict(list)
    for run in runs:
        groups[(labels[_setting_key(run, baseline)], method_label(run, baseline))].append(run)
    rows = []
    for (setting, method), members in sorted(groups.items()):
        final = [(m.get("seed"), compare_calibration.final_accuracy(m, split)) for m in members]
        row = {
            "setting": setting,
            "method": method,
            "split": split,
            "final": describe([v for _, v in final]),
            "best": describe([m["best_val_accuracy"] for m in members]),
            "seeds": sorted(m.get("seed") for m in members),
            "final_by_seed": final,
            "run_dirs": [m["run_dir"] for m in members],
        }
        key = (reference_setting or setting, baseline)
        row["is_baseline"] = key == (setting, method)
        reference = groups.get(key) if not row["is_baseline"] else None
        if reference:
            row["versus_baseline"] = difference_ci(
                final, [(m.get("seed"), compare_calibration.final_accuracy(m, split)) for m in reference]
            )
        row.update(compare_calibration.arm_columns(members, reference, split))
        rows.append(row)
    return rows


def markdown(rows: list[dict], baseline: str = "kd") -> str:
    """The comparison as a markdown table (accuracies in percent), and the calibration tables when runs have them.

    A setting label holds ` | ` between its parts: `markdown_row` escapes
    them, so a renderer keeps the label in its one cell. On the test split the
    headers name each figure's split, and a line below the table says why.
    """
    test = rows[0].get("split") == "test"
    final = "final test" if test else "final"
    best = "best-epoch validation top-1" if test else "best-epoch top-1"
    lines = [
        f"| setting | method | n | {final} top-1 mean ± std | {final} min / max | {best} mean ± std | {final} - "
        f"{baseline} [95% CI] |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        versus = row.get("versus_baseline")
        if versus:
            interval = interval_text(versus)
        elif row.get("is_baseline", row["method"] == baseline):
            interval = "baseline"
        else:
            interval = f"- (no {baseline} run in this setting)"
        lines.append(
            markdown_row(
                [
                    row["setting"],
                    row["method"],
                    row["final"]["n"],
                    mean_std_text(row["final"]),
                    f"{100 * row['final']['min']:.2f} / {100 * row['final']['max']:.2f}",
                    mean_std_text(row["best"]),
                    interval,
                ]
            )
        )
    if test:
        lines += [
            "",
            "Final-epoch figures on the test split, the one reported; best-epoch figures on the validation split "
            "(the held-out training images every choice was made on), for reference only.",
        ]
    return "\n".join(lines) + "\n" + compare_calibration.markdown(rows, baseline)


def plot(rows: list[dict], path: str | os.PathLike) -> Path:
    """Accuracy (and ECE, where runs have it) per method with every seed shown, and one seed's curves per method, as
    a PNG: one row of panels per setting."""
    return save_figure(plot_figure(rows), path, dpi=90)


def plot_figure(rows: list[dict]):
    """The figure `plot` writes: per setting, each seed's final top-1 and their mean ± std per method, the same for
    ECE when runs have calibration figures (`compare_calibration.draw_ece`), and val top-1 curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({row["setting"] for row in rows})
    widest = max(len([row for row in rows if row["setting"] == setting]) for setting in settings)
    calibrated = any(row.get("calibration") for row in rows)
    columns, width = (3, max(20, 4 * widest + 7)) if calibrated else (2, max(14, 2 * widest + 7))
    figure, axes = plt.subplots(len(settings), columns, figsize=(width, 4.8 * len(settings)), squeeze=False)
    for index, setting in enumerate(settings):
        members = [row for row in rows if row["setting"] == setting]
        left, right = axes[index][0], axes[index][-1]
        if calibrated:
            compare_calibration.draw_ece(axes[index][1], members)
        epochs = []
        for position, row in enumerate(members):
            values = [100 * v for _, v in row["final_by_seed"]]
            left.scatter([position] * len(values), values, alpha=0.7, label="one seed" if position == 0 else None)
            spread = 100 * row["final"]["std"] if row["final"]["n"] > 1 else 0
            left.errorbar(
                position + 0.15,
                100 * row["final"]["mean"],
                yerr=spread,
                fmt="o",
                color="black",
                label="mean ± std over seeds" if position == 0 else None,
            )
            history_path = Path(row["run_dirs"][0]) / "history.csv"
            if history_path.is_file():
                history = read_history(history_path, row["method"])  # epochs from 1, in old files (from 0) too
                right.plot(
                    history["epoch"],
                    [100 * value for value in history["val_accuracy"]],
                    label=row["method"],
                    **curve_style(history["epoch"]),
                )
                epochs += history["epoch"]
        # Method names with their options are long: one option per line, so neighbouring labels never overlap.
        left.set_xticks(range(len(members)), [row["method"].replace(" ", "\n") for row in members], fontsize=8)
        left.set_xlim(-0.5, len(members) - 0.5)
        left.set_ylabel("final-epoch test top-1 (%)" if members[0]["split"] == "test" else "final-epoch val top-1 (%)")
        left.set_title(setting, fontsize=9)
        left.legend(fontsize=8)
        epoch_axis(right, epochs)
        right.set_ylabel("val top-1 (%)")
        right.set_title("training curves, one seed per method", fontsize=9)
        if epochs:
            right.legend(fontsize=8)
    return figure

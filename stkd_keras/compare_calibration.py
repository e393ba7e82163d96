"""The split a comparison reports and its calibration side: ECE, NLL, Brier and mean confidence per arm.

A run's metrics.json holds the final model's calibration on the validation split (`final_val_calibration`) and,
when the run validated on held-out training images, its top-1 and calibration on the test split (`test`). A
comparison reports one split (`SPLITS`): the validation split (the held-out images, where choices are made, or the
test split itself for a run without them) or the test split. `stkd-keras calibrate RUN` writes calibration.json
beside metrics.json: the temperature fitted on held-out training images (`fit`) and the figures before and after
scaling by it on those images (`held_out`) and on the test split (`split`, named "test"; `test` is read too), from
which the "after temperature scaling" columns come. ECE and NLL are compared with the
baseline as top-1 is (`intervals.difference_ci`); Brier and mean confidence are shown, not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from stkd_keras.calibration import CALIBRATION_FIELDS
from stkd_keras.intervals import describe, difference_ci, interval_text, mean_std_text
from stkd_keras.markdown import markdown_row

SPLITS = ("validation", "test")
SCALING_FILE = "calibration.json"
SCALED_FIELDS = ("temperature", "ece", "nll")
COMPARED_FIELDS = ("ece", "nll")


def check_split(runs: list[dict], split: str) -> None:
    """Raises ValueError for an unknown split, or for `test` when a run has no test-split figures (naming it)."""
    if split not in SPLITS:
        raise ValueError(f"Expected a split in {SPLITS}. Received: split={split!r}")
    for run in runs if split == "test" else []:
        if not isinstance(run.get("test"), dict) or "accuracy" not in run["test"]:
            raise ValueError(
                f"{run['run_dir']} has no test-split figures (only runs validated on held-out training images carry "
                "them, since calibration was recorded); compare it on the validation split."
            )


def final_accuracy(run: dict, split: str) -> float:
    """The final model's top-1 on `split` (the test split's from `test`, checked by `check_split`)."""
    return run["test"]["accuracy"] if split == "test" else run["final_val_accuracy"]


def run_calibration(run: dict, split: str) -> dict | None:
    """The final model's calibration figures on `split`, or None for a run written before they were recorded."""
    figures = (run.get("test") or {}).get("calibration") if split == "test" else run.get("final_val_calibration")
    if not isinstance(figures, dict) or not all(
        isinstance(figures.get(name), (int, float)) for name in CALIBRATION_FIELDS
    ):
        return None
    return figures


def read_scaling(run_dir: str | Path) -> dict | None:
    """A run's calibration.json (`stkd-keras calibrate`), or None without one; ValueError naming a malformed file."""
    path = Path(run_dir) / SCALING_FILE
    if not path.is_file():
        return None
    try:
        scaling = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is malformed (JSONDecodeError: {error}).") from None
    if not isinstance(scaling, dict):
        raise ValueError(f"{path} is malformed: it holds no temperature scaling record.")
    return scaling


def scaled_part(run: dict, split: str) -> str | None:
    """Which part of calibration.json holds `split`'s figures after scaling: "test", "held_out" or None.

    The validation split of a run validated on held-out images is the `held_out` part when the temperature was
    fitted on those same images (then its figures there are optimistic); a run without held-out images validated
    on the test split.
    """
    holdout = run["config"].get("validation_holdout")
    if split == "test" or not holdout:
        return "test"
    fitted_on = ((run.get("temperature_scaling") or {}).get("fit") or {}).get("holdout", holdout)
    return "held_out" if fitted_on == holdout else None


def scaled_measurement(run: dict, split: str) -> dict | None:
    """calibration.json's figures on `split` (`scaled_part`), {"before": ..., "after": ...}, or None where calibrate
    has not measured them (not run, or without the split)."""
    scaling = run.get("temperature_scaling")
    part = scaled_part(run, split) if isinstance(scaling, dict) else None
    if part is None:
        return None
    measured = scaling.get(part)
    if part == "test" and measured is None:  # calibrate writes the measured split under `split`, named
        measured = scaling.get("split") if (scaling.get("split") or {}).get("name") == "test" else None
    return measured if isinstance(measured, dict) else None


def run_scaled(run: dict, split: str) -> dict | None:
    """The temperature, and ECE and NLL after scaling by it on `split` (`scaled_measurement`); None where calibrate
    has not measured them."""
    after = (scaled_measurement(run, split) or {}).get("after")
    if not isinstance(after, dict):
        return None
    figures = {
        "temperature": run["temperature_scaling"].get("temperature"),
        **{name: after.get(name) for name in COMPARED_FIELDS},
    }
    if not all(isinstance(figures.get(name), (int, float)) for name in SCALED_FIELDS):
        return None
    return figures


def _by_seed(members: list[dict], read, split: str, fields: tuple) -> dict | None:
    """{field: [(seed, value), ...]} over `members`, or None unless every one of them has the figures."""
    figures = [(member.get("seed"), read(member, split)) for member in members]
    if not figures or any(values is None for _, values in figures):
        return None
    return {name: [(seed, values[name]) for seed, values in figures] for name in fields}


def arm_columns(members: list[dict], reference: list[dict] | None, split: str) -> dict:
    """The calibration figures of one arm (its runs `members`), against the baseline arm's runs `reference`.

    Returns (each only where every run of the arm has the figures):
        calibration: {field: `describe`} for ECE, NLL, Brier and mean confidence on `split`, and
        calibration_by_seed, calibration_versus_baseline ({ece, nll}: `difference_ci`, when `reference` has them);
        scaled, scaled_by_seed, scaled_versus_baseline: the same for the temperature and ECE and NLL after scaling.
    """
    columns = {}
    for kind, read, fields in (
        ("calibration", run_calibration, CALIBRATION_FIELDS),
        ("scaled", run_scaled, SCALED_FIELDS),
    ):
        by_seed = _by_seed(members, read, split, fields)
        if by_seed is None:
            continue
        columns[kind] = {name: describe([value for _, value in values]) for name, values in by_seed.items()}
        columns[f"{kind}_by_seed"] = by_seed
        if kind == "scaled":
            columns["scaled_on"] = sorted({scaled_part(member, split) for member in members})
        if kind == "calibration":
            columns["ece_bins"] = sorted(
                {run_calibration(member, split).get("ece_bins") for member in members} - {None}
            )
        base = _by_seed(reference, read, split, fields) if reference else None
        if base is not None:
            columns[f"{kind}_versus_baseline"] = {
                name: difference_ci(by_seed[name], base[name]) for name in COMPARED_FIELDS
            }
    return columns


# (field, scale, digits, header): ECE and confidence in %, NLL in nats, Brier in [0, 2].
_COLUMNS = {
    "ece": (100, 2, "ECE %"),
    "nll": (1, 3, "NLL"),
    "brier": (1, 3, "Brier"),
    "confidence": (100, 2, "confidence %"),
    "temperature": (1, 2, "T"),
}


def _cells(row: dict, kind: str, fields: tuple, baseline: str) -> list[str]:
    """One row's cells of the `kind` table: mean ± std of each field, then its difference to the baseline's."""
    figures, versus = row.get(kind), row.get(f"{kind}_versus_baseline", {})
    cells = []
    for name in fields:
        scale, digits, _ = _COLUMNS[name]
        cells.append(mean_std_text(figures[name], scale, digits) if figures else "- (not recorded for every run)")
        if name not in COMPARED_FIELDS:
            continue
        if name in versus:
            cells.append(interval_text(versus[name], scale, digits))
        elif row["is_baseline"]:
            cells.append("baseline")
        else:
            cells.append("-" if not figures else f"- (no {baseline} figures to compare with)")
    return cells


def _table(rows: list[dict], kind: str, fields: tuple, baseline: str) -> list[str]:
    header = ["setting", "method", "n"]
    for name in fields:
        header.append(f"{_COLUMNS[name][2]} mean ± std")
        if name in COMPARED_FIELDS:
            header.append(f"{_COLUMNS[name][2].split()[0]} - {baseline} [95% CI]")
    # Figures right-aligned, intervals left-aligned as in the top-1 table.
    alignments = ["---" if cell in ("setting", "method") or "CI" in cell else "---:" for cell in header]
    lines = [markdown_row(header), "| " + " | ".join(alignments) + " |"]
    for row in rows:
        n = row[kind]["ece"]["n"] if row.get(kind) else row["final"]["n"]
        lines.append(markdown_row([row["setting"], row["method"], n, *_cells(row, kind, fields, baseline)]))
    return lines


def _bins_text(rows: list[dict]) -> str:
    counts = sorted({run_bins for row in rows for run_bins in row.get("ece_bins", ())})
    return f"{counts[0]} equal-width bins" if len(counts) == 1 else "equal-width bins"


def markdown(rows: list[dict], baseline: str) -> str:
    """The calibration tables below the top-1 table, or "" when no arm has calibration figures (older runs).

    Before temperature scaling: ECE, NLL, Brier and mean confidence; after it (only the arms every run of which
    `stkd-keras calibrate` has scaled): the temperature, ECE and NLL. Each its own table with the top-1 table's row
    labels, so that a rendered page stays readable.
    """
    if not any(row.get("calibration") for row in rows):
        return ""
    split = rows[0]["split"]
    lines = [
        "",
        f"**Calibration** on the {split} split, final epoch: ECE (expected calibration error over "
        f"{_bins_text(rows)} of the top-label confidence) in %, NLL in nats, Brier score (0 to 2), mean top-label "
        "confidence in % (above top-1: overconfident). Lower ECE, NLL and Brier are better.",
        "",
        *_table(rows, "calibration", CALIBRATION_FIELDS, baseline),
    ]
    scaled = [row for row in rows if row.get("scaled")]
    if scaled:
        optimistic = any("held_out" in row["scaled_on"] for row in scaled)
        where = (
            f"the {split} split: where a run validated on held-out images, the images the temperature was fitted on, "
            "so optimistic"
            if optimistic
            else "the test split"
        )
        lines += [
            "",
            "**After temperature scaling** (`stkd-keras calibrate`: one temperature T per run, fitted on held-out "
            f"training images by minimising NLL; top-1 is unchanged), on {where}; compared with {baseline} after "
            "scaling too.",
            "",
            *_table(scaled, "scaled", SCALED_FIELDS, baseline),
        ]
    return "\n".join(lines) + "\n"


def draw_ece(axis, members: list[dict]) -> None:
    """Each seed's ECE (%) per arm, their mean ± std, and after temperature scaling where every run has it."""
    labelled = set()  # one legend entry per kind of mark
    for position, row in enumerate(members):
        for kind, offset, marker, label in (("calibration", 0.15, "o", ""), ("scaled", 0.3, "s", " after scaling")):
            figures = row.get(kind)
            if not figures:
                continue
            values = [100 * value for _, value in row[f"{kind}_by_seed"]["ece"]]
            axis.scatter(
                [position] * len(values),
                values,
                alpha=0.7,
                marker=marker,
                facecolors="none" if kind == "scaled" else None,
                edgecolors="tab:orange" if kind == "scaled" else None,
                color=None if kind == "scaled" else "tab:blue",
                label=None if kind in labelled else f"one seed{label}",
            )
            spread = 100 * figures["ece"]["std"] if figures["ece"]["n"] > 1 else 0
            axis.errorbar(
                position + offset,
                100 * figures["ece"]["mean"],
                yerr=spread,
                fmt=marker,
                color="black",
                mfc="none" if kind == "scaled" else "black",
                label=None if kind in labelled else f"mean ± std over seeds{label}",
            )
            labelled.add(kind)
    axis.set_xticks(range(len(members)), [row["method"].replace(" ", "\n") for row in members], fontsize=8)
    axis.set_xlim(-0.5, len(members) - 0.5)
    axis.set_ylabel(f"final-epoch {members[0]['split']} ECE (%, lower is better)")
    axis.set_title(f"ECE per method ({_bins_text(members)})", fontsize=9)
    axis.legend(fontsize=8)

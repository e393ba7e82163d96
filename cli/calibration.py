"""`stkd-keras calibrate`: temperature scaling of a finished run, and the calibration figures commands print."""

from __future__ import annotations

import click

from stkd_keras import backend_selection
from stkd_keras.cli.backends import BackendCommand, check_backend, use_backend
from stkd_keras.cli.errors import user_errors
from stkd_keras.markdown import markdown_row


def calibration_line(results: dict) -> str:
    """evaluate's calibration figures in one line: ECE (in %), NLL, Brier score, mean confidence and the temperature.

    `results` is `stkd_keras.evaluation.evaluate`'s.
    """
    figures = results["calibration"]
    line = (
        f"Calibration: ECE {100 * figures['ece']:.2f}% ({figures['ece_bins']} equal-width bins), "
        f"NLL {figures['nll']:.4f}, Brier {figures['brier']:.4f}, mean confidence {figures['confidence']:.4f}"
    )
    scaling = results.get("temperature")
    if scaling is None:
        return line + " (no temperature scaling)."
    return line + f" (temperature {scaling['value']:.4f}, applied {scaling['applied']}, from {scaling['from']})."


def export_temperature_line(scaling: dict) -> str:
    """What an export did with the run's temperature (`scaling`: the metadata's `temperature` record)."""
    return f"Temperature {scaling['value']:.4f} (stkd-keras calibrate): " + (
        "every file divides its logits by it."
        if scaling["applied_in_graph"]
        else "recorded in the metadata, not applied (evaluate --calibrated applies it; export --calibrated builds it "
        "into the files)."
    )


def _rows(name: str, measured: dict) -> list[str]:
    """The before and after rows of one set of images in calibrate's table."""
    rows = []
    for when in ("before", "after"):
        figures = measured[when]
        rows.append(
            markdown_row(
                [
                    f"{name} ({measured['num_examples']:,})",
                    when,
                    f"{100 * figures['ece']:.2f}",
                    f"{figures['nll']:.4f}",
                    f"{figures['brier']:.4f}",
                    f"{100 * figures['confidence']:.2f}",
                    f"{100 * figures['accuracy']:.2f}",
                ]
            )
        )
    return rows


@click.command("calibrate", cls=BackendCommand)
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option(
    "--validation-holdout",
    "holdout",
    default=None,
    type=click.IntRange(min=1),
    help="Fit on the last N training images of the fixed order, which the run must never have trained on "
    "[default: the run's own --validation-holdout].",
)
@click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["test", "none"]),
    help="Also measure this split before and after scaling (it reports; the fit never reads it); none: skip it.",
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Batch size.")
@click.option(
    "--data-dir", default=None, type=click.Path(file_okay=False), help="Where the dataset is [default: the run's]."
)
@click.option("--download/--no-download", default=True, show_default=True, help="Let tfds download a missing dataset.")
@click.option(
    "--backend",
    default=None,
    type=click.Choice(backend_selection.BACKENDS),
    help="Keras backend to run the model on [default: KERAS_BACKEND if set, else tensorflow].",
)
@click.option("--quiet", is_flag=True, help="No progress while measuring; only the result.")
@user_errors
@click.pass_context
def calibrate(ctx, run_dir, holdout, split, batch_size, data_dir, download, backend, quiet):
    """Fit a temperature for a finished RUN on held-out training images (temperature scaling).

    The one temperature T minimising the NLL of softmax(logits / T) on training images the run never trained on
    (never on the test split) is stored in RUN/preprocessing.json, where `evaluate --calibrated` and `export
    --calibrated` read it; the fit and the figures before and after scaling go to RUN/calibration.json. Top-1 does
    not change.
    """
    from stkd_keras import temperature

    check_backend(backend)
    # Checked before the backend (and TensorFlow) loads, so a mistake is answered at once.
    folder, metrics = temperature.finished_run(run_dir)
    if (metrics.get("config") or {}).get("train_subset") is None:  # a check needing the data waits for it
        temperature.checked_holdout(folder, metrics, holdout)
    use_backend(ctx, backend)
    result = temperature.calibrate_run(
        run_dir,
        holdout=holdout,
        split=None if split == "none" else split,
        batch_size=batch_size,
        data_dir=data_dir,
        download=download,
        log=None if quiet else click.echo,
    )
    for note in result["notes"] if quiet else ():  # calibrate_run logs them itself unless quiet
        click.echo(note)
    fit = result["fit"]
    click.echo(
        f"Temperature {result['temperature']:.4f}, fitted on {fit['examples']:,} held-out training images (NLL "
        f"{fit['nll_before']:.4f} -> {fit['nll_after']:.4f}); stored in {folder / 'preprocessing.json'}."
    )
    click.echo("| images | scaling | ECE % | NLL | Brier | confidence % | top-1 % |")
    click.echo("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in _rows("held-out", result["held_out"]):
        click.echo(row)
    if result["split"] is not None:
        for row in _rows(result["split"]["name"], result["split"]):
            click.echo(row)
    click.echo(f"Wrote {folder / temperature.CALIBRATION_FILE}.")

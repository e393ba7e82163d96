"""`stkd-keras report` and `stkd-keras compare`: what finished runs show, one at a time or side by side."""

from __future__ import annotations

import click

from stkd_keras.cli.errors import user_errors
from stkd_keras.cli.options import field_values


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to draw the training curves (default: RUN_DIR/curves.png).",
)
@click.option(
    "--reliability",
    "reliability_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to draw the reliability diagram (default: RUN_DIR/reliability.png, for a run that recorded "
    "calibration).",
)
@user_errors
def report(run_dir, plot_path, reliability_path):
    """Summarise a finished run and draw its training curves to a PNG, or list the runs in a folder.

    On a run folder (one holding metrics.json) it prints the run's summary and
    writes curves.png, and for a run that recorded calibration its reliability
    diagram (accuracy per confidence bin against the diagonal, the test split's
    when the run has one, ECE over 15 equal-width bins in the title) to
    reliability.png. On any other folder it lists every run below it:
    finished runs (method, backend, epochs, final top-1), unfinished ones (the
    epoch each reached and the command that continues it) and damaged ones,
    named and skipped.
    """
    from stkd_keras import reporting

    reporting.report(run_dir, plot_path, log=click.echo, reliability_path=reliability_path)


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--baseline", default="kd", show_default=True, help="Method the others are compared with.")
@click.option(
    "--baseline-setting",
    "baseline_fields",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Compare every row with the baseline method in the one setting with these config values "
    "(repeatable; for ablations).",
)
@click.option(
    "--markdown",
    "markdown_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write the table to this markdown file.",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Draw per-seed accuracies and curves to this PNG.",
)
@click.option(
    "--split",
    default="validation",
    show_default=True,
    type=click.Choice(["validation", "test"]),
    help="Split of the final-epoch figures: validation, or test for runs validated on held-out training images "
    "(--validation-holdout), whose choices were made on those. Best-epoch top-1 is always the validation split's.",
)
@user_errors
def compare_runs(run_dirs, baseline, baseline_fields, markdown_path, plot_path, split):
    """Compare finished runs: mean, std, n, min/max of final and best-epoch top-1, and the difference to a baseline.

    Where the runs recorded calibration, a second table gives ECE (15 equal-width bins), NLL, Brier score and mean
    confidence, ECE and NLL with the same paired intervals against the baseline; a third, where `calibrate` has
    scaled every run of an arm, the temperature and ECE and NLL after temperature scaling.
    """
    from stkd_keras import compare as compare_lib
    from stkd_keras.compare_calibration import check_split

    baseline_setting = field_values(baseline_fields, "--baseline-setting")
    runs = compare_lib.load_runs(run_dirs)
    try:
        check_split(runs, split)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--split") from None
    rows = compare_lib.compare(runs, baseline, baseline_setting or None, split)
    table = compare_lib.markdown(rows, baseline)
    click.echo(table, nl=False)
    if markdown_path:
        from stkd_keras.files import atomic_write

        path = atomic_write(markdown_path, lambda temporary: temporary.write_text(table))
        click.echo(f"Wrote {path}.")
    if plot_path:
        click.echo(f"Wrote {compare_lib.plot(rows, plot_path)}.")

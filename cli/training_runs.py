"""What train-teacher and distill share: the options checked, the backend chosen, a new or resumed run, its result."""

from __future__ import annotations

from pathlib import Path

import click

from stkd_keras.cli.backends import check_backend, use_backend


def start_or_resume(ctx, backend, resume, output, quiet, options: dict, prepare):
    """What train-teacher and distill share: the options checked, the backend, then the new or the resumed run.

    `prepare()` checks the options and returns `start(training, verbose=, cluster=)`;
    it runs before the backend (and with it TensorFlow) is imported, so a
    mistake is answered at once.
    """
    if resume is None and output is None:
        raise click.UsageError("Missing option '--output' (or --resume to continue an unfinished run).")
    if resume is not None:
        _refuse_options_with_resume(ctx)
    run = {"verbose": 0 if quiet else "auto", "cluster": _cluster(options)}
    check_backend(backend)
    start = prepare() if resume is None else None
    use_backend(ctx, backend, resume)
    from stkd_keras import training

    if resume is not None:
        return training.resume(resume, log=click.echo, command=ctx.info_name, **run)
    return start(training, **run)


# A resumed run continues with the options its run.json records; only how it shows and where it runs may be given.
_OPTIONS_WITH_RESUME = {"resume", "quiet", "backend", "coordinator_address", "num_processes", "process_id"}


def _refuse_options_with_resume(ctx: click.Context) -> None:
    """Refuses, naming them, the options given with --resume that the resumed run would ignore."""
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name not in _OPTIONS_WITH_RESUME
        and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        given.sort()
        raise click.UsageError(
            f"{', '.join(given)} cannot change a resumed run, which continues with the options recorded in its "
            "run.json; "
            f"drop {'them' if len(given) > 1 else 'it'}, or start a new run with --overwrite."
        )


def _cluster(options: dict) -> dict | None:
    """The multi-process options of a data_parallel run (popped from `options`), or None."""
    cluster = {name: options.pop(name, None) for name in ("coordinator_address", "num_processes", "process_id")}
    return {name: value for name, value in cluster.items() if value is not None} or None


def report_result(metrics: dict, output: Path | None, role: str) -> None:
    """The run's closing line: its final and best validation top-1 and the file it saved."""
    if output is None:  # a multi-worker worker other than the chief: the chief saves and reports
        click.echo(f"Worker finished; the chief saved the {role}.")
        return
    calibration = metrics.get("final_val_calibration")
    test = metrics.get("test")
    click.echo(
        f"{role.capitalize()} {metrics['model']}: final-epoch val top-1 {metrics['final_val_accuracy']:.4f}"
        + (f" (ECE {100 * calibration['ece']:.2f}%, NLL {calibration['nll']:.4f})" if calibration else "")
        + f", best-epoch val top-1 {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']['epoch']}). "
        + (
            f"On the {test['num_examples']:,} test images: top-1 {test['accuracy']:.4f}, "
            f"ECE {100 * test['calibration']['ece']:.2f}%. "
            if test
            else ""
        )
        + f"Saved {output / ('teacher.keras' if role == 'teacher' else 'student.keras')}."
    )

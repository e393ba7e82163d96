"""Which Keras backend a command runs on, chosen before anything imports Keras (which fixes it once per process).

A command that trains or runs models is a `BackendCommand`; `use_backend` makes sure it runs on its backend,
in a child process when this one's Keras already runs another.
"""

from __future__ import annotations

import os
import subprocess
import sys

import click

from stkd_keras import backend_selection, native_stderr


def _option_value(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in raw command-line arguments (`--flag VALUE` or `--flag=VALUE`), if any."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _recorded_backend(resume: str | None) -> str | None:
    """The backend an unfinished run started on (its run.json), read without importing Keras."""
    if resume is None:
        return None
    from stkd_keras import runs

    try:
        saved = runs.read_run_file(runs.find_unfinished_run(resume))
    except (runs.RunError, ValueError, OSError):
        return None  # the command reports it once the options are read
    return None if saved is None else saved.get("backend", "tensorflow")  # runs from before --backend ran on TensorFlow


class BackendCommand(click.Command):
    """A command that trains or runs models: it chooses the Keras backend before its options import Keras.

    Converting some options (model and dataset names) imports the library and
    with it Keras, which fixes its backend once per process; so the backend
    (`--backend`, else the one a `--resume`d run started on, else
    `KERAS_BACKEND`, else TensorFlow) is read from the raw arguments first.
    The raw arguments are kept: a process whose Keras already runs another
    backend runs the command again in a child process (`use_backend`).
    """

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_backend = backend  # export runs the TensorFlow converters, whatever the caller uses

    def parse_args(self, ctx, args):
        ctx.meta["stkd_keras.args"] = list(args)
        wanted = (
            self.fixed_backend or _option_value(args, "--backend") or _recorded_backend(_option_value(args, "--resume"))
        )
        wanted = wanted or backend_selection.default_backend()
        if wanted in backend_selection.BACKENDS and backend_selection.loaded_backend() is None:
            try:
                backend_selection.select(wanted)
            except ValueError:
                pass  # reported in one sentence by the command itself
        return super().parse_args(ctx, args)


def check_backend(backend: str | None) -> None:
    """A --backend whose package is missing, in one sentence, before anything else is checked or loaded."""
    if backend is not None:
        try:
            backend_selection.check_backend(backend)
        except ValueError as error:
            raise click.ClickException(str(error)) from None


def use_backend(ctx: click.Context, backend: str | None, resume: str | None = None) -> str:
    """Makes sure the command runs on its backend; returns it.

    In a process whose Keras already runs another backend, it reruns the command in a child process and exits.
    """
    recorded = _recorded_backend(resume)
    if backend is not None and recorded is not None and backend != recorded:
        raise click.BadParameter(
            f"the run to resume started on the {recorded} backend and continues on it; drop --backend.",
            param_hint="--backend",
        )
    wanted = backend or recorded or backend_selection.default_backend()
    try:
        if backend_selection.select(wanted):
            # The data pipeline (tf.data) and the export use TensorFlow on every backend where it is installed.
            native_stderr.import_tensorflow_quietly()
            return wanted
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    # Keras is already imported here on another backend, and Keras picks its backend once per process.
    command = [sys.executable, "-m", "stkd_keras.cli.main", ctx.info_name, *ctx.meta["stkd_keras.args"]]
    environment = {**os.environ, "KERAS_BACKEND": wanted, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in child.stdout:
        click.echo(line, nl=False)
    ctx.exit(child.wait())

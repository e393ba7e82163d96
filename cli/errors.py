"""The library's errors about user input, as the one-sentence click errors a user reads instead of a traceback."""

from __future__ import annotations

import errno
import functools
import sys

import click

_RESUME_ADVICE = (
    "free some space and run the command again (a training run continues from its last completed epoch with --resume)"
)
# What to do about an operating-system error, by its errno; the sentence names the path and the error first.
_OS_ADVICE = {
    errno.ENOSPC: _RESUME_ADVICE,
    errno.EDQUOT: _RESUME_ADVICE,
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "check its permissions or choose another folder",
    errno.EPERM: "check its permissions or choose another folder",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def os_error_sentence(error: OSError) -> str:
    """One sentence for an operating-system error: what happened, to which path, and what to do."""
    what = error.strerror or type(error).__name__
    where = f" ({error.filename})" if error.filename else ""
    advice = _OS_ADVICE.get(error.errno, "check the path and run the command again")
    return f"{what}{where}: {advice}."


def _click_error(error: Exception) -> click.ClickException | None:
    """The click error for a library error about user input; None for any other error."""
    from stkd_keras.data import DatasetNotFoundError
    from stkd_keras.runs import RunError

    if isinstance(error, (ValueError, RunError, DatasetNotFoundError)):
        return click.ClickException(str(error))
    # The export modules are looked up, not imported: a command that did not load them cannot have raised their errors.
    export_run = sys.modules.get("stkd_keras.export.run")
    if export_run is not None and isinstance(error, export_run.ExportOptionError):
        return click.BadParameter(str(error), param_hint=error.option)
    if "stkd_keras.export" in sys.modules and isinstance(error, sys.modules["stkd_keras.export"].ExportError):
        return click.ClickException(str(error))
    return None


def user_errors(function):
    """Turns the library's errors about user input into one-sentence click errors."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader of the output left (`| head`): click ends the command quietly, as a pipe expects
        except OSError as error:
            raise click.ClickException(os_error_sentence(error)) from None
        except (ValueError, RuntimeError) as error:
            translated = _click_error(error)
            if translated is None:
                raise
            raise translated from None

    return wrapper

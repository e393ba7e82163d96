"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Calls `write(temporary)` for a temporary path beside `path`, then renames it onto `path`.

    The temporary name ends with the final name, so writers that check the
    suffix (Keras's `.keras` and `.weights.h5`, matplotlib's format) accept it.
    If `write` fails, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # a read-only file system refuses even to unlink a file that is not there
            temporary.unlink(missing_ok=True)
        if (
            isinstance(error, OSError)
            and isinstance(error.filename, (str, os.PathLike))
            and os.fspath(error.filename) == str(temporary)
        ):
            error.filename = str(path)  # the user asked for `path`; the temporary name would only puzzle them
        raise
    return path


@contextlib.contextmanager
def restored_on_failure(*paths: str | os.PathLike):
    """Files written as one set: if the block raises, each of `paths` is put back as it was before the block (its
    old bytes, atomically, or no file where there was none), then the error goes on."""
    previous = {Path(path): Path(path).read_bytes() if Path(path).is_file() else None for path in paths}
    try:
        yield
    except BaseException:
        for path, data in previous.items():
            with contextlib.suppress(OSError):  # the original error is the one to report
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write(path, lambda temporary, data=data: temporary.write_bytes(data))
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

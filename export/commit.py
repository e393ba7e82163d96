"""An export's folder: its files are moved in as one set, and an export killed at any moment leaves no mix of two.

`prepare_folder` runs before any conversion: it cleans up after a killed
export, refuses files that exist unless asked to overwrite, and reads the
checksums the earlier export recorded. The files are converted into a staging
folder inside the output folder (`staging_folder`); `commit` names the set in a
journal first, then moves each file (`os.replace`, atomic per file) and removes
the earlier export's files this one does not replace. All of it runs with the
folder's lock held (`stkd_keras.runs.output_lock`) and without TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stkd_keras.export.plan import ExportError
from stkd_keras.files import file_sha256

STAGING_PREFIX = ".export-partial-"
PENDING_FILE = ".export-pending.json"


def prepare_folder(output_dir: Path, names: list[str], overwrite: bool, log=print) -> dict[str, str]:
    """Readies `output_dir` for an export of the files `names`; returns the earlier export's files and checksums.

    Raises:
        ExportError: When one of `names` exists and `overwrite` is False, or
            the folder's metadata.json or export_report.json is not an export's.
    """
    _recover_interrupted_export(output_dir, log)
    existing = [name for name in names if (output_dir / name).exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{output_dir / existing[0]} already exists; pass --overwrite to replace it or choose another --output."
        )
    previous = _earlier_export(output_dir) if output_dir.is_dir() else {}
    output_dir.mkdir(parents=True, exist_ok=True)
    return previous


@contextlib.contextmanager
def staging_folder(output_dir: Path) -> Iterator[Path]:
    """A new staging folder in `output_dir`, removed with whatever it still holds when the block ends."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(staging: Path, output_dir: Path, names: list[str], previous: dict[str, str], log=print) -> None:
    """Moves the files `names` from `staging` into `output_dir` and removes the earlier export's other files.

    `previous` is `prepare_folder`'s answer: the earlier export's files with their recorded sha256.
    """
    written = {name: file_sha256(staging / name) for name in names}
    # The earlier export's files this one does not replace go, so the folder holds what the JSON files list;
    # only those it recorded a checksum for and that are unchanged since (a file edited since stays).
    removed = {name: digest for name, digest in previous.items() if name not in written}
    # Each move is atomic, the set is not: a journal names the set first, so that an export killed part-way
    # through is cleaned up by the next one (`_recover_interrupted_export`) instead of leaving a mixed folder.
    replaced = {name: previous[name] for name in written if name in previous}
    (staging / PENDING_FILE).write_text(json.dumps({"write": written, "remove": {**removed, **replaced}}))
    os.replace(staging / PENDING_FILE, output_dir / PENDING_FILE)
    for name in written:
        os.replace(staging / name, output_dir / name)
    kept = [name for name, digest in sorted(removed.items()) if not _remove_if_unchanged(output_dir, name, {digest})]
    (output_dir / PENDING_FILE).unlink()
    if kept:
        log(
            f"Kept {', '.join(kept)} from the earlier export in {output_dir}: changed since it wrote them, or "
            "written without a checksum."
        )


def _recover_interrupted_export(output_dir: Path, log) -> None:
    """Cleans up after an export into `output_dir` that was killed (the caller holds the folder's lock).

    Its staging folders go. If it was killed while moving its files into
    place (its journal, PENDING_FILE, is there), the files it named (its
    own, and the earlier export's it was replacing, metadata.json and
    export_report.json among them) are removed: the folder then holds no mix
    of two exports, and the same command can run again. A file goes only
    when its sha256 is one the journal recorded for it, so a file edited
    since, or one a hand-edited journal names, stays.
    """
    for stale in output_dir.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    journal = output_dir / PENDING_FILE
    if not journal.is_file():
        return
    try:
        pending = json.loads(journal.read_text())
    except (ValueError, UnicodeDecodeError):
        pending = {}
    recorded: dict[str, set[str]] = {}
    for part in ("write", "remove"):
        entries = pending.get(part) if isinstance(pending, dict) else None
        for name, digest in entries.items() if isinstance(entries, dict) else ():
            recorded.setdefault(str(name), set()).add(str(digest))
    kept = [name for name, digests in sorted(recorded.items()) if not _remove_if_unchanged(output_dir, name, digests)]
    journal.unlink()
    log(
        f"An earlier export into {output_dir} was stopped while moving its files into place; its files were removed"
        + (f", except {', '.join(kept)}, changed since it wrote them." if kept else ".")
    )


def _remove_if_unchanged(folder: Path, name: str, digests: set[str]) -> bool:
    """Removes `folder/name` when it is a plain file of the folder whose sha256 is one of `digests`.

    Returns False when the file stays.
    """
    path = folder / name
    if not name or Path(name).name != name or path.is_symlink() or not path.is_file():
        return not path.exists()
    if file_sha256(path) not in digests:
        return False
    path.unlink()
    return True


def _earlier_export(output_dir: Path) -> dict[str, str]:
    """The files of the earlier export in `output_dir` with the sha256 it recorded for each (its metadata.json).

    metadata.json and export_report.json are the export's own: either one
    present but not written by an export refuses the folder. An export
    written before checksums were recorded lists its files without them:
    those files are kept, never removed unverified.

    Raises:
        ExportError: When metadata.json or export_report.json is not an export's.
    """
    owned: dict[str, str] = {}
    for name, keys in (
        ("metadata.json", ("files", "preprocessing")),
        ("export_report.json", ("files", "keras_top1_accuracy")),
    ):
        path = output_dir / name
        if not path.exists():
            continue
        try:
            payload = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict) or not all(key in payload for key in keys):
            raise ExportError(
                f"{path} was not written by stkd-keras export, so this folder is not an export's; choose another "
                "--output."
            )
        owned[name] = file_sha256(path)
        if name == "metadata.json":
            digests = payload.get("sha256") if isinstance(payload.get("sha256"), dict) else {}
            listed = payload["files"] if isinstance(payload["files"], (dict, list)) else ()
            owned.update({str(file): "" for file in listed if str(file) not in owned})  # no checksum: never removed
            owned.update({str(file): str(digest) for file, digest in digests.items()})
    return owned

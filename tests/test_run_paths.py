"""Property-based: no spelling of an output or teacher path makes a command change a file that is not its own.

Hypothesis draws output names (glob characters, `..`, spaces, unicode, lengths
up to the file system's limit), spells them as plain folders, paths through
`..`, symbolic links and dangling links, and runs the run-folder machinery
(`stkd_keras.runs`: the lock, the refusal to overwrite, staging, --resume)
beside a finished run, an unfinished run and a folder of a user's own files.
The invariant: every file outside the output's own folder and its staging
folders keeps its sha256, and every other finished or resumable run stays
finished or resumable. A refusal is one `RunError`, nothing else.

The default run draws few examples (the test budget); `pytest -m slow` draws many.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stkd_keras import runs
from stkd_keras.config import RunConfig

NAME_MAX = 255
# Letters a hostile or careless name holds: glob and shell characters, spaces, dots, unicode (several bytes each).
ALPHABET = st.sampled_from(list("ab1[]*?{}!-_ .~$'\"") + ["é", "ß", "日", "\\", "\t"])
NAMES = st.one_of(
    st.text(ALPHABET, min_size=1, max_size=24),
    st.sampled_from(["done", "docs", "other", "exp[1]", "exp1", "*", "?", "[!d]one", ".hidden", "a.partial-1"]),
    st.integers(min_value=200, max_value=NAME_MAX).map(lambda size: "n" * size),
).filter(lambda name: name not in (".", "..") and "/" not in name and len(name.encode()) <= NAME_MAX)
SPELLINGS = st.sampled_from(["plain", "dotdot", "symlink", "dangling", "link_to_docs", "link_to_done"])
ACTIONS = st.sampled_from(["new", "overwrite", "resume", "report"])
EXAMPLES = 100
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


def _state(folder: Path, epoch: int) -> None:
    (folder / runs.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    (folder / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": epoch, "history": {}}))


def _run_record(folder: Path) -> None:
    runs.write_run_file(
        folder, {"command": "train-teacher", "backend": "tensorflow", "config": RunConfig(model="cnn8", epochs=3)}
    )


def workspace(root: Path) -> None:
    """A finished run `done`, an unfinished run of `other`, a user's folder `docs`, a user's file `notes.txt`."""
    (root / "done").mkdir()
    _run_record(root / "done")
    (root / "done" / "teacher.keras").write_text("model")
    (root / "done" / "metrics.json").write_text("{}")
    staging = root / ".other.partial-11"
    staging.mkdir()
    _run_record(staging)
    _state(staging, 1)
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "important.txt").write_text("mine")
    (root / "notes.txt").write_text("notes")


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, symbolic links not followed (a link is recorded by its target)."""
    found = {}
    for folder, directories, files in os.walk(root):
        for name in files + [d for d in directories if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            found[key] = (
                "link:" + os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return found


def spell(root: Path, name: str, spelling: str) -> Path:
    """The path a user passes: `name` in `root`, spelled one of several ways (the links are created here)."""
    if spelling == "plain":
        return root / name
    if spelling == "dotdot":
        return root / "docs" / "sub" / ".." / ".." / name
    link = root / f"link-{len(name)}" if len(name.encode()) > 200 else root / f"link-{name}"
    target = {
        "symlink": root / name,
        "dangling": root / name,
        "link_to_docs": root / "docs",
        "link_to_done": root / "done",
    }[spelling]
    if spelling == "symlink":
        target.mkdir(exist_ok=True)
    if not os.path.lexists(link):
        link.symlink_to(target)
    return link


def act(output: Path, action: str) -> None:
    """One command's effect on the run folders: a new run, a new run with --overwrite, --resume, or report."""
    if action == "report":
        runs.unfinished_runs(output)
        return
    with runs.run_directory(
        output, overwrite=action == "overwrite", resume=action == "resume", log=lambda *_: None
    ) as staging:
        if action != "resume":
            _run_record(staging)
        (staging / "teacher.keras").write_text("new model")
        (staging / "metrics.json").write_text("{}")


def own_paths(root: Path, output: Path) -> tuple[Path, str]:
    """The output's real folder and the prefix of its staging folders: the only places it may change."""
    folder = Path(os.path.realpath(output))
    return folder, f".{folder.name}.partial-"


def changed_outside(before: dict, after: dict, root: Path, output: Path) -> list[str]:
    folder, staging_prefix = own_paths(root, output)
    changed = []
    for key in set(before) | set(after):
        path = root / key
        inside = Path(os.path.realpath(path.parent)) / path.name
        own = (
            inside == folder
            or inside.is_relative_to(folder)
            or any(part.startswith(staging_prefix) for part in path.relative_to(root).parts)
        )
        if before.get(key) != after.get(key) and not own and not path.name.startswith("link-"):
            changed.append(key)
    return sorted(changed)


def check_property(name: str, spelling: str, action: str) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        workspace(root)
        try:
            output = spell(root, name, spelling)
        except OSError:
            return  # a name the file system itself refuses as a link name: nothing to test
        before = checksums(root)
        try:
            act(output, action)
        except runs.RunError as error:
            assert "\n" not in str(error) and str(error).endswith("."), str(error)
        after = checksums(root)
        assert changed_outside(before, after, root, output) == [], (name, spelling, action)
        folder, _ = own_paths(root, output)
        if folder != root / "done":
            assert (root / "done" / "run.json").is_file() and (root / "done" / "teacher.keras").read_text() == "model"
        if folder != root / "other":
            assert runs.find_unfinished_run(root / "other") == root / ".other.partial-11"
            assert runs.read_run_file(root / ".other.partial-11") is not None
        assert (root / "docs" / "important.txt").read_text() == "mine"


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(name=NAMES, spelling=SPELLINGS, action=ACTIONS)
def test_no_output_spelling_changes_another_run_or_a_users_file(name, spelling, action):
    check_property(name, spelling, action)


@pytest.mark.slow
@settings(max_examples=1500, **SETTINGS)
@given(name=NAMES, spelling=SPELLINGS, action=ACTIONS)
def test_no_output_spelling_changes_another_run_or_a_users_file_many_examples(name, spelling, action):
    check_property(name, spelling, action)


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(
    spelling=st.sampled_from(["plain", "dotdot", "symlink_file", "symlink_folder", "run_folder"]), inside=st.booleans()
)
def test_a_teacher_inside_the_output_is_refused_however_it_is_spelled(spelling, inside):
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        output, elsewhere = root / "run", root / "teachers"
        home = output if inside else elsewhere
        (home / "teacher").mkdir(parents=True)
        (home / "teacher" / "teacher.keras").write_bytes(_zip())
        output.mkdir(exist_ok=True)
        _run_record(output)
        teacher = {
            "plain": home / "teacher" / "teacher.keras",
            "dotdot": root / "run" / ".." / home.name / "teacher" / "." / "teacher.keras",
            "symlink_file": root / "t.keras",
            "symlink_folder": root / "t",
            "run_folder": home / "teacher",
        }[spelling]
        if spelling == "symlink_file":
            teacher.symlink_to(home / "teacher" / "teacher.keras")
        elif spelling == "symlink_folder":
            teacher.symlink_to(home / "teacher")
        for spelled_output in (output, root / "teachers" / ".." / "run"):
            if inside:
                with pytest.raises(runs.RunError, match=f"lies inside {output}, which this run would replace"):
                    runs.check_teacher_outside(teacher, spelled_output)
            else:
                resolved = runs.check_teacher_outside(teacher, spelled_output)
                assert (
                    resolved == Path(os.path.realpath(teacher))
                    and ".." not in resolved.parts
                    and not resolved.is_symlink()
                )


def _zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", "{}")
    return buffer.getvalue()

"""Runs never lose work: one process per output (an OS lock), no silent restart beside an unfinished run,
no --overwrite that deletes the teacher the run reads. Each test fails on the code before these guards."""

import hashlib
import json
import time
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stkd_keras import runs
from stkd_keras.cli.main import cli
from stkd_keras.config import RunConfig

TINY = ["--model", "cnn8", "--epochs", "1", "--train-subset", "128", "--val-subset", "64", "--quiet"]
HOLD_LOCK = (
    "import sys, time\nfrom stkd_keras.runs import output_lock\n"
    "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n"
)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def checksums(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_an_output_in_use_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    output = tmp_path / "run"
    staging = _unfinished(tmp_path, epoch=1)  # as the holder's run would have it
    before = checksums(staging)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["train-teacher", *TINY, "--output", output], ["train-teacher", "--resume", output]):
            result = invoke(*args)
            assert result.exit_code == 1 and f"{output} is in use by process {holder.pid}" in result.output, (
                result.output
            )
        with pytest.raises(runs.OutputInUse, match=f"in use by process {holder.pid}"):
            with runs.output_lock(output):
                pass
        assert (
            sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", staging.name] and checksums(staging) == before
        )
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with runs.output_lock(output) as lock:  # the kernel freed the killed holder's lock
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def _unfinished(tmp_path: Path, epoch: int) -> Path:
    staging = tmp_path / ".run.partial-4242"
    (staging / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (staging / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": epoch, "history": {}}))
    runs.write_run_file(
        staging, {"command": "train-teacher", "backend": "tensorflow", "config": RunConfig(model="cnn8", epochs=3)}
    )
    return staging


def test_a_new_run_beside_an_unfinished_one_says_so_and_overwrite_starts_over(tmp_path):
    staging = _unfinished(tmp_path, epoch=1)
    before = checksums(staging)
    result = invoke("train-teacher", *TINY, "--output", tmp_path / "run")
    assert result.exit_code == 1
    assert (
        f"An unfinished run of {tmp_path / 'run'} exists (epoch 1 of 3); continue it with --resume {tmp_path / 'run'}, "
        "or start over with --overwrite." in result.output
    )
    assert checksums(staging) == before and not (tmp_path / "run").exists()
    result = invoke("train-teacher", *TINY, "--output", tmp_path / "run", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not staging.exists() and (tmp_path / "run" / "teacher.keras").is_file()


def test_report_lists_the_unfinished_runs_of_a_folder(tmp_path):
    _unfinished(tmp_path, epoch=2)  # .run.partial-4242: train-teacher, epoch 2 of 3
    nested = tmp_path / "grid" / ".seed1.partial-77"
    (nested / "teacher" / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (nested / "teacher" / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": 1}))
    runs.write_run_file(
        nested, {"command": "distill", "config": RunConfig(epochs=5), "teacher_config": RunConfig(epochs=4)}
    )
    (tmp_path / "grid" / ".seed2.partial-78").mkdir()  # nothing committed: not resumable, not listed
    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "2 unfinished run(s):",
        f"  {tmp_path / 'grid' / 'seed1'}: its teacher at epoch 1 of 4; continue it with stkd-keras distill --resume "
        f"{tmp_path / 'grid' / 'seed1'}",
        f"  {tmp_path / 'run'}: epoch 2 of 3; continue it with stkd-keras train-teacher --resume {tmp_path / 'run'}",
    ]
    # Asked about the run itself (its folder not yet created): the unfinished run beside it.
    (tmp_path / "run").mkdir()
    result = invoke("report", tmp_path / "run")
    assert result.exit_code == 0 and result.output.splitlines()[1].startswith(f"  {tmp_path / 'run'}: epoch 2 of 3;")
    result = invoke("report", tmp_path / "grid" / ".seed2.partial-78")
    assert (
        result.exit_code == 1
        and f"No stkd-keras run in {tmp_path / 'grid' / '.seed2.partial-78'}: no metrics.json" in result.output
    )


def _finished_run(
    folder: Path, role: str, model: str, method: str, backend, epoch: int, epochs: int, accuracy: float
) -> None:
    folder.mkdir(parents=True)
    metrics = {
        "role": role,
        "model": model,
        "method": method,
        "final_epoch": {"epoch": epoch},
        "final_val_accuracy": accuracy,
        "best_val_accuracy": accuracy,
        "config": {"epochs": epochs},
    }
    if backend:
        metrics["backend"] = backend
    (folder / runs.METRICS_FILE).write_text(json.dumps(metrics))
    runs.write_run_file(folder, {"command": "distill"})


def test_report_lists_every_run_below_a_folder(tmp_path):
    """Every run below a folder: finished, unfinished and damaged ones.

    Finished runs with method, backend, epochs and final top-1; unfinished ones with the line that continues them;
    damaged ones named and skipped. The report once refused a folder of finished runs ("runs/metrics.json is
    missing").
    """
    _finished_run(tmp_path / "kd" / "seed0", "student", "resnet8", "kd", "jax", 3, 3, 0.77571)
    _finished_run(
        tmp_path / "kd" / "seed0" / "teacher", "teacher", "resnet14", "ce", None, 3, 3, 0.8279
    )  # written before backends were recorded
    _finished_run(tmp_path / "stkd", "student", "resnet8", "stkd", "torch", 5, 5, 0.1)
    _unfinished(tmp_path, epoch=2)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / runs.METRICS_FILE).write_text('{"role": "student", "mo')  # truncated
    _finished_run(tmp_path / "gone", "student", "cnn8", "ce", "tensorflow", 1, 1, 0.5)
    (tmp_path / "gone" / runs.METRICS_FILE).unlink()
    (tmp_path / ".hidden").mkdir()  # hidden folders are not entered
    (tmp_path / ".hidden" / runs.METRICS_FILE).write_text("{}")
    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:5] == [
        "3 finished run(s):",
        f"  {tmp_path / 'kd' / 'seed0'}: student resnet8, method kd, jax, epoch 3 of 3, final val top-1 0.7757",
        f"  {tmp_path / 'kd' / 'seed0' / 'teacher'}: teacher resnet14, method ce, tensorflow, epoch 3 of 3, final val "
        "top-1 0.8279",
        f"  {tmp_path / 'stkd'}: student resnet8, method stkd, torch, epoch 5 of 5, final val top-1 0.1000",
        "1 unfinished run(s):",
    ]
    assert (
        lines[5]
        == f"  {tmp_path / 'run'}: epoch 2 of 3; continue it with stkd-keras train-teacher --resume {tmp_path / 'run'}"
    )
    assert lines[6] == "2 damaged run(s), skipped:"
    assert lines[7].startswith(f"  {tmp_path / 'broken'}: its metrics.json cannot be read: not valid JSON")
    assert (
        lines[8] == f"  {tmp_path / 'gone'}: it holds run.json but no metrics.json "
        "(a finished run whose metrics.json was removed?)"
    )
    assert len(lines) == 9
    # One run folder: its summary and curves, as before.
    result = invoke("report", tmp_path / "stkd")
    assert result.exit_code == 1 and "history.csv is missing" in result.output  # these hand-made runs have no history


def test_describe_unfinished_names_the_stage(tmp_path):
    staging = _unfinished(tmp_path, epoch=2)
    assert runs.describe_unfinished(staging) == "epoch 2 of 3"
    (staging / runs.CHECKPOINT_DIR / runs.STATE_FILE).unlink()
    runs.write_run_file(
        staging,
        {"command": "distill", "config": RunConfig(model="cnn8", epochs=5), "teacher_config": RunConfig(epochs=4)},
    )
    assert runs.describe_unfinished(staging) == "no epoch completed"
    (staging / "teacher" / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (staging / "teacher" / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": 3}))
    assert runs.describe_unfinished(staging) == "its teacher at epoch 3 of 4"
    (staging / "teacher" / "teacher.keras").write_bytes(b"")
    assert runs.describe_unfinished(staging) == "its teacher trained, the student at epoch 0 of 5"


def test_overwrite_never_deletes_the_teacher_the_run_reads(tmp_path):
    import keras

    from stkd_keras.models import small_cnn

    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    small_cnn(8, (28, 28, 1), 10, name="teacher").save(run / "teacher" / "teacher.keras")
    (run / "metrics.json").write_text("{}")
    before = checksums(run)
    for teacher in (run / "teacher", run / "teacher" / "teacher.keras"):
        result = invoke(
            "distill",
            "--teacher",
            teacher,
            "--student",
            "cnn8",
            "--method",
            "kd",
            *TINY[2:],
            "--output",
            run,
            "--overwrite",
        )
        assert (
            result.exit_code == 1
            and f"The teacher {teacher} lies inside {run}, which this run would replace" in result.output
        )
    assert checksums(run) == before
    assert keras.saving.load_model(run / "teacher" / "teacher.keras").name == "teacher"


def _stop_after_last_checkpoint(epochs: int):
    """A callback raising after the last epoch's checkpoint is committed, before the model is saved (a kill there)."""
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise KeyboardInterrupt("killed after the last checkpoint")

    return Stop()


def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(tmp_path):
    """It was refused ("already completed its 2 epochs"), leaving --overwrite as the only way out."""
    from stkd_keras import training

    config = RunConfig(model="cnn8", epochs=2, train_subset=128, val_subset=64, batch_size=64, seed=0)
    staging = tmp_path / ".run.partial-4242"
    staging.mkdir()
    runs.write_run_file(staging, {"command": "train-teacher", "backend": "tensorflow", "config": config})
    with pytest.raises(KeyboardInterrupt):
        training.train(
            config, staging, role="teacher", verbose=0, log=lambda *_: None, callbacks=[_stop_after_last_checkpoint(2)]
        )
    state = json.loads((staging / runs.CHECKPOINT_DIR / runs.STATE_FILE).read_text())
    assert state["epoch"] == 2 and not (staging / "teacher.keras").exists()
    assert runs.describe_unfinished(staging) == "epoch 2 of 2"
    result = invoke("train-teacher", "--resume", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert "All 2 epochs were committed before the run stopped; saving its model and metrics." in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final_val_accuracy"] == state["history"]["val_accuracy"][-1]
    assert (tmp_path / "run" / "teacher.keras").is_file() and not staging.exists()
    assert not (tmp_path / "run" / runs.CHECKPOINT_DIR).exists()


def test_a_run_killed_after_its_files_before_the_move_is_kept(tmp_path):
    """Finished in its staging folder (model, metrics.json, preprocessing.json), not moved: resume only moves it."""
    staging = _unfinished(tmp_path, epoch=3)
    for name, text in (
        ("teacher.keras", "model"),
        ("metrics.json", '{"final_val_accuracy": 0.5}'),
        ("preprocessing.json", "{}"),
    ):
        (staging / name).write_text(text)
    assert runs.describe_unfinished(staging) == "finished, not yet moved into place"
    from stkd_keras import training

    metrics = training.train(
        RunConfig(model="cnn8", epochs=3), staging, role="teacher", resume=True, log=lambda *_: None
    )
    assert metrics == {"final_val_accuracy": 0.5} and not (staging / runs.CHECKPOINT_DIR).exists()


# Issue 20: hostile paths, damaged state and options that cannot apply. Each test failed on the code before it.


def _finished(folder: Path, command: str = "train-teacher") -> Path:
    """A finished run folder as a run leaves it (its files stand in for the real ones; nothing here loads them)."""
    folder.mkdir(parents=True)
    runs.write_run_file(
        folder, {"command": command, "backend": "tensorflow", "config": RunConfig(model="cnn8", epochs=3)}
    )
    for name in ("teacher.keras", "metrics.json", "history.csv", "preprocessing.json"):
        (folder / name).write_text(name)
    return folder


def test_glob_characters_in_an_output_name_never_reach_a_sibling_run(tmp_path):
    """`exp[1]` was turned into a glob pattern matching `exp1`: its unfinished run was reported, resumed and deleted."""
    sibling = tmp_path / ".exp1.partial-4242"
    (sibling / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (sibling / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": 1, "history": {}}))
    runs.write_run_file(
        sibling, {"command": "train-teacher", "backend": "tensorflow", "config": RunConfig(model="cnn8", epochs=3)}
    )
    before = checksums(sibling)
    for name in ("exp[1]", "exp?", "exp*", "e[x]p1"):
        output = tmp_path / name
        assert runs.unfinished_runs(output) == []
        with pytest.raises(runs.RunError, match="No unfinished run of"):
            runs.find_unfinished_run(output)
        with runs.run_directory(output, overwrite=True) as staging:
            (staging / "run.json").write_text("{}")
        assert checksums(sibling) == before and (output / "run.json").is_file()
    # A run killed inside `exp[1]` is found again, and only it.
    own = tmp_path / ".exp[1].partial-77"
    (own / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (own / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": 2, "history": {}}))
    assert runs.find_unfinished_run(tmp_path / "exp[1]") == own
    assert [run["staging"] for run in runs.unfinished_runs(tmp_path / "exp[1]")] == [own]
    assert [run["staging"] for run in runs.unfinished_runs(tmp_path / "exp1")] == [sibling]


@pytest.mark.parametrize("spelling", ["dotdot", "symlink"])
def test_the_teacher_guard_follows_dotdot_and_symlinks(tmp_path, spelling):
    """`W/other/../run/teacher.keras`, or a link to it, passed the guard and --overwrite deleted the teacher."""
    from stkd_keras import training

    run = _finished(tmp_path / "run", command="distill")
    (run / "teacher").mkdir()
    (run / "teacher" / "teacher.keras").write_bytes(_empty_zip())
    (tmp_path / "other").mkdir()
    if spelling == "dotdot":
        teacher = tmp_path / "other" / ".." / "run" / "teacher" / "teacher.keras"
    else:
        teacher = tmp_path / "t.keras"
        teacher.symlink_to(run / "teacher" / "teacher.keras")
    before = checksums(run)
    config = RunConfig(model="cnn8", method="kd", teacher=str(teacher), epochs=1)
    with pytest.raises(
        runs.RunError,
        match=f"The teacher {run / 'teacher' / 'teacher.keras'} lies inside {run}, which this run would replace",
    ):
        training.distill(config, run, overwrite=True, log=lambda *_: None)
    assert checksums(run) == before


def _empty_zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", "{}")
    return buffer.getvalue()


def test_overwrite_replaces_only_a_run_folder(tmp_path):
    """`--overwrite` into a folder of other files deleted all of them."""
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "important.txt").write_text("x")
    before = checksums(docs)
    for overwrite in (False, True):
        with pytest.raises(
            runs.RunError,
            match=r"holds files that are not a stkd-keras run \(it has no run.json\); "
            r"--overwrite replaces only a run folder",
        ):
            with runs.run_directory(docs, overwrite=overwrite):
                pass
    assert checksums(docs) == before and sorted(p.name for p in tmp_path.iterdir()) == ["docs"]
    result = invoke("train-teacher", *TINY, "--output", docs, "--overwrite")
    assert (
        result.exit_code == 1
        and "holds files that are not a stkd-keras run" in result.output
        and checksums(docs) == before
    )
    # A run folder and an empty folder are replaced.
    run = _finished(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    for folder in (run, tmp_path / "empty"):
        with runs.run_directory(folder, overwrite=True) as staging:
            (staging / "run.json").write_text("{}")
        assert sorted(p.name for p in folder.iterdir()) == ["run.json"]


class _Killed(Exception):
    """Stands for a kill (an Exception, so that CliRunner catches it where a KeyboardInterrupt would stop pytest)."""


def test_a_killed_overwrite_run_is_resumable_and_says_what_it_replaces(tmp_path, monkeypatch):
    """A run with --overwrite over a finished run, killed after epoch 1: --resume answered "nothing to resume"."""
    from stkd_keras import checkpoints

    output = tmp_path / "run"
    assert invoke("train-teacher", *TINY, "--output", output).exit_code == 0
    finished = checksums(output)
    original = checkpoints.RunCheckpoint.on_epoch_end

    def commit_then_die(self, epoch, logs=None):
        original(self, epoch, logs)
        raise _Killed("killed after epoch 1")

    monkeypatch.setattr(checkpoints.RunCheckpoint, "on_epoch_end", commit_then_die)
    result = invoke("train-teacher", *TINY[:2], "--epochs", "2", *TINY[4:], "--output", output, "--overwrite")
    assert isinstance(result.exception, _Killed)
    monkeypatch.undo()
    assert checksums(output) == finished  # the finished run stays until the replacement finishes
    [unfinished] = runs.unfinished_runs(tmp_path)
    assert unfinished["progress"] == "epoch 1 of 2" and unfinished["resumable"]
    result = invoke("train-teacher", "--resume", output, "--quiet")
    assert result.exit_code == 0, result.output
    assert (
        f"Resuming the unfinished run started with --overwrite (epoch 1 of 2); the finished run in {output} stays"
        in result.output
    )
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["resumed_at_epoch"] == 1 and metrics["config"]["epochs"] == 2
    assert runs.unfinished_runs(tmp_path) == []


def test_a_resumed_run_counts_the_training_time_of_the_process_that_was_killed(tmp_path, monkeypatch):
    """train_seconds covered only the last process's `fit`, so a run resumed after 12 of 60 epochs read 20% short."""
    from stkd_keras import checkpoints

    original = checkpoints.RunCheckpoint.on_epoch_end

    def commit_then_die(self, epoch, logs=None):
        original(self, epoch, logs)
        raise _Killed("killed after epoch 1")

    def killed_after_epoch_1(output):
        monkeypatch.setattr(checkpoints.RunCheckpoint, "on_epoch_end", commit_then_die)
        result = invoke("train-teacher", *TINY[:2], "--epochs", "2", *TINY[4:], "--output", output)
        assert isinstance(result.exception, _Killed)
        monkeypatch.undo()
        [staging] = tmp_path.glob(f".{output.name}.partial-*")
        return staging / runs.CHECKPOINT_DIR / runs.STATE_FILE

    def resumed(output):
        started = time.perf_counter()
        result = invoke("train-teacher", "--resume", output, "--quiet")
        assert result.exit_code == 0, result.output
        return json.loads((output / "metrics.json").read_text()), time.perf_counter() - started

    # The first process's epoch is in its checkpoint; made 1,000 s long here, as if that process had been slow.
    path = killed_after_epoch_1(tmp_path / "timed")
    state = json.loads(path.read_text())
    assert len(state["history"]["epoch_seconds"]) == 1 and 0 < state["history"]["epoch_seconds"][0] < 300
    state["history"]["epoch_seconds"] = [1000.0]
    path.write_text(json.dumps(state))
    metrics, resume_seconds = resumed(tmp_path / "timed")
    assert 1000 < metrics["train_seconds"] < 1000 + resume_seconds and metrics["timed_epochs"] == 2
    assert metrics["resumed_at_epoch"] == 1
    # A checkpoint written before epochs were timed: the figure covers the resumed process's epoch only, and says so.
    path = killed_after_epoch_1(tmp_path / "untimed")
    state = json.loads(path.read_text())
    del state["history"]["epoch_seconds"]
    path.write_text(json.dumps(state))
    metrics, resume_seconds = resumed(tmp_path / "untimed")
    assert 0 < metrics["train_seconds"] < resume_seconds and metrics["timed_epochs"] == 1
    # Edited timings: refused in one sentence, the checkpoints kept.
    path = killed_after_epoch_1(tmp_path / "edited")
    state = json.loads(path.read_text())
    for bad in (["1.5"], [-1.0], [True]):
        state["history"]["epoch_seconds"] = bad
        path.write_text(json.dumps(state))
        result = invoke("train-teacher", "--resume", tmp_path / "edited", "--quiet")
        assert result.exit_code == 1 and "is damaged (the history's 'epoch_seconds' holds" in result.output
        assert path.is_file() and not (tmp_path / "edited").exists()
    # A fresh run times every epoch too.
    assert invoke("train-teacher", *TINY, "--output", tmp_path / "fresh").exit_code == 0
    assert json.loads((tmp_path / "fresh" / "metrics.json").read_text())["timed_epochs"] == 1


def test_a_symlink_as_output_is_written_where_it_points(tmp_path):
    """A dangling link failed after training (NotADirectoryError); a link to an empty folder was replaced."""
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "target")
    with runs.run_directory(dangling) as staging:
        (staging / "run.json").write_text("{}")
    assert dangling.is_symlink() and (tmp_path / "target" / "run.json").is_file()
    (tmp_path / "empty").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    with runs.run_directory(link) as staging:
        (staging / "run.json").write_text("{}")
    assert link.is_symlink() and (tmp_path / "empty" / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dangling",
        "empty",
        "link",
        "target",
    ]  # no .replaced-PID left


def test_an_output_name_too_long_for_the_file_system_is_refused_in_one_sentence(tmp_path):
    output = tmp_path / ("r" * 245)
    with pytest.raises(runs.RunError, match="is 245 bytes long; at most 237 fit beside the hidden folders"):
        runs.output_path(output)
    result = invoke("train-teacher", *TINY, "--output", output)
    assert result.exit_code == 1 and "choose a shorter --output" in result.output and list(tmp_path.iterdir()) == []
    assert runs.output_path(tmp_path / ("r" * 237)).name == "r" * 237


def test_options_given_with_resume_are_refused_naming_them(tmp_path):
    """They were silently ignored: the run went on with its recorded epochs, learning rate and method."""
    _unfinished(tmp_path, epoch=1)
    before = checksums(tmp_path)
    result = invoke(
        "distill", "--resume", tmp_path / "run", "--epochs", "6", "--learning-rate", "0.001", "--method", "kd"
    )
    assert result.exit_code == 2
    assert (
        "--epochs, --learning-rate, --method cannot change a resumed run, which continues with the options recorded in "
        "its "
        "run.json; drop them, or start a new run with --overwrite."
    ) in result.output
    assert checksums(tmp_path) == before


def test_resume_with_the_other_command_is_refused(tmp_path):
    """`train-teacher --resume` on a distill run reported "Saved .../teacher.keras", a file it never wrote."""
    staging = _unfinished(tmp_path, epoch=1)
    runs.write_run_file(
        staging, {"command": "distill", "backend": "tensorflow", "config": RunConfig(model="cnn8", epochs=3)}
    )
    result = invoke("train-teacher", "--resume", tmp_path / "run")
    assert result.exit_code == 1
    assert (
        f"was started by `stkd-keras distill`; continue it with stkd-keras distill --resume {tmp_path / 'run'}."
        in result.output
    )


def test_a_swapped_teacher_is_refused_on_resume(tmp_path):
    """The run continued with the checkpoint's teacher while metrics.json recorded the new file's accuracy."""
    from stkd_keras import training

    teacher = tmp_path / "teacher.keras"
    teacher.write_bytes(_empty_zip())
    staging = _unfinished(tmp_path, epoch=1)
    config = RunConfig(model="cnn8", method="kd", teacher=str(teacher), epochs=3)
    runs.write_run_file(
        staging,
        {
            "command": "distill",
            "backend": "tensorflow",
            "config": config,
            "teacher_sha256": training.teacher_checksum(teacher),
        },
    )
    teacher.write_bytes(_empty_zip() + b"changed")
    result = invoke("distill", "--resume", tmp_path / "run")
    assert result.exit_code == 1 and f"The teacher {teacher} changed since this run started" in result.output


def test_damaged_run_records_are_named_and_report_lists_the_rest(tmp_path):
    """A truncated run.json gave a JSON error naming no file, and `report` on the parent failed entirely."""
    damaged = _unfinished(tmp_path, epoch=1)
    text = (damaged / runs.RUN_FILE).read_text()
    (damaged / runs.RUN_FILE).write_text(text[: len(text) // 2])
    grid = tmp_path / "grid"
    grid.mkdir()
    good = grid / ".seed0.partial-5"
    (good / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (good / runs.CHECKPOINT_DIR / runs.STATE_FILE).write_text(json.dumps({"epoch": 2, "history": {}}))
    runs.write_run_file(good, {"command": "distill", "config": RunConfig(epochs=4)})
    with pytest.raises(runs.RunError, match=f"{damaged / runs.RUN_FILE} is damaged"):
        runs.read_run_file(damaged)
    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "2 unfinished run(s):" and lines[1].startswith(
        f"  {grid / 'seed0'}: epoch 2 of 4; continue it with"
    )
    assert lines[2].startswith(
        f"  {tmp_path / 'run'}: epoch 1; it cannot be resumed ({damaged / runs.RUN_FILE} is damaged"
    )
    assert lines[2].endswith("; start it over with --overwrite")
    result = invoke("train-teacher", "--resume", tmp_path / "run")
    assert result.exit_code == 1 and f"{damaged / runs.RUN_FILE} is damaged" in result.output


def test_a_staging_folder_without_run_json_gives_one_way_out(tmp_path):
    """--resume said "restart it" and restarting said "continue it with --resume"."""
    staging = _unfinished(tmp_path, epoch=1)
    (staging / runs.RUN_FILE).unlink()
    resumed = invoke("train-teacher", "--resume", tmp_path / "run")
    restarted = invoke("train-teacher", *TINY, "--output", tmp_path / "run")
    assert resumed.exit_code == restarted.exit_code == 1
    assert (
        "recorded no run.json, so it cannot be resumed; start over with --overwrite, which discards it."
        in resumed.output
    )
    assert (
        "it cannot be resumed (its run.json is missing), so start over with --overwrite, which discards it."
        in restarted.output
    )


@pytest.fixture
def small_filesystem(tmp_path):
    """Mounts a tmpfs of the given size (read-only if asked) under tmp_path; unmounts it afterwards."""
    mounted = []

    def mount(name: str, size: str = "16m", read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(
                f"mounting a tmpfs is not permitted here ({result.stderr.strip() or result.returncode}); "
                "benchmarks/faults.py says so too"
            )
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_file_system_is_one_sentence_for_every_command(tmp_path, small_filesystem):
    read_only = small_filesystem("ro", read_only=True)
    model = tmp_path / "model"
    assert invoke("train-teacher", *TINY, "--output", model).exit_code == 0
    for args in (
        ["train-teacher", *TINY, "--output", read_only / "run"],
        ["evaluate", "--model", model, "--subset", "64", "--json", read_only / "evaluation.json"],
        [
            "export",
            "--model",
            model,
            "--format",
            "tflite",
            "--quantize",
            "float32",
            "--verify-images",
            "50",
            "--output",
            read_only / "export",
        ],
        ["report", model, "--plot", read_only / "curves.png"],
    ):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert last == f"Error: Read-only file system ({args[-1]}): choose a folder on a writable file system.", last
        assert "Traceback" not in result.output
    assert list(read_only.iterdir()) == []


# Runs the CLI with the file system made full right after epoch 1's checkpoint is committed.
FILL_AFTER_THE_FIRST_EPOCH = Path(__file__).resolve().parent / "fill_disk_after_first_epoch.py"


def test_a_full_disk_stops_the_run_in_one_sentence_and_resume_finishes_it(small_filesystem):
    """It printed 23 tracebacks, then the process died of a segmentation fault."""
    disk = small_filesystem("disk", size="16m")
    output, filler = disk / "run", disk / "filler"
    arguments = [
        "train-teacher",
        "--model",
        "cnn8",
        "--epochs",
        "2",
        "--train-subset",
        "128",
        "--val-subset",
        "64",
        "--quiet",
        "--output",
        str(output),
    ]
    result = subprocess.run(
        [sys.executable, str(FILL_AFTER_THE_FIRST_EPOCH), str(filler), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
    )
    combined = result.stdout + result.stderr
    assert result.returncode == 1, combined[-3000:]
    assert "Traceback" not in combined, combined[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("Error: No space left on device (") and "free some space and run the command again" in last
    ), last
    [unfinished] = runs.unfinished_runs(disk)
    assert unfinished["progress"] == "epoch 1 of 2" and unfinished["resumable"]
    filler.unlink()
    result = invoke("train-teacher", "--resume", output, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((output / "metrics.json").read_text())["resumed_at_epoch"] == 1

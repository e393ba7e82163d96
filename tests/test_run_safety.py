"""Runs never lose work: one process per output (an OS lock), no silent restart beside an unfinished run,
no --overwrite that deletes the teacher the run reads. Each test fails on the code before these guards."""

import hashlib
import json
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
HOLD_LOCK = "import sys, time\nfrom stkd_keras.runs import output_lock\nwith output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def checksums(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_in_use_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    output = tmp_path / "run"
    staging = _unfinished(tmp_path, epoch=1)  # as the holder's run would have it
    before = checksums(staging)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["train-teacher", *TINY, "--output", output], ["train-teacher", "--resume", output]):
            result = invoke(*args)
            assert result.exit_code == 1 and f"{output} is in use by process {holder.pid}" in result.output, result.output
        with pytest.raises(runs.OutputInUse, match=f"in use by process {holder.pid}"):
            with runs.output_lock(output):
                pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", staging.name] and checksums(staging) == before
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
    runs.write_run_file(staging, {"command": "train-teacher", "backend": "tensorflow", "config": RunConfig(model="cnn8", epochs=3)})
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
    runs.write_run_file(nested, {"command": "distill", "config": RunConfig(epochs=5), "teacher_config": RunConfig(epochs=4)})
    (tmp_path / "grid" / ".seed2.partial-78").mkdir()  # nothing committed: not resumable, not listed
    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "2 unfinished run(s):",
        f"  {tmp_path / 'grid' / 'seed1'}: its teacher at epoch 1 of 4; continue it with stkd-keras distill --resume {tmp_path / 'grid' / 'seed1'}",
        f"  {tmp_path / 'run'}: epoch 2 of 3; continue it with stkd-keras train-teacher --resume {tmp_path / 'run'}",
    ]
    # Asked about the run itself (its folder not yet created): the unfinished run beside it.
    (tmp_path / "run").mkdir()
    result = invoke("report", tmp_path / "run")
    assert result.exit_code == 0 and result.output.splitlines()[1].startswith(f"  {tmp_path / 'run'}: epoch 2 of 3;")
    result = invoke("report", tmp_path / "grid" / ".seed2.partial-78")
    assert result.exit_code == 1 and "metrics.json is missing" in result.output


def test_describe_unfinished_names_the_stage(tmp_path):
    staging = _unfinished(tmp_path, epoch=2)
    assert runs.describe_unfinished(staging) == "epoch 2 of 3"
    (staging / runs.CHECKPOINT_DIR / runs.STATE_FILE).unlink()
    runs.write_run_file(staging, {"command": "distill", "config": RunConfig(model="cnn8", epochs=5), "teacher_config": RunConfig(epochs=4)})
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
        result = invoke("distill", "--teacher", teacher, "--student", "cnn8", "--method", "kd", *TINY[2:], "--output", run, "--overwrite")
        assert result.exit_code == 1 and f"The teacher {teacher} lies inside {run}, which this run would replace" in result.output
    assert checksums(run) == before
    assert keras.saving.load_model(run / "teacher" / "teacher.keras").name == "teacher"


def _stop_after_last_checkpoint(epochs: int):
    """A callback raising after the checkpoint of the last epoch is committed, before the model is saved (a kill there)."""
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
        training.train(config, staging, role="teacher", verbose=0, log=lambda *_: None, callbacks=[_stop_after_last_checkpoint(2)])
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
    """Finished in its staging folder (model, metrics.json, preprocessing.json) but not moved: resume moves it, trains nothing."""
    staging = _unfinished(tmp_path, epoch=3)
    for name, text in (("teacher.keras", "model"), ("metrics.json", '{"final_val_accuracy": 0.5}'), ("preprocessing.json", "{}")):
        (staging / name).write_text(text)
    assert runs.describe_unfinished(staging) == "finished, not yet moved into place"
    from stkd_keras import training

    metrics = training.train(RunConfig(model="cnn8", epochs=3), staging, role="teacher", resume=True, log=lambda *_: None)
    assert metrics == {"final_val_accuracy": 0.5} and not (staging / runs.CHECKPOINT_DIR).exists()

"""Fault and bad-input cases of the CLI: what each one answers, and whether anything was lost.

Every case runs the real command line (`python -m stkd_keras.cli.main ...`) as
a subprocess in a fresh temporary folder, and records its exit code, its
message (the last non-empty line of its output: the one-sentence error of a
refusal) and the sha256 of every file under the folders it must not change,
before and after. A case that is meant to write is checked for what it must
keep and what it must leave (a complete run, exactly the files an export lists,
no staging folder). The verdict "nothing lost" is yes only when every check of
the case holds; the reason names the check that failed.

Covered (issue 13, "How to show it"): a teacher inside the output with
--overwrite; two runs, and two exports, into one output at once; a run killed
after a committed epoch, then rerun, `report` and `--resume`; an export twice
into one folder; bad inputs (unreadable or missing teacher, wrong dataset or
shape, out-of-range options, a dataset that is not here, nothing to resume, a
corrupt preprocessing.json, a missing backend package); SIGKILL at five random
moments of a run and of an export (uniform over the length of an
uninterrupted reference, drawn with --seed), each followed by `--resume` or a
rerun; and three kills aimed at narrow moments (right after the last epoch's
checkpoint, between an epoch's history.csv row and its checkpoint, while an
export's staging folder holds files). And the hostile cases of issue 20
(`benchmarks/hostile_cases.py`): glob characters, `..` and symbolic links in
output and teacher paths, `--overwrite` of a folder that is not a run or of an
export whose files were edited, a killed `--overwrite` run, damaged
checkpoint state and run.json, options given with `--resume`, an exploding
run, a swapped teacher, a read-only file system, a disk that fills mid-run,
a name too long for the file system, and messages that used to mislead.

Runs are tiny (cnn8 on 256 Fashion-MNIST images, 3 epochs, --deterministic).
Prints the table and "N cases, M with nothing lost, K tracebacks" (a case
whose command printed a Python traceback counts as lost too), writes both to
--output (and the raw records beside it as JSON), and exits 1 when a case lost
something.

Usage: python benchmarks/faults.py [--seed 0] [--output benchmarks/results/faults.md] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CLI = [sys.executable, "-m", "stkd_keras.cli.main"]
# The tiny run of every training case; --deterministic so that a resumed run can be compared weight for weight.
TINY = [
    "--student",
    "cnn8",
    "--epochs",
    "3",
    "--train-subset",
    "256",
    "--val-subset",
    "128",
    "--batch-size",
    "64",
    "--quiet",
    "--deterministic",
]
EPOCHS = 3
EXPORT_OPTIONS = ["--verify-images", "100", "--representative-images", "50"]
# What README.md says every finished run folder holds (Command line section; run.json under Backends).
RUN_FILES = ("student.keras", "history.csv", "metrics.json", "preprocessing.json", "run.json")
KILLS = 5
TIMEOUT = 300


@dataclasses.dataclass
class Step:
    """One command of a case: its arguments, exit code and output."""

    args: list[str]
    exit_code: int | None
    output: str
    seconds: float

    @property
    def message(self) -> str:
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclasses.dataclass
class Case:
    """One row of the table."""

    name: str
    command: str
    steps: list[Step] = dataclasses.field(default_factory=list)
    message_step: int = -1  # the step whose message the table shows (the refusal, in multi-step cases)
    changed: list[str] = dataclasses.field(default_factory=list)  # unexpected changes in the folders it must not change
    problems: list[str] = dataclasses.field(default_factory=list)  # expectations that failed
    notes: list[str] = dataclasses.field(default_factory=list)  # what happened, for the reason column

    @property
    def nothing_lost(self) -> bool:
        return not self.changed and not self.problems

    @property
    def message(self) -> str:
        return self.steps[self.message_step].message if self.steps else ""

    @property
    def traceback(self) -> bool:
        """Whether a command of the case printed a Python traceback (a killed one's output is not counted)."""
        return any(
            "Traceback (most recent call last)" in step.output
            for step in self.steps
            if step.exit_code != -signal.SIGKILL
        )

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition


class Bench:
    """The temporary root, the fixtures every case reads, and the helpers that run and check commands."""

    def __init__(self, root: Path):
        self.root = root
        self.fixtures = root / "fixtures"
        self.cases: list[Case] = []
        self.skipped: list[str] = []
        self.counter = 0

    # ---- running commands

    def short(self, text: str) -> str:
        """Paths shortened for the table: the temporary root is TMP, the fixtures are named."""
        for path, name in (
            (self.fixtures / "run" / "teacher" / "teacher.keras", "TEACHER"),
            (self.fixtures / "reference" / "student.keras", "STUDENT"),
            (self.fixtures, "FIXTURES"),
            (self.root, "TMP"),
        ):
            text = text.replace(str(path), name)
        return text.replace(" ".join(TINY), "TINY").replace(" ".join(EXPORT_OPTIONS), "SMALL")

    def run(self, args: list, cwd: Path, command: list | None = None) -> Step:
        """Runs the CLI (or `command`, e.g. a Python hook around it) with `args` in `cwd`."""
        args = [str(arg) for arg in args]
        started = time.monotonic()
        completed = subprocess.run(
            (command or CLI) + args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        return Step(args, completed.returncode, completed.stdout, time.monotonic() - started)

    def start(self, args: list, cwd: Path) -> tuple[subprocess.Popen, Path, float]:
        log = Path(tempfile.mkstemp(prefix="log-", suffix=".txt", dir=self.root)[1])
        with open(log, "w") as handle:
            process = subprocess.Popen(
                CLI + [str(arg) for arg in args], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT
            )
        return process, log, time.monotonic()

    @staticmethod
    def finish(process: subprocess.Popen, log: Path, args: list, started: float, ended: float | None = None) -> Step:
        process.wait(timeout=TIMEOUT)
        seconds = (ended or time.monotonic()) - started
        output = log.read_text(errors="replace")
        log.unlink()
        return Step([str(arg) for arg in args], process.returncode, output, seconds)

    @staticmethod
    def finish_together(started: list, args: list) -> list[Step]:
        """Waits for processes started at once, timing each to its own exit (not to the moment it is waited for)."""
        ended: list[float | None] = [None] * len(started)
        deadline = time.monotonic() + TIMEOUT
        while None in ended and time.monotonic() < deadline:
            for index, (process, _, _) in enumerate(started):
                if ended[index] is None and process.poll() is not None:
                    ended[index] = time.monotonic()
            time.sleep(0.01)
        return [Bench.finish(process, log, args, begun, end) for (process, log, begun), end in zip(started, ended)]

    def case_dir(self) -> Path:
        self.counter += 1
        folder = self.root / f"case{self.counter:02d}"
        folder.mkdir()
        return folder

    def add(self, case: Case) -> Case:
        if case.traceback:
            case.problems.append("a Python traceback reached the user")
        self.cases.append(case)
        mark = "yes" if case.nothing_lost else "NO"
        print(f"[{len(self.cases):2d}] {mark:3s} {case.name}: {self.short(case.message)[:140]}", flush=True)
        return case

    # ---- fixtures

    def build_fixtures(self) -> None:
        """A distilled run, a reference run from its teacher, its export, and a CIFAR-shaped model.

        The distilled run keeps the teacher it trained inside it, in teacher/.
        """
        self.fixtures.mkdir()
        self.teacher = self.fixtures / "run" / "teacher" / "teacher.keras"
        self.student = self.fixtures / "reference" / "student.keras"
        steps = [
            self.run(["distill", "--teacher-model", "cnn8", *TINY, "--output", self.fixtures / "run"], self.fixtures)
        ]
        self.run_command = ["distill", "--teacher", self.teacher, *TINY]
        steps.append(self.run([*self.run_command, "--output", self.fixtures / "reference"], self.fixtures))
        self.run_seconds = steps[-1].seconds
        self.export_command = ["export", "--model", self.student, *EXPORT_OPTIONS]
        steps.append(self.run([*self.export_command, "--output", self.fixtures / "export"], self.fixtures))
        self.export_seconds = steps[-1].seconds
        for step in steps:
            if step.exit_code != 0:
                sys.exit(f"A fixture failed: {self.short(' '.join(step.args))}\n{step.output}")
        import keras  # only now: the commands above ran without TensorFlow loaded in this process

        cifar = self.fixtures / "cifar_run"
        cifar.mkdir()
        model = keras.Sequential(
            [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)], name="cifar_student"
        )
        model.save(cifar / "student.keras")
        teacher = keras.Sequential(
            [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)], name="cifar_teacher"
        )
        teacher.save(self.fixtures / "cifar_teacher.keras")
        preprocessing = {
            "dataset": "cifar10",
            "input_shape": [32, 32, 3],
            "mean": [0.491, 0.482, 0.447],
            "std": [0.247, 0.243, 0.262],
        }
        (cifar / "preprocessing.json").write_text(json.dumps(preprocessing))
        self.fixture_sums = checksums(self.fixtures)
        print(
            f"Fixtures: reference run {self.run_seconds:.1f} s, reference export {self.export_seconds:.1f} s.",
            flush=True,
        )

    def check_fixtures(self, case: Case) -> None:
        """Every case must leave the fixtures it reads as they were."""
        case.changed += [f"FIXTURES/{change}" for change in compare(self.fixture_sums, checksums(self.fixtures))]
        self.fixture_sums = checksums(self.fixtures)  # report a change once, in the case that made it


# ---- files


def checksums(*folders: Path) -> dict[str, str]:
    """sha256 of every file (and a mark for every folder) under `folders`, hidden ones included.

    Lock files (`.NAME.lock`, holding only a process id, and left by a killed
    holder by design: the kernel frees the lock itself) are left out; the cases
    check them on their own where it matters.
    """
    sums = {}
    for folder in folders:
        if not folder.exists():
            continue
        # os.walk does not descend into symbolic links: a link is recorded by its target, never read through.
        for parent, directories, files in os.walk(folder):
            for name in sorted(directories + files):
                path = Path(parent) / name
                key = f"{folder.name}/{path.relative_to(folder)}"
                if path.is_symlink():
                    sums[key] = "link to " + os.readlink(path)
                elif path.is_dir():
                    sums[key + "/"] = "folder"
                elif not (path.name.startswith(".") and path.name.endswith(".lock")):
                    sums[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def compare(before: dict, after: dict) -> list[str]:
    """The differences between two `checksums`: added, removed and changed paths."""
    changes = [f"added {name}" for name in sorted(after.keys() - before.keys())]
    changes += [f"removed {name}" for name in sorted(before.keys() - after.keys())]
    changes += [f"changed {name}" for name in sorted(before.keys() & after.keys()) if before[name] != after[name]]
    return changes


def run_problems(output: Path, epochs: int = EPOCHS) -> list[str]:
    """What a finished run folder lacks of what the README lists, or holds that it should not."""
    problems = [f"{output.name}/{name} missing" for name in RUN_FILES if not (output / name).is_file()]
    if not (output / "tensorboard").is_dir() or not any((output / "tensorboard").rglob("events.out.tfevents.*")):
        problems.append(f"{output.name}/tensorboard/ holds no event file")
    if (output / "checkpoints").exists():
        problems.append(f"{output.name}/checkpoints/ left in the finished run")
    if (output / "student.keras").is_file() and not zipfile.is_zipfile(output / "student.keras"):
        problems.append(f"{output.name}/student.keras is not a Keras archive")
    if (output / "history.csv").is_file():
        rows = [line.split(",")[0] for line in (output / "history.csv").read_text().strip().splitlines()[1:]]
        if rows != [str(epoch) for epoch in range(1, epochs + 1)]:
            problems.append(f"history.csv rows are epochs {', '.join(rows)}, not 1..{epochs}")
    if (output / "metrics.json").is_file():
        try:
            metrics = json.loads((output / "metrics.json").read_text())
            if metrics["final_epoch"]["epoch"] != epochs:
                problems.append(f"metrics.json ends at epoch {metrics['final_epoch']['epoch']}")
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"metrics.json unreadable ({type(error).__name__})")
    return problems


def leftovers(output: Path) -> list[str]:
    """Staging folders and lock files beside `output`.

    An export's staging folder inside `output` is caught by `export_listing_problems`.
    """
    return sorted(path.name for path in output.parent.glob(f".{output.name}.*"))


def weight_difference(path: Path, reference: Path) -> str | None:
    """None when the two models' weights agree within rtol 1e-5, atol 1e-6, else how they differ.

    The tolerances are those of tests/test_training_runs.py.
    """
    import keras
    import numpy as np

    weights = keras.saving.load_model(path, compile=False).get_weights()
    expected = keras.saving.load_model(reference, compile=False).get_weights()
    if len(weights) != len(expected):
        return f"{len(weights)} weight arrays instead of {len(expected)}"
    for index, (a, b) in enumerate(zip(weights, expected)):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
            return (
                f"weight array {index} differs "
                f"(max |diff| {float(np.max(np.abs(a - b))) if a.shape == b.shape else 'shape'})"
            )
    return None


def export_listing_problems(folder: Path) -> list[str]:
    """The folder must hold exactly the files its export_report.json lists, nothing hidden, and metadata.json agree."""
    try:
        report = json.loads((folder / "export_report.json").read_text())
        metadata = json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError) as error:
        return [f"export_report.json / metadata.json unreadable ({type(error).__name__})"]
    listed = {row["file"] for row in report["files"]}
    problems = []
    if set(metadata["files"]) != listed:
        problems.append("metadata.json and export_report.json list different files")
    on_disk = {path.name for path in folder.iterdir()}
    extra, missing = on_disk - listed - {"metadata.json", "export_report.json"}, listed - on_disk
    if extra:
        problems.append(f"{folder.name}/ also holds {', '.join(sorted(extra))}")
    if missing:
        problems.append(f"{folder.name}/ lacks {', '.join(sorted(missing))}")
    for row in report["files"]:
        if row["file"] in on_disk and (folder / row["file"]).stat().st_size != row["size_bytes"]:
            problems.append(f"{row['file']} is not the size its report gives")
    return problems


def final_names_after_kill(folder: Path, names: list[str]) -> tuple[str, list[str]]:
    """What a killed export left under its final names: none of them, or a complete set its metadata.json lists."""
    present = sorted(name for name in names if (folder / name).exists())
    if not present:
        return "no file under a final name", []
    if "metadata.json" not in present or "export_report.json" not in present:
        return f"{', '.join(present)} under final names", [
            f"the kill left {', '.join(present)} under final names without metadata.json listing them"
        ]
    problems = export_listing_problems(folder)
    return "a complete set, listed by metadata.json" if not problems else "an incomplete set", problems


# ---- the cases


def teacher_inside_output(bench: Bench) -> None:
    folder = bench.case_dir()
    run = folder / "RUN"
    shutil.copytree(bench.fixtures / "run", run)
    case = Case(
        "teacher inside the output, with --overwrite",
        "distill --teacher RUN/teacher/teacher.keras --output RUN --overwrite",
    )
    before = checksums(folder)
    step = bench.run(
        ["distill", "--teacher", run / "teacher" / "teacher.keras", *TINY, "--output", run, "--overwrite"], folder
    )
    case.steps.append(step)
    case.expect(
        step.exit_code == 1 and "lies inside" in step.message and step.message.startswith("Error:"),
        "not refused in one sentence",
    )
    case.changed += compare(before, checksums(folder))
    if not case.changed:
        case.notes.append("RUN unchanged")
    bench.check_fixtures(case)
    bench.add(case)


def one_refused(case, started, steps) -> tuple[int, int] | None:
    """Of two commands started together, one finished and the other was refused, naming the holder's pid.

    Returns (holder, loser) indices, or None when not exactly one finished (the case records why).
    """
    winners = [index for index, step in enumerate(steps) if step.exit_code == 0]
    if not case.expect(len(winners) == 1, f"exit codes {[step.exit_code for step in steps]}, not one 0 and one 1"):
        return None
    holder, loser = winners[0], 1 - winners[0]
    case.message_step = loser
    pid = started[holder][0].pid
    case.expect(
        steps[loser].exit_code == 1 and f"is in use by process {pid}" in steps[loser].message,
        "the second was not refused naming the holder's pid",
    )
    return holder, loser


def concurrent_runs(bench: Bench) -> None:
    folder = bench.case_dir()
    output = folder / "run"
    # Four epochs: the holder keeps the lock long enough for the other, started at the same moment, to reach it.
    args = [*bench.run_command, "--epochs", "4", "--output", output]
    case = Case("two runs into one --output at once", "2x distill TINY --epochs 4 --output RUN, started together")
    started = [bench.start(args, folder) for _ in range(2)]
    steps = Bench.finish_together(started, args)
    ended = [begun + step.seconds for (_, _, begun), step in zip(started, steps)]
    case.steps += steps
    roles = one_refused(case, started, steps)
    if roles:
        holder, loser = roles
        case.expect(ended[loser] < ended[holder], "the second was not refused before the first finished")
        case.notes.append(
            f"second refused after {steps[loser].seconds:.1f} s, first finished after {steps[holder].seconds:.1f} s"
        )
        case.problems += run_problems(output, epochs=4)
    case.problems += [f"left {name}" for name in leftovers(output)]
    if not case.problems:
        case.notes.append("the first wrote a complete run")
    bench.check_fixtures(case)
    bench.add(case)


def kill_when(process: subprocess.Popen, ready, poll_seconds: float = 0.003) -> bool:
    """SIGKILLs `process` as soon as `ready()` holds; False when it exited first."""
    while process.poll() is None:
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(poll_seconds)
    return False


def committed_epoch(folder: Path, output: Path) -> int | None:
    for state in folder.glob(f".{output.name}.partial-*/checkpoints/state.json"):
        try:
            return int(json.loads(state.read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return None  # being replaced right now: read it on the next poll
    return None


def history_rows(folder: Path, output: Path) -> int:
    for history in folder.glob(f".{output.name}.partial-*/history.csv"):
        try:
            return max(0, len(history.read_text().strip().splitlines()) - 1)
        except OSError:
            return 0
    return 0


def describe_left(folder: Path, output: Path) -> str:
    """What a killed run left: a finished run, a staging folder (and its committed epoch), or nothing."""
    if output.is_dir():
        return "a finished run"
    staging = list(folder.glob(f".{output.name}.partial-*"))
    if staging:
        epoch = committed_epoch(folder, output)
        return f"a staging folder, {f'epoch {epoch} committed' if epoch else 'no epoch committed'}"
    return "nothing (killed before the lock)"


def rerun_then_resume(bench: Bench, case: Case, folder: Path, output: Path, args: list) -> None:
    """The same command again; if it says that an unfinished run exists, `--resume` it. Then check the finished run."""
    rerun = bench.run(args, folder)
    case.steps.append(rerun)
    if rerun.exit_code == 0:
        case.notes.append("rerun completed")
    elif "An unfinished run of" in rerun.message:
        resumed = bench.run(["distill", "--resume", output, "--quiet"], folder)
        case.steps.append(resumed)
        if case.expect(resumed.exit_code == 0, f"--resume failed: {bench.short(resumed.message)}"):
            case.notes.append("rerun refused, --resume completed")
    elif "already holds a run" in rerun.message:
        case.notes.append("rerun refused: the run was already complete")
    else:
        case.problems.append(f"rerun answered: {bench.short(rerun.message)}")
    if output.is_dir() and not case.problems:
        case.problems += run_problems(output)
        difference = weight_difference(output / "student.keras", bench.student)
        if case.expect(difference is None, f"student.keras differs from the uninterrupted run: {difference}"):
            case.notes.append("weights equal the uninterrupted run")
    elif not case.problems:
        case.problems.append("no finished run")
    case.problems += [f"left {name}" for name in leftovers(output)]


def killed_after_first_epoch(bench: Bench) -> None:
    folder = bench.case_dir()
    output = folder / "run"
    args = [*bench.run_command, "--output", output]
    case = Case(
        "run killed after its first committed epoch, rerun, report, --resume",
        "SIGKILL distill TINY --output RUN after epoch 1; same command; report TMP; distill --resume RUN",
        message_step=1,
    )
    process, log, started = bench.start(args, folder)
    killed = kill_when(process, lambda: (committed_epoch(folder, output) or 0) >= 1)
    case.steps.append(Bench.finish(process, log, args, started))
    epoch = committed_epoch(folder, output)
    if not case.expect(killed and epoch is not None, "the run finished before the kill"):
        bench.add(case)
        return
    before = checksums(folder)
    refusal = bench.run(args, folder)
    case.steps.append(refusal)
    expected = (
        f"An unfinished run of {output} exists (epoch {epoch} of {EPOCHS}); "
        f"continue it with --resume {output}, or start over with --overwrite."
    )
    case.expect(
        refusal.exit_code == 1 and refusal.message == f"Error: {expected}",
        "the rerun was not refused naming the unfinished run",
    )
    case.changed += [f"rerun: {change}" for change in compare(before, checksums(folder))]
    listing = bench.run(["report", folder], folder)
    case.steps.append(listing)
    case.expect(
        listing.exit_code == 0
        and f"  {output}: epoch {epoch} of {EPOCHS}; continue it with stkd-keras distill --resume {output}"
        in listing.output,
        f"report did not list it: {bench.short(listing.message)}",
    )
    case.changed += [f"report: {change}" for change in compare(before, checksums(folder))]
    resumed = bench.run(["distill", "--resume", output, "--quiet"], folder)
    case.steps.append(resumed)
    if case.expect(resumed.exit_code == 0, f"--resume failed: {bench.short(resumed.message)}"):
        case.problems += run_problems(output)
        metrics = json.loads((output / "metrics.json").read_text()) if (output / "metrics.json").is_file() else {}
        case.expect(
            metrics.get("resumed_at_epoch") == epoch,
            f"metrics.json says resumed_at_epoch {metrics.get('resumed_at_epoch')}",
        )
        difference = weight_difference(output / "student.keras", bench.student)
        case.expect(difference is None, f"student.keras differs from the uninterrupted run: {difference}")
    case.problems += [f"left {name}" for name in leftovers(output)]
    if case.nothing_lost:
        case.notes.append(
            f"killed at epoch {epoch}: refused unchanged, listed by report, resumed to the reference weights"
        )
    bench.check_fixtures(case)
    bench.add(case)


def killed_at_a_narrow_moment(bench: Bench, name: str, command: str, ready, window: str) -> None:
    """SIGKILL at the moment `ready(folder, output)` first holds, then the rerun / --resume of every kill case."""
    folder = bench.case_dir()
    output = folder / "run"
    args = [*bench.run_command, "--output", output]
    case = Case(name, command)
    process, log, started = bench.start(args, folder)
    killed = kill_when(process, lambda: ready(folder, output))
    case.steps.append(Bench.finish(process, log, args, started))
    in_window = killed and ready(folder, output)
    case.notes.append(
        f"killed {window}"
        if in_window
        else f"the kill missed the moment ({window}); left {describe_left(folder, output)}"
    )
    if output.exists():
        case.problems += [f"after the kill: {problem}" for problem in run_problems(output)]
    rerun_then_resume(bench, case, folder, output, args)
    bench.check_fixtures(case)
    bench.add(case)


def random_run_kills(bench: Bench, moments: list[float]) -> None:
    for moment in moments:
        folder = bench.case_dir()
        output = folder / "run"
        args = [*bench.run_command, "--output", output]
        case = Case(
            f"run: SIGKILL at {moment:.2f} s of {bench.run_seconds:.2f} s, then rerun / --resume",
            "distill TINY --output RUN; same command; distill --resume RUN if refused",
        )
        process, log, started = bench.start(args, folder)
        time.sleep(max(0.0, moment - (time.monotonic() - started)))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        case.steps.append(Bench.finish(process, log, args, started))
        case.notes.append(
            f"the kill left {describe_left(folder, output)}"
            if case.steps[0].exit_code == -signal.SIGKILL
            else "the run finished before the kill"
        )
        if output.exists():  # --output never holds half a run
            case.problems += [f"after the kill: {problem}" for problem in run_problems(output)]
        rerun_then_resume(bench, case, folder, output, args)
        bench.check_fixtures(case)
        bench.add(case)


def export_twice(bench: Bench) -> None:
    folder = bench.case_dir()
    output = folder / "export"
    shutil.copytree(bench.fixtures / "export", output)  # the first export: the fixture's, made by the same command
    case = Case(
        "export twice into one folder",
        "export SMALL --output X (done); again without --overwrite; again with --overwrite --quantize float16",
        message_step=0,
    )
    before = checksums(folder)
    again = bench.run([*bench.export_command, "--output", output], folder)
    case.steps.append(again)
    case.expect(
        again.exit_code == 1 and "already exists; pass --overwrite" in again.message,
        "the second export was not refused",
    )
    case.changed += compare(before, checksums(folder))
    replaced = bench.run([*bench.export_command, "--overwrite", "--quantize", "float16", "--output", output], folder)
    case.steps.append(replaced)
    if case.expect(replaced.exit_code == 0, f"--overwrite --quantize float16 failed: {bench.short(replaced.message)}"):
        case.problems += export_listing_problems(output)
        listed = sorted(json.loads((output / "metadata.json").read_text())["files"])
        case.expect(listed == ["student_float16.tflite"], f"metadata.json lists {listed}")
        if not case.problems:
            case.notes.append(
                "refused unchanged; after --overwrite the folder holds exactly what metadata.json lists "
                "(student_float16.tflite)"
            )
    case.problems += [f"left {name}" for name in leftovers(output)]
    bench.check_fixtures(case)
    bench.add(case)


def concurrent_exports(bench: Bench) -> None:
    folder = bench.case_dir()
    output = folder / "export"
    args = [*bench.export_command, "--output", output]
    case = Case("two exports into one folder at once", "2x export SMALL --output X, started together")
    started = [bench.start(args, folder) for _ in range(2)]
    steps = Bench.finish_together(started, args)
    case.steps += steps
    if one_refused(case, started, steps):
        case.problems += export_listing_problems(output)
        if not case.problems:
            case.notes.append("the first wrote exactly the files its report lists")
    case.problems += [f"left {name}" for name in leftovers(output)]
    bench.check_fixtures(case)
    bench.add(case)


def export_kill(bench: Bench, name: str, moment: float | None) -> None:
    """SIGKILL an export at `moment` seconds (None: once its staging folder holds a file), check the names, rerun it."""
    folder = bench.case_dir()
    output = folder / "export"
    args = [*bench.export_command, "--output", output]
    names = [
        "student_float32.tflite",
        "student_int8.tflite",
        "student_float32.onnx",
        "student_int8.onnx",
        "metadata.json",
        "export_report.json",
    ]
    case = Case(name, "export SMALL --output X; the same command again")
    process, log, started = bench.start(args, folder)
    if moment is None:
        killed = kill_when(process, lambda: any(path.is_file() for path in output.glob(".export-partial-*/*")))
        if not killed:
            case.notes.append("the export finished before its staging folder was seen")
    else:
        time.sleep(max(0.0, moment - (time.monotonic() - started)))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    case.steps.append(Bench.finish(process, log, args, started))
    if case.steps[0].exit_code == -signal.SIGKILL:
        state, problems = final_names_after_kill(output, names)
        staging = sorted(output.glob(".export-partial-*")) if output.is_dir() else []
        left = [
            *leftovers(output),
            *(f"{output.name}/{path.name} ({sum(1 for _ in path.iterdir())} file(s))" for path in staging),
        ]
        case.notes.append(f"the kill left {state}; {', '.join(left) or 'no staging folder or lock file'}")
        case.problems += problems
    else:
        case.notes.append("the export finished before the kill")
    rerun = bench.run(args, folder)
    case.steps.append(rerun)
    if rerun.exit_code == 1 and "already exists; pass --overwrite" in rerun.message:
        case.command += " (refused: rerun with --overwrite)"
        rerun = bench.run([*args, "--overwrite"], folder)
        case.steps.append(rerun)
    if case.expect(rerun.exit_code == 0, f"the rerun failed: {bench.short(rerun.message)}"):
        case.problems += export_listing_problems(output)
    case.problems += [f"after the rerun: left {name}" for name in leftovers(output)]
    bench.check_fixtures(case)
    bench.add(case)


def bad_inputs(bench: Bench) -> None:
    """Each refused in one sentence (exit 1 or 2, an `Error:` line, no traceback), with nothing written."""
    fixtures = bench.fixtures
    missing_backends = [name for name in ("jax", "torch") if importlib.util.find_spec(name) is None]

    def inputs(folder: Path) -> dict:
        text = folder / "teacher.keras"
        text.write_text("not a model\n")
        (folder / "empty").mkdir()
        shutil.copytree(fixtures / "cifar_run", folder / "cifar_run")
        shutil.copytree(fixtures / "reference", folder / "finished")
        corrupt = folder / "corrupt"
        corrupt.mkdir()
        shutil.copy(bench.student, corrupt / "student.keras")
        (corrupt / "preprocessing.json").write_text('{"dataset": "fashion_mnist", "mean": [0.286], ')
        return {
            "text": text,
            "empty": folder / "empty",
            "cifar": folder / "cifar_run",
            "finished": folder / "finished",
            "corrupt": corrupt,
        }

    distill = ["distill", "--teacher", bench.teacher, *TINY]
    cases = [
        (
            "a text file named teacher.keras as --teacher",
            lambda f, p: ["distill", "--teacher", p["text"], *TINY, "--output", f / "out"],
            "is not a Keras model file",
        ),
        (
            "a missing --teacher path",
            lambda f, p: ["distill", "--teacher", f / "missing.keras", *TINY, "--output", f / "out"],
            "does not exist",
        ),
        (
            "evaluate a CIFAR-10 model on fashion_mnist",
            lambda f, p: ["evaluate", "--model", p["cifar"], "--dataset", "fashion_mnist"],
            "was trained on cifar10 (32x32x3 images) and cannot read fashion_mnist",
        ),
        ("--epochs 0", lambda f, p: [*distill, "--epochs", "0", "--output", f / "out"], "0 is not in the range x>=1"),
        (
            "--temperature -1",
            lambda f, p: [*distill, "--temperature", "-1", "--output", f / "out"],
            "Expected `temperature` to be a finite number > 0",
        ),
        (
            "--student resnet9",
            lambda f, p: [*distill, "--student", "resnet9", "--output", f / "out"],
            "'resnet9' is not one of",
        ),
        (
            "export --quantize int4",
            lambda f, p: ["export", "--model", bench.student, "--quantize", "int4", "--output", f / "out"],
            "Received: 'int4'",
        ),
        (
            "export --format onnx --quantize float16",
            lambda f, p: [
                "export",
                "--model",
                bench.student,
                "--format",
                "onnx",
                "--quantize",
                "float16",
                "--output",
                f / "out",
            ],
            "ONNX export has no float16 mode",
        ),
        (
            "cifar10 not on this machine, no --teacher",
            lambda f, p: [
                "distill",
                "--teacher-model",
                "cnn8",
                "--dataset",
                "cifar10",
                "--no-download",
                "--data-dir",
                p["empty"],
                *TINY,
                "--output",
                f / "out",
            ],
            "Dataset 'cifar10' is not on this machine",
        ),
        (
            "--resume of a finished run (nothing unfinished)",
            lambda f, p: ["distill", "--resume", p["finished"], "--quiet"],
            "No unfinished run of",
        ),
        (
            "a 32x32x3 teacher for 28x28x1 data",
            lambda f, p: ["distill", "--teacher", fixtures / "cifar_teacher.keras", *TINY, "--output", f / "out"],
            "teacher 'cifar_teacher' takes inputs (32, 32, 3)",
        ),
        (
            "evaluate beside a corrupt preprocessing.json",
            lambda f, p: ["evaluate", "--model", p["corrupt"] / "student.keras"],
            "preprocessing.json: ",
        ),
    ]
    if missing_backends:
        cases.append(
            (
                f"--backend {missing_backends[0]} (not installed)",
                lambda f, p: [*distill, "--backend", missing_backends[0], "--output", f / "out"],
                missing_backends[0],
            )
        )
    else:
        bench.skipped.append(
            "`--backend` of a backend whose package is missing: skipped, jax and torch (and tensorflow) are all "
            "installed here."
        )
    for name, build, fragment in cases:
        folder = bench.case_dir()
        args = build(folder, inputs(folder))
        case = Case(f"bad input: {name}", bench.short(" ".join(str(arg) for arg in args)))
        before = checksums(folder)
        step = bench.run(args, folder)
        case.steps.append(step)
        case.expect(step.exit_code in (1, 2), f"exit code {step.exit_code}")
        case.expect(
            step.message.startswith("Error:") and fragment in step.message, "not the expected one-sentence error"
        )
        case.expect("Traceback" not in step.output, "a traceback reached the user")
        if "No trained teacher given" in step.output:
            case.problems.append("a teacher was announced before the data was checked")
        case.changed += compare(before, checksums(folder))
        case.problems += [f"left {name}" for name in leftovers(folder / "out")]
        if case.nothing_lost:
            case.notes.append("refused, nothing written")
        bench.check_fixtures(case)
        bench.add(case)


# ---- the table


def cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(bench: Bench) -> str:
    rows = [
        "| # | case | command | exit | message | files changed | nothing lost |",
        "| ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for index, case in enumerate(bench.cases, 1):
        exits = " → ".join(
            "SIGKILL" if step.exit_code == -signal.SIGKILL else str(step.exit_code) for step in case.steps
        )
        changed = "no" if not case.changed else "yes: " + "; ".join(case.changed)
        verdict = (
            "yes: " + "; ".join(case.notes)
            if case.nothing_lost
            else "no: " + "; ".join(case.problems + case.changed + case.notes)
        )
        rows.append(
            f"| {index} | {cell(case.name)} | `{cell(bench.short(case.command), 160)}` | {exits} | "
            f"{cell(bench.short(case.message))} | "
            f"{cell(bench.short(changed))} | {cell(bench.short(verdict), 400)} |"
        )
    return "\n".join(rows)


def machine_facts() -> dict:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "keras": version("keras"),
        "tensorflow": version("tensorflow"),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow (default)"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
    }


def earlier_cases(bench: Bench, run_moments: list[float], export_moments: list[float]) -> None:
    """The cases of issue 13: concurrent runs and exports, kills at random and narrow moments, bad inputs."""
    teacher_inside_output(bench)
    concurrent_runs(bench)
    killed_after_first_epoch(bench)
    killed_at_a_narrow_moment(
        bench,
        "run killed right after its last epoch's checkpoint, rerun / --resume",
        "SIGKILL distill TINY --output RUN once epoch 3 is committed; same command; distill --resume RUN",
        lambda folder, output: committed_epoch(folder, output) == EPOCHS,
        f"with epoch {EPOCHS} of {EPOCHS} committed, before student.keras",
    )
    killed_at_a_narrow_moment(
        bench,
        "run killed between an epoch's history.csv row and its checkpoint, rerun / --resume",
        "SIGKILL distill TINY --output RUN once history.csv has epoch 2; same command; distill --resume RUN",
        lambda folder, output: history_rows(folder, output) >= 2 and committed_epoch(folder, output) == 1,
        "with epoch 2 in history.csv and epoch 1 committed",
    )
    random_run_kills(bench, run_moments)
    export_twice(bench)
    concurrent_exports(bench)
    export_kill(bench, "export killed while its staging folder holds files, rerun", None)
    for moment in export_moments:
        export_kill(bench, f"export: SIGKILL at {moment:.2f} s of {bench.export_seconds:.2f} s, then rerun", moment)
    bad_inputs(bench)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random kill moments.")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "faults.md",
        help="Markdown file to write.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="Keep the temporary folder of the cases (its path is printed)."
    )
    parser.add_argument(
        "--hostile-only", action="store_true", help="Run only the hostile cases (benchmarks/hostile_cases.py)."
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="stkd-faults-"))
    bench = Bench(root)
    try:
        bench.build_fixtures()
        draw = random.Random(args.seed)
        run_moments = [draw.uniform(0, bench.run_seconds) for _ in range(KILLS)]
        export_moments = [draw.uniform(0, bench.export_seconds) for _ in range(KILLS)]
        if not args.hostile_only:
            earlier_cases(bench, run_moments, export_moments)
        import hostile_cases  # beside this file; it uses this module's helpers

        hostile_cases.add_cases(bench, sys.modules[__name__])
    finally:
        if args.keep:
            print(f"Cases kept in {root}.")
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - began
    lost = [case for case in bench.cases if not case.nothing_lost]
    tracebacks = sum(case.traceback for case in bench.cases)
    summary = f"{len(bench.cases)} cases, {len(bench.cases) - len(lost)} with nothing lost, {tracebacks} tracebacks"
    rendered = table(bench)
    print()
    print(rendered)
    for note in bench.skipped:
        print(f"Note: {note}")
    print(summary)
    facts = machine_facts()
    header = [
        "# Fault and bad-input cases",
        "",
        (
            f"`python benchmarks/faults.py --seed {args.seed}`, {facts['date']}; {seconds:.0f} s in all. Python "
            f"{facts['python']}, "
            f"Keras {facts['keras']}, TensorFlow {facts['tensorflow']}, backend {facts['keras_backend']}, "
            f"{facts['cpu_count']} CPUs "
            f"({facts['cpus_usable']} usable), {facts['platform']}. Kill moments drawn with seed {args.seed}, uniform "
            "over the "
            f"reference run ({bench.run_seconds:.2f} s) and the reference export ({bench.export_seconds:.2f} s)."
        ),
        "",
        (
            f"TINY = `{' '.join(TINY)}`; SMALL = `{' '.join(EXPORT_OPTIONS)}`; TEACHER = the teacher a fixture run "
            "trained "
            "(FIXTURES/run/teacher/teacher.keras); STUDENT = the uninterrupted reference run's student.keras (from "
            "TEACHER, "
            "the same command as every killed run); TMP = the cases' temporary folder. Exit: each command of the case "
            "in turn "
            "(SIGKILL: killed). Message: the last non-empty line of the output of the refusal (multi-step cases) or of "
            "the last "
            "command. Files changed: sha256 of every file under the case's folder and the fixtures, before and after, "
            "where the "
            "case must not change them (lock files, which hold only a pid, are checked on their own)."
        ),
        "",
        rendered,
        "",
        *[f"Note: {note}" for note in bench.skipped],
        "",
        summary,
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(header))
    records = {
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "machine": facts,
        "reference_seconds": {"run": round(bench.run_seconds, 2), "export": round(bench.export_seconds, 2)},
        "skipped": bench.skipped,
        "summary": summary,
        "cases": [
            {
                "name": case.name,
                "command": bench.short(case.command),
                "steps": [
                    {
                        "args": bench.short(" ".join(step.args)),
                        "exit_code": step.exit_code,
                        "message": bench.short(step.message),
                        "seconds": round(step.seconds, 2),
                    }
                    for step in case.steps
                ],
                "changed": case.changed,
                "problems": [bench.short(problem) for problem in case.problems],
                "notes": [bench.short(note) for note in case.notes],
                "nothing_lost": case.nothing_lost,
            }
            for case in bench.cases
        ],
    }
    args.output.with_suffix(".json").write_text(json.dumps(records, indent=2) + "\n")
    print(f"Wrote {args.output} and {args.output.with_suffix('.json')} ({seconds:.0f} s).")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())

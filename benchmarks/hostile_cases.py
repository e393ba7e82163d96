"""The hostile cases of `benchmarks/faults.py` (issue 20): tricky paths, damaged state, full and read-only disks.

Each case runs the real command line in a fresh folder, as `faults.py`'s
cases do, and checks with sha256 checksums that no file outside the command's
own output changed; a refusal must be one sentence (an `Error:` line, no
traceback) and a non-zero exit. The cases use faults.py's machinery, passed in
as `kit` (this module is imported by faults.py's main, which runs as
`__main__`).

The read-only and full-disk cases mount a small tmpfs (root and the right to
mount are needed); where mounting is not permitted they are skipped with a
note saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

# Runs the CLI with the file system made full right after epoch 1's checkpoint is committed: the moment a real
# disk fills.
FILL_AFTER_THE_FIRST_EPOCH = Path(__file__).resolve().parents[1] / "tests" / "fill_disk_after_first_epoch.py"


class Hostile:
    """The hostile cases, with the fixtures they add to faults.py's: an unfinished run (killed after epoch 1)."""

    def __init__(self, bench, kit):
        self.bench, self.kit = bench, kit

    # ---- helpers

    def sums(self, folder: Path, own: tuple = ()) -> dict:
        """faults.checksums of `folder` but for the paths (relative to `folder`) that the case's command may change."""
        prefixes = tuple(f"{folder.name}/{name}" for name in own)
        return {key: value for key, value in self.kit.checksums(folder).items() if not key.startswith(prefixes)}

    def finish(self, case) -> None:
        self.bench.check_fixtures(case)
        self.bench.add(case)

    def one_command(
        self,
        name: str,
        folder: Path,
        args: list,
        exits=(1,),
        fragment: str | None = None,
        own: tuple = (),
        check=None,
        command: list | None = None,
    ) -> None:
        """One command in `folder`: its exit code and message, no change outside `own`; `check(case)` adds more."""
        case = self.kit.Case(name, self.bench.short(" ".join(str(arg) for arg in args)))
        before = self.sums(folder, own)
        step = self.bench.run(args, folder, command=command)
        case.steps.append(step)
        case.expect(step.exit_code in exits, f"exit code {step.exit_code}, expected {' or '.join(map(str, exits))}")
        if step.exit_code != 0:
            case.expect(step.message.startswith("Error:") and "\n" not in step.message, "not a one-sentence error")
        if fragment is not None:
            case.expect(fragment in step.output, f"the output does not say {fragment!r}")
        case.changed += self.kit.compare(before, self.sums(folder, own))
        if check is not None:
            check(case, step)
        if case.nothing_lost and not case.notes:
            case.notes.append("refused, nothing changed" if step.exit_code else "done, nothing else changed")
        self.finish(case)

    def plant(self, folder: Path, output_name: str, **record) -> Path:
        """A copy of the fixture's unfinished run as that of `folder/output_name`; `record` edits its run.json."""
        staging = folder / f".{output_name}.partial-4242"
        shutil.copytree(self.unfinished, staging)
        if record:
            path = staging / "run.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **record}, indent=2))
        return staging

    def finished_run(self, folder: Path, name: str = "run") -> Path:
        run = folder / name
        shutil.copytree(self.bench.fixtures / "reference", run)
        return run

    def complete(self, case, output: Path, epochs: int | None = None) -> None:
        case.problems += self.kit.run_problems(output, **({"epochs": epochs} if epochs else {}))

    def mount(self, point: Path, options: str) -> bool:
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
        )
        if result.returncode != 0:
            self.bench.skipped.append(
                f"a tmpfs could not be mounted ({result.stderr.strip() or result.returncode}): the read-only and "
                "full-disk cases were skipped."
            )
            return False
        return True

    # ---- fixtures

    def build_fixtures(self) -> None:
        """An unfinished run: the reference distillation killed once epoch 1 is committed (its staging folder kept)."""
        folder = self.bench.fixtures / "unfinished"
        folder.mkdir()
        output = folder / "run"
        args = [*self.bench.run_command, "--output", output]
        process, log, started = self.bench.start(args, folder)
        killed = self.kit.kill_when(process, lambda: (self.kit.committed_epoch(folder, output) or 0) >= 1)
        self.kit.Bench.finish(process, log, args, started)
        stagings = [path for path in folder.iterdir() if path.name.startswith(".run.partial-")]
        if not killed or len(stagings) != 1:
            sys.exit("The unfinished-run fixture could not be made: the run finished before the kill.")
        self.unfinished = stagings[0]
        (folder / ".run.lock").unlink(missing_ok=True)
        self.bench.fixture_sums = self.kit.checksums(self.bench.fixtures)

    # ---- the cases, by the numbered items of issue 20

    def glob_characters(self) -> None:
        for name, extra in (("exp[1]", []), ("exp?", ["--overwrite"])):
            folder = self.bench.case_dir()
            self.plant(folder, "exp1")
            output = folder / name
            self.one_command(
                f"glob characters: a new run into {name}{' with --overwrite' if extra else ''} beside exp1's "
                "unfinished run",
                folder,
                [*self.bench.run_command, *extra, "--output", output],
                exits=(0,),
                own=(name,),
                check=lambda case, step, output=output: self.complete(case, output),
            )
        folder = self.bench.case_dir()
        self.plant(folder, "exp1")
        self.one_command(
            "glob characters: --resume exp[1] beside exp1's unfinished run",
            folder,
            ["distill", "--resume", folder / "exp[1]", "--quiet"],
            fragment="No unfinished run of",
        )
        folder = self.bench.case_dir()
        self.plant(folder, "exp[1]")
        self.plant(folder, "exp1")
        output = folder / "exp[1]"
        self.one_command(
            "glob characters: a run killed inside exp[1], then --resume exp[1]",
            folder,
            ["distill", "--resume", output, "--quiet"],
            exits=(0,),
            own=("exp[1]", ".exp[1].partial-4242"),
            check=lambda case, step: self.complete(case, output),
        )

    def teacher_guard(self) -> None:
        for spelling in ("dotdot", "symlink"):
            folder = self.bench.case_dir()
            run = folder / "run"
            shutil.copytree(self.bench.fixtures / "run", run)
            (folder / "other").mkdir()
            if spelling == "dotdot":
                teacher = folder / "other" / ".." / "run" / "teacher" / "teacher.keras"
            else:
                teacher = folder / "t.keras"
                teacher.symlink_to(run / "teacher" / "teacher.keras")
            self.one_command(
                f"teacher inside the output spelled with {spelling}, with --overwrite",
                folder,
                ["distill", "--teacher", teacher, *self.kit.TINY, "--output", run, "--overwrite"],
                fragment="lies inside",
            )
        folder = self.bench.case_dir()
        (folder / "other").mkdir()
        shutil.copytree(self.bench.fixtures / "run" / "teacher", folder / "teachers")
        teacher = folder / "other" / ".." / "teachers" / "teacher.keras"

        def recorded(case, step):
            self.complete(case, folder / "out")
            metrics = (
                json.loads((folder / "out" / "metrics.json").read_text())
                if (folder / "out" / "metrics.json").is_file()
                else {}
            )
            path = (metrics.get("teacher") or {}).get("path", "")
            case.expect(
                path == str(folder / "teachers" / "teacher.keras"), f"metrics.json records the teacher as {path!r}"
            )

        self.one_command(
            "a teacher outside the output spelled with `..`: the resolved path is recorded",
            folder,
            ["distill", "--teacher", teacher, *self.kit.TINY, "--output", folder / "out"],
            exits=(0,),
            own=("out",),
            check=recorded,
        )

    def overwrite_not_a_run(self) -> None:
        for command, extra in (("distill", ["--overwrite"]), ("train-teacher", ["--overwrite"]), ("distill", [])):
            folder = self.bench.case_dir()
            (folder / "docs" / "sub").mkdir(parents=True)
            (folder / "docs" / "important.txt").write_text("x\n")
            args = (
                [*self.bench.run_command, *extra]
                if command == "distill"
                else ["train-teacher", "--model", "cnn8", *self.kit.TINY[2:], *extra]
            )
            self.one_command(
                f"{command} {' '.join(extra) or 'without --overwrite'} into a folder of a user's files",
                folder,
                [*args, "--output", folder / "docs"],
                fragment="holds files that are not a stkd-keras run",
            )
        folder = self.bench.case_dir()
        (folder / "empty").mkdir()
        self.one_command(
            "--overwrite into an empty folder",
            folder,
            [*self.bench.run_command, "--overwrite", "--output", folder / "empty"],
            exits=(0,),
            own=("empty",),
            check=lambda case, step: self.complete(case, folder / "empty"),
        )

    def export_overwrite(self) -> None:
        folder = self.bench.case_dir()
        target = folder / "export"
        target.mkdir()
        for name, text in (
            ("important.txt", "mine\n"),
            ("photo.jpg", "jpeg\n"),
            ("metadata.json", '{"files": ["important.txt", "photo.jpg"]}\n'),
        ):
            (target / name).write_text(text)
        self.one_command(
            "export --overwrite into a folder whose metadata.json no export wrote",
            folder,
            [*self.bench.export_command, "--overwrite", "--output", target],
            fragment="was not written by stkd-keras export",
        )
        folder = self.bench.case_dir()
        target = folder / "export"
        shutil.copytree(self.bench.fixtures / "export", target)
        with open(target / "student_int8.onnx", "ab") as edited:
            edited.write(b"edited by hand")

        def kept(case, step):
            case.expect((target / "student_int8.onnx").is_file(), "the edited file was removed")
            case.expect("Kept student_int8.onnx" in step.output, "the output does not say the edited file was kept")

        self.one_command(
            "export --overwrite --quantize float16 after a file of the earlier export was edited",
            folder,
            [*self.bench.export_command, "--overwrite", "--quantize", "float16", "--output", target],
            exits=(0,),
            own=tuple(
                f"export/{name}"
                for name in (
                    "student_float16.tflite",
                    "metadata.json",
                    "export_report.json",
                    "student_float32.tflite",
                    "student_int8.tflite",
                    "student_float32.onnx",
                )
            ),
            check=kept,
        )
        folder = self.bench.case_dir()
        target = folder / "export"
        target.mkdir()
        (target / "important.txt").write_text("mine\n")
        (target / ".export-pending.json").write_text(
            json.dumps({"write": {"important.txt": "0" * 64}, "remove": ["important.txt"]})
        )
        self.one_command(
            "export into a folder holding a hand-written export journal that names a user's file",
            folder,
            [*self.bench.export_command, "--output", target],
            exits=(0,),
            own=tuple(
                f"export/{name}"
                for name in (
                    "student_float32.tflite",
                    "student_int8.tflite",
                    "student_float32.onnx",
                    "student_int8.onnx",
                    "metadata.json",
                    "export_report.json",
                    ".export-pending.json",
                )
            ),
        )

    def killed_overwrite(self) -> None:
        folder = self.bench.case_dir()
        output = self.finished_run(folder)
        self.plant(folder, "run", replaces_finished_run=True)

        def replaced(case, step):
            self.complete(case, output)
            metrics = json.loads((output / "metrics.json").read_text()) if (output / "metrics.json").is_file() else {}
            case.expect(
                metrics.get("resumed_at_epoch") == 1,
                f"metrics.json says resumed_at_epoch {metrics.get('resumed_at_epoch')}",
            )

        self.one_command(
            "a run started with --overwrite over a finished run, killed after epoch 1, then --resume",
            folder,
            ["distill", "--resume", output, "--quiet"],
            exits=(0,),
            own=("run", ".run.partial-4242"),
            fragment="Resuming the unfinished run started with --overwrite",
            check=replaced,
        )

    def damaged_state(self) -> None:
        for name, damage in (
            ("truncated to 100 bytes", lambda path: path.write_bytes(path.read_bytes()[:100])),
            ("a JSON list", lambda path: path.write_text("[1, 2]")),
            ("without its history", lambda path: path.write_text(json.dumps({"epoch": 1}))),
        ):
            folder = self.bench.case_dir()
            staging = self.plant(folder, "run")
            damage(staging / "checkpoints" / "state.json")
            self.one_command(
                f"checkpoints/state.json {name}, then --resume",
                folder,
                ["distill", "--resume", folder / "run", "--quiet"],
                fragment="is damaged",
            )
        folder = self.bench.case_dir()
        staging = self.plant(folder, "run")
        for path in (staging / "checkpoints").glob("epoch-*.weights.h5"):
            path.write_bytes(path.read_bytes()[:1000])
        self.one_command(
            "both weight checkpoints truncated, then --resume",
            folder,
            ["distill", "--resume", folder / "run", "--quiet"],
            fragment="can be loaded (both are damaged)",
        )

    def symlinked_outputs(self) -> None:
        for name, make in (
            ("a dangling symbolic link", lambda folder: (folder / "out").symlink_to(folder / "target")),
            (
                "a symbolic link to an empty folder",
                lambda folder: ((folder / "target").mkdir(), (folder / "out").symlink_to(folder / "target")),
            ),
        ):
            folder = self.bench.case_dir()
            make(folder)

            def written_there(case, step, folder=folder):
                case.expect((folder / "out").is_symlink(), "the link was replaced")
                self.complete(case, folder / "target")
                case.problems += [
                    f"left {path.name}"
                    for path in folder.iterdir()
                    if ".replaced-" in path.name or ".partial-" in path.name
                ]

            self.one_command(
                f"--output is {name}",
                folder,
                [*self.bench.run_command, "--output", folder / "out"],
                exits=(0,),
                own=("target",),
                check=written_there,
            )
        folder = self.bench.case_dir()
        self.finished_run(folder, "target")
        (folder / "out").symlink_to(folder / "target")
        self.one_command(
            "--output is a link to a finished run, with --overwrite",
            folder,
            [*self.bench.run_command, "--overwrite", "--output", folder / "out"],
            exits=(0,),
            own=("target",),
            check=lambda case, step: (
                case.expect((folder / "out").is_symlink(), "the link was replaced"),
                self.complete(case, folder / "target"),
            ),
        )

    def options_with_resume(self) -> None:
        folder = self.bench.case_dir()
        self.plant(folder, "run")
        self.one_command(
            "--resume with --epochs, --learning-rate and --method",
            folder,
            ["distill", "--resume", folder / "run", "--epochs", "6", "--learning-rate", "0.001", "--method", "kd"],
            exits=(2,),
            fragment="--epochs, --learning-rate, --method cannot change a resumed run",
        )
        folder = self.bench.case_dir()
        self.plant(folder, "run")
        self.one_command(
            "train-teacher --resume of a distill run",
            folder,
            ["train-teacher", "--resume", folder / "run"],
            fragment="was started by `stkd-keras distill`",
        )

    def exploding(self) -> None:
        folder = self.bench.case_dir()
        # The run of issue 20: its loss stays finite while BatchNorm's moving variance overflows; it was saved as a
        # success.
        self.one_command(
            "--learning-rate 1000 --lr-schedule constant on 500 images (finite loss, BatchNorm variance inf)",
            folder,
            [
                "distill",
                "--teacher",
                self.bench.teacher,
                "--student",
                "cnn8",
                "--epochs",
                "3",
                "--train-subset",
                "500",
                "--quiet",
                "--lr-schedule",
                "constant",
                "--learning-rate",
                "1000",
                "--output",
                folder / "out",
            ],
            fragment="Training diverged",
            own=(".out.partial-",),
            check=lambda case, step: case.expect(not (folder / "out").exists(), "a run was saved"),
        )
        import keras

        folder = self.bench.case_dir()
        model = keras.saving.load_model(self.bench.student)
        variance = next(v for v in model.weights if "moving_variance" in v.path)
        variance.assign(keras.ops.full(variance.shape, float("inf")))
        model.save(folder / "broken.keras")
        shutil.copy(self.bench.fixtures / "reference" / "preprocessing.json", folder / "preprocessing.json")
        for command in (
            ["evaluate", "--model", folder / "broken.keras", "--subset", "64"],
            ["export", "--model", folder / "broken.keras", *self.kit.EXPORT_OPTIONS, "--output", folder / "export"],
        ):
            self.one_command(
                f"{command[0]} a model whose BatchNorm variance is inf",
                folder,
                command,
                fragment="holds non-finite values",
            )

    def swapped_teacher(self) -> None:
        folder = self.bench.case_dir()
        teacher = folder / "teacher.keras"
        shutil.copy(self.bench.teacher, teacher)
        staging = self.plant(folder, "run")
        record = json.loads((staging / "run.json").read_text())
        record["config"]["teacher"] = str(teacher)
        (staging / "run.json").write_text(json.dumps(record, indent=2))
        shutil.copy(self.bench.fixtures / "cifar_teacher.keras", teacher)
        self.one_command(
            "the teacher file replaced before --resume",
            folder,
            ["distill", "--resume", folder / "run", "--quiet"],
            fragment="changed since this run started",
        )

    def operating_system_errors(self) -> None:
        folder = self.bench.case_dir()
        self.one_command(
            "a 245-character output name",
            folder,
            [*self.bench.run_command, "--output", folder / ("r" * 245)],
            fragment="choose a shorter --output",
        )
        folder = self.bench.case_dir()
        if not self.mount(folder / "ro", "size=4m,ro"):
            return
        try:
            for args in (
                [*self.bench.run_command, "--output", folder / "ro" / "run"],
                ["train-teacher", "--model", "cnn8", *self.kit.TINY[2:], "--output", folder / "ro" / "run"],
                [
                    "evaluate",
                    "--model",
                    self.bench.student,
                    "--subset",
                    "64",
                    "--json",
                    folder / "ro" / "evaluation.json",
                ],
                [*self.bench.export_command, "--output", folder / "ro" / "export"],
            ):
                self.one_command(
                    f"{args[0]} onto a read-only file system", folder, args, fragment="Read-only file system"
                )
        finally:
            subprocess.run(["umount", "-l", str(folder / "ro")], check=False)
        folder = self.bench.case_dir()
        if not self.mount(folder / "disk", "size=16m"):
            return
        try:
            output, filler = folder / "disk" / "run", folder / "disk" / "filler"
            args = ["train-teacher", "--model", "cnn8", *self.kit.TINY[2:], "--output", output]
            case = self.kit.Case(
                "the disk fills after epoch 1, then space is freed and --resume",
                "train-teacher TINY --output DISK/run; rm filler; --resume",
            )
            step = self.bench.run(
                [str(filler), *args], folder, command=[sys.executable, str(FILL_AFTER_THE_FIRST_EPOCH)]
            )
            case.steps.append(step)
            case.expect(
                step.exit_code == 1 and step.message.startswith("Error: No space left on device"),
                f"exit {step.exit_code}: {step.message}",
            )
            filler.unlink(missing_ok=True)
            resumed = self.bench.run(["train-teacher", "--resume", output, "--quiet"], folder)
            case.steps.append(resumed)
            case.message_step = 0
            if case.expect(resumed.exit_code == 0, f"--resume failed: {self.bench.short(resumed.message)}"):
                metrics = json.loads((output / "metrics.json").read_text())
                case.expect(metrics.get("resumed_at_epoch") == 1, f"resumed_at_epoch {metrics.get('resumed_at_epoch')}")
                case.notes.append("stopped in one sentence, epoch 1 kept; resumed after space was freed")
            self.finish(case)
        finally:
            subprocess.run(["umount", "-l", str(folder / "disk")], check=False)

    def misleading_messages(self) -> None:
        folder = self.bench.case_dir()
        staging = self.plant(folder, "run")
        text = (staging / "run.json").read_text()
        (staging / "run.json").write_text(text[: len(text) // 2])
        self.one_command(
            "a truncated run.json, then --resume",
            folder,
            ["distill", "--resume", folder / "run"],
            fragment="run.json is damaged",
        )
        folder = self.bench.case_dir()
        (folder / "grid").mkdir()
        damaged = self.plant(folder / "grid", "seed0")
        text = (damaged / "run.json").read_text()
        (damaged / "run.json").write_text(text[: len(text) // 2])
        self.plant(folder / "grid", "seed1")
        self.one_command(
            "report on a folder of runs, one with a truncated run.json",
            folder,
            ["report", folder / "grid"],
            exits=(0,),
            fragment="2 unfinished run(s):",
        )
        for name, args in (
            ("--resume", ["distill", "--resume", "RUN"]),
            ("the same command again", [*self.bench.run_command, "--output", "RUN"]),
        ):
            folder = self.bench.case_dir()
            (self.plant(folder, "run") / "run.json").unlink()
            args = [folder / "run" if arg == "RUN" else arg for arg in args]
            self.one_command(
                f"run.json deleted from an unfinished run, then {name}",
                folder,
                args,
                fragment="start over with --overwrite",
            )
        folder = self.bench.case_dir()
        self.one_command(
            "--temperature 1e30 (the loss is infinite before any update)",
            folder,
            [*self.bench.run_command, "--temperature", "1e30", "--output", folder / "out"],
            fragment="not the learning rate",
        )

    def run_all(self) -> None:
        self.build_fixtures()
        for group in (
            self.glob_characters,
            self.teacher_guard,
            self.overwrite_not_a_run,
            self.export_overwrite,
            self.killed_overwrite,
            self.damaged_state,
            self.symlinked_outputs,
            self.options_with_resume,
            self.exploding,
            self.swapped_teacher,
            self.operating_system_errors,
            self.misleading_messages,
        ):
            group()


def add_cases(bench, kit) -> None:
    """Runs every hostile case into `bench` (faults.py's `Bench`), with faults.py's helpers as `kit`."""
    Hostile(bench, kit).run_all()
